"""Progress lines for a run nobody watches in a browser: `make main` and `ftkit run` execute
the notebooks in kernels whose output goes into the executed notebooks, so a training cell
would be a silent seven minutes in the terminal.

The headless runner (`ftkit.course.runner.run_notebook`) sets `FTKIT_PROGRESS_FILE` for the
kernel it starts, and prints what the kernel appends there as it arrives. Long loops here
(training steps, an approach's replies) append one line at most every
`FTKIT_PROGRESS_SECONDS` (30 by default), and a last one when they end, if they took that
long; with the variable unset (a learner's Jupyter, the test suite's direct calls) nothing is
written and the notebook's own bars and widgets show progress.

    [ftkit] 03 · training support_tickets-qlora: step 40/120 (33%), loss 1.234, 2 min 51 s left
    [ftkit] 04 · few-shot: 96/400 replies (24%), 1 min 5 s left

The runner may also set `FTKIT_THREADS_FILE`, a file holding the number of CPU threads the
kernel has now (it runs two notebooks side by side, each on half the cores, and gives a
notebook left alone every core): the same loops read it, at most every 2 seconds, and
move torch to that many threads between two steps (`follow_thread_share`).

And `FTKIT_STOP_FILE`, a file that exists once the runner was interrupted (Ctrl-C): training
then stops after its step in progress and saves a checkpoint there (`ftkit.callbacks.
StopControl`), and a training run or a batch of replies not yet begun is not begun
(`stop_if_requested`), so the notebook ends at its next cell and the next `make main`
continues the run from that checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

FILE_ENV = "FTKIT_PROGRESS_FILE"  # where the lines go (set by the headless runner)
NOTEBOOK_ENV = "FTKIT_PROGRESS_NOTEBOOK"  # the notebook's number, for the line's prefix
SECONDS_ENV = "FTKIT_PROGRESS_SECONDS"  # at most one line per loop this often
DEFAULT_SECONDS = 30.0
THREADS_ENV = "FTKIT_THREADS_FILE"  # the CPU threads this process may use now (the runner's)
THREADS_EVERY = 2.0  # seconds between two reads of it
STOP_ENV = "FTKIT_STOP_FILE"  # exists once the runner was asked to stop (Ctrl-C)
_threads_read = {"at": 0.0, "threads": 0}


def thread_env(threads: int | None) -> dict[str, str]:
    """The environment that caps a process at `threads` CPU threads (torch's and
    bitsandbytes' OpenMP pools, and MKL's), or nothing for None."""
    if threads is None:
        return {}
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}.")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def use_threads(threads: int) -> bool:
    """Move this process to `threads` CPU threads: torch's pool if torch is imported (else
    its import reads the environment), and the environment of the processes it starts from
    then on. True if torch's pool changed."""
    os.environ.update(thread_env(threads))
    torch = sys.modules.get("torch")
    if torch is None or torch.get_num_threads() == threads:
        return False
    torch.set_num_threads(threads)
    return True


def follow_thread_share(now: float | None = None) -> int | None:
    """Move torch to the thread count in `$FTKIT_THREADS_FILE` if it changed; return the
    count set, else None (no file, not yet time, unchanged, or torch not imported: its import
    reads `OMP_NUM_THREADS`, which the runner set). Also keeps `OMP_NUM_THREADS` in step,
    for the processes started from here on."""
    path = os.environ.get(THREADS_ENV)
    now = time.perf_counter() if now is None else now
    if not path or now - _threads_read["at"] < THREADS_EVERY:
        return None
    _threads_read["at"] = now
    try:
        threads = int(Path(path).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):  # not written yet, or half-written: the next read
        return None
    torch = sys.modules.get("torch")
    if threads < 1 or threads == _threads_read["threads"] or torch is None:
        return None
    _threads_read["threads"] = threads
    return threads if use_threads(threads) else None


def stop_requested() -> bool:
    """True once `$FTKIT_STOP_FILE` exists: the headless runner running this notebook was
    interrupted and asks it to stop where nothing is lost (one `stat`, cheap per step)."""
    path = os.environ.get(STOP_ENV)
    return bool(path) and os.path.exists(path)


def stop_if_requested(what: str) -> None:
    """Raise KeyboardInterrupt, saying so, instead of starting `what` once `stop_requested`."""
    if stop_requested():
        raise KeyboardInterrupt(f"{what} not started: the notebook run was interrupted (Ctrl-C)")


def _prefix() -> str:
    """`[ftkit] NN · `, the notebook's number from the runner, or `[ftkit] ` without one."""
    notebook = os.environ.get(NOTEBOOK_ENV)
    return f"[ftkit] {notebook} · " if notebook else "[ftkit] "


def note(text: str) -> str | None:
    """Write one line, `[ftkit] NN · text`, for the runner's terminal (None when nobody is
    listening: no `$FTKIT_PROGRESS_FILE`)."""
    path = os.environ.get(FILE_ENV)
    if not path:
        return None
    line = _prefix() + text
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return line


def duration(seconds: float) -> str:
    """42 s, 2 min 51 s, 1 h 3 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class TerminalProgress:
    """One loop's progress lines: `update(done)` after each item (step, batch of replies).

    A line is written when `every` seconds have passed since the last one (or since the
    loop started), and at the end (`done == total`, or `end()`) only if one was written
    before or the loop took at least `every` seconds: a quick loop stays quiet. The time left is the
    time per item so far times the items left, counted from `start` (a resumed run's first
    step) so that resuming does not shorten the estimate.
    """

    def __init__(self, what: str, total: int, unit: str = "", start: int = 0) -> None:
        self.what, self.total, self.unit, self.start = what, max(int(total), 0), unit, start
        self.path = os.environ.get(FILE_ENV) or None
        self.every = float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)
        self.started = self.last = time.perf_counter()
        self.written = 0

    def update(self, done: int, detail: str = "") -> str | None:
        """The line written (None when it is not yet time, or nobody is listening)."""
        now = time.perf_counter()
        follow_thread_share(now)
        if self.total > 0 and done >= self.total:
            return self.end(done, detail)
        if self.path is None or now - self.last < self.every:
            return None
        return self._write(self.line(done, detail, now), now)

    def end(self, done: int, detail: str = "") -> str | None:
        """The loop's last line, at `done` items (fewer than `total` when early stopping or a
        stop button ended it): written only if a line was written before or the loop took
        at least `every` seconds."""
        now = time.perf_counter()
        if self.path is None or (not self.written and now - self.started < self.every):
            return None
        return self._write(self.line(done, detail, now, finished=True), now)

    def _write(self, line: str, now: float) -> str:
        with Path(self.path).open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        self.last, self.written = now, self.written + 1
        return line

    def line(
        self, done: int, detail: str = "", now: float | None = None, finished: bool = False
    ) -> str:
        """`[ftkit] NN · what: done/total unit (pct%), detail, time left or taken`."""
        now = time.perf_counter() if now is None else now
        count = f"{done}/{self.total}" + (f" {self.unit}" if self.unit else "")
        if self.total:
            count += f" ({100 * done // self.total}%)"
        parts = [f"{_prefix()}{self.what}: {count}"] + ([detail] if detail else [])
        elapsed, counted = now - self.started, done - self.start
        if finished:
            parts.append(f"done in {duration(elapsed)}")
        elif counted > 0 and self.total:
            parts.append(f"{duration(elapsed / counted * (self.total - done))} left")
        return ", ".join(parts)
