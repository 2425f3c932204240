"""Comparison: every approach on one split, the verdict, and how much data is needed.

`compare` runs `ftkit.evaluation.evaluate_approach` for every approach on the same
examples and returns a `Comparison`: the best prompting and the best fine-tuned approach
on the primary metric, the margin between them, a table with intervals, prompt tokens and
latency, and JSON for the report. How much data the fine-tune needs is `ftkit.curve`'s.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ftkit.baseline import CLASSICAL
from ftkit.evaluation import (
    GIVE_UP_AFTER,
    Approach,
    ApproachResult,
    Prediction,
    answer_budget,
    eval_batch_size,
    evaluate_approach,
)
from ftkit.scoring import SIMILAR
from ftkit.task import Task


@dataclass
class Comparison:
    """Every approach's result on one split, and the verdict on the primary metric."""

    results: dict[str, ApproachResult]  # approach name -> result, in the order run
    task: Task  # what an answer is, and the metric the verdict is about
    settings: dict = field(default_factory=dict)  # temperature, shots, max_new_tokens, ...

    @property
    def primary(self) -> str:
        """The metric the verdict is about (the task's primary metric)."""
        return self.task.primary_metric

    def __getitem__(self, name: str) -> ApproachResult:
        return self.results[name]

    @property
    def best_prompting(self) -> ApproachResult:
        """The base-model approach with the highest primary score."""
        return max(self._where("base"), key=lambda r: r.scores[self.primary])

    @property
    def best_finetuned(self) -> ApproachResult:
        """The fine-tuned approach with the highest primary score."""
        return max(self._where("finetuned"), key=lambda r: r.scores[self.primary])

    @property
    def few_shot(self) -> ApproachResult | None:
        """The base model with fixed few-shot examples (not retrieved, not constrained)."""
        return next((r for r in self._where("base") if r.approach.shots
                     and not r.approach.retrieve and not r.approach.constrained), None)  # fmt: skip

    @property
    def classical(self) -> ApproachResult | None:
        """The classical baseline's result, if it was added (`add`)."""
        return next((r for r in self.results.values() if r.approach.model == CLASSICAL), None)

    @property
    def split_size(self) -> str:
        """How many examples of which split were scored, e.g. "160 test"."""
        return f"{self.settings.get('examples', '?')} {self.settings.get('split', 'test')}"

    @property
    def margin(self) -> float:
        """Best fine-tuned minus best prompting, on the primary metric (a share; x100: points)."""
        return self.best_finetuned.scores[self.primary] - self.best_prompting.scores[self.primary]

    def add(self, result: ApproachResult | None) -> Comparison:
        """Add another approach's result measured on the same examples (the classical
        baseline, say); None (an approach that does not apply) adds nothing."""
        if result is not None:
            self.results[result.name] = result
        return self

    def _where(self, model: str) -> list[ApproachResult]:
        chosen = [r for r in self.results.values() if r.approach.model == model]
        if not chosen:
            kind = {"base": "prompting", "finetuned": "fine-tuned"}.get(model, model)
            raise ValueError(f"This comparison has no {kind} approach.")
        return chosen

    def rows(self, metrics: Sequence[str] | None = None) -> list[dict]:
        """One dict per approach: scores (in points), intervals, tokens and latency."""
        rows = []
        for result in self.results.values():
            keys = metrics or list(result.scores)
            row = {"approach": result.name}
            for key in keys:
                low, high = result.intervals.get(key, (float("nan"),) * 2)
                row[key] = 100 * result.scores[key]
                row[f"{key}_ci"] = (100 * low, 100 * high)
            row |= {"prompt_tokens": result.prompt_tokens, "latency_ms": 1000 * result.latency_s}
            rows.append(row)
        return rows

    def table_html(self, metrics: Sequence[str] | None = None) -> str:
        """The comparison as an HTML table: points with 95% intervals, tokens, latency."""
        metrics = list(metrics or self.task.headline_metrics())
        head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
        body = []
        best = {
            max(chosen, key=lambda r: r.scores[self.primary]).name  # bold: each kind's best
            for kind in ("base", "finetuned")
            if (chosen := [r for r in self.results.values() if r.approach.model == kind])
        }
        for row in self.rows(metrics):
            cells = "".join(_cell(row[m], row[m + "_ci"]) for m in metrics)
            weight = "font-weight:bold" if row["approach"] in best else ""
            body.append(
                f"<tr style='{weight}'><td>{html.escape(row['approach'])}</td>{cells}"
                f"<td>{row['prompt_tokens']:.0f}</td><td>{row['latency_ms']:.0f}</td></tr>"
            )
        cut = self.settings.get("give_up_after") if self.task.answer == "json" else None
        cut_note = (
            f" An answer that could no longer be valid JSON was cut (…) after {cut} tokens: no "
            "score changes."
            if cut
            else ""
        )
        cannot = " n/a: the classical baseline cannot write free text." if any(
            math.isnan(row[m]) for row in self.rows(metrics) for m in metrics) else ""  # fmt: skip
        return (
            "<table><tr><th>approach</th>" + head + "<th>prompt tokens</th><th>latency (ms)</th>"
            "</tr>" + "".join(body) + "</table><p><small>Scores in points (x 100) with bootstrap "
            f"95% intervals over the {self.split_size} examples; latency "
            f"per request, one at a time.{cut_note}{cannot}</small></p>"
        )

    def samples_html(self, n: int = 4) -> str:
        """The first `n` test examples side by side: the reference and every approach's answer.

        Model output is escaped, shown as text and never rendered as HTML. An answer with
        everything right is green, partly right amber, nothing right red (`Prediction.hits`).
        """
        results = list(self.results.values())
        answers = [{p.id: p for p in r.predictions} for r in results]
        names = ["reference", *(r.name for r in results)]
        head = "".join(f"<th style='text-align:left'>{html.escape(name)}</th>" for name in names)
        rows = []
        for first in results[0].predictions[:n]:
            ticket = first.question if len(first.question) <= 300 else first.question[:300] + "..."
            rows.append(
                f"<tr><td colspan='{len(results) + 1}' style='text-align:left'><b>"
                f"{html.escape(first.id)}</b>: {html.escape(ticket)}</td></tr>"
            )
            cells = [_answer_cell(by_id.get(first.id), self.task) for by_id in answers]
            rows.append(f"<tr>{_answer_cell(first, self.task, True)}{''.join(cells)}</tr>")
        return (
            f"<table><tr>{head}</tr>{''.join(rows)}</table><p><small>Each question, then the "
            f"expected answer and every approach's answer. {_legend(self.task)}</small></p>"
        )

    def to_json(self, path: str | Path) -> Path:
        """Save scores, costs and every prediction as JSON (the report reads it)."""
        data = {
            "primary": self.primary,
            "task": self.task.to_dict(),
            "settings": self.settings,
            "results": [
                {
                    "approach": asdict(r.approach),
                    "scores": r.scores,
                    "intervals": r.intervals,
                    "prompt_tokens": r.prompt_tokens,
                    "new_tokens": r.new_tokens,
                    "latency_s": r.latency_s,
                    "batch_seconds_per_request": r.batch_seconds_per_request,
                    "predictions": [asdict(p) for p in r.predictions],
                }
                for r in self.results.values()
            ],
        }
        path = Path(path)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def compare(
    model,
    tokenizer,
    examples: Sequence,
    approaches: Iterable[Approach],
    task: Task,
    shot_pool: Sequence = (),
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    batch_size: int | None = None,
    latency_sample: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = print,
    give_up_after: int | None = GIVE_UP_AFTER,
    split: str = "test",
) -> Comparison:
    """Evaluate every approach on the same examples, scored as `task` says; see `Comparison`.

    `model` is the fine-tuned PeftModel (its adapter is switched off for base approaches);
    `max_new_tokens` defaults to `ftkit.evaluation.answer_budget`; `split` names the
    examples' split in tables and plots ("validation" when choosing settings).
    """
    examples = list(examples)
    max_new_tokens = max_new_tokens or answer_budget(task, examples, tokenizer)
    batch_size = batch_size or eval_batch_size(model)
    results = {}
    for approach in approaches:
        started = time.perf_counter()
        result = evaluate_approach(
            model, tokenizer, examples, approach, task, shot_pool, max_new_tokens, temperature,
            batch_size, latency_sample, n_resamples, seed, give_up_after=give_up_after,
        )  # fmt: skip
        results[approach.name] = result
        if progress:
            primary = task.primary_metric
            progress(
                f"{approach.name}: {primary} {100 * result.scores[primary]:.1f} points, "
                f"{result.prompt_tokens:.0f} prompt tokens, {1000 * result.latency_s:.0f} ms "
                f"per request ({time.perf_counter() - started:.0f} s)"
            )
    settings = {"examples": len(examples), "max_new_tokens": max_new_tokens,
                "temperature": temperature, "seed": seed, "batch_size": batch_size,
                "give_up_after": give_up_after, "split": split}  # fmt: skip
    return Comparison(results, task, settings=settings)


def with_settings(approaches: Iterable[Approach], shots: int) -> list[Approach]:
    """The same approaches with the few-shot one re-set to `shots` examples (renamed)."""
    changed = []
    for approach in approaches:
        if approach.shots:
            name = approach.name.replace(f"{approach.shots}-shot", f"{shots}-shot")
            name = name.replace(f"{approach.shots} retrieved", f"{shots} retrieved")
            approach = replace(approach, name=name, shots=shots)
        changed.append(approach)
    return changed


_PRE = "white-space:pre-wrap;margin:0;font-size:85%;background:none;color:inherit"


def _cell(value: float, interval: tuple[float, float]) -> str:
    """One score as a table cell: points with the interval, or n/a."""
    if math.isnan(value):
        return "<td>n/a</td>"
    return f"<td>{value:.1f} <small>[{interval[0]:.1f}, {interval[1]:.1f}]</small></td>"


def _answer_cell(prediction: Prediction | None, task: Task, reference: bool = False) -> str:
    """One answer as an escaped, coloured table cell (the reference is left uncoloured)."""
    if prediction is None:
        return "<td>(no answer)</td>"
    if reference:
        text = html.escape(prediction.reference)
        return f"<td style='text-align:left'><pre style='{_PRE}'>{text}</pre></td>"
    hits = prediction.hits(task)
    right = sum(hits.values())
    colour = "#d7f0d8" if right == len(hits) else "#fbe3b8" if right else "#f6d0d0"
    if task.answer == "json":
        note = f"{right}/{len(hits)} labels right"
    elif task.answer == "label":
        note = "right" if right else "wrong"
    else:
        note = f"ROUGE-L {prediction.similarity or 0:.2f}"
    return (
        f"<td style='text-align:left;background:{colour};color:#222'><pre style='{_PRE}'>"
        f"{html.escape(prediction.output)}{' …' if prediction.gave_up else ''}</pre>"
        f"<small>{note}</small></td>"
    )


def _legend(task: Task) -> str:
    """What the colours of `samples_html` mean for this task."""
    if task.answer == "json":
        fields = len(task.label_fields)
        return f"Green: all {fields} label fields right; amber: some; red: none."
    if task.answer == "label":
        return "Green: the right label; red: a wrong one."
    return f"Green: ROUGE-L at least {SIMILAR} against the reference; red: below."
