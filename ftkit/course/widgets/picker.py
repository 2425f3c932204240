"""The model picker of notebook 01, and the replies table of its probe.

`model_picker()` returns a `ModelPicker`, an ipywidgets VBox: pick a card (or your own
GPU, or CPU only), a method and a batch shape; it estimates every catalog model with
`ftkit.memory`, lists those that fit with their verdicts, and draws where the memory of
the model you select goes. Every control is an attribute (`picker.gpu`, `picker.method`,
`picker.table`, `picker.plot_output`...), so code and tests can drive it as a learner would.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import ipywidgets as w
from IPython.display import HTML
from matplotlib.figure import Figure

from ftkit.catalog import GPU, GPUS, ModelInfo, list_models
from ftkit.course.plots import plot_memory_breakdown
from ftkit.hardware import detect_hardware
from ftkit.memory import MemoryEstimate, estimate_memory, fit_verdict

METHODS = (("Full", "full"), ("LoRA", "lora"), ("QLoRA", "qlora"))
MAX_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
VERDICT_COLOURS = {"fits": "#e6f4ea", "tight": "#fff4e5", "does not fit": "#fde7e9"}
YOURS, CPU = "yours", "cpu"  # dropdown keys next to the GPUS keys


class ModelPicker(w.VBox):
    """Choose a base model that fits your hardware; display it as the cell's last value."""

    def __init__(self, cards: dict[str, GPU], models: Iterable[ModelInfo]) -> None:
        self.cards = cards  # dropdown key -> the card (or RAM) estimates are compared with
        self.models = list(models)
        self.estimates: dict[str, MemoryEstimate] = {}  # model name -> estimate, current setup
        self.figure: Figure | None = None  # the last memory plot
        self._holding, self._plotted = False, None  # hold() in progress; what figure shows
        options = [(f"{c.name}: {c.memory_gib:.1f} GiB", key) for key, c in cards.items()]
        self.gpu = w.Dropdown(options=options, description="GPU")
        self.method = w.ToggleButtons(options=METHODS, value="qlora", description="method")
        self.batch_size = w.IntSlider(value=1, min=1, max=16, description="batch_size")
        self.max_length = w.Dropdown(options=MAX_LENGTHS, value=512, description="max_length")
        self.checkpointing = w.Checkbox(value=True, description="gradient checkpointing")
        self.only_fitting = w.Checkbox(value=True, description="only models that fit")
        names = [m.name for m in self.models]
        default = next((m.name for m in self.models if m.embedded), names[0])
        self.model = w.Dropdown(options=names, value=default, description="plot")
        self.summary, self.table, self.plot_output = w.HTML(), w.HTML(), w.Output()
        rows = [
            w.HBox([self.gpu, self.method]),
            w.HBox([self.batch_size, self.max_length, self.checkpointing]),
            w.HBox([self.only_fitting, self.model]),
        ]
        super().__init__([*rows, self.summary, self.table, self.plot_output])
        for control in (*self.controls, self.only_fitting, self.model):
            control.observe(self.refresh, names="value")
        self.refresh()

    @property
    def controls(self) -> tuple[w.ValueWidget, ...]:
        """The controls that describe the training setup."""
        return (self.gpu, self.method, self.batch_size, self.max_length, self.checkpointing)

    @property
    def card(self) -> GPU:
        """The card (or CPU RAM) currently chosen."""
        return self.cards[self.gpu.value]

    @property
    def precision(self) -> str:
        """What training computes in there: bf16 where native, fp16 on T4s, fp32 on a CPU."""
        if self.gpu.value == CPU:
            return "fp32"
        return "bf16" if self.card.bf16 else "fp16"

    def verdicts(self) -> dict[str, str]:
        """Catalog model name -> "fits", "tight" or "does not fit" for the current setup."""
        return {name: fit_verdict(e, self.card) for name, e in self.estimates.items()}

    def fitting_models(self) -> list[str]:
        """Names of the models that fit or fit tightly, smallest first."""
        return [name for name, verdict in self.verdicts().items() if verdict != "does not fit"]

    def estimate(self, model: ModelInfo | str, method: str | None = None) -> MemoryEstimate:
        """The estimate for one model under the controls' current values."""
        return estimate_memory(
            model,
            method or self.method.value,
            batch_size=self.batch_size.value,
            max_length=self.max_length.value,
            precision=self.precision,
            gradient_checkpointing=self.checkpointing.value,
        )

    @contextmanager
    def hold(self) -> Iterator[ModelPicker]:
        """Change several controls at once: the picker recomputes once, at the end."""
        self._holding = True
        try:
            yield self
        finally:
            self._holding = False
            self.refresh()

    def refresh(self, change: dict | None = None) -> None:
        """Recompute every estimate and redraw the summary, the table and the plot."""
        if self._holding:
            return
        self.estimates = {m.name: self.estimate(m) for m in self.models}
        fitting = self.fitting_models()
        method = {key: label for label, key in METHODS}[self.method.value]
        self.summary.value = (
            f"<b>{len(fitting)} of {len(self.models)}</b> catalog models fit on "
            f"{html.escape(self.card.name)} ({self.card.memory_gib:.1f} GiB) with {method}, "
            f"batch {self.batch_size.value} x {self.max_length.value} tokens, {self.precision}."
        )
        self.table.value = self._table_html()
        self._draw()

    def _table_html(self) -> str:
        verdicts = self.verdicts()
        head = "<tr><th>model</th><th>parameters</th><th>licence</th><th>needs</th><th></th></tr>"
        rows = []
        for info in self.models:
            verdict = verdicts[info.name]
            if self.only_fitting.value and verdict == "does not fit":
                continue
            name = html.escape(info.name) + (" (gated)" if info.gated else "")
            name = f"<b>{name}</b>" if info.name == self.model.value else name
            colour = VERDICT_COLOURS[verdict]
            rows.append(
                f"<tr><td>{name}</td><td>{info.params / 1e9:.2f} B</td>"
                f"<td>{html.escape(info.licence)}</td>"
                f"<td>{self.estimates[info.name].total:.1f} GiB</td>"
                f'<td style="background:{colour}">{verdict}</td></tr>'
            )
        if not rows:
            advice = "No catalog model fits: try QLoRA, a smaller batch_size or max_length."
            rows = [f'<tr><td colspan="5">{advice}</td></tr>']
        return f'<table style="border-collapse:collapse">{head}{"".join(rows)}</table>'

    def _draw(self) -> None:
        """Plot full, LoRA and QLoRA for the selected model, as a PNG in plot_output."""
        controls = (self.model, self.gpu, self.batch_size, self.max_length, self.checkpointing)
        if self._plotted == (key := tuple(control.value for control in controls)):
            return  # the method and the filter change the table, not the plot
        self._plotted = key
        info = next(m for m in self.models if m.name == self.model.value)
        labelled = {label: self.estimate(info, method) for label, method in METHODS}
        self.figure = Figure(figsize=(7.5, 2.8))  # fixed margins: quicker than a layout engine
        self.figure.subplots_adjust(left=0.1, right=0.74, top=0.88, bottom=0.18)
        plot_memory_breakdown(labelled, gpu=self.card, ax=self.figure.add_subplot())
        show_figure(self.plot_output, self.figure, f"memory breakdown of {info.name}")


def show_figure(output: w.Output, figure: Figure, text: str = "plot") -> None:
    """Put a figure into an Output widget as a PNG (it stays visible in a saved notebook)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    data = {"image/png": png, "text/plain": text}
    output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)


def model_picker(
    hardware_memory_gb: float | None = None,
    ram_gb: float | None = None,
    *,
    bf16: bool = True,
    detect: bool = True,
    models: Iterable[ModelInfo] | None = None,
) -> ModelPicker:
    """Make the widget that filters the catalog to the models your hardware can fine-tune.

    `hardware_memory_gb` (GiB) adds "your GPU" to the cards; with `detect`, None means
    "look for a CUDA GPU". "CPU only" compares estimates (in fp32) with `ram_gb`, this
    machine's RAM when None.
    """
    if detect and hardware_memory_gb is None:
        found = detect_hardware()
        hardware_memory_gb, bf16 = found.gpu_memory_gb, found.bf16
    if ram_gb is None:
        import psutil

        ram_gb = psutil.virtual_memory().total / 2**30
    cards = dict(GPUS)
    if hardware_memory_gb:
        yours = GPU("your GPU", float(hardware_memory_gb), bf16)
        cards = {YOURS: yours} | cards
    cards[CPU] = GPU("CPU only (RAM)", float(ram_gb), False)
    return ModelPicker(cards, list_models() if models is None else models)


def _prompt_text(prompt) -> str:
    """A prompt as the table shows it: a question, or a conversation's last user message
    (with the length of its system prompt, if it has one)."""
    if isinstance(prompt, str):
        return prompt
    question = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    system = next((m["content"] for m in prompt if m["role"] == "system"), "")
    return question + (
        f"\n(after a system prompt of {len(system.split())} words)" if system else ""
    )


def replies_table(prompts: list, columns: dict[str, list]) -> HTML:
    """Show several models' replies to the same prompts side by side, with timings.

    `prompts` are questions or conversations (lists of messages); `columns` maps a label
    (e.g. "16-bit") to the `Reply` list `generate_replies` returned.
    """
    head = "".join(f"<th>{html.escape(label)}</th>" for label in columns)
    rows, top = [], "style='vertical-align:top'"
    for i, prompt in enumerate(prompts):
        cells = "".join(
            f"<td {top}>{html.escape(replies[i].text)}<br>"
            f"<small style='color:#666'>{replies[i].new_tokens} tokens, "
            f"{replies[i].seconds:.1f} s</small></td>"
            for replies in columns.values()
        )
        shown = html.escape(_prompt_text(prompt)).replace("\n", "<br>")
        rows.append(f"<tr><td {top}><b>{shown}</b></td>{cells}</tr>")
    return HTML(f"<table><tr><th>prompt</th>{head}</tr>{''.join(rows)}</table>")
