"""The widgets of notebook 04: a side-by-side comparator of every approach, a browser of
wrong answers, and controls that re-run the comparison with another k or temperature."""

from __future__ import annotations

import html
from collections.abc import Iterable

import ipywidgets as w

from ftkit.comparison import compare, with_settings
from ftkit.course.plots import plot_approach_scores
from ftkit.course.widgets.picker import show_figure
from ftkit.data import Example
from ftkit.evaluation import LABEL_FIELDS, adapter_for, build_prompt, pick_shots
from ftkit.generation import generate_replies, parse_json

_RIGHT, _WRONG, _UNKNOWN = "#e6f4ea", "#fde2e1", "#f2f2f2"


def answer_html(text: str, expected: dict | None, fields: Iterable[str]) -> str:
    """An answer with each label field coloured: green if it equals `expected`, red if not.

    Invalid JSON is shown whole on red.
    """

    parsed = parse_json(text)
    if parsed is None:
        shown = html.escape(text) if text.strip() else "<i>(empty)</i>"
        return f"<span style='background:{_WRONG}'>{shown}</span> <small>(not JSON)</small>"
    parts = []
    for key, value in parsed.items():
        colour = _UNKNOWN
        if expected is not None and key in fields:
            colour = _RIGHT if str(value) == str(expected.get(key)) else _WRONG
        parts.append(f"<span style='background:{colour}'><b>{html.escape(str(key))}</b>: "
                     f"{html.escape(str(value))}</span>")  # fmt: skip
    return " · ".join(parts)


class Comparator(w.VBox):
    """Side by side: pick a test ticket (or type your own), click Compare, and read every
    approach's answer next to the reference, right fields green, wrong ones red.

    For a typed ticket there is no reference; fields are then compared with the answer most
    approaches gave. Controls: `picker`, `text`, `compare_button`; answers land in
    `answers` (an HTML widget) and `last` (approach name -> answer text).
    """

    def __init__(self, model, tokenizer, comparison, examples, shot_pool=(),
                 max_new_tokens: int = 64) -> None:  # fmt: skip

        self.model, self.tokenizer, self.comparison = model, tokenizer, comparison
        self.examples, self.shot_pool = list(examples), list(shot_pool)
        self.max_new_tokens = max_new_tokens
        self.fields = LABEL_FIELDS
        self.last: dict[str, str] = {}
        options = [(f"{i + 1}. {_first_words(e.messages[-2]['content'])}", i)
                   for i, e in enumerate(self.examples)]  # fmt: skip
        self.picker = w.Dropdown(
            options=options,
            value=0 if options else None,
            description="test ticket",
            layout=w.Layout(width="95%"),
        )
        self.text = w.Textarea(description="ticket", layout=w.Layout(width="95%", height="90px"))
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
            self.text.value = self.examples[index].messages[-2]["content"]

    def _reference(self) -> dict | None:
        for example in self.examples:
            if example.messages[-2]["content"].strip() == self.text.value.strip():
                return parse_json(example.messages[-1]["content"])
        return None

    def run(self) -> dict[str, str]:
        """Ask every approach about the ticket in `text`; show and return the answers."""
        from collections import Counter

        ticket = self.text.value.strip()
        if not ticket:
            self.answers.value = "<i>Type a ticket or pick one first.</i>"
            return {}
        self.status.value = "asking every approach..."
        question = Example([{"role": "user", "content": ticket}, {"role": "assistant",
                                                                  "content": ""}])  # fmt: skip
        answers, seconds = {}, {}
        for result in self.comparison.results.values():
            approach = result.approach
            shots = pick_shots(self.shot_pool, approach.shots, self.comparison.settings.get(
                "seed", 0))  # fmt: skip
            prompt = build_prompt(question, approach, shots)
            with adapter_for(self.model, approach):
                [reply] = generate_replies(  # cut as the comparison cut it: the same answer
                    self.model,
                    self.tokenizer,
                    [prompt],
                    max_new_tokens=self.max_new_tokens,
                    give_up_after=self.comparison.settings.get("give_up_after"),
                )
            answers[approach.name], seconds[approach.name] = reply.text, reply.seconds
        reference = self._reference()
        expected, basis = reference, "the reference"
        if reference is None:
            votes = {f: Counter(str((parse_json(a) or {}).get(f)) for a in answers.values())
                     for f in self.fields}  # fmt: skip
            expected = {f: votes[f].most_common(1)[0][0] for f in self.fields}
            basis = "the answer most approaches gave (a typed ticket has no reference)"
        rows = []
        if reference is not None:
            shown = answer_html(json_text(reference), None, ())
            rows.append(f"<tr><td><b>reference</b></td><td>{shown}</td><td></td></tr>")
        for name, text in answers.items():
            rows.append(f"<tr><td>{html.escape(name)}</td><td>"
                        f"{answer_html(text, expected, self.fields)}</td>"
                        f"<td>{1000 * seconds[name]:.0f} ms</td></tr>")  # fmt: skip
        self.answers.value = (
            "<table><tr><th>approach</th><th>answer</th><th>time</th></tr>" + "".join(rows)
            + f"</table><small>Green: same as {basis}; red: different.</small>"
        )  # fmt: skip
        self.status.value = f"{len(answers)} answers"
        self.last = answers
        return answers


def json_text(value: dict) -> str:
    """A dict as the one-line JSON the task asks for."""
    import json

    return json.dumps(value, ensure_ascii=False)


def _first_words(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ErrorBrowser(w.VBox):
    """Browse wrong answers: choose an approach, a field (or invalid JSON) and a reference
    label; read each ticket with its reference and the answer, fields coloured.

    Controls: `approach`, `field`, `label`; the list is in `listing`, the count in `count`.
    """

    def __init__(self, comparison, limit: int = 20) -> None:
        self.comparison, self.limit, self.fields = comparison, limit, LABEL_FIELDS
        names = list(comparison.results)
        self.approach = w.Dropdown(options=names, value=names[-1], description="approach")
        self.field = w.Dropdown(options=[("any label", "any"), *[(f, f) for f in LABEL_FIELDS],
                                         ("invalid JSON", "invalid")],
                                value="any", description="wrong in")  # fmt: skip
        self.label = w.Dropdown(description="reference")
        self.count, self.listing = w.HTML(), w.HTML()
        for control in (self.approach, self.field):
            control.observe(lambda _: self._update_labels(), names="value")
        self.label.observe(lambda _: self.show(), names="value")
        super().__init__([w.HBox([self.approach, self.field, self.label]), self.count,
                          self.listing])  # fmt: skip
        self._update_labels()

    def _update_labels(self) -> None:
        field = self.field.value if self.field.value in self.fields else "category"
        values = sorted({p.expected(field)
                         for p in self.comparison[self.approach.value].predictions})  # fmt: skip
        self.label.description = f"reference {field}"
        self.label.options = [("all", "all"), *[(v, v) for v in values]]
        self.label.value = "all"
        self.show()

    def matching(self) -> list:
        """The predictions the current choice selects."""
        result = self.comparison[self.approach.value]
        if self.field.value == "invalid":
            chosen = [p for p in result.predictions if p.parsed is None]
        else:
            chosen = result.wrong(None if self.field.value == "any" else self.field.value)
        if self.label.value not in (None, "all"):
            field = self.field.value if self.field.value in self.fields else "category"
            chosen = [
                p for p in chosen
                if p.expected(field) == self.label.value
            ]  # fmt: skip
        return chosen

    def show(self) -> None:
        """Redraw the count and the list for the current choice."""
        chosen = self.matching()
        total = len(self.comparison[self.approach.value].predictions)
        self.count.value = (f"<b>{len(chosen)}</b> of {total} answers match"
                            + (f"; showing the first {self.limit}" if len(chosen) > self.limit
                               else ""))  # fmt: skip
        items = []
        for p in chosen[: self.limit]:
            expected = parse_json(p.reference)
            items.append(
                f"<li><b>{html.escape(p.id)}</b>: {html.escape(_first_words(p.question, 300))}"
                f"<br>reference: {answer_html(p.reference, None, ())}"
                f"<br>answer: {answer_html(p.output, expected, self.fields)}</li>"
            )
        self.listing.value = "<ol>" + "".join(items) + "</ol>" if items else "<i>none</i>"


class ComparisonControls(w.VBox):
    """Change k (solved examples in the few-shot prompt) and the temperature, click Re-run:
    every approach is evaluated again on the first `examples` test tickets; the table and
    the score plot update. The new `Comparison` is in `comparison`.
    """

    def __init__(self, model, tokenizer, approaches, examples, shot_pool, n_examples: int = 24,
                 shots: int = 3, temperature: float = 0.0, max_new_tokens: int = 64,
                 n_resamples: int = 200) -> None:  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.approaches, self.examples, self.shot_pool = list(approaches), examples, shot_pool
        self.max_new_tokens, self.n_resamples = max_new_tokens, n_resamples
        self.comparison = None
        self.shots = w.IntSlider(value=shots, min=0, max=8, description="k (shots)")
        self.temperature = w.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.1,
                                         description="temperature")  # fmt: skip
        self.n_examples = w.IntSlider(value=min(n_examples, len(examples)), min=1,
                                      max=len(examples), description="test tickets")  # fmt: skip
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
                self.model, self.tokenizer, examples, approaches, self.shot_pool,
                max_new_tokens=self.max_new_tokens, temperature=self.temperature.value,
                latency_sample=2, n_resamples=self.n_resamples,
                progress=lambda line: setattr(self.status, "value", html.escape(line)),
            )  # fmt: skip
            self.comparison.settings["shots"] = self.shots.value
            self.table.value = self.comparison.table_html()
            show_figure(self.plot_output, plot_approach_scores(self.comparison), "scores")
            self.status.value = (
                f"done: k={self.shots.value}, temperature={self.temperature.value:.1f}, "
                f"{len(examples)} tickets"
            )
        finally:
            self.run_button.disabled = False
        return self.comparison
