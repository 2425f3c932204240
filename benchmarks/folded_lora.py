"""A fine-tune answering test tickets: peft's LoRA layers against the same layers folded into
their weights while generating (`ftkit.fast.folded_lora`).

    .venv/bin/python benchmarks/folded_lora.py
    .venv/bin/python benchmarks/folded_lora.py --tickets 80 40 --rounds 3

The run is a QLoRA run like notebook 05's "good" one when this was measured (96 training
tickets, lr 3e-3, one epoch; 05's is now 64 tickets at 2e-3; trained once into the system's
temporary folder, reused after), answering notebook 05's test tickets with
`evaluate_approach` as the notebooks do (batches of 32, the task's answer budget,
`fast_generation` on). Both sides run in this one process, alternating per round; the median
is reported. Also reports whether the replies and scores are the same. Only where ftkit
computes in fp32 (a CPU without AVX512-BF16) is anything folded: elsewhere both sides are
the same code. Writes benchmarks/results/folded_lora.json and prints a Markdown table for
RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", nargs="+", type=int, default=[80, 40])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "folded_lora.json"))
    args = parser.parse_args(argv)

    import ftkit.fast
    from ftkit.config import TrainConfig
    from ftkit.curve import subsample
    from ftkit.evaluation import Approach, evaluate_approach
    from ftkit.hardware import choose_precision, cpu_has_bf16, cpu_name, detect_hardware
    from ftkit.task_data import load_task_data
    from ftkit.training import train

    data = load_task_data("support_tickets")
    task = data.task
    recipe = TrainConfig(
        method="qlora", lr=3e-3, num_epochs=1, batch_size=8, eval_steps=None, save_steps=100,
        runs_dir=str(Path(tempfile.gettempdir()) / "ftkit-bench-folded-lora"), run_name="good",
    )  # fmt: skip
    small = subsample(data.train, 96, seed=0, task=task)
    validation = subsample(data.validation, 40, seed=0, task=task)
    run = train(replace(recipe), small, validation, reuse=True)
    model, tokenizer = run.model, run.tokenizer
    approach = Approach("fine-tuned", model="finetuned")
    folded = ftkit.fast.folded_lora
    sides = {"peft's layers": lambda model: contextlib.nullcontext(0), "folded": folded}
    rows = []
    for n in args.tickets:
        test = subsample(data.test, n, seed=0, task=task)
        seconds: dict[str, list[float]] = {side: [] for side in sides}
        answers: dict[str, list[str]] = {}
        scores: dict[str, float] = {}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for side in order:
                ftkit.fast.folded_lora = sides[side]
                result = evaluate_approach(model, tokenizer, test, approach, task,
                                           latency_sample=0)  # fmt: skip
                seconds[side].append(result.batch_seconds_per_request * n)
                answers[side] = [p.output for p in result.predictions]
                scores[side] = result.scores[task.primary]
        ftkit.fast.folded_lora = folded
        medians = {side: statistics.median(values) for side, values in seconds.items()}
        same = sum(a == b for a, b in zip(*answers.values(), strict=True))
        rows.append({"tickets": n, "seconds": seconds, "median": medians,
                     "same_replies": same, "scores": scores})  # fmt: skip
        print(f"{n} tickets: {medians} ({same}/{n} replies the same, scores {scores})",
              flush=True)  # fmt: skip

    precision = choose_precision(detect_hardware()).name
    cpu = f"{cpu_name()} ({'with' if cpu_has_bf16() else 'without'} native bf16)"
    Path(args.out).write_text(
        json.dumps(
            {"cpu": cpu, "precision": precision, "rounds": args.rounds, "rows": rows}, indent=1
        )
    )
    print(f"\n{cpu}, {precision}, medians of {args.rounds} rounds:\n")
    print("| test tickets | peft's LoRA layers | folded | speed-up | replies the same |")
    print("|---|---|---|---|---|")
    for row in rows:
        before, after = row["median"]["peft's layers"], row["median"]["folded"]
        print(f"| {row['tickets']} | {before:.1f} s | {after:.1f} s | {before / after:.2f}x | "
              f"{row['same_replies']} of {row['tickets']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
