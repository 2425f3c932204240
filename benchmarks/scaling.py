"""How a QLoRA training step's time and memory grow with sequence length and batch size.

    .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --lengths 128 512 2048 --batches 1 4

Each (length, batch) point is its own process (peak resident memory comes from the
operating system): the embedded model in NF4 with ftkit's LoRA adapters (r=16, all linear
layers), bf16 autocast where the CPU has it, a batch of random token ids whose second half
carries labels (as in completion-only training), one warm-up step and `--steps` timed ones
through ftkit's own loss (logits at labelled positions only). Points above `--max-tokens`
tokens per step are skipped (they take minutes each on a laptop CPU).

Also answers, from ftkit's memory estimator: the longest sequence that fits a 16 GB GPU
for a 1B and a 7B model with QLoRA, batch 1, with and without gradient checkpointing.
Writes benchmarks/results/scaling.json and prints Markdown tables for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LENGTHS = (128, 256, 512, 1024, 2048)
BATCHES = (1, 4, 8)
ESTIMATOR_MODELS = ("llama-3.2-1b-instruct", "qwen2.5-7b-instruct")


def worker(length: int, batch: int, steps: int) -> dict:
    """Time `steps` training steps at one shape in this process."""
    import torch
    from peft.helpers import disable_input_dtype_casting

    from ftkit.config import TrainConfig
    from ftkit.fast import speed_up_training
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.trainer import _KeepLabelledPositions, causal_lm_loss
    from ftkit.training import add_adapters, load_for_training

    config = TrainConfig(method="qlora")
    precision = choose_precision(detect_hardware())
    model, _ = load_for_training(config, precision)
    model = add_adapters(model, config)
    speed_up_training(model, config.lean_layers)
    hook = _KeepLabelledPositions()
    model.get_output_embeddings().register_forward_pre_hook(hook)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (batch, length), generator=generator)
    labels = ids.clone()
    labels[:, : length // 2] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    half = precision.dtype != torch.float32
    model.train()
    seconds = []
    for step in range(steps + 1):
        started = time.perf_counter()
        with (
            torch.autocast("cpu", dtype=precision.dtype, enabled=half),
            disable_input_dtype_casting(model, active=half),
        ):
            loss, count, _ = causal_lm_loss(model, inputs, True, hook)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up (allocations, kernel choice)
            seconds.append(time.perf_counter() - started)
    per_step = sum(seconds) / len(seconds)
    return {"length": length, "batch": batch, "seconds_per_step": per_step,
            "tokens_per_second": batch * length / per_step}  # fmt: skip


def run_point(length: int, batch: int, steps: int) -> dict:
    """One point in a fresh process; its peak RSS read from the OS."""
    command = [sys.executable, __file__, "--worker", f"{length},{batch},{steps}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"length {length}, batch {batch} failed")
    record = json.loads(output.strip().splitlines()[-1])
    record["peak_rss_gib"] = usage.ru_maxrss / 2**20
    return record


def longest_fitting(model: str, gpu_gib: float = 16.0, checkpointing: bool = True) -> int:
    """Longest max_length (multiple of 128) whose QLoRA estimate fits `gpu_gib` at batch 1."""
    from ftkit.memory import estimate_memory

    def fits(length: int) -> bool:
        estimate = estimate_memory(model, method="qlora", batch_size=1, max_length=length,
                                   gradient_checkpointing=checkpointing)  # fmt: skip
        return estimate.total <= gpu_gib

    if not fits(128):
        return 0
    low, high = 128, 128
    while fits(high) and high < 2**20:
        low, high = high, high * 2
    while high - low > 128:
        middle = (low + high) // 2 // 128 * 128
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def markdown(points: list[dict], fits: dict) -> str:
    """Tables: seconds per step, tokens/s and peak RSS per (length, batch); estimator fits."""
    batches = sorted({p["batch"] for p in points})
    lines = ["| tokens per sequence | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]  # fmt: skip
    for length in sorted({p["length"] for p in points}):
        cells = []
        for b in batches:
            p = next((p for p in points if p["length"] == length and p["batch"] == b), None)
            cells.append(
                f"{p['seconds_per_step']:.1f} s, {p['tokens_per_second']:.0f} tok/s, "
                f"{p['peak_rss_gib']:.2f} GiB"
                if p
                else "skipped"
            )
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    lines += ["", "| model (QLoRA, batch 1, 16 GB GPU) | longest sequence, checkpointing on | "
              "checkpointing off |", "|---|---|---|"]  # fmt: skip
    for model, (on, off) in fits.items():
        lines.append(f"| {model} | {on} | {off} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--steps", type=int, default=2, help="timed steps per point")
    parser.add_argument("--max-tokens", type=int, default=4096, help="skip bigger steps")
    parser.add_argument("--out", default=str(HERE / "results" / "scaling.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        length, batch, steps = (int(x) for x in args.worker.split(","))
        print(json.dumps(worker(length, batch, steps)), flush=True)
        return 0
    points = []
    for length in args.lengths:
        for batch in args.batches:
            if length * batch > args.max_tokens:
                continue
            print(f"[scaling] length {length}, batch {batch} ...", flush=True)
            points.append(run_point(length, batch, args.steps))
    fits = {m: (longest_fitting(m, checkpointing=True), longest_fitting(m, checkpointing=False))
            for m in ESTIMATOR_MODELS}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scaling.py " + " ".join(argv or sys.argv[1:])
    out.write_text(json.dumps({"command": command.strip(), "points": points, "fits": fits},
                              indent=2))  # fmt: skip
    print(markdown(points, fits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
