"""Checks for the exercises of notebooks/02_formatting_examples.ipynb."""

from __future__ import annotations

from ftkit.course.check.core import NOT_ANSWERED, CheckResult
from ftkit.formatting import IGNORE_INDEX, tokenize_example
from ftkit.shapes import parse_record

ALPACA_RECORD = {
    "instruction": "Triage this support ticket.",
    "input": "Quillo Notes deleted half my notebooks overnight!",
    "output": '{"category": "bug", "priority": "urgent", "product": "notes", '
    '"summary": "Notes lost half the notebooks overnight"}',
}


def alpaca_to_chat(answer) -> CheckResult:
    """Exercise 02.1: write `ALPACA_RECORD` in the canonical chat form, as a list of messages."""

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
    """Exercise 02.2: how many tokens of `example` train (labels not -100)?"""

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
    """Exercise 02.3: which token closes every assistant reply (and must be trained)?"""
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
