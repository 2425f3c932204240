"""The verdict in words, computed from the run: no sentence of a conclusion is fixed text.

Notebooks 01, 03 and 04 end their sections with what the numbers say. These functions
write those sentences from a `Comparison`, a learning curve or a handful of answers, for
any task, so that what a learner reads is what their run measured: which approach won on
what, by how much, and whether the 95% intervals are apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftkit.scoring import SIMILAR, label_form, similarities
from ftkit.task import Task, parse_json

CLOSE = 10.0  # points: prompting this close to the fine-tune "did well" on a metric


def describe_metric(task: Task, metric: str) -> str:
    """What a metric measures, in a few words, for this task."""
    if metric == "labels_exact":
        return f"every label field right ({', '.join(task.label_fields)})"
    if metric.endswith("_accuracy"):
        return f"the right {metric.removesuffix('_accuracy')}"
    if metric.endswith("_macro_f1") or metric == "macro_f1":
        return "F1 per class, averaged with equal weight (macro-F1)"
    if metric.endswith("rouge_l"):
        return "word overlap with the reference (ROUGE-L)"
    named = {
        "accuracy": "the right label",
        "chrf": "character n-gram overlap (chrF)",
        "json_validity": "one valid JSON object",
        "exact_match": "the reference exactly",
    }
    return named.get(metric, metric)  # fmt: skip


def apart(first, second, metric: str) -> bool:
    """Whether two results' 95% intervals on `metric` do not overlap."""
    (a_low, a_high), (b_low, b_high) = first.intervals[metric], second.intervals[metric]
    return a_low > b_high or b_low > a_high


def verdict(comparison) -> str:
    """Best prompting against best fine-tuned on the primary metric, in Markdown."""
    metric, task = comparison.primary, comparison.task
    prompt, tuned = comparison.best_prompting, comparison.best_finetuned
    margin = 100 * comparison.margin
    side = "above" if margin > 0 else "below" if margin < 0 else "level with"
    if apart(prompt, tuned, metric):
        intervals = "do not overlap: the difference is not chance."
    else:
        intervals = "overlap: this test cannot tell the two apart."
    text = (
        f"On {len(prompt.predictions)} test examples, scored on `{metric}` "
        f"({describe_metric(task, metric)}), the best prompting approach "
        f"{_score(prompt, metric)}; the best fine-tuned one {_score(tuned, metric)}: the "
        f"fine-tune is **{abs(margin):.1f} points {side}** the best prompt. The intervals "
        f"{intervals}"
    )
    return text + _with_prompt(comparison, metric)


def _score(result, metric: str) -> str:
    """ "(**name**) **53.1** (95% interval 45.6 to 60.6)"."""
    low, high = (100 * v for v in result.intervals[metric])
    value = 100 * result.scores[metric]
    return f"(**{result.name}**) **{value:.1f}** (95% interval {low:.1f} to {high:.1f})"


def _with_prompt(comparison, metric: str) -> str:
    """What the system prompt did to the fine-tune, when both were measured."""
    both = [r for r in comparison.results.values() if not r.approach.prompting]
    bare = next((r for r in both if not r.approach.system_prompt), None)
    prompted = next((r for r in both if r.approach.system_prompt), None)
    if bare is None or prompted is None:
        return ""
    change = 100 * (prompted.scores[metric] - bare.scores[metric])
    if abs(change) < 1:
        return f" Adding the system prompt to the fine-tune changes it by {change:+.1f} points."
    how = "helps it"
    if change < 0:
        how = ("hurts it: it was trained without that prompt, and a long prompt it never saw "
               "moves its input away from what it learned")  # fmt: skip
    return f" The system prompt {how} ({change:+.1f} points, {prompted.name})."


def class_verdict(comparison) -> str:
    """Macro-F1 of the task's classes, best prompting against best fine-tuned ("" for text)."""
    metric = next((m for m in comparison.task.metrics() if m.endswith("macro_f1")), None)
    if metric is None:
        return ""
    name = metric.removesuffix("_macro_f1") if metric != "macro_f1" else "label"
    prompt, tuned = comparison.best_prompting, comparison.best_finetuned
    return (f"Macro-F1 of the {name}: {prompt.name} **{100 * prompt.scores[metric]:.1f}**, "
            f"{tuned.name} **{100 * tuned.scores[metric]:.1f}** (points).")  # fmt: skip


def strengths(comparison) -> str:
    """What prompting did well (metrics within `CLOSE` points of the fine-tune, or ahead) and
    where the fine-tune pulled ahead, in Markdown."""
    prompt, tuned = comparison.best_prompting, comparison.best_finetuned
    gaps = {m: 100 * (tuned.scores[m] - prompt.scores[m]) for m in comparison.task.metrics()}
    close = [m for m, gap in gaps.items() if gap <= CLOSE]
    far = sorted((m for m in gaps if m not in close), key=gaps.get, reverse=True)
    head = "**What prompting did well.**"
    if close:
        shown = ", ".join(f"`{m}` {100 * prompt.scores[m]:.0f} (fine-tune "
                          f"{100 * tuned.scores[m]:.0f})" for m in close)  # fmt: skip
        good = (f"{head} With no training at all, {prompt.name} came within {CLOSE:.0f} "
                f"points of the fine-tune, or ahead, on {shown}")  # fmt: skip
    else:
        good = (f"{head} Little: {prompt.name} came within {CLOSE:.0f} points of the "
                "fine-tune on no metric")  # fmt: skip
    ahead = "; ".join(f"`{m}` by {gaps[m]:.0f} points" for m in far[:3])
    return good + (f". **Where the fine-tune pulled ahead:** {ahead}." if far else ".")


def curve_verdict(points: Sequence, reference, metric: str) -> str:
    """The learning curve in words: from how many examples the fine-tune beats `reference`."""
    bar = 100 * reference.scores[metric]
    beating = [p.examples for p in points if 100 * p.score > bar]
    where = "does not beat it at any of these sizes"
    if beating:
        where = f"beats it from **{beating[0]} training examples** on"
    scores = ", ".join(f"{p.examples}: {100 * p.score:.1f}" for p in points)
    return (f"On these {len(reference.predictions)} test examples the best prompting approach "
            f"scores {bar:.1f} on `{metric}`. The fine-tune {where}; scores per size: "
            f"{scores}.")  # fmt: skip


def describe_answers(task: Task, outputs: Sequence[str], references: Sequence[str]) -> str:
    """A few answers judged as the task says, in one Markdown sentence."""
    n = len(outputs)
    if task.answer == "json":
        parsed = [parse_json(o) for o in outputs]
        expected = [parse_json(r) or {} for r in references]
        right = sum(
            p is not None and all(str(p.get(f)) == str(e.get(f)) for f in task.label_fields)
            for p, e in zip(parsed, expected, strict=True)
        )
        valid = sum(p is not None for p in parsed)
        return f"**{valid} of {n}** replies are valid JSON; {right} have every label field right."
    if task.answer == "label":
        known = {label_form(label) for label in task.labels} or {label_form(r) for r in references}
        named = sum(label_form(o) in known for o in outputs)
        right = sum(
            label_form(o) == label_form(r) for o, r in zip(outputs, references, strict=True)
        )
        return f"**{named} of {n}** replies are one of the task's labels; {right} are right."
    scores = similarities(outputs, references)
    close = sum(score >= SIMILAR for score in scores)
    return (f"**{close} of {n}** replies are close to their reference (ROUGE-L at least "
            f"{SIMILAR}); mean ROUGE-L {sum(scores) / n:.2f}.")  # fmt: skip
