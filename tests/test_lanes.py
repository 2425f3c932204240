"""The series in lanes: notebooks side by side, each kernel on its share of the cores, a
notebook started only after those whose results it reads.

Real kernels throughout: small notebooks written to a temporary folder (seconds each), and
the smoke series the main job's code ran once (conftest's `smoke_series`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import nbformat
import pytest

from ftkit.course.cli import build_parser
from ftkit.course.lanes import LANE_MEMORY_GB, SeriesInterrupted, run_in_lanes, series_lanes
from ftkit.course.notebooks import lanes_note, notebook_needs, series_notebooks, wall_clock
from ftkit.course.runner import NotebookFailed, run_notebook, summary_table
from ftkit.hardware import HardwareInfo, detect_hardware
from ftkit.runs import SMOKE_RUNS_ENV, list_runs, runs_folder


def _notebook(folder, name: str, source: str, after: tuple[str, ...] = ()):
    """A one-cell notebook `name` in `folder`, reading the notebooks `after` say."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}  # fmt: skip
    if after:
        notebook.metadata["ftkit"] = {"after": list(after)}
    path = folder / name
    nbformat.write(notebook, path)
    return path


def _printed(executed) -> str:
    """What the last cell of an executed notebook (its path) printed."""
    cell = nbformat.read(executed, as_version=4).cells[-1]
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


THREADS = "import os, torch\nprint(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"


def test_a_kernel_given_one_thread_computes_on_one(tmp_path):
    import torch

    path = _notebook(tmp_path, "98_threads.ipynb", THREADS)
    capped = run_notebook(path, tmp_path / "one" / path.name, log=lambda _: None, threads=1)
    assert _printed(capped.output).split() == ["1", "1"] and capped.threads == 1
    free = run_notebook(path, tmp_path / "all" / path.name, log=lambda _: None)
    # no cap: the kernel's default, as this process's (every core, or what the caller set)
    assert _printed(free.output).split()[0] == str(torch.get_num_threads()) and free.threads is None


def test_a_notebook_starts_only_after_the_one_it_reads(tmp_path):
    sleep = "import time\ntime.sleep({})\nprint('ran')"
    paths = [
        _notebook(tmp_path, "01_a.ipynb", sleep.format(0)),
        _notebook(tmp_path, "02_b.ipynb", sleep.format(1)),
        _notebook(tmp_path, "03_c.ipynb", sleep.format(4)),  # what 04 reads
        _notebook(tmp_path, "04_d.ipynb", sleep.format(0), after=("03",)),
    ]
    assert notebook_needs(paths[3]) == ["03"] and notebook_needs(paths[0]) == []
    lines = []

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lines.append, threads=threads)

    runs = run_in_lanes(paths, 2, run_one, log=lines.append, cores=2)
    assert [r.notebook for r in runs] == [p.name for p in paths]  # series order, as given
    assert all(_printed(r.output).strip() == "ran" for r in runs)
    a, b, c, d = runs
    # the one others wait for went first, beside 01 (in series order 01 and 02 would);
    # 02 once 01 ended; 04 only after 03 ended
    assert c.started < a.ended <= b.started and d.started >= c.ended
    assert wall_clock(runs) < sum(r.seconds for r in runs)
    # 04 may start alone, on both cores, if 02 ended before 03 did
    assert lanes_note(runs).startswith("2 at a time, 1")
    assert re.search(r"\nwall clock +\d+\n  \(2 at a time, 1", summary_table(runs))


def test_two_readers_of_a_notebook_left_out_run_one_after_the_other(tmp_path):
    """`ftkit run 04 06` without 03: the first may train 03's run; the second reuses it."""
    paths = [
        _notebook(tmp_path, "04_d.ipynb", "import time\ntime.sleep(2)", after=("03",)),
        _notebook(tmp_path, "05_e.ipynb", "print('ran')"),
        _notebook(tmp_path, "06_f.ipynb", "print('ran')", after=("03",)),
    ]

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lambda _: None,
                            threads=threads)  # fmt: skip

    d, e, f = run_in_lanes(paths, 2, run_one, cores=2)
    assert f.started >= d.ended and e.started < d.ended  # 05 beside 04; 06 after it


def test_a_notebook_left_running_alone_takes_every_core(tmp_path):
    show = "import os, torch\nprint(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    short = _notebook(tmp_path, "01_short.ipynb", "print('ran')")
    long = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in
                                           (show, "import time\ntime.sleep(8)", show)])  # fmt: skip
    long.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                   "display_name": "Python 3"}  # fmt: skip
    nbformat.write(long, tmp_path / "02_long.ipynb")
    lines = []

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lines.append, threads=threads)

    runs = run_in_lanes([short, tmp_path / "02_long.ipynb"], 2, run_one, lines.append, cores=2)
    cells = nbformat.read(runs[1].output, as_version=4).cells
    printed = ["".join(o.get("text", "") for o in c.outputs).split() for c in cells[-3::2]]
    assert printed == [["1", "1"], ["2", "2"]]  # half the cores beside 01, then both
    assert (runs[0].threads, runs[1].threads, runs[1].threads_at_end) == (1, 1, 2)
    assert any(line == "[ftkit] 02 · on 2 CPU threads from now on" for line in lines)
    assert lanes_note(runs) == "2 at a time, 1 CPU thread each; 02 alone at the end on 2"


LOOP = """import time

import torch

from ftkit.progress import TerminalProgress

before = torch.get_num_threads()
steps = TerminalProgress("waiting", 40)
for step in range(40):  # a training loop's steps, as ftkit's loops report them
    time.sleep(0.3)
    steps.update(step)
print(before, torch.get_num_threads())"""


def test_a_loop_inside_a_cell_follows_the_share_between_two_steps(tmp_path):
    short = _notebook(tmp_path, "01_short.ipynb", "import time\ntime.sleep(2)")
    long = _notebook(tmp_path, "02_loop.ipynb", LOOP)

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lambda _: None,
                            threads=threads)  # fmt: skip

    runs = run_in_lanes([short, long], 2, run_one, cores=2)
    # one thread while 01 ran, both once it ended: in the same cell, between two steps
    assert _printed(runs[1].output).split() == ["1", "2"]


def test_after_a_failure_no_other_notebook_starts(tmp_path):
    # 02 runs until the series has seen 01 fail (the log, kept in a file it can read), so
    # that its lane comes free after the failure however slowly the kernels start
    said = tmp_path / "said.txt"
    slow = f"""import pathlib, time
said = pathlib.Path({str(said)!r})
for _ in range(600):
    if said.exists() and "01_fails.ipynb failed" in said.read_text():
        break
    time.sleep(0.2)
print('ran')"""
    paths = [
        _notebook(tmp_path, "01_fails.ipynb", "raise ValueError('boom in 01')"),
        _notebook(tmp_path, "02_slow.ipynb", slow),
        _notebook(tmp_path, "03_later.ipynb", "print('ran')"),
    ]
    out = tmp_path / "out"
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        with said.open("a") as file:
            file.write(line + "\n")

    def run_one(path, threads):
        return run_notebook(path, out / path.name, log=log, threads=threads)

    with pytest.raises(NotebookFailed, match=r"01_fails\.ipynb failed in cell \d .*boom in 01"):
        run_in_lanes(paths, 2, run_one, log=log, cores=2)
    # 02, already running, finished; 03 never started
    assert _printed(out / "02_slow.ipynb").strip() == "ran"
    assert not (out / "03_later.ipynb").exists()
    assert any("01_fails.ipynb failed; waiting" in line for line in lines)


STEPS = """import time

from ftkit.progress import TerminalProgress, stop_if_requested

steps = TerminalProgress("steps", 100)
for step in range(100):  # ftkit's loops (training steps, batches of replies) stop like this
    stop_if_requested("the next step")
    time.sleep(0.2)
    steps.update(step)
print("all steps ran")"""


def test_ctrl_c_stops_the_running_notebooks_and_starts_no_other(tmp_path):
    """The first Ctrl-C asks the running notebooks to stop (the stop file `run_series`
    creates): an ftkit loop stops at its next step, a cell without one ends and no next cell
    runs; nothing new starts; `SeriesInterrupted` says where each stopped."""
    paths = [
        _notebook(tmp_path, "01_loop.ipynb", STEPS),
        _notebook(tmp_path, "02_cells.ipynb", "import time\ntime.sleep(6)"),
        _notebook(tmp_path, "03_later.ipynb", "print('ran')"),
    ]
    two = nbformat.read(paths[1], as_version=4)
    two.cells.append(nbformat.v4.new_code_cell("print('second cell ran')"))
    nbformat.write(two, paths[1])
    out, stop_file, lines = tmp_path / "out", tmp_path / "out" / ".ftkit-stop", []

    def run_one(path, threads):
        return run_notebook(path, out / path.name, log=lines.append, threads=threads,
                            stop_file=stop_file)  # fmt: skip

    def ctrl_c() -> None:  # a real SIGINT to this (the main) thread, once both kernels run
        while len([line for line in lines if "running in" in line]) < 2:
            time.sleep(0.1)
        time.sleep(3)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored under `cmd &`
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        with pytest.raises(SeriesInterrupted) as raised:
            run_in_lanes(paths, 2, run_one, log=lines.append, cores=2,
                         on_interrupt=stop_file.touch)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, before)
    message = str(raised.value)
    assert re.search(r"01_loop\.ipynb stopped in cell \d \(.*starting `import time`", message)
    assert re.search(r"02_cells\.ipynb stopped after cell \d \(.*starting `import time`", message)
    assert "Not started: 03_later.ipynb" in message and "continues from its last" in message
    loop = nbformat.read(out / "01_loop.ipynb", as_version=4).cells[-1].outputs
    assert any("the next step not started: the notebook run was interrupted" in str(o.get("evalue"))
               for o in loop)  # fmt: skip
    assert not [o for o in loop if o.output_type == "stream"]  # "all steps ran" not printed
    assert not nbformat.read(out / "02_cells.ipynb", as_version=4).cells[-1].outputs  # not run
    assert not (out / "03_later.ipynb").exists()


@pytest.mark.parametrize("presses", [1, 2])
def test_ftkit_run_given_ctrl_c(presses, tmp_path):
    """`ftkit run` (what `make main` runs) given Ctrl-C: once, it stops the notebook before its
    next cell and says so; twice, it exits at once. Either way with 130, its kernels, which
    watch their parent, end with it, and no temporary folder of the run stays behind."""
    import psutil

    log, scratch = tmp_path / "log.txt", tmp_path / "tmp"
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "ftkit", "run", "--mode", "smoke", "--out", str(tmp_path), "01"],
        env=os.environ | {"TMPDIR": str(scratch)},  # the run's temporary folders go here
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )  # fmt: skip
    try:
        started = time.monotonic()
        while "running in smoke mode" not in log.read_text() and time.monotonic() - started < 60:
            time.sleep(0.2)
        time.sleep(2)  # the kernel is up
        kernels = psutil.Process(process.pid).children(recursive=True)
        assert kernels, log.read_text()
        os.killpg(process.pid, signal.SIGINT)
        if presses == 2:
            time.sleep(1)
            os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    said = log.read_text()
    assert "Ctrl-C: stopping" in said
    if presses == 2:
        assert "Stopped at once" in said
    else:
        assert re.search(r"01_choosing_a_base_model\.ipynb stopped (in|after) cell", said)
        assert "In smoke mode the runs were in a temporary folder" in said
        assert "Traceback" not in said
    _, alive = psutil.wait_procs(kernels, timeout=15)
    assert not alive
    assert not list(scratch.iterdir())  # the kernel's sockets, the progress file, smoke's runs


def _machine(**changes) -> HardwareInfo:
    here = detect_hardware()
    cpu = {"device": "cpu", "device_name": "a CPU", "compute_capability": None,
           "gpu_memory_gb": None, "bf16": False, "fp16": False, "cpu_cores": 2,
           "ram_gb": 24.0, "ram_free_gb": 20.0, "disk_free_gb": here.disk_free_gb}  # fmt: skip
    return HardwareInfo(**(cpu | changes))


def test_two_lanes_on_a_cpu_with_the_cores_and_memory_for_them():
    assert series_lanes(_machine()) == 2
    assert series_lanes(_machine(cpu_cores=1)) == 1
    assert series_lanes(_machine(ram_free_gb=2 * LANE_MEMORY_GB - 0.5)) == 1
    cuda = _machine(device="cuda", device_name="NVIDIA T4", compute_capability=(7, 5),
                    gpu_memory_gb=15.0, fp16=True)  # fmt: skip
    assert series_lanes(cuda) == 1  # the GPU does the work; two kernels would share it
    # the memory per lane was measured on the embedded model, not on yours
    assert series_lanes(_machine(), model="smollm2-135m-instruct") == 2
    assert series_lanes(_machine(), model="Qwen/Qwen2.5-1.5B-Instruct") == 1
    parser = build_parser()
    assert parser.parse_args(["run", "--lanes", "1"]).lanes == 1
    assert parser.parse_args(["run"]).lanes is None
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--lanes", "0"])


def test_notebook_05_keeps_its_runs_in_a_folder_of_its_own(tmp_path, monkeypatch):
    assert runs_folder("full", "iterate") == "runs/iterate"
    monkeypatch.setenv(SMOKE_RUNS_ENV, str(tmp_path / "shared"))
    assert runs_folder("smoke", "iterate") == str(tmp_path / "shared" / "iterate")
    assert (tmp_path / "shared" / "iterate").is_dir()
    needs = {path.name[:2]: notebook_needs(path) for path in series_notebooks()}
    assert needs["04"] == ["03"] and needs["06"] == ["03"]  # both read 03's fine-tune
    assert needs["03"] == [] and needs["05"] == []  # 05 trains its own runs


@pytest.mark.notebook
def test_the_smoke_series_ran_in_lanes(smoke_series):
    """The main job's own run: 04 and 06 after 03, and side by side where the machine has
    the cores and memory for it."""
    runs = smoke_series.runs
    for reader in ("04", "06"):
        assert runs[reader].started >= runs["03"].ended
    if series_lanes() == 1:
        assert wall_clock(list(runs.values())) is None
        return
    threads = max(1, (os.cpu_count() or 1) // 2)
    started_on = [run.threads for run in runs.values()]
    # half the cores each; all of them for one that starts with the other lane idle
    assert threads in started_on and set(started_on) <= {threads, os.cpu_count()}
    assert wall_clock(list(runs.values())) < sum(run.seconds for run in runs.values())
    table = next(line for line in smoke_series.lines if line.startswith("notebook"))
    assert re.search(r"\nwall clock +\d+\n  \(2 at a time", table)
    report = (smoke_series.out / "report.html").read_text(encoding="utf-8")
    assert "Notebooks side by side (2 at a time" in report
    assert "<th colspan='3'>wall clock (2 at a time" in report
    # notebook 05's runs stayed in their own folder, out of 03's listing
    assert (smoke_series.runs_dir / "iterate").is_dir()
    assert not any("-lr-" in run.name for run in list_runs(smoke_series.runs_dir))
