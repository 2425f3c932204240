"""Checks for the exercises of notebooks/03_qlora_training.ipynb."""

from __future__ import annotations

from ftkit.callbacks import read_metrics
from ftkit.catalog import get_model_info
from ftkit.course.check.core import NOT_ANSWERED, CheckResult
from ftkit.memory import NF4_BYTES_PER_PARAM


def lora_trainable_params(answer, lora_r: int = 8, model: str = "smollm2-135m-instruct"):
    """Exercise 03.1: how many parameters LoRA trains at rank `lora_r` on every linear layer."""

    if answer is None:
        return NOT_ANSWERED
    info = get_model_info(model)
    truth = info.lora_params(lora_r, "all-linear")
    if answer == truth:
        return CheckResult(
            True,
            f"{truth:,}: r x (d_in + d_out) per adapted layer, {len(info.lora_modules())} layers "
            f"per block, {info.num_layers} blocks; {truth / info.params:.1%} of the model.",
        )
    if isinstance(answer, int) and answer == 2 * truth:
        return CheckResult(False, "That is rank 16 (section 3). Halve the rank, not the layers.")
    return CheckResult(
        False,
        "Each adapted layer of shape d_in x d_out gets A (r x d_in) and B (d_out x r). Sum "
        "r x (d_in + d_out) over q, k, v, o, gate, up, down, times the number of blocks "
        "(model.config has them; section 3 counts r=16).",
    )


def nf4_bits_per_param(answer) -> CheckResult:
    """Exercise 03.2: bits per weight of NF4 with double quantisation (blocks of 64 and 256)."""

    if answer is None:
        return NOT_ANSWERED
    truth = 8 * NF4_BYTES_PER_PARAM
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return CheckResult(False, "Answer with a number of bits, e.g. 4.5.")
    if abs(value - truth) < 0.005:
        return CheckResult(
            True,
            f"{truth:.3f} bits: 4 for the code, 8/64 for each block's 8-bit absmax, and "
            "32/(64 x 256) for the fp32 constant shared by 256 absmax values.",
        )
    if abs(value - 4.5) < 0.01:
        return CheckResult(False, "4.5 is without double quantisation (a 32-bit absmax per 64).")
    return CheckResult(False, "Add 4 bits, the absmax's 8 bits shared by 64 weights, and one "
                       "32-bit constant shared by 64 x 256 weights (section 2).")  # fmt: skip


def best_checkpoint(answer, run_dir) -> CheckResult:
    """Exercise 03.3: the step with the lowest validation loss in your run's metrics.jsonl."""
    from pathlib import Path

    if answer is None:
        return NOT_ANSWERED
    evals = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["event"] == "eval"]
    if not evals:
        return CheckResult(False, "This run has no evaluations; train with validation examples.")
    best = min(evals, key=lambda r: r["val_loss"])
    if answer == best["step"]:
        return CheckResult(
            True,
            f"step {best['step']}, validation loss {best['val_loss']:.3f}: "
            "with early stopping, this is the adapter the run would keep.",
        )
    return CheckResult(False, "Read the 'eval' records of metrics.jsonl (section 6) and take "
                       "the step whose val_loss is smallest, not the last one.")  # fmt: skip
