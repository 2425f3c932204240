"""Two notebooks at a time: the order the series' notebooks start in, and their CPU shares.

On a CPU the series runs in lanes: two notebooks at a time, each kernel given half the
cores (`series_lanes`). On the course's 2-core machines one thread per kernel does 0.6-0.75x
of two threads' work (training and batched generation alike), so two notebooks side by side
get 1.4-1.5x the work done in the same time (benchmarks/lanes.py). `run_in_lanes` decides
what starts when: a notebook that reads another's results waits for it
(`ftkit.course.notebooks.notebook_needs`), those others wait for go first, a job trained
ahead for a notebook (`ftkit.course.ahead`) takes a lane free while that notebook runs, and
one left running alone takes every core (its `threads()` share). Running a notebook is the
caller's (`ftkit.course.runner.run_notebook`); this module only schedules.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ftkit.catalog import EMBEDDED_MODEL
from ftkit.course.ahead import AheadJob
from ftkit.course.notebooks import NotebookRun, notebook_needs
from ftkit.hardware import HardwareInfo, detect_hardware

# Free memory a notebook of the series needs beside another one on a CPU, for
# `series_lanes`: two lanes of the series on the embedded model peaked at 7.7 GiB used on
# the whole machine (a fresh-clone `make main` on the 2-core AVX512-BF16 EPYC, 2026-12-06,
# notebook 05's full fine-tune beside notebook 04's evaluation).
LANE_MEMORY_GB = 4.0


def say(line: str) -> None:
    """Print a progress line at once (also when stdout is a pipe, as under `make`)."""
    print(line, flush=True)


class SeriesInterrupted(RuntimeError):
    """`run_series` was interrupted (Ctrl-C) and its notebooks stopped where nothing is lost:
    the message says which finished, which stopped where, which did not start, and how to go
    on."""


def series_lanes(hardware: HardwareInfo | None = None, model: str | None = None) -> int:
    """How many notebooks `run_series` runs at a time by default: 2 on a CPU with at least
    two cores and `LANE_MEMORY_GB` free per notebook, else 1 (on a GPU the device does the
    work, and two kernels would share its memory). Another `model` than the embedded one
    gets 1: `LANE_MEMORY_GB` was measured on the embedded model (`--lanes 2` overrides)."""
    hardware = hardware or detect_hardware()
    if hardware.device != "cpu" or hardware.cpu_cores < 2 or model not in (None, EMBEDDED_MODEL):
        return 1
    return 2 if hardware.ram_free_gb >= 2 * LANE_MEMORY_GB else 1


def run_in_lanes(
    notebooks: Sequence[Path],
    lanes: int,
    run_one: Callable[[Path, Callable[[], int]], NotebookRun],
    log: Callable[[str], None] = say,
    cores: int | None = None,
    on_interrupt: Callable[[], None] | None = None,
    ahead: Sequence[AheadJob] = (),
    run_ahead: Callable[[AheadJob, Callable[[], int]], None] | None = None,
) -> list[NotebookRun]:
    """Run `run_one(notebook, threads)` on every notebook, `lanes` at a time, each in a
    thread of its own; `threads()` says how many of the `cores` (all this machine's by
    default) the notebook has now: an equal share of those running (`run_notebook` asks
    again every second, so a notebook left running alone takes them all).

    A Ctrl-C while waiting calls `on_interrupt` (which asks the running notebooks to stop),
    starts nothing more, waits for the running ones to end and raises `SeriesInterrupted`;
    a second one, or one without `on_interrupt`, is raised as it is.

    A notebook starts once every notebook of `notebooks` it reads (`notebook_needs`) ended,
    and after the first of those reading the same notebook outside `notebooks` (which
    trains what it reads, if missing, for the others to reuse); among those ready, the ones
    others wait for go first, the rest in series order. After a failure no other notebook
    starts: those running end, then the first failure is raised. Returns the runs in the
    order of `notebooks`.

    An `ahead` job (`run_ahead(job, threads)`, counted as a running notebook in the CPU
    shares) takes a free lane once its `after` notebooks of `notebooks` ended and while its
    `target` runs: before the notebooks no other waits for (the job shortens its target's
    run, which others may wait for; such a notebook has only to end before the series
    does), after those others wait for. A job that raises is reported and fails nothing.
    """
    series = _Lanes(notebooks, lanes, cores or os.cpu_count() or 1,
                    list(ahead) if run_ahead is not None else [])  # fmt: skip
    one_ended = False
    while True:
        starting, jobs = series.starts(one_ended)
        for job in jobs:
            threading.Thread(target=series.work_ahead, args=(job, run_ahead), daemon=True,
                             name=f"ftkit-{job.target}-ahead").start()  # fmt: skip
        for notebook in starting:
            threading.Thread(target=series.work, args=(notebook, run_one), daemon=True,
                             name=f"ftkit-{notebook.name[:2]}").start()  # fmt: skip
        if not series.running:
            break
        try:
            item, outcome = series.finished.get()
        except KeyboardInterrupt:
            if series.interrupted or on_interrupt is None:
                raise
            series.interrupted, one_ended = True, False  # nothing new starts
            on_interrupt()
            continue
        one_ended = True
        series.ended(item, outcome, log)
    return series.outcome()


class _Lanes:
    """`run_in_lanes`' state: what each notebook waits for, what is pending, running, done
    or ended early, the jobs still waiting; one lock over a notebook's end and the starts it
    allows, and the CPU share the running notebooks ask for from their threads."""

    def __init__(self, notebooks: Sequence[Path], lanes: int, cores: int,
                 jobs: list[AheadJob]) -> None:  # fmt: skip
        self.notebooks, self.lanes, self.cores = list(notebooks), lanes, cores
        self.by_prefix = {notebook.name[:2]: notebook for notebook in notebooks}
        self.waits = _waits(self.notebooks, self.by_prefix)
        self.pending, self.waiting_jobs = list(notebooks), jobs
        self.done: dict[Path, NotebookRun] = {}
        self.ended_early: dict[Path, BaseException] = {}  # those that raised, as they ended
        self.finished: queue.Queue = queue.Queue()  # (notebook or job, its outcome)
        self.running, self.interrupted = 0, False
        self.counting = threading.Lock()

    def share(self) -> int:
        """The CPU threads each running notebook has now (asked from their threads)."""
        with self.counting:
            return max(1, self.cores // max(1, self.running))

    def work(self, notebook: Path, run_one) -> None:
        try:
            self.finished.put((notebook, run_one(notebook, self.share)))
        except BaseException as error:  # reported to the scheduling thread, raised there
            self.finished.put((notebook, error))

    def work_ahead(self, job: AheadJob, run_ahead) -> None:
        try:
            run_ahead(job, self.share)
            self.finished.put((job, None))
        except BaseException as error:  # reported, never raised: the notebook does the work
            self.finished.put((job, error))

    def starts(self, one_ended: bool) -> tuple[list[Path], list[AheadJob]]:
        """The notebooks and jobs to start now, counted as running (one ended before, if
        `one_ended`): none after a failure or a Ctrl-C."""
        with self.counting:  # one change: a notebook's end and the starts it allows
            self.running -= one_ended
            if self.ended_early or self.interrupted:
                return [], []
            ready = [n for n in self.pending if self.waits[n] <= self.done.keys()]
            awaited = set().union(*(self.waits[n] for n in self.pending))
            awaited |= {self.by_prefix[job.target] for job in self.waiting_jobs  # run beside
                        if job.target in self.by_prefix}  # fmt: skip
            free = self.lanes - self.running
            first = [n for n in ready if n in awaited][:free]  # in series order
            jobs = self._jobs_ready(free - len(first), set(first))
            rest = [n for n in ready if n not in awaited]
            starting = first + rest[: free - len(first) - len(jobs)]
            self.running += len(starting) + len(jobs)
            for notebook in starting:
                self.pending.remove(notebook)
            return starting, jobs

    def _jobs_ready(self, free: int, starting: set[Path]) -> list[AheadJob]:
        """Up to `free` waiting jobs whose target runs (or is `starting`) and whose `after`
        notebooks are done; jobs whose target ended leave the list."""
        ready = []
        for job in list(self.waiting_jobs):
            target = self.by_prefix.get(job.target)
            if target is None or target in self.done or target in self.ended_early:
                self.waiting_jobs.remove(job)  # nothing left to do ahead of
            elif (target not in self.pending or target in starting) and all(
                self.by_prefix[p] in self.done for p in job.after if p in self.by_prefix
            ):  # its target running, what it reads there
                ready.append(job)
        ready = ready[: max(0, free)]
        for job in ready:
            self.waiting_jobs.remove(job)
        return ready

    def ended(self, item: Path | AheadJob, outcome, log: Callable[[str], None]) -> None:
        """Record how a notebook or a job ended (a job's failure only said in `log`)."""
        if isinstance(item, AheadJob):
            if outcome is not None:
                what = f"{type(outcome).__name__}: {outcome}"
                log(f"[ftkit] {item.target} ahead: could not run ({what}); notebook "
                    f"{item.target} trains what it needs itself")  # fmt: skip
        elif isinstance(outcome, BaseException):
            self.ended_early[item] = outcome
            if self.running > 1 and not self.interrupted:
                log(f"[ftkit] {item.name} failed; waiting for the notebook still running")
        else:
            self.done[item] = outcome

    def outcome(self) -> list[NotebookRun]:
        """The runs in series order, once nothing runs; or what stopped the series, raised."""
        if self.interrupted:
            raise SeriesInterrupted(_interrupted_message(self.notebooks, self.done,
                                                         self.ended_early))  # fmt: skip
        if self.ended_early:  # the first failure
            raise next(iter(self.ended_early.values()))
        if self.pending:  # only a circle of `after` lists leaves notebooks waiting on each other
            names = ", ".join(notebook.name for notebook in self.pending)
            raise RuntimeError(
                f"These notebooks wait on each other (metadata ftkit.after): {names}"
            )
        return [self.done[notebook] for notebook in self.notebooks]


def _waits(notebooks: list[Path], by_prefix: dict[str, Path]) -> dict[Path, set[Path]]:
    """The notebooks of `notebooks` each one waits for: those it reads (`notebook_needs`),
    and for a notebook it reads outside `notebooks` (`ftkit run 04 06` without 03: if 03's
    run is missing, the first to need it trains it and the next reuses it), its first
    reader. A notebook outside the selection ran before, or is not wanted."""
    needs = {notebook: notebook_needs(notebook) for notebook in notebooks}
    waits = {notebook: {by_prefix[p] for p in needs[notebook] if p in by_prefix} - {notebook}
             for notebook in notebooks}  # fmt: skip
    first_reader: dict[str, Path] = {}
    for notebook in notebooks:
        for p in needs[notebook]:
            if p not in by_prefix:
                first_reader.setdefault(p, notebook)
                waits[notebook] |= {first_reader[p]} - {notebook}
    return waits


def _interrupted_message(notebooks: Sequence[Path], done: dict, ended_early: dict) -> str:
    """What an interrupted series did: finished, stopped (where), not started; how to go on."""
    lines = ["Interrupted (Ctrl-C)."]
    if done:
        lines.append("Finished: " + ", ".join(n.name for n in notebooks if n in done) + ".")
    lines += [str(error) + "." for n, error in ended_early.items()]
    waiting = [n.name for n in notebooks if n not in done and n not in ended_early]
    if waiting:
        lines.append("Not started: " + ", ".join(waiting) + ".")
    lines.append(
        "Run the same command again to go on: the notebooks run again from the top, finished "
        "training runs are reused, and an interrupted one continues from its last checkpoint."
    )
    return "\n".join(lines)
