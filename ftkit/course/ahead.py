"""Runs trained ahead: a notebook's training done on a lane the series would leave idle.

`make main` runs two notebooks at a time (`ftkit.course.lanes.run_in_lanes`). Notebook 04
reads notebook 03's fine-tune, so 03 then 04 is a chain that runs on, alone, for minutes
after the other lane has run out of notebooks. Near the end of that chain notebook 04
trains the runs of its learning curve (section 9), which need nothing of 03 but its recipe.
`train_curve_ahead` trains them in a process of its own on the other lane, once 05 has
ended (before 06, which nothing waits for; `run_in_lanes`), with the same
recipe and subsets as the notebook (`ftkit.curve.curve_recipe`, `curve_run`), and
answers the curve's test examples with each (`ftkit.curve.evaluate_run`, kept in the
run's folder), so that 04 reads runs and answers back (`ftkit.reuse`) instead of training
and generating them. A run that 04 starts first is left to it (`ftkit.locks.run_busy`), and
one that 04 reaches while this trains or answers with it is waited for there
(`ftkit.locks.run_lock`, and the lock beside its answers): never done twice side by side.

    python -m ftkit.course.ahead curve --dataset support_tickets --runs-dir build/runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ftkit import locks, progress, runs
from ftkit.curve import (
    CURVE_APPROACH,
    curve_recipe,
    curve_run,
    curve_sizes,
    curve_tests,
    evaluate_run,
)
from ftkit.task_data import load_task_data
from ftkit.training import train


@dataclass
class AheadJob:
    """Training that notebook `target` would do, which may run on a free lane while `target`
    runs, once the notebooks `after` (those of the series being run) have ended."""

    name: str  # what it trains, for the progress lines: "04 ahead · learning curve"
    target: str  # the notebook (two-digit prefix) whose work it does
    after: tuple[str, ...]  # notebooks it needs ended (it reads or shares their runs)
    command: list[str]  # the process that trains (`python -m ftkit.course.ahead ...`)
    log_file: Path  # where that process's own output goes
    started: float = 0.0  # time.time() at start and end, for the series' summary
    ended: float = 0.0
    returncode: int | None = None  # its process's exit status once it ended

    @property
    def title(self) -> str:
        """What the summary tables call it: "04 ahead: the learning curve's runs"."""
        return f"{self.target} ahead: the {self.name}'s runs"

    @property
    def seconds(self) -> float:
        """How long it ran (0 until it ended)."""
        return self.ended - self.started if self.ended else 0.0


def curve_job(parameters: Mapping, runs_dir: str | os.PathLike, log_dir: str | os.PathLike,
              ) -> AheadJob:  # fmt: skip
    """The job that trains notebook 04's learning-curve runs ahead, with the notebook's own
    parameters (`DATASET`: its default, or what the runner injects). It reads notebook 03's
    finished run and may share notebook 05's (the curve's smallest point), so it starts after
    both."""
    dataset = str(parameters.get("DATASET", "support_tickets"))
    command = [sys.executable, "-m", "ftkit.course.ahead", "curve", "--dataset", dataset,
               "--runs-dir", str(Path(runs_dir).resolve())]  # fmt: skip
    return AheadJob("learning curve", "04", ("03", "05"), command,
                    Path(log_dir).resolve() / "04-ahead.log")  # fmt: skip


def train_curve_ahead(dataset: str, runs_dir: str | os.PathLike, seed: int = 0,
                      say: Callable[[str], object] = print) -> list[Path]:  # fmt: skip
    """Train the runs of notebook 04's learning curve on `dataset` (a shipped name or a
    folder of checked splits) into `runs_dir`, with the recipe of notebook 03's finished run
    `<dataset>-qlora` there, and answer the curve's test examples (`curve_tests`) with each;
    returns their folders. Every point but the whole training split (that is 03's run
    itself), the largest first; a run already trained is reused (`train(reuse=True)`), and
    answers kept already are not generated again (`evaluate_run`). Once notebook 04 holds
    one of them (`ftkit.locks.run_busy`), it is at its curve and trains what is left itself:
    nothing more is started here."""
    data = load_task_data(dataset)
    source = Path(runs_dir) / f"{data.name}-qlora"
    saved = runs.read_run(source) if (source / "config.json").is_file() else None
    if saved is None or saved.result.get("status") not in runs.FINISHED:
        say(f"no finished run at {source} (notebook 03's fine-tune): nothing to train ahead")
        return []
    recipe = curve_recipe(saved.config, f"{data.name}-curve", runs_dir)
    # the largest first (the longest to train); the whole split is notebook 03's run
    sizes = sorted((s for s in curve_sizes(len(data.train)) if s < len(data.train)), reverse=True)
    points = [curve_run(recipe, data.train, size, data.task, seed) for size in sizes]
    tests = curve_tests(data.test, data.task)
    if any(locks.run_busy(config) for config, _ in points):
        say("notebook 04 is at its learning curve already: nothing to train ahead")
        return []
    trained = []
    for config, subset in points:
        if locks.run_busy(config):
            say(f"{config.run_name}: notebook 04 is training it; it trains what is left itself")
            break
        progress.stop_if_requested(f"training {config.run_name}")
        started = time.perf_counter()
        result = train(config, subset, reuse=True)
        took = progress.duration(time.perf_counter() - started)
        say(f"{config.run_name}: {'read back' if result.reused else 'trained'} in {took}")
        started = time.perf_counter()
        evaluate_run(result, tests, CURVE_APPROACH, data.task)  # kept for 04 to read back
        took = progress.duration(time.perf_counter() - started)
        say(f"{config.run_name}: answered the curve's {len(tests)} test examples in {took}")
        trained.append(Path(result.run_dir))
        del result
    return trained


def run_job(job: AheadJob, env: Mapping[str, str], cwd: str | os.PathLike) -> int:
    """Run `job.command` to its end in a session of its own (a Ctrl-C reaches the runner,
    whose stop file then stops the job where nothing is lost), its output in `job.log_file`
    (without tqdm's progress bars, which a file would keep as lines of carriage returns: the
    job's progress reaches the terminal as ftkit's own lines); returns its exit status."""
    job.log_file.parent.mkdir(parents=True, exist_ok=True)
    job.started = time.time()
    with job.log_file.open("w", encoding="utf-8") as output:
        done = subprocess.run(
            job.command, env=dict(env) | {"TQDM_DISABLE": "1"}, cwd=cwd, stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True, check=False,
        )  # fmt: skip
    job.ended, job.returncode = time.time(), done.returncode
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftkit.course.ahead", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("what", choices=["curve"], help="what to train ahead")
    parser.add_argument("--dataset", default="support_tickets",
                        help="a shipped dataset, or a folder of checked splits")  # fmt: skip
    parser.add_argument("--runs-dir", default="runs", help="the runs folder of the series")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"[ftkit] {line}", flush=True)
        progress.note(line)

    try:
        train_curve_ahead(args.dataset, args.runs_dir, say=say)
    except KeyboardInterrupt as stopped:  # the runner's stop file, or a Ctrl-C of its own
        print(f"[ftkit] stopped: {stopped}", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
