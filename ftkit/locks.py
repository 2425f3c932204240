"""One process per run: file locks on a run's folder and on the answers kept beside it.

`make main` trains notebook 04's learning-curve runs ahead in a process of its own while 04
runs (`ftkit.course.ahead`), and both may reach the same run. `run_lock` holds a run name
for one process at a time (the second waits, then reuses the finished run), `run_busy`
asks whether another holds it now, and `held` is the lock itself, also around a run's kept
answers (`ftkit.curve.evaluate_run`). The locks are the kernel's (`flock`): they go with
the process, so a crashed or killed run never leaves one held.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from ftkit.progress import note, stop_if_requested

try:
    import fcntl  # POSIX: Linux, macOS
except ImportError:  # Windows: no lock (one process per runs folder there)
    fcntl = None

LOCKS = ".locks"  # in a runs folder: one lock file per run name (`run_lock`)


@contextlib.contextmanager
def run_lock(config, poll: float = 1.0) -> Iterator[bool]:
    """Hold the run `config.run_name` of `config.runs_dir` for this process inside the block,
    so that two processes never train the same run folder side by side (`make main` trains
    one of notebook 04's runs ahead while 04 runs, `ftkit.course.ahead`): the second waits
    for the first to end, then finds its finished run and reuses it. Yields whether it had to
    wait. A run without a name, a system without `fcntl` (Windows), and a distributed run
    (`WORLD_SIZE` above 1: its processes train the one run together) are not locked.

    The lock is the kernel's (`flock` on `runs_dir/.locks/<run_name>.lock`): it goes with
    the process, so a crashed or killed run never leaves it held. While waiting, a stop of the
    runner (Ctrl-C) is honoured every `poll` seconds.
    """
    lock = _lock_file(config)
    waiting = (f"Another process is training the run {config.run_name!r} in {config.runs_dir}: "
               "waiting for it to end, to reuse it")  # fmt: skip
    with held(lock, waiting, f"training {config.run_name}", poll) as waited:
        yield waited


@contextlib.contextmanager
def held(lock: Path | None, waiting: str, doing: str, poll: float = 1.0) -> Iterator[bool]:
    """Hold the `flock` lock on the file `lock` (made if missing) inside the block, waiting
    for another process that holds it (saying `waiting` once, honouring a stop of the
    runner every `poll` seconds, as `doing` is stopped); yields whether it waited. None,
    or a system without `fcntl` (Windows): nothing is locked."""
    if lock is None or fcntl is None:
        yield False
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    print(f"[ftkit] {waiting} ...", flush=True)
                    note(waiting)
                    waited = True
                stop_if_requested(doing)
                time.sleep(poll)
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_busy(config) -> bool:
    """Whether another process holds the run `config.run_name` now (`run_lock`): it is
    training it, or checking whether it can reuse it."""
    lock = _lock_file(config)
    if lock is None or not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _lock_file(config) -> Path | None:
    """The file `run_lock` locks for `config`'s run (its name quoted: "a/b" is one file), or
    None where runs are not locked."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.run_name is None or fcntl is None or distributed:
        return None
    return Path(config.runs_dir) / LOCKS / f"{quote(str(config.run_name), safe='')}.lock"
