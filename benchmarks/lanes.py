"""Two notebooks side by side on one core each, against one after the other on every core.

The reason `ftkit run` (the README's `make main`) runs the series in two lanes on a CPU: the
same job, a notebook's kind of work (a short QLoRA run, then the fine-tune's answers to test
tickets), is run three ways, each in fresh processes:

- `alone, all cores`: one job, torch's default threads (every core);
- `alone, one core`: one job, `OMP_NUM_THREADS=1`;
- `two side by side, one core each`: two jobs at once, each `OMP_NUM_THREADS=1`.

Then "one after the other on all cores" is twice the first, and the ratio of that to the
third is the work two lanes get done in the same time.

    .venv/bin/python benchmarks/lanes.py --out benchmarks/results/lanes.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

JOB = """
import json, sys, tempfile, time
from ftkit.config import TrainConfig
from ftkit.evaluation import Approach, evaluate_approach
from ftkit.task_data import load_task_data
from ftkit.training import train

data = load_task_data("support_tickets")
steps, tickets = int(sys.argv[1]), int(sys.argv[2])
started = time.perf_counter()
with tempfile.TemporaryDirectory() as runs:
    config = TrainConfig(model="smollm2-135m-instruct", method="qlora", lr=1e-3, batch_size=8,
                         max_steps=steps, eval_steps=None, save_steps=10_000, runs_dir=runs,
                         run_name="lanes", overwrite=True)
    result = train(config, data.train[: 8 * steps])
    trained = time.perf_counter()
    evaluate_approach(result.model, result.tokenizer, data.test[:tickets],
                      Approach("fine-tuned", model="finetuned"), data.task, latency_sample=0)
import torch
print(json.dumps({"threads": torch.get_num_threads(), "tokens_per_second": result.tokens_per_second,
                  "train_s": trained - started, "eval_s": time.perf_counter() - trained,
                  "job_s": time.perf_counter() - started}))
"""


def _jobs(count: int, threads: int | None, steps: int, tickets: int) -> dict:
    """`count` jobs started together, each capped at `threads` (None: no cap); their
    results and the wall clock from the first start to the last end."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    processes = [
        subprocess.Popen([sys.executable, "-c", JOB, str(steps), str(tickets)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(count)
    ]  # fmt: skip
    outputs = [process.communicate()[0] for process in processes]
    wall = time.perf_counter() - started
    if any(process.returncode for process in processes):
        raise SystemExit(f"a job failed: {outputs}")
    return {"jobs": [json.loads(out.strip().splitlines()[-1]) for out in outputs], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="QLoRA steps of 8 tickets per job")
    parser.add_argument("--tickets", type=int, default=64, help="test tickets answered per job")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    runs = {
        "alone, all cores": _jobs(1, None, args.steps, args.tickets),
        "alone, one core": _jobs(1, 1, args.steps, args.tickets),
        "two side by side, one core each": _jobs(2, 1, args.steps, args.tickets),
    }
    print(f"{cores} cores; each job: {args.steps} QLoRA steps of 8 tickets, then the "
          f"fine-tune's answers to {args.tickets} test tickets")  # fmt: skip
    print(f"{'arrangement':<34} {'threads':>7} {'tokens/s':>9} {'train s':>8} {'eval s':>7} "
          f"{'wall s':>7}")  # fmt: skip
    for name, run in runs.items():
        for job in run["jobs"]:
            speed = f"{job['tokens_per_second']:>9.0f}"
            print(f"{name:<34} {job['threads']:>7} {speed} {job['train_s']:>8.1f} "
                  f"{job['eval_s']:>7.1f} {run['wall_s']:>7.1f}")  # fmt: skip
    sequential = 2 * runs["alone, all cores"]["wall_s"]
    side_by_side = runs["two side by side, one core each"]["wall_s"]
    one = runs["alone, one core"]["jobs"][0]["job_s"] / runs["alone, all cores"]["jobs"][0]["job_s"]
    print(f"one core against all: {1 / one:.2f}x the speed; two jobs one after the other on all "
          f"cores {sequential:.0f} s, side by side on one core each {side_by_side:.0f} s: "
          f"{sequential / side_by_side:.2f}x the work in the same time")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results = {"cores": cores, "steps": args.steps, "tickets": args.tickets, "runs": runs}
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
