"""Checks for the exercises of notebooks/01_choosing_a_base_model.ipynb."""

from __future__ import annotations

import torch

from ftkit.course.check.core import NOT_ANSWERED, CheckResult
from ftkit.hardware import cuda_has_bf16
from ftkit.memory import estimate_memory, fit_verdict

_DTYPE_NAMES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def t4_dtype(answer) -> CheckResult:
    """Exercise 01.1: which dtype should training use on a T4 (compute capability 7.5)?"""

    if answer is None:
        return NOT_ANSWERED
    dtype = _DTYPE_NAMES.get(str(answer).lower().removeprefix("torch."), answer)
    truth = torch.bfloat16 if cuda_has_bf16((7, 5)) else torch.float16
    if dtype == truth:
        return CheckResult(
            True,
            "fp16 with loss scaling: a T4 (7.5) has fast fp16 tensor cores "
            "but no native bf16; torch only emulates bf16 there.",
        )
    if dtype == torch.bfloat16:
        return CheckResult(
            False,
            "torch.cuda.is_bf16_supported() says yes on a T4, but only "
            "through slow emulation. Look at the compute capability "
            "(section 2): native bf16 starts at 8.0.",
        )
    return CheckResult(
        False,
        "fp32 works but doubles memory and runs far slower; the T4 has "
        "a faster 16-bit format. Which one, given section 2?",
    )


def largest_qlora_batch(
    answer, model: str = "llama-3.2-3b-instruct", gpu: str = "t4-16gb", max_length: int = 1024
) -> CheckResult:
    """Exercise 01.2: the largest batch size at which QLoRA of `model` still "fits" `gpu`."""

    def verdict(batch_size: int) -> str:
        estimate = estimate_memory(
            model, method="qlora", batch_size=batch_size, max_length=max_length, precision="fp16"
        )
        return fit_verdict(estimate, gpu)

    if answer is None:
        return NOT_ANSWERED
    truth = max((b for b in range(1, 129) if verdict(b) == "fits"), default=0)
    if not isinstance(answer, int) or isinstance(answer, bool):
        return CheckResult(False, "Answer with a whole number (a batch size), e.g. 4.")
    if answer == truth:
        return CheckResult(
            True,
            f"batch {truth} fits; batch {truth + 1} would be "
            f"{verdict(truth + 1)!r}. Activations and logits grow "
            "with batch x length, the 4-bit weights do not.",
        )
    if answer > truth:
        return CheckResult(
            False,
            f"At batch {answer} the verdict is {verdict(answer)!r}. "
            "Loop over batch sizes and keep the last one that 'fits'.",
        )
    return CheckResult(False, f"Batch {answer + 1} still fits. Keep going up (section 4).")


SCENARIOS = {
    "prices": "Answer questions about this week's product prices, which change daily",
    "schema": "Always reply in our strict JSON schema with one of our 12 ticket labels",
    "demo": "Summarise one long email, once, for a demo tomorrow",
    "tone": "Reply to thousands of tickets in our support team's warm, concise tone",
    "orders": "Tell a customer the current status of their order",
    "oneoff": "Sort 50 tickets into three groups once, for a meeting",
}
_TRUTH = {
    "prices": "retrieval",
    "schema": "fine-tune",
    "demo": "prompt",
    "tone": "fine-tune",
    "orders": "retrieval",
    "oneoff": "prompt",
}
_WHY = {
    "prices": "facts that change daily belong in retrieval: weights freeze what they learnt",
    "schema": "a strict format and fixed labels, every time, is what fine-tuning does best",
    "demo": "a one-off task: a good prompt costs minutes, a fine-tune costs data and hours",
    "tone": "a consistent style over thousands of replies is a fine-tuning strength",
    "orders": "per-customer, current data must be looked up at answer time (retrieval/tools)",
    "oneoff": "50 items once: prompting an instruction-tuned model is enough",
}


def when_to_finetune(answers: dict[str, str]) -> CheckResult:
    """Exercise 01.3: label each scenario "fine-tune", "prompt" or "retrieval"."""
    if answers is None or all(value is None for value in answers.values()):
        return NOT_ANSWERED
    missing = sorted(key for key in _TRUTH if answers.get(key) is None)
    if missing:
        return CheckResult(False, f"Answer every scenario; missing: {', '.join(missing)}.")
    wrong = [
        key
        for key, truth in _TRUTH.items()
        if str(answers[key]).strip().lower().replace("finetune", "fine-tune") != truth
    ]
    if not wrong:
        return CheckResult(True, "All six right: " + "; ".join(_WHY.values()) + ".")
    first = wrong[0]
    return CheckResult(
        False,
        f"{len(wrong)} of {len(_TRUTH)} need another look. Hint for "
        f"{first!r}: think about whether {SCENARIOS[first].lower()!r} "
        "needs new behaviour, new facts, or neither (section 1).",
    )
