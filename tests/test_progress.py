"""Progress lines for headless runs (`ftkit.progress`): what a line says, when one is written,
and that nothing is written where no runner listens. The lines reaching the terminal from a
real kernel (training steps in notebook 03, replies in notebook 04) are checked on the smoke
series in tests/test_report.py."""

from __future__ import annotations

import os

import pytest

import ftkit.progress as progress
from ftkit.progress import TerminalProgress, duration


@pytest.fixture
def clock(monkeypatch):
    """A hand-driven `time.perf_counter` for ftkit.progress: set `clock[0]`."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


@pytest.fixture
def listening(monkeypatch, tmp_path):
    """The environment the headless runner gives a kernel: a file and a notebook number."""
    path = tmp_path / "progress.log"
    monkeypatch.setenv(progress.FILE_ENV, str(path))
    monkeypatch.setenv(progress.NOTEBOOK_ENV, "03")
    monkeypatch.delenv(progress.SECONDS_ENV, raising=False)
    return path


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0.4, 42, 171, 3780)] == ["0 s", "42 s", "2 min 51 s",
                                                           "1 h 3 min"]  # fmt: skip


def test_a_line_every_half_minute_with_the_time_left_then_the_time_taken(clock, listening):
    bar = TerminalProgress("training run-a", 10, "steps")
    clock[0] = 10.0
    assert bar.update(1, "loss 2.000") is None  # not yet half a minute
    clock[0] = 40.0
    assert bar.update(4, "loss 1.500") == (
        "[ftkit] 03 · training run-a: 4/10 steps (40%), loss 1.500, 1 min 0 s left"
    )
    clock[0] = 50.0
    assert bar.update(5) is None  # ten seconds after the last line
    clock[0] = 100.0
    last = bar.update(10, "loss 1.000")
    assert last == "[ftkit] 03 · training run-a: 10/10 steps (100%), loss 1.000, done in 1 min 40 s"
    assert listening.read_text().splitlines() == [
        "[ftkit] 03 · training run-a: 4/10 steps (40%), loss 1.500, 1 min 0 s left",
        last,
    ]


def test_a_quick_loop_stays_quiet_and_nothing_is_written_without_a_runner(
    clock, listening, monkeypatch
):
    quick = TerminalProgress("few-shot", 8, "replies")
    clock[0] = 5.0
    assert quick.update(8) is None and not listening.exists()
    monkeypatch.delenv(progress.FILE_ENV)
    unheard = TerminalProgress("few-shot", 8, "replies")
    clock[0] = 500.0
    assert unheard.update(4) is None and unheard.update(8) is None
    assert not listening.exists()


def test_an_early_stop_ends_with_the_step_reached_and_a_resumed_run_counts_from_its_start(
    clock, listening, monkeypatch
):
    monkeypatch.setenv(progress.SECONDS_ENV, "10")
    stopped = TerminalProgress("training overfit", 80, "steps")
    clock[0] = 12.0
    assert stopped.update(3).endswith("3/80 steps (3%), 5 min 8 s left")  # 77 steps, 4 s each
    clock[0] = 16.0
    assert stopped.end(4, "loss 0.500").endswith("4/80 steps (5%), loss 0.500, done in 16 s")
    resumed = TerminalProgress("training run-b", 10, "steps", start=5)
    clock[0] = 36.0  # 20 s for steps 6 and 7: 10 s a step, three to go
    assert resumed.update(7).endswith("7/10 steps (70%), 30 s left")


def test_a_loop_moves_torch_to_the_thread_share_the_runner_writes(monkeypatch, tmp_path):
    """`follow_thread_share`, as ftkit's loops call it between two steps of a kernel the
    runner shares the cores with (tests/test_lanes.py runs it in real kernels)."""
    import torch

    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    share = tmp_path / "threads"
    monkeypatch.setenv(progress.THREADS_ENV, str(share))
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))  # restored afterwards
    monkeypatch.setenv("MKL_NUM_THREADS", str(before))
    start = 1e6  # a clock reading past any earlier call's
    try:
        share.write_text(str(other))
        assert progress.follow_thread_share(start) == other
        assert torch.get_num_threads() == other
        assert os.environ["OMP_NUM_THREADS"] == str(other)  # for the processes it starts
        share.write_text(str(before))
        assert progress.follow_thread_share(start + 1) is None  # read at most every 2 s
        assert torch.get_num_threads() == other
        share.write_text("")  # the runner's write not there yet: the next read
        assert progress.follow_thread_share(start + 3) is None
        share.write_text(str(before))
        assert progress.follow_thread_share(start + 6) == before
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
