"""Notebook controls on top of the core, one module per notebook that uses them.

Every control is an attribute (`picker.gpu`, `monitor.stop_button`, `comparator.text`,
...), so code and tests can drive a widget as a learner would.

- `picker`: `model_picker()` / `ModelPicker` (notebook 01), `replies_table`;
- `monitor`: `TrainingMonitor`, progress, live loss plot and Stop button (notebook 03);
- `compare`: `Comparator`, `ErrorBrowser`, `ComparisonControls` (notebook 04);
- `chat`: `ChatBox`, a streaming chat with the adapter on or off, base and fine-tuned side
  by side (notebook 06).
"""

from ftkit.course.widgets.chat import ChatBox
from ftkit.course.widgets.compare import Comparator, ComparisonControls, ErrorBrowser, answer_html
from ftkit.course.widgets.monitor import TrainingMonitor
from ftkit.course.widgets.picker import ModelPicker, model_picker, replies_table, show_figure

__all__ = [
    "ChatBox",
    "Comparator",
    "ComparisonControls",
    "ErrorBrowser",
    "ModelPicker",
    "TrainingMonitor",
    "answer_html",
    "model_picker",
    "replies_table",
    "show_figure",
]
