"""Exercise checks: right answers pass, wrong ones get a hint that points somewhere useful."""

from __future__ import annotations

import pytest
import torch

from ftkit.course import check
from ftkit.memory import estimate_memory, fit_verdict


@pytest.mark.parametrize(
    "checker", [check.t4_dtype, check.largest_qlora_batch, check.when_to_finetune]
)
def test_unanswered_asks_for_an_answer(checker):
    result = checker(None)
    assert not result and "Replace None" in result.message


@pytest.mark.parametrize("answer", [torch.float16, "fp16", "torch.float16", "float16"])
def test_t4_dtype_right(answer):
    assert check.t4_dtype(answer)


@pytest.mark.parametrize("answer, hint", [(torch.bfloat16, "emulation"), ("fp32", "doubles")])
def test_t4_dtype_wrong(answer, hint):
    result = check.t4_dtype(answer)
    assert not result and hint in result.message


def test_largest_batch_against_the_estimator():
    def fits(batch_size: int) -> bool:
        estimate = estimate_memory(
            "llama-3.2-3b-instruct",
            method="qlora",
            batch_size=batch_size,
            max_length=1024,
            precision="fp16",
        )
        return fit_verdict(estimate, "t4-16gb") == "fits"

    truth = max(b for b in range(1, 65) if fits(b))
    assert check.largest_qlora_batch(truth)
    assert "still fits" in check.largest_qlora_batch(truth - 1).message
    assert "verdict" in check.largest_qlora_batch(truth + 1).message
    assert "whole number" in check.largest_qlora_batch(2.5).message


def test_scenarios():
    right = {
        "prices": "retrieval",
        "schema": "fine-tune",
        "demo": "prompt",
        "tone": "fine-tune",
        "orders": "retrieval",
        "oneoff": "prompt",
    }
    assert check.when_to_finetune(right)
    assert check.when_to_finetune(right | {"schema": "finetune"})  # spelling forgiven
    wrong = check.when_to_finetune(right | {"prices": "fine-tune"})
    assert not wrong and "1 of 6" in wrong.message and "prices" in wrong.message
    assert "missing: tone" in check.when_to_finetune(right | {"tone": None}).message


def test_result_renders_in_a_notebook():
    assert "Correct" in check.t4_dtype("fp16")._repr_html_()
    assert "Not yet" in check.t4_dtype("bf16")._repr_html_()
