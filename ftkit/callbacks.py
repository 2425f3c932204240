"""What training reports, and how to stop it: callbacks on the transformers `Trainer`.

`ftkit.training` runs the ecosystem's `Trainer`; this module adds the callbacks a learner
watches it through, none of which draws anything (the notebook's `TrainingMonitor` in
`ftkit.course.widgets` is one more callback on top):

- `RunLogger` writes every log and evaluation as one JSON line to the run's metrics.jsonl
  (the same records `TrainResult.history` and `plot_losses` use);
- `StopControl` ends training cleanly after the current step and saves a checkpoint, when
  asked (`request_stop()`, a Stop button) or on the first Ctrl-C / kernel interrupt
  (`stop_on_interrupt`); a second interrupt stops at once.

A record is a dict: `{"event": "train", "step", "epoch", "loss", "lr", "grad_norm",
"tokens_per_second", "elapsed_s"}` or `{"event": "eval", "step", "epoch", "val_loss"}`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from ftkit.progress import TerminalProgress, stop_requested

# Trainer log keys -> the names ftkit uses everywhere (fixed vocabulary: lr, val_loss).
RENAMED = {"learning_rate": "lr", "eval_loss": "val_loss"}
EVAL_EXTRAS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def to_record(logs: dict, step: int, epoch: float | None, elapsed: float) -> dict:
    """Turn one `Trainer` log dict into an ftkit metrics record (train, eval or summary)."""
    if "eval_loss" in logs:
        event = "eval"
    elif "loss" in logs:
        event = "train"
    else:
        event = "summary"
    record = {"event": event, "step": step, "epoch": round(epoch or 0.0, 4)}
    for key, value in logs.items():
        if key in EVAL_EXTRAS or key == "epoch":
            continue
        record[RENAMED.get(key, key)] = value
    record["elapsed_s"] = round(elapsed, 2)
    return record


class RunLogger(TrainerCallback):
    """Append every train log and evaluation to metrics.jsonl, and keep them in `records`."""

    def __init__(self, path: str | Path | None, records: list[dict] | None = None) -> None:
        self.path = Path(path) if path is not None else None  # None: keep records in memory only
        self.records = records if records is not None else []  # earlier records when resuming
        self.started = time.perf_counter()
        self.offset = self.records[-1]["elapsed_s"] if self.records else 0.0  # resumed runs

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        elapsed = self.offset + time.perf_counter() - self.started
        record = to_record(logs, state.global_step, state.epoch, elapsed)
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class TerminalProgressCallback(TrainerCallback):
    """Training's progress lines for the headless runner (`ftkit.progress`): step, loss and
    time left, every half minute or so; nothing where no runner listens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.progress: TerminalProgress | None = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = TerminalProgress(f"training {self.name}", state.max_steps, "steps",
                                             start=state.global_step)  # fmt: skip

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def _detail(self) -> str:
        return f"loss {self.loss:.3f}" if self.loss is not None else ""

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None and state.global_step < state.max_steps:
            self.progress.update(state.global_step, self._detail())

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.end(state.global_step, self._detail())


def read_metrics(path: str | Path, up_to_step: int | None = None) -> list[dict]:
    """Read a metrics.jsonl file (skipping a line cut short by a crash), up to a step."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed while writing it
        if up_to_step is None or record.get("step", 0) <= up_to_step:
            records.append(record)
    return records


class StopControl(TrainerCallback):
    """Stop training after the current optimizer step, saving a checkpoint there."""

    def __init__(self) -> None:
        self.reason: str | None = None  # why a stop was requested; None while training goes on
        self.stopped_at: int | None = None  # the step training stopped after

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask training to end after the step in progress (safe from any thread or handler)."""
        self.reason = self.reason or reason

    def on_step_end(self, args, state, control, **kwargs):
        if not self.requested and stop_requested():  # the headless runner's Ctrl-C
            self.request_stop("interrupted (Ctrl-C during a notebook run)")
        if self.requested and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True  # keep a checkpoint of exactly where we stopped
        return control


@contextmanager
def stop_on_interrupt(stopper: StopControl) -> Iterator[None]:
    """First Ctrl-C (or Jupyter's interrupt button) stops cleanly after the current step;
    a second one raises KeyboardInterrupt at once. Only in the main thread (signals).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if stopper.requested:
            raise KeyboardInterrupt
        stopper.request_stop("interrupted (Ctrl-C or the kernel's stop button)")
        print(
            "\n[ftkit] Stopping after this step and saving a checkpoint; interrupt again to abort."
        )

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
