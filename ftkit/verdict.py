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
    if apart(prompt, tuned, metric):
        intervals = "do not overlap: the difference is not chance."
    else:
        intervals = "overlap: this test cannot tell the two apart."
    text = (
        f"On {len(prompt.predictions)} test examples, scored on `{metric}` "
        f"({describe_metric(task, metric)}), the best prompting approach "
        f"{_score(prompt, metric)}; the best fine-tuned one {_score(tuned, metric)}: the "
        f"fine-tune is {_relation(margin)} the best prompt. The intervals "
        f"{intervals}"
    )
    return text + _with_prompt(comparison, metric)


def _relation(margin: float) -> str:
    """ "**12.5 points above**", "**3.0 points below**" or "**level with**" (margin in points)."""
    if round(margin, 1) == 0:
        return "**level with**"
    return f"**{abs(margin):.1f} points {'above' if margin > 0 else 'below'}**"


def _names(metrics: list[str]) -> str:
    """ "`a`", "`a` or `b`", "`a`, `b` or `c`"."""
    quoted = [f"`{m}`" for m in metrics]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _score(result, metric: str) -> str:
    """ "(**name**) **53.1** (95% interval 45.6 to 60.6)"."""
    low, high = (100 * v for v in result.intervals[metric])
    value = 100 * result.scores[metric]
    return f"(**{result.name}**) **{value:.1f}** (95% interval {low:.1f} to {high:.1f})"


def _with_prompt(comparison, metric: str) -> str:
    """What the system prompt did to the fine-tune, when both were measured."""
    both = [r for r in comparison.results.values() if r.approach.model == "finetuned"]
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


def classical_verdict(comparison) -> str:
    """The fine-tune against the classical baseline, in Markdown: on the primary metric, then
    label by label (where each is ahead, intervals apart), and what it cannot do."""
    classical, tuned, metric = comparison.classical, comparison.best_finetuned, comparison.primary
    if classical is None:
        return ("No classical baseline: this task's answers are free text, which a classifier "
                "cannot write.")  # fmt: skip
    margin = 100 * (tuned.scores[metric] - classical.scores[metric])
    apart_ = "apart" if apart(tuned, classical, metric) else "overlapping: not a real difference"
    text = (
        f"**The classical baseline**, TF-IDF and a logistic regression per label trained in "
        f"{_seconds(classical.fit_seconds)}, {_score(classical, metric)}, answering in "
        f"{1000 * classical.latency_s:.1f} ms. The fine-tune is {_relation(margin)} it on "
        f"`{metric}`, intervals {apart_}."
    )
    text += _by_label(tuned, classical, comparison.task.metrics())
    missing = [m for m, v in classical.scores.items() if v != v]  # nan: it cannot
    if missing:
        text += (f" It cannot write free text, so it has no {_names(missing)} score: the "
                 "table says n/a.")  # fmt: skip
    adds = (
        "the format, every label and the free text from one model"
        if missing
        else "the answer's format and every label from one model"
    )
    return text + (
        f" What the fine-tune adds: {adds}, learned from examples without feature "
        f"engineering. What it costs: minutes of training, and {_times(tuned, classical)} the "
        "latency per request."
    )


def _by_label(tuned, classical, metrics: list[str]) -> str:
    """ " Label by label: the fine-tune ahead on `category_accuracy` (81 vs 74)." (only the
    differences with intervals apart)."""
    fields = [m for m in metrics if m.endswith("_accuracy")]
    if not fields:
        return ""
    real = [m for m in fields if apart(tuned, classical, m)]
    groups = {
        "the fine-tune ahead": [m for m in real if tuned.scores[m] > classical.scores[m]],
        "the classifier ahead": [m for m in real if tuned.scores[m] < classical.scores[m]],
    }
    said = [f"{group} on " + ", ".join(f"`{m}` ({_pair(tuned, classical, m)})" for m in chosen)
            for group, chosen in groups.items() if chosen]  # fmt: skip
    if not said:
        return " Label by label, no difference is beyond chance."
    level = [m for m in fields if m not in real]
    same = f"; level on {', '.join(f'`{m}`' for m in level)}" if level else ""
    return f" Label by label: {'; '.join(said)}{same}."


def _seconds(value: float) -> str:
    """ "7.2 s", or "under 0.1 s"."""
    return f"{value:.1f} s" if value >= 0.05 else "under 0.1 s"


def _pair(first, second, metric: str) -> str:
    """ "81 vs 74" (two results' scores on a metric, in points)."""
    return f"{100 * first.scores[metric]:.0f} vs {100 * second.scores[metric]:.0f}"


def prompting_verdict(comparison) -> str:
    """What retrieved shots and constrained decoding did for the prompted base model, against
    fixed few-shot, and what remains of the fine-tune's lead, in Markdown ("" when neither
    was measured)."""
    metric, tuned = comparison.primary, comparison.best_finetuned
    base = [r for r in comparison.results.values() if r.approach.model == "base"]
    fixed = comparison.few_shot
    retrieved = next((r for r in base if r.approach.retrieve), None)
    constrained = next((r for r in base if r.approach.constrained), None)
    if fixed is None:
        return ""
    parts = []
    if retrieved is not None:
        parts.append(
            f"**Retrieval.** The {retrieved.approach.shots} training examples closest to each "
            f"question (BM25) instead of a fixed {fixed.approach.shots}: `{metric}` "
            f"{_change(fixed, retrieved, metric)}, for {retrieved.prompt_tokens:.0f} prompt "
            f"tokens instead of {fixed.prompt_tokens:.0f}."
        )
    if constrained is not None:
        validity = ""
        if "json_validity" in constrained.scores:
            validity = (f" valid JSON {100 * fixed.scores['json_validity']:.0f} -> "
                        f"{100 * constrained.scores['json_validity']:.0f} points;")  # fmt: skip
        lead = 100 * (tuned.scores[metric] - constrained.scores[metric])
        gap = 100 * (tuned.scores[metric] - fixed.scores[metric])
        closed = (f" It closes {100 * (gap - lead) / gap:.0f}% of the gap between fixed "
                  "few-shot and the fine-tune." if gap > 0 else "")  # fmt: skip
        if apart(tuned, constrained, metric) and lead > 0:
            left = (f"The fine-tune stays **{lead:.1f} points** ahead, intervals apart: that "
                    "much of its lead is judgement (the right answer), not format.")  # fmt: skip
        elif round(lead, 1) > 0:
            left = (f"The fine-tune's remaining lead, {lead:.1f} points, is within chance: "
                    "here most of its lead was format.")  # fmt: skip
        else:
            left = f"The constrained prompt is {_relation(-lead)} the fine-tune."
        parts.append(
            f"**Constrained decoding.** With every token held to the task's format,{validity} "
            f"`{metric}` {_change(fixed, constrained, metric)}.{closed} {left}"
        )
    return "\n\n".join(parts)


def _change(before, after, metric: str) -> str:
    """ "goes from 5.0 to 12.5 (+7.5 points, intervals overlapping)"."""
    old, new = 100 * before.scores[metric], 100 * after.scores[metric]
    how = "apart" if apart(before, after, metric) else "overlapping"
    return f"goes from {old:.1f} to **{new:.1f}** ({new - old:+.1f} points, intervals {how})"


def split_verdict(on_validation, on_test, metric: str) -> str:
    """The same approach on validation and on test, side by side, in Markdown: how far apart,
    and what that says about how the two splits were drawn."""
    val, test = 100 * on_validation.scores[metric], 100 * on_test.scores[metric]
    scores = (f"**{on_test.name}** scores **{val:.1f}** on validation "
              f"({len(on_validation.predictions)} examples) and **{test:.1f}** on test "
              f"({len(on_test.predictions)}), on `{metric}`")  # fmt: skip
    if not apart(on_validation, on_test, metric):
        return (f"{scores}: the intervals overlap, so these splits ask alike (as a random split "
                "does). Validation still made every choice and test stayed unseen until its "
                "one scoring.")  # fmt: skip
    lower = "lower" if test < val else "higher"
    return (
        f"{scores}: **{abs(val - test):.1f} points {lower} on test**, intervals apart. "
        "Validation is held out from training but drawn like it; a gap this size says test asks "
        "differently (the dataset's README says how its splits were made). Validation is for "
        "choosing; test, scored once, is what to expect from questions the data did not foresee."
    )


def knowledge_verdict(results: dict, hit: float) -> str:
    """The knowledge demonstration (`ftkit.knowledge.knowledge_check`) in words, in Markdown."""
    score = {name: 100 * r.score for name, r in results.items()}
    alone = [name for name in results if "retrieved" not in name]
    helped = [name for name in results if "retrieved" in name]
    best = max(helped, key=score.get)
    low, high = (100 * v for v in results[best].interval)
    without = ", ".join(f"{name} states the fact in **{score[name]:.0f}%**" for name in alone)
    with_entry = ", ".join(f"{name} **{score[name]:.0f}%**" for name in helped)
    text = (
        f"Without the FAQ: {without} of answers. With the entry BM25 retrieved (the right "
        f"entry for {100 * hit:.0f}% of questions): {with_entry}. Best: {best}, "
        f"{score[best]:.0f}% (95% interval {low:.0f} to {high:.0f})."
    )
    tuned = next((n for n in helped if n.startswith("fine-tuned")), None)
    if tuned and tuned != best and score[tuned] < low:
        text += (" The fine-tune does worse with the same entry: it learned to answer every "
                 "message in its task's form, not to answer from a passage.")  # fmt: skip
    return text


def _times(slow, fast) -> str:
    """ "about 4,000 times" (how many times `slow`'s latency is `fast`'s)."""
    ratio = slow.latency_s / max(fast.latency_s, 1e-9)
    return f"about {ratio:,.0f} times" if ratio >= 2 else f"{ratio:.1f} times"


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


def curve_verdict(points: Sequence, reference, metric: str, test_size: int | None = None) -> str:
    """The learning curve in words: from how many examples the fine-tune beats `reference`,
    each point with its 95% interval, and whether the intervals are apart.

    `test_size`: the whole test split, when the curve was scored on fewer of its examples
    (the sentence then says how much wider that makes each interval).
    """
    n = len(reference.predictions)
    bar, (low, high) = 100 * reference.scores[metric], reference.intervals[metric]
    above = [p.examples for p in points if 100 * p.score > bar]
    clear = [p.examples for p in points if p.interval[0] > high]
    if clear:
        where = f"beats it from **{clear[0]} training examples** on, intervals apart"
        if above[0] < clear[0]:
            where += f" (from {above[0]} it scores higher, but within the intervals)"
    elif above:
        where = (f"scores higher from {above[0]} training examples on, but within the "
                 "intervals: these test examples cannot tell them apart")  # fmt: skip
    else:
        where = "does not beat it at any of these sizes"
    scores = ", ".join(
        f"{p.examples}: {100 * p.score:.1f} [{100 * p.interval[0]:.0f}, {100 * p.interval[1]:.0f}]"
        for p in points
    )
    fewer = ""
    if test_size and test_size > n:
        wider = (test_size / n) ** 0.5  # an interval's width goes with 1 / sqrt(examples)
        fewer = (f" (of the {test_size} in the test split: scoring a point on them takes "
                 f"{n / test_size:.0%} of the time, and its interval is about {wider:.1f}x as "
                 "wide as on all of them)")  # fmt: skip
    return (f"On these {n} test examples{fewer} the best prompting approach scores {bar:.1f} "
            f"[{100 * low:.0f}, {100 * high:.0f}] on `{metric}`. The fine-tune {where}; "
            f"scores per size, with 95% intervals: {scores}.")  # fmt: skip


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
