"""`TrainingMonitor`, the training callback with a face of notebook 03: progress and ETA,
the training and validation loss redrawn after every log, and a Stop button."""

from __future__ import annotations

import time

import ipywidgets as w
from matplotlib.figure import Figure

from ftkit.callbacks import StopControl, to_record
from ftkit.course.plots import plot_losses
from ftkit.course.widgets.picker import show_figure


class TrainingMonitor(StopControl):
    """Watch training live: progress with ETA, the loss plot, and a Stop button.

    A callback for `ftkit.training.train(..., monitor=monitor)`; show it with `display(monitor)`
    (or as a cell's last value) before training starts. Stop (or the kernel's interrupt
    button) ends training after the current step, with a checkpoint to resume from.
    """

    def __init__(self, redraw_every: int = 1) -> None:
        super().__init__()
        self.redraw_every = redraw_every  # redraw the plot every this many log events
        self.records: list[dict] = []  # what training logged since it (re)started
        self.figure: Figure | None = None  # the latest plot
        self.progress = w.IntProgress(value=0, min=0, max=1, description="step")
        self.status = w.HTML("waiting for training to start")
        self.stop_button = w.Button(
            description="Stop", button_style="danger", icon="stop", tooltip="end after this step"
        )
        self.stop_button.on_click(lambda _: self.request_stop("Stop button"))
        self.plot_output = w.Output()
        self.widget = w.VBox([w.HBox([self.progress, self.stop_button]), self.status,
                              self.plot_output])  # fmt: skip
        self._started, self._first_step, self._logs = time.perf_counter(), 0, 0

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def request_stop(self, reason: str = "stop requested") -> None:
        super().request_stop(reason)
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping..."

    def on_train_begin(self, args, state, control, **kwargs):
        self._started, self._first_step = time.perf_counter(), state.global_step
        self.progress.max, self.progress.value = max(state.max_steps, 1), state.global_step
        self.status.value = f"training: {state.max_steps} steps"

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self.progress.value = state.global_step
        self.status.value = self._status_html(state)
        _process_ui_events()  # lets a click on Stop reach us while the cell is still running
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or ("loss" not in logs and "eval_loss" not in logs):
            return
        elapsed = time.perf_counter() - self._started
        self.records.append(to_record(logs, state.global_step, state.epoch, elapsed))
        self._logs += 1
        if "eval_loss" in logs or self._logs % self.redraw_every == 0:
            self.draw()

    def on_train_end(self, args, state, control, **kwargs):
        stopped = state.global_step if state.global_step < state.max_steps else None
        self.draw(stopped_at=stopped)
        why = f" ({self.reason})" if self.reason else " (early stopping)" if stopped else ""
        self.status.value = f"<b>done</b> at step {state.global_step}{why}; " + self._status_html(
            state, eta=False
        )
        self.stop_button.disabled = True

    def _status_html(self, state, eta: bool = True) -> str:
        done = state.global_step - self._first_step
        elapsed = time.perf_counter() - self._started
        left = (state.max_steps - state.global_step) * elapsed / max(done, 1)
        train = [r for r in self.records if r["event"] == "train"]
        evals = [r for r in self.records if r["event"] == "eval"]
        parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {state.epoch or 0:.2f}",
                 f"elapsed {_clock(elapsed)}"]  # fmt: skip
        parts += [f"ETA {_clock(left)}"] if eta and done else []
        parts += [f"training loss {train[-1]['loss']:.3f}"] if train else []
        parts += [f"validation loss {evals[-1]['val_loss']:.3f}"] if evals else []
        if train and "tokens_per_second" in train[-1]:
            parts.append(f"{train[-1]['tokens_per_second']:.0f} tokens/s")
        return " · ".join(parts)

    def draw(self, stopped_at: int | None = None) -> None:
        """Redraw the loss plot into `plot_output` (a PNG, so it also shows in saved notebooks)."""
        self.figure = Figure(figsize=(7.5, 3.2))
        self.figure.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.16)
        plot_losses(self.records, ax=self.figure.add_subplot(), stopped_at=stopped_at)
        show_figure(self.plot_output, self.figure, f"loss curves, {len(self.records)} records")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def _process_ui_events() -> None:
    """Handle pending widget events (a Stop click) while a cell runs, if jupyter-ui-poll is
    installed; without it the kernel's interrupt button stops training just as cleanly."""
    try:
        from jupyter_ui_poll import ui_events
    except ImportError:
        return
    try:
        with ui_events() as poll:
            poll(10)
    except Exception:  # not in a kernel (a script, a test): nothing to process
        pass
