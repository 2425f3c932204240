"""Scoring answers as the task says: which metrics, on what, with bootstrap intervals.

`ftkit.task.Task` says what an answer is; this module turns a list of answers and their
references into the task's scores (`Task.metrics()`), each with a bootstrap 95% interval,
through the `evaluate` modules shipped in `ftkit.metrics`:

- json: `labels_exact` (every label field right), `<field>_accuracy`, `json_validity`,
  `exact_match`, macro-F1 of the stratify field, ROUGE-L of each free-text field;
- label: `accuracy` and `macro_f1` on `label_form`s (case and spacing forgiven), `exact_match`;
- text: `rouge_l`, `chrf`, `exact_match`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftkit.metrics import load_metric
from ftkit.task import Task

SIMILAR = 0.5  # a free-text answer this close to its reference (ROUGE-L) counts as close


def label_form(text: str) -> str:
    """A label as accuracy compares it: case-folded, whitespace collapsed, a final "." off."""
    return " ".join(text.split()).casefold().removesuffix(".")


def score_predictions(
    outputs: Sequence[str],
    references: Sequence[str],
    task: Task,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Score answers as `task` says (its `metrics()`), each with a bootstrap 95% interval.

    json: `labels_exact` (every label field right), `<field>_accuracy`, `json_validity`,
    `exact_match` (the whole answer), `<stratify>_macro_f1`, `<text field>_rouge_l`;
    label: `accuracy` and `macro_f1` on `label_form`s, `exact_match`; text: `rouge_l`,
    `chrf`, `exact_match`. Returns (scores, intervals).
    """
    outputs, references = list(outputs), list(references)
    common = {"n_resamples": n_resamples, "seed": seed}
    raw: dict[str, dict] = {}  # score name -> (metric result, its key)
    exact = load_metric("exact_match").compute(predictions=outputs, references=references,
                                               **common)  # fmt: skip
    raw["exact_match"] = (exact, "exact_match")
    if task.answer == "label":
        labels = [label_form(t) for t in outputs], [label_form(t) for t in references]
        accuracy = load_metric("exact_match").compute(predictions=labels[0],
                                                      references=labels[1], **common)  # fmt: skip
        raw["accuracy"] = (accuracy, "exact_match")
        f1 = load_metric("macro_f1").compute(predictions=labels[0], references=labels[1], **common)
        raw["macro_f1"] = (f1, "macro_f1")
    elif task.answer == "text":
        for name in ("rouge_l", "chrf"):
            raw[name] = (load_metric(name).compute(predictions=outputs, references=references,
                                                   **common), name)  # fmt: skip
    else:
        raw |= _json_scores(outputs, references, task, common)
    scores, intervals = {}, {}
    for name in task.metrics():
        values, key = raw[name]
        scores[name] = float(values[key])
        if f"{key}_ci_low" in values:
            intervals[name] = (float(values[f"{key}_ci_low"]), float(values[f"{key}_ci_high"]))
    return scores, intervals


def _json_scores(outputs: list, references: list, task: Task, common: dict) -> dict:
    """The json task's results: fields, validity, macro-F1 of the stratify field, ROUGE-L."""
    raw = {}
    if task.label_fields:
        fields = load_metric("field_accuracy").compute(
            predictions=outputs, references=references, fields=list(task.label_fields), **common
        )
        raw["labels_exact"] = (fields, "all_fields")
        raw |= {f"{f}_accuracy": (fields, f"{f}_accuracy") for f in task.label_fields}
    validity = load_metric("json_validity").compute(predictions=outputs, **common)
    raw["json_validity"] = (validity, "json_validity")
    if task.stratify in task.label_fields:
        f1 = load_metric("macro_f1").compute(predictions=outputs, references=references,
                                             field=task.stratify, **common)  # fmt: skip
        raw[f"{task.stratify}_macro_f1"] = (f1, "macro_f1")
    for name in task.text_fields:
        rouge = load_metric("rouge_l").compute(predictions=outputs, references=references,
                                               field=name, **common)  # fmt: skip
        raw[f"{name}_rouge_l"] = (rouge, "rouge_l")
    return raw


def similarities(outputs: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L of each answer against its reference (free-text tasks' per-answer score)."""
    rouge = load_metric("rouge_l")
    return [rouge.compute(predictions=[o], references=[r], n_resamples=0)["rouge_l"]
            for o, r in zip(outputs, references, strict=True)]  # fmt: skip
