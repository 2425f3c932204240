"""Checks for the exercises of notebooks/05_iterate.ipynb.

Each exercise asks for a retrained run, not a typed number: the check reads the run folder
the learner produced (config.json, result.json, metrics.jsonl), confirms that it changed
exactly the one setting asked for against the notebook's own run, on the same data, and
says what the change did, from both runs' numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ftkit.course.check.core import CheckResult
from ftkit.runs import FINISHED, Run, RunError, read_run

# Fields that name or place a run, not what it learns: never counted as the change.
NOT_A_CHANGE = {"run_name", "runs_dir", "overwrite", "report_to"}


def _changes(run: Run, reference: Run) -> dict[str, tuple]:
    """Config fields that differ: name -> (reference value, run value)."""
    mine, theirs = asdict(run.config), asdict(reference.config)
    return {
        name: (theirs[name], value)
        for name, value in mine.items()
        if name not in NOT_A_CHANGE and theirs.get(name) != value
    }


def _same_data(run: Run, reference: Run) -> bool:
    """Both runs saw the same training and validation data: config.json's counts of examples,
    rows, tokens and trained tokens per split (not the file names: `train_apart` hands each
    run its examples in a temporary file)."""
    seen = []
    for r in (run, reference):
        data = json.loads((r.path / "config.json").read_text())["data"]
        seen.append({split: {k: v for k, v in (summary or {}).items() if k != "sources"}
                     for split, summary in data.items()})  # fmt: skip
    return seen[0] == seen[1]


def _read(run_name, runs_dir, reference: str) -> tuple[Run, Run] | CheckResult:
    """Both runs read back, or the verdict saying what is missing."""
    if run_name is None:
        return CheckResult(False, "Train the run the exercise asks for, then pass its name.")
    try:
        run = read_run(Path(runs_dir) / str(run_name))
    except RunError:
        return CheckResult(False, f"No run {run_name!r} in {runs_dir}: train it first (the "
                           "exercise's cell calls train with that run_name).")  # fmt: skip
    if run.result.get("status") not in FINISHED:
        status = run.result.get("status", "no result.json")
        return CheckResult(False, f"{run_name} has not finished ({status}): run the training "
                           "cell to the end.")  # fmt: skip
    try:
        return run, read_run(Path(runs_dir) / reference)
    except RunError:
        return CheckResult(False, f"The notebook's own run {reference!r} is missing: run the "
                           "notebook's sections above first.")  # fmt: skip


def _one_change(run: Run, reference: Run, allowed: set[str]) -> CheckResult | None:
    """None when the run changed only `allowed` fields on the same data; else the hint."""
    changes = _changes(run, reference)
    if not _same_data(run, reference):
        return CheckResult(False, f"{run.name} trained on other data than {reference.name}: "
                           "use the same examples, so that only the setting differs.")  # fmt: skip
    if not changes:
        return CheckResult(False, f"{run.name} has the same settings as {reference.name}: "
                           f"change {' and '.join(sorted(allowed))}.")  # fmt: skip
    extra = sorted(set(changes) - allowed)
    if extra:
        shown = ", ".join(f"{n}: {changes[n][0]!r} -> {changes[n][1]!r}" for n in extra)
        return CheckResult(False, f"Change one thing at a time: {run.name} also changed {shown}.")
    return None


def _retrained(
    run_name, runs_dir, reference: str, allowed: set[str]
) -> tuple[Run, Run] | CheckResult:
    """The learner's run and the notebook's, or the verdict on what is missing or wrong."""
    read = _read(run_name, runs_dir, reference)
    if isinstance(read, CheckResult):
        return read
    hint = _one_change(*read, allowed)
    return read if hint is None else hint


def warmup_rescue(run_name, runs_dir, reference: str, good: str) -> CheckResult:
    """Exercise 05.1: the too-high learning rate again, with a longer warm-up only."""
    read = _retrained(run_name, runs_dir, reference, {"warmup_ratio"})
    if isinstance(read, CheckResult):
        return read
    run, too_high = read
    if run.config.warmup_ratio <= too_high.config.warmup_ratio:
        return CheckResult(False, "Make the warm-up longer than the original "
                           f"{too_high.config.warmup_ratio}, e.g. 0.5.")  # fmt: skip
    loss, before = run.result["val_loss"], too_high.result["val_loss"]
    best = read_run(Path(runs_dir) / good).result["val_loss"]
    if loss < before:
        said = (f"the warm-up helped: validation loss {loss:.3f} against {before:.3f} without "
                f"it (the good learning rate reached {best:.3f})")  # fmt: skip
    else:
        said = (f"the warm-up did not help: validation loss {loss:.3f} against {before:.3f} "
                "without it. Too high is too high; warm-up only eases the first steps")  # fmt: skip
    return CheckResult(True, f"{run.name} changed warmup_ratio only, to "
                       f"{run.config.warmup_ratio}; {said}.")  # fmt: skip


def patience(run_name, runs_dir, reference: str) -> CheckResult:
    """Exercise 05.2: the tiny-subset run again with a different early-stopping patience."""
    read = _retrained(run_name, runs_dir, reference, {"early_stopping_patience"})
    if isinstance(read, CheckResult):
        return read
    run, original = read
    if not run.config.early_stopping_patience:
        return CheckResult(False, "Keep early stopping on: set early_stopping_patience to a "
                           "number of evaluations, e.g. 1.")  # fmt: skip
    mine, theirs = run.result, original.result
    return CheckResult(
        True,
        f"patience {run.config.early_stopping_patience} (was "
        f"{original.config.early_stopping_patience}): {mine['status']} after {mine['steps']} "
        f"steps (was {theirs['steps']}), keeping step {mine['best_step']} at validation loss "
        f"{mine['val_loss']:.3f} (was step {theirs['best_step']}, {theirs['val_loss']:.3f}). "
        + (
            "Less patience stopped sooner: cheaper, at the risk of stopping on a noisy bump."
            if mine["steps"] < theirs["steps"]
            else "It trained as long: the best point came late enough either way."
        ),
    )


def lora_rank(run_name, runs_dir, reference: str) -> CheckResult:
    """Exercise 05.3: the same run at another LoRA rank, alpha scaled to keep alpha / r."""
    read = _retrained(run_name, runs_dir, reference, {"lora_r", "lora_alpha"})
    if isinstance(read, CheckResult):
        return read
    run, original = read
    mine, theirs = run.config, original.config
    if mine.lora_r == theirs.lora_r:
        return CheckResult(False, f"Change lora_r (it is still {mine.lora_r}).")
    if mine.lora_alpha / mine.lora_r != theirs.lora_alpha / theirs.lora_r:
        return CheckResult(
            False,
            f"Keep the scale alpha / r = {theirs.lora_alpha / theirs.lora_r:g}, or the change "
            f"is two things (rank and step size): lora_alpha={int(mine.lora_r * theirs.lora_alpha / theirs.lora_r)}.",  # noqa: E501
        )
    params = run.result["trainable_params"], original.result["trainable_params"]
    losses = run.result["val_loss"], original.result["val_loss"]
    return CheckResult(
        True,
        f"rank {mine.lora_r} trains {params[0]:,} parameters against {params[1]:,} at rank "
        f"{theirs.lora_r} ({params[0] / params[1]:.2f}x); validation loss {losses[0]:.3f} "
        f"against {losses[1]:.3f}. "
        + (
            "Fewer parameters did as well here: for one narrow task a small rank is enough."
            if losses[0] <= losses[1] + 0.02
            else "The smaller rank lost some fit: this task used the extra capacity."
        ),
    )
