"""Training ahead (`ftkit.course.ahead`): notebook 04's learning-curve runs trained by another
process on a lane the series would leave idle, then read back by the notebook's own call;
the run lock that keeps two processes from training one run folder side by side; and the
runner starting such a job beside its notebook, before a notebook no other waits for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
from test_lanes import _notebook  # a one-cell notebook, reading those `after` names

from ftkit import curve as curve_module
from ftkit import progress
from ftkit.config import TrainConfig
from ftkit.course.ahead import AheadJob, curve_job, run_job, train_curve_ahead
from ftkit.course.lanes import run_in_lanes
from ftkit.course.report import timings_html
from ftkit.course.runner import run_notebook, summary_table, train_ahead
from ftkit.curve import (
    ANSWERS,
    CURVE_APPROACH,
    curve_recipe,
    curve_run,
    curve_tests,
    evaluate_run,
    learning_curve,
)
from ftkit.evaluation import evaluate_approach
from ftkit.locks import run_busy, run_lock
from ftkit.task_data import load_task_data
from ftkit.training import load_or_train, train


def test_two_holders_of_one_run_take_turns(tmp_path, capsys):
    config = TrainConfig(runs_dir=str(tmp_path), run_name="curve-200")
    order = []

    def second() -> None:
        with run_lock(config, poll=0.05) as waited:
            order.append(("second", waited))

    assert not run_busy(config)
    with run_lock(config) as waited:
        assert not waited
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.5)
        assert run_busy(config) and order == []  # the second waits
        order.append(("first", waited))
    other.join(timeout=10)
    assert order == [("first", False), ("second", True)]
    assert not run_busy(config)
    assert "Another process is training the run 'curve-200'" in capsys.readouterr().out
    nested = TrainConfig(runs_dir=str(tmp_path), run_name="experiments/a")  # one file
    with run_lock(nested) as waited:
        assert not waited and run_busy(nested) and not run_busy(config)
    assert TrainConfig(runs_dir=str(tmp_path)).run_name is None  # unnamed: never locked
    with run_lock(TrainConfig(runs_dir=str(tmp_path))) as waited:
        assert not waited


def test_a_stop_of_the_runner_ends_the_wait(tmp_path, monkeypatch):
    """Ctrl-C in `make main` while a notebook waits for a run another process trains."""
    stop = tmp_path / "stop"
    stop.touch()
    monkeypatch.setenv(progress.STOP_ENV, str(stop))
    config = TrainConfig(runs_dir=str(tmp_path), run_name="r")
    raised = []

    def waiter() -> None:
        try:
            with run_lock(config, poll=0.05):
                raised.append(None)
        except KeyboardInterrupt as error:
            raised.append(error)

    with run_lock(config):
        other = threading.Thread(target=waiter)
        other.start()
        other.join(timeout=10)
    assert len(raised) == 1 and isinstance(raised[0], KeyboardInterrupt)
    assert "training r not started" in str(raised[0])


def test_the_curve_trained_ahead_is_read_back_by_the_notebooks_call(tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    """A small dataset of one's own, as `make main DATA=...` saves it: its 16 training
    examples make a curve of 4, 8 and 16 (the last is notebook 03's run itself). The job
    trains the runs and answers the curve's test examples with each; notebook 04's call
    reads both back, generating nothing."""
    shipped = load_task_data("support_tickets")
    mine = replace(shipped, train=shipped.train[:16], test=shipped.test[:4])
    folder = mine.save(tmp_path / "data" / "mine")
    data = load_task_data(str(folder))
    runs_dir = tmp_path / "runs"
    # notebook 03's fine-tune, as notebook 04 asks for it (trained here: none exists yet)
    recipe = TrainConfig(method="qlora", batch_size=8, lr=2e-3, eval_steps=None, save_steps=100,
                         run_name=f"{data.name}-qlora", runs_dir=str(runs_dir))  # fmt: skip
    run = load_or_train(recipe, data.train)
    said = []
    ahead = train_curve_ahead(str(folder), runs_dir, say=said.append)
    assert [path.name for path in ahead] == [f"{data.name}-curve-8", f"{data.name}-curve-4"]
    assert [line.split(": ")[1].split(" in ")[0] for line in said] == [
        "trained", "answered the curve's 2 test examples"] * 2  # fmt: skip
    kept = {path: sorted((path / ANSWERS).glob("*.json")) for path in ahead}
    assert all(len(files) == 1 for files in kept.values()), kept
    written = {path: (path / "result.json").stat().st_mtime_ns for path in ahead}
    capsys.readouterr()
    # notebook 04's section 9, as it calls it: nothing trained or generated again
    curve = curve_recipe(run.config, f"{data.name}-curve", str(runs_dir))
    tests = curve_tests(data.test, data.task)
    with monkeypatch.context() as patched:
        patched.setattr(curve_module, "generate_answers", _nothing_generated)
        points = learning_curve([4, 8], curve, data.train, tests, data.task, n_resamples=20,
                                progress=None)  # fmt: skip
    assert [point.run_dir for point in points] == [str(path) for path in reversed(ahead)]
    assert {path: (path / "result.json").stat().st_mtime_ns for path in ahead} == written
    assert capsys.readouterr().out.count("[ftkit] Reusing the finished run at") == 2
    # answers kept are the replies `evaluate_approach` gives with the same model (here the
    # run read back; the job answered with the model it had just trained, whose kernels
    # round differently in bf16: after 2 steps on 16 examples its rambling replies part
    # after a few tokens)
    reread = train(*curve_run(curve, data.train, 4, data.task), reuse=True)
    fresh = evaluate_approach(reread.model, reread.tokenizer, tests, CURVE_APPROACH, data.task,
                              latency_sample=0, n_resamples=20)  # fmt: skip
    kept[ahead[1]][0].unlink()
    answered = evaluate_run(reread, tests, CURVE_APPROACH, data.task, n_resamples=20)
    assert [p.output for p in answered.predictions] == [p.output for p in fresh.predictions]
    assert answered.scores == fresh.scores and kept[ahead[1]][0].is_file()
    # other examples or settings are other answers; a damaged file is answered again
    evaluate_run(reread, tests[:1], CURVE_APPROACH, data.task, max_new_tokens=4)
    assert len(list((ahead[1] / ANSWERS).glob("*.json"))) == 2
    # so does an edited ftkit (the digest of its code, on which `ftkit.reuse` keys runs: an
    # edit to generation alone retrains a run to the same weights)
    with monkeypatch.context() as patched:
        patched.setattr(curve_module, "training_code_id", lambda: "an edited checkout")
        evaluate_run(reread, tests[:1], CURVE_APPROACH, data.task, max_new_tokens=4)
    assert len(list((ahead[1] / ANSWERS).glob("*.json"))) == 3
    kept[ahead[1]][0].write_text("{not json", encoding="utf-8")
    again = evaluate_run(reread, tests, CURVE_APPROACH, data.task, n_resamples=20)
    assert [p.output for p in again.predictions] == [p.output for p in fresh.predictions]
    assert json.loads(kept[ahead[1]][0].read_text(encoding="utf-8"))["replies"]
    # a second job finds them done: reused, not trained
    said.clear()
    assert train_curve_ahead(str(folder), runs_dir, say=said.append) == ahead
    assert [line.split(": ")[1].split(" in ")[0] for line in said] == [
        "read back", "answered the curve's 2 test examples"] * 2  # fmt: skip
    # once notebook 04 holds one of its runs it is at its curve: nothing more starts here
    said.clear()
    with run_lock(curve_recipe(run.config, f"{data.name}-curve-4", str(runs_dir))):
        assert train_curve_ahead(str(folder), runs_dir, say=said.append) == []
    assert said == ["notebook 04 is at its learning curve already: nothing to train ahead"]
    # a run folder where answers cannot be kept: answered all the same, and told
    shutil.rmtree(ahead[1] / ANSWERS)
    (ahead[1] / ANSWERS).write_text("a file where the folder would go", encoding="utf-8")
    capsys.readouterr()
    unkept = evaluate_run(reread, tests, CURVE_APPROACH, data.task, n_resamples=20)
    assert [p.output for p in unkept.predictions] == [p.output for p in fresh.predictions]
    assert f"[ftkit] Answers not kept in {ahead[1] / ANSWERS}" in capsys.readouterr().out


def _nothing_generated(*args, **kwargs):
    raise AssertionError("generated answers that were kept")


def test_without_notebook_03s_run_there_is_nothing_to_train_ahead(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ftkit.course.ahead", "curve", "--runs-dir",
                           str(tmp_path)], capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"no finished run at {tmp_path / 'support_tickets-qlora'}" in done.stdout


SHOW_THREADS = "import os, time; time.sleep(1); print('threads', os.environ['OMP_NUM_THREADS'])"


@pytest.mark.parametrize("exit_status", [0, 3])
def test_a_lane_with_nothing_left_to_run_takes_the_job(tmp_path, exit_status):
    """03 then 04 is the chain; 01 ends early. The job waits for 03 (it reads its run), then
    runs beside 04 on half the cores. A job that fails is said, and fails nothing."""
    paths = [
        _notebook(tmp_path, "01_a.ipynb", "print('ran')"),
        _notebook(tmp_path, "03_c.ipynb", "import time\ntime.sleep(3)"),
        _notebook(tmp_path, "04_d.ipynb", "import time\ntime.sleep(6)", after=("03",)),
    ]
    code = SHOW_THREADS + f"; raise SystemExit({exit_status})"
    job = AheadJob("learning curve", "04", ("03",), [sys.executable, "-c", code],
                   tmp_path / "out" / "04-ahead.log")  # fmt: skip
    lines = []
    stop_file = tmp_path / "out" / ".ftkit-stop"

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lines.append, threads=threads)

    def run_ahead(job, threads):
        train_ahead(job, threads, tmp_path / "out", lines.append, stop_file)

    a, c, d = run_in_lanes(paths, 2, run_one, lines.append, cores=2, ahead=[job],
                           run_ahead=run_ahead)  # fmt: skip
    assert c.ended <= d.started <= job.started + 1 and job.ended <= d.ended
    assert job.log_file.read_text().strip() == "threads 1"  # beside 04: half the cores
    started = "[ftkit] 04 ahead: training the learning curve's runs of notebook 04 on the free"
    assert any(line.startswith(started + " lane, on 1 CPU thread") for line in lines)
    ended = "done in" if exit_status == 0 else "failed after"
    assert any(line.startswith(f"[ftkit] 04 ahead: {ended}") for line in lines), lines
    assert "04 ahead: the learning curve's runs" in summary_table([a, c, d], [job])
    row = timings_html([a, c, d], [job], tmp_path / "out")  # the report's table links its log
    assert (
        "<td>04 ahead: the learning curve&#x27;s runs (<a href='04-ahead.log'>its output</a>)"
        in row
    )
    assert (exit_status == 0) != (f"<td>exit {exit_status}</td>" in row)


def test_the_job_goes_before_a_notebook_no_other_waits_for(tmp_path):
    """As in the series: once 03 and 05 have ended, 04 (the job's target) and 06 (which
    reads 03, and which nothing waits for) are both ready. 04 and the job take the two
    lanes; 06 starts once one of them has ended."""
    paths = [
        _notebook(tmp_path, "03_c.ipynb", "import time\ntime.sleep(2)"),
        _notebook(tmp_path, "04_d.ipynb", "import time\ntime.sleep(6)", after=("03",)),
        _notebook(tmp_path, "05_e.ipynb", "print('ran')"),
        _notebook(tmp_path, "06_f.ipynb", "print('ran')", after=("03",)),
    ]
    job = AheadJob("curve", "04", ("03", "05"), [sys.executable, "-c", SHOW_THREADS],
                   tmp_path / "out" / "04-ahead.log")  # fmt: skip

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lambda _: None,
                            threads=threads)  # fmt: skip

    def run_ahead(job, threads):
        train_ahead(job, threads, tmp_path / "out", lambda _: None, tmp_path / "stop")

    c, d, e, f = run_in_lanes(paths, 2, run_one, cores=2, ahead=[job],
                              run_ahead=run_ahead)  # fmt: skip
    # the job starts once 03 and 05 have ended (whichever last) and 04 has started
    assert c.ended <= d.started and max(c.ended, e.ended) <= job.started
    assert job.started <= max(d.started, e.ended) + 1
    assert job.ended <= f.started  # 06 waited for the job's lane
    assert job.log_file.read_text().strip() == "threads 1"


@pytest.mark.parametrize("series", ["without 04", "04 ends before a lane is free"])
def test_no_job_without_its_notebook_or_once_it_ended(tmp_path, series):
    paths = [_notebook(tmp_path, "01_a.ipynb", "print('ran')")]
    if series != "without 04":  # 05 holds the other lane until 04 has ended
        paths += [_notebook(tmp_path, "04_d.ipynb", "print('ran')", after=("01",)),
                  _notebook(tmp_path, "05_e.ipynb", "import time\ntime.sleep(8)")]  # fmt: skip
    ran = []
    jobs = [AheadJob("curve", "04", ("01",), ["true"], tmp_path / "log")]

    def run_one(path, threads):
        return run_notebook(path, tmp_path / "out" / path.name, log=lambda _: None,
                            threads=threads)  # fmt: skip

    runs = run_in_lanes(paths, 2, run_one, cores=2, ahead=jobs,
                        run_ahead=lambda *a: ran.append(a))  # fmt: skip
    assert ran == []
    if len(runs) == 3:
        assert runs[1].ended < runs[2].ended  # 04 ended while 05 held the other lane


def test_a_jobs_log_has_lines_not_progress_bars(tmp_path):
    code = "from tqdm import tqdm\nfor _ in tqdm(range(3)):\n    print('step', flush=True)"
    job = AheadJob("test", "04", (), [sys.executable, "-c", code], tmp_path / "job.log")
    assert run_job(job, os.environ, tmp_path) == 0
    assert job.log_file.read_text(encoding="utf-8") == "step\nstep\nstep\n"


def test_the_curve_job_takes_the_notebooks_dataset(tmp_path):
    job = curve_job({"DATASET": "support_tickets", "MODEL": "x"}, tmp_path / "runs", tmp_path)
    assert job.command[-4:] == ["--dataset", "support_tickets", "--runs-dir",
                                str((tmp_path / "runs").resolve())]  # fmt: skip
    assert (job.target, job.after) == ("04", ("03", "05"))
