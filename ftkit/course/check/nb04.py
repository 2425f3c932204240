"""Checks for the exercises of notebooks/04_prompt_vs_finetune.ipynb."""

from __future__ import annotations

from ftkit.course.check.core import NOT_ANSWERED, CheckResult
from ftkit.metrics import load_metric

# Exercise 04.2: a tiny label set to score by hand.
F1_REFERENCES = ["bug", "bug", "billing", "how_to"]
F1_PREDICTIONS = ["bug", "billing", "billing", "bug"]


def _number(answer) -> float | None:
    try:
        return float(answer)
    except (TypeError, ValueError):
        return None


def prompt_token_savings(answer, comparison) -> CheckResult:
    """Exercise 04.1: prompt tokens per request the fine-tune saves over the few-shot prompt."""
    if answer is None:
        return NOT_ANSWERED
    few_shot = comparison.few_shot
    if few_shot is None:
        return CheckResult(False, "This comparison has no few-shot approach to compare with.")
    tuned = next(r for r in comparison.results.values() if r.name == "fine-tuned")
    truth = few_shot.prompt_tokens - tuned.prompt_tokens
    value = _number(answer)
    if value is not None and abs(value - truth) <= max(1.0, 0.01 * truth):
        ratio = few_shot.prompt_tokens / tuned.prompt_tokens
        return CheckResult(
            True,
            f"{truth:.0f} tokens per request: the few-shot prompt is {ratio:.0f}x longer. On a "
            "paid API you pay for every one of them, on every request; and they cost latency.",
        )
    if value is not None and abs(value + truth) <= max(1.0, 0.01 * truth):
        return CheckResult(False, "Right size, wrong sign: few-shot minus fine-tuned.")
    return CheckResult(
        False,
        f"Take `prompt_tokens` of '{few_shot.name}' and of 'fine-tuned' from the comparison "
        "(section 4's table has both) and subtract.",
    )


def macro_f1_by_hand(answer) -> CheckResult:
    """Exercise 04.2: macro-F1 of F1_PREDICTIONS against F1_REFERENCES, computed by hand.

    The truth comes from ftkit's shipped `macro_f1` metric.
    """

    if answer is None:
        return NOT_ANSWERED
    truth = load_metric("macro_f1").compute(
        predictions=F1_PREDICTIONS, references=F1_REFERENCES, n_resamples=0
    )["macro_f1"]
    value = _number(answer)
    if value is not None and value > 1:
        value /= 100  # answered in points
    if value is not None and abs(value - truth) <= 0.005:
        return CheckResult(
            True,
            f"{truth:.3f}: bug has F1 0.5 (1 of 2 right, 1 of 2 'bug' answers right), billing "
            "0.667 (precision 1/2, recall 1/1), how_to 0 (never answered): the mean of the "
            "three. Accuracy would say 0.5 and hide that how_to is never found.",
        )
    accuracy = sum(p == r for p, r in zip(F1_PREDICTIONS, F1_REFERENCES, strict=True)) / 4
    if value is not None and abs(value - accuracy) <= 0.005:
        return CheckResult(False, "That is accuracy. Macro-F1: an F1 per reference label, "
                                  "then their plain mean.")  # fmt: skip
    return CheckResult(
        False,
        "Per label: precision = right answers of that label / answers of that label, recall = "
        "right answers of that label / references of that label, F1 = 2PR/(P+R) (0 when "
        "both are 0). Macro-F1 is the mean over the labels of the references (section 5).",
    )


def finetune_margin(answer, comparison) -> CheckResult:
    """Exercise 04.3: points by which the best fine-tune beats the best prompting approach."""
    if answer is None:
        return NOT_ANSWERED
    truth = 100 * comparison.margin
    value = _number(answer)
    if value is not None and abs(value - truth) <= 0.5:
        best = comparison.best_prompting
        return CheckResult(
            True,
            f"{truth:.1f} points on {comparison.primary}, against '{best.name}', the best "
            "prompting approach. Check the intervals too: do they overlap?",
        )
    if value is not None and abs(100 * value - truth) <= 0.5:
        return CheckResult(False, "Right, but as a share: give it in points (x100).")
    return CheckResult(
        False,
        f"Find the highest {comparison.primary} among the fine-tuned approaches and among the "
        "base-model ones (comparison.best_finetuned, comparison.best_prompting) and subtract, "
        "in points.",
    )
