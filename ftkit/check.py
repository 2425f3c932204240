"""Exercise checks: call one with your answer and get a verdict plus a friendly hint.

Every notebook ends with exercises. A check never raises on a wrong answer: it
returns a `CheckResult` that shows as a green or amber box in a notebook (and
as one line in a terminal), saying what is right or giving a hint that points
at the section to re-read. The truth is computed with ftkit itself, so a check
stays right when the catalog or the estimator changes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch


@dataclass
class CheckResult:
    """The verdict on one exercise answer."""

    correct: bool  # True when the answer is right
    message: str  # praise with the reason, or a hint towards the answer

    def __bool__(self) -> bool:
        return self.correct

    def __repr__(self) -> str:
        return f"{'Correct' if self.correct else 'Not yet'}: {self.message}"

    def _repr_html_(self) -> str:
        colour, title = ("#e6f4ea", "Correct") if self.correct else ("#fff4e5", "Not yet")
        return (
            f'<div style="background:{colour};padding:8px 12px;border-radius:6px">'
            f"<b>{title}.</b> {html.escape(self.message)}</div>"
        )


# --- notebooks/01_choosing_a_base_model.ipynb ----------------------------------------

_DTYPE_NAMES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


NOT_ANSWERED = CheckResult(False, "Replace None with your answer, then run the cell again.")


def t4_dtype(answer) -> CheckResult:
    """Exercise 01.1: which dtype should training use on a T4 (compute capability 7.5)?

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    from ftkit.hardware import cuda_has_bf16

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
    """Exercise 01.2: the largest batch size at which QLoRA of `model` still "fits" `gpu`.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    from ftkit.memory import estimate_memory, fit_verdict

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
    """Exercise 01.3: label each scenario "fine-tune", "prompt" or "retrieval".

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
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


# --- notebooks/02_formatting_examples.ipynb ------------------------------------------

ALPACA_RECORD = {
    "instruction": "Triage this support ticket.",
    "input": "Quillo Notes deleted half my notebooks overnight!",
    "output": '{"category": "bug", "priority": "urgent", "product": "notes", '
    '"summary": "Notes lost half the notebooks overnight"}',
}


def alpaca_to_chat(answer) -> CheckResult:
    """Exercise 02.1: write `ALPACA_RECORD` in the canonical chat form, as a list of messages.

    Taught in notebooks/02_formatting_examples.ipynb.
    """
    from ftkit.shapes import parse_record

    if answer is None:
        return NOT_ANSWERED
    truth, _ = parse_record(ALPACA_RECORD, "alpaca")
    if answer == truth:
        return CheckResult(
            True,
            "Instruction and input join into the user turn; the output "
            "is the assistant turn. Every shape ends up like this.",
        )
    if not isinstance(answer, list) or not all(isinstance(m, dict) for m in answer):
        return CheckResult(False, 'A list of dicts: [{"role": "user", "content": ...}, ...].')
    roles = [m.get("role") for m in answer]
    if roles != [m["role"] for m in truth]:
        return CheckResult(
            False,
            f"Roles {roles}: a single exchange is a user turn then an assistant turn (section 1).",
        )
    return CheckResult(
        False,
        "Right roles; compare the contents with what load_examples "
        "makes of an Alpaca file (instruction, blank line, input).",
    )


def trained_token_count(answer, example, tokenizer) -> CheckResult:
    """Exercise 02.2: how many tokens of `example` train (labels not -100)?

    Taught in notebooks/02_formatting_examples.ipynb.
    """
    from ftkit.formatting import IGNORE_INDEX, tokenize_example

    if answer is None:
        return NOT_ANSWERED
    tokenized = tokenize_example(example, tokenizer)
    truth = sum(label != IGNORE_INDEX for label in tokenized.labels)
    if answer == truth:
        return CheckResult(
            True,
            f"{truth} of {len(tokenized.input_ids)} tokens train: the "
            "assistant's reply and the end-of-turn tokens after it.",
        )
    if answer == len(tokenized.input_ids):
        return CheckResult(False, "That is every token. Which ones have a label (section 5)?")
    hint = "fewer" if answer > truth else "more"
    return CheckResult(
        False,
        f"Not {answer}: count {hint}. Did you include the end-of-turn "
        "token that closes the reply? (section 5)",
    )


def end_of_turn_token(answer, tokenizer) -> CheckResult:
    """Exercise 02.3: which token closes every assistant reply (and must be trained)?

    Taught in notebooks/02_formatting_examples.ipynb.
    """
    if answer is None:
        return NOT_ANSWERED
    if str(answer).strip() == tokenizer.eos_token:
        return CheckResult(
            True,
            f"{tokenizer.eos_token}: if it never trains, the model never "
            "learns to stop and rambles past its answer.",
        )
    if str(answer).strip() == tokenizer.pad_token:
        return CheckResult(
            False,
            "Here the pad token is the same string as the end-of-turn "
            "token: which role does it play at the end of a reply?",
        )
    return CheckResult(
        False, "Look at the highlighted tokens at the end of a reply in the preview (section 5)."
    )
