"""Running the notebook series headless: the main job, and the notebook tests.

Each notebook has one cell tagged `parameters` (papermill's convention) with a
`MODEL` knob and a `MODE` knob ("full" or "smoke"). This module executes
notebooks in a real Jupyter kernel with those knobs set, saves the executed
copies, and reports progress and timings. The README's main job and the test
suite both call it, so the notebooks a learner opens are the ones CI ran.

papermill injects the knobs (an `injected-parameters` cell right after the
`parameters` cell); nbclient runs the cells in the folder the executed copy goes to
(so `runs/` lands beside the build, never inside the installed package), and its
cell hooks time every numbered section (`## 2. ...`) and print one line as each
ends, so a long run shows where it is.

On a CPU the series runs in two lanes, two notebooks at a time (`ftkit.course.lanes`
decides what starts when). A kernel follows its share of the cores as it changes
(`KernelThreads`: between two steps of ftkit's training and generation loops, else from its
next cell), so one left running alone takes every core. In full mode, the lane free once 03
and 05 have ended trains notebook 04's learning-curve runs ahead, beside 04 and before 06
(which nothing waits for), in a process of its own (`ftkit.course.ahead`, `train_ahead`),
for 04 to read back.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ftkit import progress
from ftkit.course.ahead import AheadJob, curve_job, run_job
from ftkit.course.lanes import SeriesInterrupted, run_in_lanes, say, series_lanes
from ftkit.course.notebooks import (
    NotebookRun,
    SectionRun,
    cell_sections,
    lanes_note,
    notebook_parameters,
    notebooks_dir,
    series_notebooks,
    wall_clock,
)
from ftkit.course.report import write_report
from ftkit.runs import SMOKE_RUNS_ENV
from ftkit.shipped import shipped_datasets
from ftkit.task_data import load_task_data

if TYPE_CHECKING:
    from traitlets.config import Config

MODES = ("full", "smoke")


class _Scratch(tempfile.TemporaryDirectory):
    """A temporary folder of this run, removed when its block ends, as `TemporaryDirectory`,
    and by `remove_scratch` when the process must exit before the blocks end."""

    live: ClassVar[set[str]] = set()

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self.live.add(self.name)

    def cleanup(self) -> None:
        self.live.discard(self.name)
        super().cleanup()


def remove_scratch() -> None:
    """Remove the temporary folders of notebooks still running (their kernel's sockets and
    connection file, the progress file): for an exit that skips the notebooks' own clean-up,
    `ftkit run` stopping at once on a second Ctrl-C."""
    for folder in list(_Scratch.live):
        shutil.rmtree(folder, ignore_errors=True)
        _Scratch.live.discard(folder)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """`os.environ[name] = value` inside the block, as it was after it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class NotebookFailed(RuntimeError):
    """A notebook cell raised, or timed out: the message names notebook, cell and section."""


class NotebookInterrupted(RuntimeError):
    """A notebook stopped because its run was interrupted (Ctrl-C): the message says where,
    and where the executed part is saved."""


STOP_FILE = ".ftkit-stop"  # in the output folder: created on Ctrl-C, for progress.STOP_ENV


class SectionTimer:
    """nbclient cell hooks that time each section and call `on_end` when its last cell ran."""

    def __init__(self, notebook, on_end: Callable[[SectionRun], None]) -> None:
        self.titles = cell_sections(notebook)
        self.sections = {title: SectionRun(title) for title in dict.fromkeys(self.titles)}
        runnable = [i for i, c in enumerate(notebook.cells)
                    if c.cell_type == "code" and c.source.strip()]  # fmt: skip
        self.last = {self.titles[i]: i for i in runnable}  # the last code cell of each section
        self.on_end = on_end
        self.cell_index: int | None = None  # the cell running now (or that failed)
        self.started = 0.0

    def cell_execute(self, cell, cell_index: int, **_) -> None:
        """nbclient's `on_cell_execute`: a code cell is about to run."""
        self.cell_index, self.started = cell_index, time.perf_counter()

    def cell_executed(self, cell, cell_index: int, **_) -> None:
        """nbclient's `on_cell_executed`: a code cell ran (with or without an error)."""
        section = self.sections[self.titles[cell_index]]
        section.cells += 1
        section.seconds += time.perf_counter() - self.started
        if self.last.get(section.title) == cell_index:
            self.on_end(section)

    def ran(self) -> list[SectionRun]:
        """The sections in which at least one code cell ran, in notebook order."""
        return [s for s in self.sections.values() if s.cells]


def _progress_line(notebook: str, section: SectionRun, width: int = 50) -> str:
    """`[ftkit] 03 · 4. Train, and watch it ...... 2 cells   412 s`: one section done."""
    title = section.title if len(section.title) < width else section.title[: width - 4] + "..."
    cells = f"{section.cells} cell{'s' if section.cells != 1 else ''}"
    dots = (title + " ").ljust(width, ".")
    return f"[ftkit] {notebook[:2]} · {dots} {cells:>8} {section.seconds:>5.0f} s"


def run_notebook(
    path: str | os.PathLike,
    output: str | os.PathLike,
    mode: str = "smoke",
    parameters: dict | None = None,
    timeout: int = 1800,
    log: Callable[[str], None] = say,
    threads: int | Callable[[], int | None] | None = None,
    stop_file: str | os.PathLike | None = None,
) -> NotebookRun:
    """Execute a notebook top to bottom in a fresh kernel with MODE (and more) injected.

    `timeout` is per cell, in seconds. `threads` caps the kernel's CPU threads (and those
    of the processes it starts) through `OMP_NUM_THREADS`; None leaves the libraries'
    default, every core. A callable is asked at the start and then every second: when its
    answer changes, the kernel follows (`KernelThreads`). On a failing cell the partly
    executed notebook is saved to `output` and `NotebookFailed` says where.

    Once `stop_file` exists (`run_series` creates it on Ctrl-C) the kernel's training stops
    after its step in progress with a checkpoint, no new training or batch of replies starts
    (`ftkit.progress.stop_requested`), no next cell runs, and `NotebookInterrupted` says
    where it stopped.
    """
    import nbformat
    from nbclient import NotebookClient
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}.")
    path, output = Path(path), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    notebook = parameterize_notebook(load_notebook_node(str(path)),
                                     {"MODE": mode, **(parameters or {})},
                                     kernel_name="python3", language="python")  # fmt: skip

    def section_done(section: SectionRun) -> None:
        log(_progress_line(path.name, section))
        nbformat.write(notebook, output)  # the executed part so far, readable during a run

    timer = SectionTimer(notebook, section_done)
    sockets = _Scratch("ftkit-kernel-")
    share = KernelThreads(threads, Path(sockets.name) / "threads", path.name[:2], log)
    stop_file = Path(stop_file).resolve() if stop_file is not None else None
    stopping = {} if stop_file is None else {progress.STOP_ENV: str(stop_file)}

    async def before_cell(cell, cell_index: int, **_) -> None:
        if stop_file is not None and stop_file.exists():
            raise NotebookInterrupted("before the next cell")  # the message is made below
        timer.cell_execute(cell=cell, cell_index=cell_index)
        await share.before_cell(client.kc)

    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", config=kernel_config(sockets.name),
        resources={"metadata": {"path": str(output.parent)}},  # cwd: the executed copy's folder
        on_cell_execute=before_cell, on_cell_executed=timer.cell_executed,
    )  # fmt: skip
    first = share.history[0]
    on = "" if first is None else f" on {first} CPU thread{'s' if first > 1 else ''}"
    log(f"[ftkit] {path.name}: running in {mode} mode{on} ...")
    started, wall_started = time.perf_counter(), time.time()
    try:
        with sockets, _kernel_progress(path.name[:2], log, share.poll) as progress_env:
            # the kernel's own environment: no change to this process's, which another
            # notebook's thread may be starting a kernel from at the same moment
            client.execute(env=os.environ | progress_env | share.env() | stopping)
    except Exception as error:  # a cell raised, timed out, or the kernel died
        nbformat.write(notebook, output)
        if stop_file is not None and stop_file.exists():
            where = _stop_message(
                path, output, notebook, timer, isinstance(error, NotebookInterrupted)
            )
            raise NotebookInterrupted(where) from None
        raise NotebookFailed(_failure_message(path, output, notebook, timer, error)) from error
    seconds = time.perf_counter() - started
    nbformat.write(notebook, output)
    cells = sum(s.cells for s in timer.ran())
    log(f"[ftkit] {path.name}: done, {cells} code cells in {seconds:.0f} s -> {output}")
    return NotebookRun(path.name, output, mode, seconds, cells, timer.ran(), first,
                       wall_started, time.time(), share.history[-1])  # fmt: skip


class KernelThreads:
    """The CPU threads of one notebook's kernel, kept to what `threads` says now.

    `threads` is None (no cap), a number, or a callable asked every second (`poll`, from
    the runner's progress thread) and before every cell. The kernel starts with
    `OMP_NUM_THREADS` at the first answer (`env`); a change is written to `file`, which
    ftkit's loops inside a cell read between two steps (`ftkit.progress.follow_thread_share`),
    and is sent as a silent request ahead of the next cell (`set_threads_code`), for cells
    with no such loop.
    """

    def __init__(
        self,
        threads: int | Callable[[], int | None] | None,
        file: Path,
        notebook: str,
        log: Callable[[str], None],
    ) -> None:
        self.wanted = threads if callable(threads) else lambda: threads
        self.file, self.notebook, self.log = file, notebook, log
        self.history = [self.wanted()]  # what the kernel started on, then each change
        self.sent = self.history[0]  # what the last silent request (or the start) set
        self.lock = threading.Lock()
        if self.history[0] is not None:
            self._write(self.history[0])

    def env(self) -> dict[str, str]:
        """The kernel's environment for its first thread count, and the file to follow."""
        if self.history[0] is None:
            return {}
        return progress.thread_env(self.history[0]) | {progress.THREADS_ENV: str(self.file)}

    def poll(self) -> None:
        """Ask `threads` again; on a change, write it for the kernel and say so."""
        with self.lock:
            now = self.wanted()
            if now is None or now == self.history[-1]:
                return
            self._write(now)
            self.history.append(now)
        self.log(f"[ftkit] {self.notebook} · on {now} CPU thread{'s' if now > 1 else ''} from "
                 "now on")  # fmt: skip

    async def before_cell(self, kernel_client) -> None:
        """Before a cell: poll, and tell the kernel the count it has not yet been sent."""
        self.poll()
        with self.lock:
            now = self.history[-1]
            if now is None or now == self.sent:
                return
            self.sent = now
        # a silent request ahead of the cell's own: the kernel runs them in order, and
        # nbclient ignores replies to requests that are not the cell's
        request = kernel_client.execute(set_threads_code(now), silent=True, store_history=False)
        if inspect.isawaitable(request):
            await request

    def _write(self, threads: int) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_suffix(".partial")
        partial.write_text(str(threads), encoding="utf-8")
        partial.replace(self.file)  # whole or not at all, for the kernel's reads


def set_threads_code(threads: int) -> str:
    """Code that moves a running kernel to `threads` CPU threads (`ftkit.progress.use_threads`),
    binding no name in the learner's namespace."""
    return f"__import__('ftkit.progress', fromlist=['use_threads']).use_threads({int(threads)})"


def kernel_config(folder: str | os.PathLike) -> Config:
    """The kernel manager's settings for a headless run: on Linux and macOS the kernel talks
    over Unix sockets in `folder` (a private temporary one: mode 700) instead of TCP on
    localhost, which any local user can reach and which ipykernel 7 warns about at every
    start ("Kernel is running over TCP without encryption"); elsewhere TCP, as before. The
    kernel's connection file (its sockets and key) is written in `folder` too, not as
    jupyter_client's `tempfile.mkstemp` in the system's temporary folder, where a kernel
    that did not shut down cleanly left it behind; it goes with `folder`. Paths are
    absolute: the kernel runs in another folder than this process."""
    from traitlets.config import Config  # deferred: with nbclient, only for a run

    folder = Path(folder).resolve()
    settings = {"connection_file": str(folder / "kernel.json")}
    if os.name == "posix":
        settings |= {"transport": "ipc", "ip": str(folder / "kernel")}
    return Config({"KernelManager": settings})


@contextlib.contextmanager
def _kernel_progress(
    notebook: str, log: Callable[[str], None], every_second: Callable[[], None] = lambda: None
) -> Iterator[dict[str, str]]:
    """Pass the kernel's progress lines (`ftkit.progress`: training steps, replies) to `log`
    as they come: the kernel, started inside the block with the environment it yields, gets
    a file to append them to, which a thread here reads every second (and calls
    `every_second` then)."""
    with _Scratch("ftkit-progress-") as folder:
        lines = Path(folder) / "progress.log"
        lines.touch()
        stop = threading.Event()

        def follow() -> None:
            with lines.open(encoding="utf-8") as handle:
                pending = ""
                while True:
                    stopping = stop.wait(1.0)
                    every_second()
                    pending += handle.read()
                    *complete, pending = pending.split("\n")
                    for line in complete:
                        log(line)
                    if stopping:
                        return

        reader = threading.Thread(target=follow, name="ftkit-progress", daemon=True)
        reader.start()
        try:
            yield {progress.FILE_ENV: str(lines), progress.NOTEBOOK_ENV: notebook}
        finally:
            stop.set()
            reader.join(timeout=10)


def _failure_message(path: Path, output: Path, notebook, timer: SectionTimer, error) -> str:
    """What failed, where (cell number, section, first line) and where to look next."""
    index = timer.cell_index
    if index is None:
        return f"{path.name} did not start: {type(error).__name__}: {error}"
    first_line = notebook.cells[index].source.strip().splitlines()[0]
    if hasattr(error, "ename"):  # the cell raised: its traceback is in the saved notebook
        what = f"{error.ename}: {error.evalue}"
        advice = f"; its traceback shows the line: fix the cell in {path} and run again."
    else:  # a timeout, a dead kernel, or a failure on this side: say where it was raised
        frame = traceback.extract_tb(error.__traceback__)[-1]
        what = f"{type(error).__name__}: {error} (raised at {frame.filename}:{frame.lineno})"
        advice = "."
    return (
        f"{path.name} failed in cell {index + 1} (section {timer.titles[index]!r}, "
        f"starting `{first_line}`): {what}. The executed part is saved in {output}{advice}"
    )


def _stop_message(path: Path, output: Path, notebook, timer: SectionTimer, between: bool) -> str:
    """Where an interrupted notebook stopped: in (or after) which cell and section."""
    index = timer.cell_index
    if index is None:
        return f"{path.name} stopped before its first cell"
    first_line = notebook.cells[index].source.strip().splitlines()[0]
    where = "after" if between else "in"
    return (
        f"{path.name} stopped {where} cell {index + 1} (section {timer.titles[index]!r}, "
        f"starting `{first_line}`); the executed part is saved in {output}"
    )


def run_series(
    out_dir: str | os.PathLike = "build",
    mode: str = "full",
    only: Sequence[str] = (),
    parameters: dict | None = None,
    log: Callable[[str], None] = say,
    smoke_runs: str | os.PathLike | None = None,
    lanes: int | None = None,
) -> list[NotebookRun]:
    """Run the series (or the notebooks whose names start with `only`) into `out_dir`.

    Then write `out_dir/report.html` (see `ftkit.course.report`) and print the summary table.
    In full mode the notebooks share `out_dir/runs/`; in smoke mode one scratch runs folder
    (`ftkit.runs.runs_folder`), so notebook 04 reuses notebook 03's fine-tune in both modes:
    `smoke_runs`, kept afterwards, or else a temporary folder removed at the end.

    `lanes` notebooks run at a time (None: `series_lanes` decides), each kernel on an equal
    share of the CPU cores; a notebook starts only after those it reads (`notebook_needs`).
    With one lane they run one after the other in series order, on every core.

    Ctrl-C stops the series where nothing is lost: the running notebooks' training saves a
    checkpoint after its step in progress, nothing new starts (`run_notebook`'s
    `stop_file`), and `SeriesInterrupted` says what finished and where each notebook stopped.
    Run it again to go on: finished runs are reused, an interrupted one continues from its
    checkpoint (`ftkit.reuse.resumable_run`). A second Ctrl-C stops at once (KeyboardInterrupt).
    """
    out_dir = Path(out_dir)
    notebooks = [p for p in series_notebooks() if not only or p.name.startswith(tuple(only))]
    if not notebooks:
        raise FileNotFoundError(f"No notebooks matching {list(only)} in {notebooks_dir()}.")
    lanes = min(lanes or series_lanes(model=(parameters or {}).get("MODEL")), len(notebooks))
    cores = os.cpu_count() or 1
    if lanes > 1:
        each = max(1, cores // lanes)
        log(f"[ftkit] {len(notebooks)} notebooks, {lanes} at a time, {each} CPU "
            f"thread{'s' if each > 1 else ''} each (ftkit run --lanes 1: one at a time, "
            "on every core)")  # fmt: skip

    # absolute: each kernel runs in the folder of its executed copy, not in this one's
    stop_file = (out_dir / STOP_FILE).resolve()
    stop_file.unlink(missing_ok=True)  # left by an interrupted run: not a stop for this one

    def run_one(notebook: Path, threads: Callable[[], int]) -> NotebookRun:
        return run_notebook(notebook, out_dir / notebook.name, mode, parameters, log=log,
                            threads=threads if lanes > 1 else None,
                            stop_file=stop_file)  # fmt: skip

    curve = next((n for n in notebooks if n.name.startswith("04")), None)
    ahead = []  # in smoke mode the curve's runs take seconds: nothing to win ahead
    if mode == "full" and lanes > 1 and curve is not None:
        known = notebook_parameters(curve) | (parameters or {})
        ahead.append(curve_job(known, out_dir / "runs", out_dir))

    def run_ahead(job: AheadJob, threads: Callable[[], int]) -> None:
        train_ahead(job, threads, out_dir, log, stop_file)

    def stop() -> None:  # the first Ctrl-C
        out_dir.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        log("\n[ftkit] Ctrl-C: stopping. Each running notebook stops at its next training step "
            "or batch of replies (a training run saves a checkpoint there first), else when "
            "its cell ends. Ctrl-C again to stop at once.")  # fmt: skip

    scratch = mode == "smoke" and smoke_runs is None  # runs in a folder removed at the end
    with contextlib.ExitStack() as stack:
        if mode == "smoke":  # the kernels inherit this process's environment
            if smoke_runs is None:
                smoke_runs = stack.enter_context(_Scratch("ftkit-"))
            stack.enter_context(_environment(SMOKE_RUNS_ENV, str(smoke_runs)))
        try:  # one lane too: the notebooks run in a thread, this one waits and takes the Ctrl-C
            runs = run_in_lanes(notebooks, lanes, run_one, log, cores, on_interrupt=stop,
                                ahead=ahead, run_ahead=run_ahead)  # fmt: skip
        except SeriesInterrupted as stopped:
            if not scratch:
                raise
            removed = "(In smoke mode the runs were in a temporary folder, now removed: the next "
            raise SeriesInterrupted(f"{stopped}\n{removed}run trains them again.)") from None
    report = write_report(runs, out_dir, ahead)
    log(summary_table(runs, ahead))
    log(f"[ftkit] report: {report}")
    return runs


def train_ahead(job: AheadJob, threads: Callable[[], int], out_dir: Path,
                log: Callable[[str], None], stop_file: Path) -> None:  # fmt: skip
    """Run an `AheadJob` on `threads()` CPU threads (followed as they change, as a kernel's
    are), its progress lines in `log` as `[ftkit] 04 ahead · ...`; says how it ended. A
    job that fails costs nothing but its time: the notebook trains those runs itself."""
    label = f"{job.target} ahead"
    with _Scratch("ftkit-ahead-") as folder:
        share = KernelThreads(threads, Path(folder) / "threads", label, log)
        first = share.history[0]
        log(f"[ftkit] {label}: training the {job.name}'s runs of notebook {job.target} on the "
            f"free lane, on {first} CPU thread{'s' if first != 1 else ''} ...")  # fmt: skip
        with _kernel_progress(label, log, share.poll) as progress_env:
            env = os.environ | progress_env | share.env() | {progress.STOP_ENV: str(stop_file)}
            code = run_job(job, env, cwd=out_dir)
    took = f"{job.seconds:.0f} s"
    if code == 0:
        log(f"[ftkit] {label}: done in {took} (its output: {job.log_file})")
    elif stop_file.exists():
        log(f"[ftkit] {label}: stopped after {took}; a run it left unfinished continues from "
            "its checkpoint next time")  # fmt: skip
    else:
        log(f"[ftkit] {label}: failed after {took} (exit status {code}); notebook "
            f"{job.target} trains what it needs itself. Its output: {job.log_file}")  # fmt: skip


def prepare_dataset(
    dataset: str,
    out_dir: str | os.PathLike,
    strict: bool = True,
    task: str | None = None,
    log: Callable[[str], None] = say,
) -> str:
    """Check and split a dataset before any notebook runs; return the DATASET to give them.

    A shipped name with no other task is given as it is. Anything else (your file or folder,
    or another task) is loaded by `ftkit.task_data.load_task_data`, which raises on bad data
    (every problem, file:line) unless `strict=False` (then each dropped row is reported), and
    saved to `out_dir/data/<name>/`: every notebook then reads the same splits and task.
    """
    data = load_task_data(dataset, strict=strict, task=task)
    log(f"[ftkit] data: {data.summary()}")
    for report in data.reports:
        if report.dropped or report.warnings:
            log(report.summary())
    if str(dataset) in shipped_datasets() and task is None:
        return str(dataset)
    folder = data.save(Path(out_dir) / "data" / data.name)
    log(f"[ftkit] the notebooks read the checked splits in {folder}")
    return str(folder.resolve())


def summary_table(runs: Sequence[NotebookRun], ahead: Sequence[AheadJob] = ()) -> str:
    """A plain-text table of notebook, mode, cells and time, for the end of the main job;
    the jobs that trained ahead (`ftkit.course.ahead`) that ran, on a line each."""
    rows = [f"{'notebook':<40} {'mode':<6} {'cells':>5} {'seconds':>8}"]
    rows += [f"{r.notebook:<40} {r.mode:<6} {r.cells:>5} {r.seconds:>8.0f}" for r in runs]
    jobs = [job for job in ahead if job.ended]
    for job in jobs:
        ended = "" if job.returncode == 0 else f" (exit {job.returncode})"
        rows.append(f"{job.title:<40} {ended:<12} {job.seconds:>8.0f}")
    seconds = sum(r.seconds for r in runs) + sum(job.seconds for job in jobs)
    rows.append(f"{'total':<40} {'':<6} {sum(r.cells for r in runs):>5} {seconds:>8.0f}")
    if wall := wall_clock(runs):
        rows.append(f"{'wall clock':<53} {wall:>8.0f}")
        rows.append(f"  ({lanes_note(runs)})")
    return "\n".join(rows)


def python_kernel_ok() -> bool:
    """True when the `python3` kernel runs this interpreter (so the kernel sees ftkit)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    return spec.argv[0] in ("python", "python3", sys.executable)
