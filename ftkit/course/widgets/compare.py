"""The widgets of notebook 04: a side-by-side comparator of every approach, a browser of
wrong answers, and controls that re-run the comparison with another k or temperature.

All three read the comparison's `Task`: a JSON answer is shown field by field (label fields
green when right, red when wrong), a label answer green or red, a free-text answer with its
ROUGE-L against the reference.
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter

import ipywidgets as w

from ftkit.comparison import compare, with_settings
from ftkit.course.plots import plot_approach_scores
from ftkit.course.widgets.picker import show_figure
from ftkit.data import Example
from ftkit.evaluation import generate_answers
from ftkit.scoring import SIMILAR, label_form, similarities
from ftkit.task import Task, answer_of, parse_json

_RIGHT, _WRONG, _UNKNOWN = "#e6f4ea", "#fde2e1", "#f2f2f2"


def answer_html(text: str, task: Task, reference: str | dict | None = None) -> str:
    """An answer as escaped HTML, coloured against `reference` as the task says.

    json: each label field green if it equals the reference's (a dict or a JSON text), red
    if not, invalid JSON whole on red; label: green or red; text: the ROUGE-L against the
    reference beside it. Without a reference nothing is coloured.
    """
    shown = html.escape(text) if text.strip() else "<i>(empty)</i>"
    if task.answer == "label":
        if reference is None:
            return shown
        right = label_form(text) == label_form(str(reference))
        return f"<span style='background:{_RIGHT if right else _WRONG}'>{shown}</span>"
    if task.answer == "text":
        if reference is None:
            return f"<span style='white-space:pre-wrap'>{shown}</span>"
        score = similarities([text], [str(reference)])[0]
        colour = _RIGHT if score >= SIMILAR else _WRONG
        return (f"<span style='white-space:pre-wrap;background:{colour}'>{shown}</span> "
                f"<small>(ROUGE-L {score:.2f})</small>")  # fmt: skip
    return _json_html(text, task, reference)


def _json_html(text: str, task: Task, reference: str | dict | None) -> str:
    parsed = parse_json(text)
    if parsed is None:
        shown = html.escape(text) if text.strip() else "<i>(empty)</i>"
        return f"<span style='background:{_WRONG}'>{shown}</span> <small>(not JSON)</small>"
    expected = parse_json(reference) if isinstance(reference, str) else reference
    parts = []
    for key, value in parsed.items():
        colour = _UNKNOWN
        if expected is not None and key in task.label_fields:
            colour = _RIGHT if str(value) == str(expected.get(key)) else _WRONG
        parts.append(f"<span style='background:{colour}'><b>{html.escape(str(key))}</b>: "
                     f"{html.escape(str(value))}</span>")  # fmt: skip
    return " · ".join(parts)


def consensus(answers: list[str], task: Task) -> str | dict | None:
    """What most answers say, to colour answers to a question that has no reference: per
    label field (json), or the commonest label; None for free text."""
    if task.answer == "label":
        return Counter(label_form(a) for a in answers).most_common(1)[0][0]
    if task.answer == "text":
        return None
    votes = {f: Counter(str((parse_json(a) or {}).get(f)) for a in answers)
             for f in task.label_fields}  # fmt: skip
    return {f: votes[f].most_common(1)[0][0] for f in task.label_fields}


class Comparator(w.VBox):
    """Side by side: pick an example (or type your own question), click Compare, and read
    every approach's answer next to the reference, coloured as the task says.

    For a typed question there is no reference; answers are then compared with what most
    approaches said. Controls: `picker`, `text`, `compare_button`; answers land in `answers`
    (an HTML widget) and `last` (approach name -> answer text).
    """

    def __init__(self, model, tokenizer, comparison, examples, shot_pool=(),
                 max_new_tokens: int | None = None) -> None:  # fmt: skip
        self.model, self.tokenizer, self.comparison = model, tokenizer, comparison
        self.task = comparison.task
        self.examples, self.shot_pool = list(examples), list(shot_pool)
        self.max_new_tokens = max_new_tokens or comparison.settings.get("max_new_tokens", 64)
        self.last: dict[str, str] = {}
        options = [(f"{i + 1}. {_first_words(_asked(e))}", i)
                   for i, e in enumerate(self.examples)]  # fmt: skip
        self.picker = w.Dropdown(options=options, value=0 if options else None,
                                 description="example",
                                 layout=w.Layout(width="95%"))  # fmt: skip
        self.text = w.Textarea(description="question",
                               layout=w.Layout(width="95%", height="90px"))  # fmt: skip
        self.compare_button = w.Button(description="Compare", button_style="primary",
                                       icon="play")  # fmt: skip
        self.status = w.HTML()
        self.answers = w.HTML()
        self.picker.observe(lambda change: self._fill(change["new"]), names="value")
        self.compare_button.on_click(lambda _: self.run())
        super().__init__([self.picker, self.text, w.HBox([self.compare_button, self.status]),
                          self.answers])  # fmt: skip
        # Stable CSS classes, so a browser test (tests/test_browser.py) can find each part.
        for widget, name in ((self, ""), (self.picker, "-picker"), (self.text, "-input"),
                             (self.compare_button, "-button"), (self.status, "-status"),
                             (self.answers, "-answers")):  # fmt: skip
            widget.add_class(f"ftkit-comparator{name}")
        if options:
            self._fill(0)

    def _fill(self, index) -> None:
        if index is not None:
            self.text.value = _asked(self.examples[index])

    def _picked(self) -> Example | None:
        """The example whose question is in the text box (None for a typed question)."""
        asked = self.text.value.strip()
        return next((e for e in self.examples if _asked(e).strip() == asked), None)

    def run(self) -> dict[str, str]:
        """Ask every approach the question in `text`; show and return the answers."""
        question = self.text.value.strip()
        if not question:
            self.answers.value = "<i>Type a question or pick one first.</i>"
            return {}
        self.status.value = "asking every approach..."
        picked = self._picked()
        example = picked or Example([{"role": "user", "content": question},
                                     {"role": "assistant", "content": ""}])  # fmt: skip
        answers, seconds = {}, {}
        settings = self.comparison.settings
        for result in self.comparison.results.values():
            started = time.perf_counter()
            if result.respond is not None:  # the classical baseline: its fitted classifiers
                [answers[result.name]] = result.respond([example])
            else:  # generated exactly as the comparison did (shots, constraint, cut)
                [reply], _, _ = generate_answers(
                    self.model, self.tokenizer, [example], result.approach, self.task,
                    self.shot_pool, self.max_new_tokens, seed=settings.get("seed", 0),
                    give_up_after=settings.get("give_up_after"),
                )  # fmt: skip
                answers[result.name] = reply.text
            seconds[result.name] = time.perf_counter() - started
        self._show(answers, seconds, answer_of(picked) if picked else None)
        self.last = answers
        return answers

    def _show(self, answers: dict, seconds: dict, reference: str | None) -> None:
        expected = reference if reference is not None else consensus(list(answers.values()),
                                                                     self.task)  # fmt: skip
        basis = "the reference" if reference is not None else (
            "the answer most approaches gave (a typed question has no reference)")  # fmt: skip
        rows = []
        if reference is not None:
            shown = answer_html(reference, self.task)
            rows.append(f"<tr><td><b>reference</b></td><td>{shown}</td><td></td></tr>")
        for name, text in answers.items():
            rows.append(f"<tr><td>{html.escape(name)}</td><td>"
                        f"{answer_html(text, self.task, expected)}</td>"
                        f"<td style='white-space: nowrap'>"
                        f"{1000 * seconds[name]:.0f} ms</td></tr>")  # fmt: skip
        legend = f"Green: same as {basis}; red: different."
        if expected is None:
            legend = "A typed question has no reference: read the answers side by side."
        self.answers.value = (
            "<table><tr><th>approach</th><th>answer</th><th>time</th></tr>" + "".join(rows)
            + f"</table><small>{legend}</small>"
        )  # fmt: skip
        self.status.value = f"{len(answers)} answers"


def json_text(value: dict) -> str:
    """A dict as the one-line JSON a json task asks for."""
    return json.dumps(value, ensure_ascii=False)


def _asked(example) -> str:
    """The question of an example: its last user message."""
    return next(m["content"] for m in reversed(example.messages) if m["role"] == "user")


def _first_words(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ErrorBrowser(w.VBox):
    """Browse wrong answers: choose an approach, what is wrong (a label field or invalid JSON;
    a wrong label; a free-text answer far from its reference) and a reference class; read
    each question with its reference and the answer, coloured.

    Controls: `approach`, `field`, `label` (the reference class), `below` (free text: the
    ROUGE-L under which an answer is listed); the list is in `listing`, the count in `count`.
    """

    def __init__(self, comparison, limit: int = 20) -> None:
        self.comparison, self.limit, self.task = comparison, limit, comparison.task
        names = list(comparison.results)
        self.approach = w.Dropdown(options=names, value=names[-1], description="approach")
        self.field = w.Dropdown(options=_wrong_in(self.task), description="wrong in")
        self.label = w.Dropdown(description="reference")
        self.below = w.FloatSlider(value=SIMILAR, min=0.0, max=1.0, step=0.05,
                                   description="ROUGE-L below")  # fmt: skip
        self.count, self.listing = w.HTML(), w.HTML()
        for control in (self.approach, self.field):
            control.observe(lambda _: self._update_labels(), names="value")
        for control in (self.label, self.below):
            control.observe(lambda _: self.show(), names="value")
        filters = [self.approach, self.field] + (
            [self.below] if self.task.answer == "text" else [self.label])  # fmt: skip
        super().__init__([w.HBox(filters), self.count, self.listing])
        self._update_labels()

    def _class_field(self) -> str | None:
        """The JSON field whose reference values the `label` control lists."""
        if self.field.value in self.task.label_fields:
            return self.field.value
        return self.task.stratify if self.task.stratify in self.task.label_fields else (
            next(iter(self.task.label_fields), None))  # fmt: skip

    def _class_of(self, prediction) -> str:
        if self.task.answer == "label":
            return label_form(prediction.reference)
        return prediction.expected(self._class_field())

    def _update_labels(self) -> None:
        if self.task.answer != "text":
            values = sorted(
                {self._class_of(p) for p in self.comparison[self.approach.value].predictions}
            )
            self.label.description = f"reference {self._class_field() or 'label'}"
            self.label.options = [("all", "all"), *[(v, v) for v in values]]
            self.label.value = "all"
        self.show()

    def matching(self) -> list:
        """The predictions the current choice selects."""
        result = self.comparison[self.approach.value]
        if self.field.value == "invalid":
            chosen = [p for p in result.predictions if p.parsed is None]
        elif self.task.answer == "text":
            chosen = [p for p in result.predictions if (p.similarity or 0.0) < self.below.value]
        else:
            chosen = result.wrong(None if self.field.value == "any" else self.field.value)
        if self.task.answer != "text" and self.label.value not in (None, "all"):
            chosen = [p for p in chosen if self._class_of(p) == self.label.value]
        return chosen

    def show(self) -> None:
        """Redraw the count and the list for the current choice."""
        chosen = self.matching()
        total = len(self.comparison[self.approach.value].predictions)
        self.count.value = (f"<b>{len(chosen)}</b> of {total} answers match"
                            + (f"; showing the first {self.limit}" if len(chosen) > self.limit
                               else ""))  # fmt: skip
        items = [
            f"<li><b>{html.escape(p.id)}</b>: {html.escape(_first_words(p.question, 300))}"
            f"<br>reference: {answer_html(p.reference, self.task)}"
            f"<br>answer: {answer_html(p.output, self.task, p.reference)}</li>"
            for p in chosen[: self.limit]
        ]
        self.listing.value = "<ol>" + "".join(items) + "</ol>" if items else "<i>none</i>"


def _wrong_in(task: Task) -> list[tuple[str, str]]:
    """The `wrong in` choices of the error browser for a task."""
    if task.answer == "json":
        return [("any label", "any"), *[(f, f) for f in task.label_fields],
                ("invalid JSON", "invalid")]  # fmt: skip
    if task.answer == "label":
        return [("the label", "any")]
    return [("the whole reply", "any")]


class ComparisonControls(w.VBox):
    """Change k (solved examples in the few-shot prompt) and the temperature, click Re-run:
    every approach is evaluated again on the first `examples` (a validation split: choices
    are made on validation, the test split is scored once); the table and the score plot
    update. The new `Comparison` is in `comparison`.
    """

    def __init__(self, model, tokenizer, task: Task, approaches, examples, shot_pool,
                 n_examples: int = 24, shots: int = 3, temperature: float = 0.0,
                 max_new_tokens: int | None = None, n_resamples: int = 200,
                 split: str = "validation") -> None:  # fmt: skip
        self.model, self.tokenizer, self.task, self.split = model, tokenizer, task, split
        self.approaches, self.examples, self.shot_pool = list(approaches), examples, shot_pool
        self.max_new_tokens, self.n_resamples = max_new_tokens, n_resamples
        self.comparison = None
        self.shots = w.IntSlider(value=shots, min=0, max=8, description="k (shots)")
        self.temperature = w.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.1,
                                         description="temperature")  # fmt: skip
        self.n_examples = w.IntSlider(value=min(n_examples, len(examples)), min=1,
                                      max=len(examples), description="examples")  # fmt: skip
        self.run_button = w.Button(description="Re-run", button_style="primary", icon="refresh")
        self.status, self.table = w.HTML(), w.HTML()
        self.plot_output = w.Output()
        self.run_button.on_click(lambda _: self.run())
        controls = w.HBox([self.shots, self.temperature, self.n_examples])
        super().__init__([controls, w.HBox([self.run_button, self.status]), self.table,
                          self.plot_output])  # fmt: skip

    def run(self):
        """Evaluate every approach with the current k and temperature; return the Comparison."""
        self.run_button.disabled = True
        try:
            approaches = with_settings(self.approaches, self.shots.value)
            examples = list(self.examples)[: self.n_examples.value]
            self.comparison = compare(
                self.model, self.tokenizer, examples, approaches, self.task, self.shot_pool,
                max_new_tokens=self.max_new_tokens, temperature=self.temperature.value,
                latency_sample=2, n_resamples=self.n_resamples, split=self.split,
                progress=lambda line: setattr(self.status, "value", html.escape(line)),
            )  # fmt: skip
            self.comparison.settings["shots"] = self.shots.value
            self.table.value = self.comparison.table_html()
            show_figure(self.plot_output, plot_approach_scores(self.comparison), "scores")
            self.status.value = (
                f"done: k={self.shots.value}, temperature={self.temperature.value:.1f}, "
                f"{len(examples)} {self.split} examples"
            )
        finally:
            self.run_button.disabled = False
        return self.comparison
