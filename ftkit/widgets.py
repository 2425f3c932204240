"""Notebook controls on top of the core: the model picker of notebook 01, the training
monitor of notebook 03.

`model_picker()` returns a `ModelPicker`, an ipywidgets VBox: pick a card (or your own
GPU, or CPU only), a method and a batch shape; it estimates every catalog model with
`ftkit.memory`, lists those that fit with their verdicts, and draws where the memory of
the model you select goes. Every control is an attribute (`picker.gpu`, `picker.method`,
`picker.table`, `picker.plot_output`...), so code and tests can drive it as a learner would.

`TrainingMonitor()` is a training callback with a face: progress and ETA, the training and
validation loss redrawn after every log, and a Stop button (`monitor.stop_button`).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import ipywidgets as w
from IPython.display import HTML
from matplotlib.figure import Figure

from ftkit.callbacks import StopControl, to_record
from ftkit.catalog import GPU, GPUS, ModelInfo, list_models
from ftkit.memory import MemoryEstimate, estimate_memory, fit_verdict
from ftkit.plots import plot_losses, plot_memory_breakdown

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
        """Catalog model name -> "fits", "tight" or "does not fit" for the current setup.

        Taught in notebooks/01_choosing_a_base_model.ipynb.
        """
        return {name: fit_verdict(e, self.card) for name, e in self.estimates.items()}

    def fitting_models(self) -> list[str]:
        """Names of the models that fit or fit tightly, smallest first.

        Taught in notebooks/01_choosing_a_base_model.ipynb.
        """
        return [name for name, verdict in self.verdicts().items() if verdict != "does not fit"]

    def estimate(self, model: ModelInfo | str, method: str | None = None) -> MemoryEstimate:
        """The estimate for one model under the controls' current values.

        Taught in notebooks/01_choosing_a_base_model.ipynb.
        """
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
        """Change several controls at once: the picker recomputes once, at the end.

        Taught in notebooks/01_choosing_a_base_model.ipynb.
        """
        self._holding = True
        try:
            yield self
        finally:
            self._holding = False
            self.refresh()

    def refresh(self, change: dict | None = None) -> None:
        """Recompute every estimate and redraw the summary, the table and the plot.

        Taught in notebooks/01_choosing_a_base_model.ipynb.
        """
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
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=80)
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        text = f"memory breakdown of {info.name}"
        data = {"image/png": png, "text/plain": text}
        self.plot_output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)


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

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    if detect and hardware_memory_gb is None:
        from ftkit.hardware import detect_hardware

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


def replies_table(prompts: list[str], columns: dict[str, list]) -> HTML:
    """Show several models' replies to the same prompts side by side, with timings.

    `columns` maps a label (e.g. "16-bit") to the `Reply` list `generate_replies` returned.
    Taught in notebooks/01_choosing_a_base_model.ipynb.
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
        rows.append(f"<tr><td {top}><b>{html.escape(prompt)}</b></td>{cells}</tr>")
    return HTML(f"<table><tr><th>prompt</th>{head}</tr>{''.join(rows)}</table>")


# --- notebooks/03_qlora_training.ipynb ------------------------------------------------


class TrainingMonitor(StopControl):
    """Watch training live: progress with ETA, the loss plot, and a Stop button.

    A callback for `ftkit.training.train(..., monitor=monitor)`; show it with `display(monitor)`
    (or as a cell's last value) before training starts. Stop (or the kernel's interrupt
    button) ends training after the current step, with a checkpoint to resume from.
    Taught in notebooks/03_qlora_training.ipynb.
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
        """Redraw the loss plot into `plot_output` (a PNG, so it also shows in saved notebooks).

        Taught in notebooks/03_qlora_training.ipynb.
        """
        self.figure = Figure(figsize=(7.5, 3.2))
        self.figure.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.16)
        plot_losses(self.records, ax=self.figure.add_subplot(), stopped_at=stopped_at)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=80)
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        data = {"image/png": png, "text/plain": f"loss curves, {len(self.records)} records"}
        self.plot_output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)


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


# --- notebooks/04_prompt_vs_finetune.ipynb ------------------------------------------------

_RIGHT, _WRONG, _UNKNOWN = "#e6f4ea", "#fde2e1", "#f2f2f2"


def show_figure(output: w.Output, figure: Figure, text: str = "plot") -> None:
    """Put a figure into an Output widget as a PNG (it stays visible in a saved notebook)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    data = {"image/png": png, "text/plain": text}
    output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)


def answer_html(text: str, expected: dict | None, fields: Iterable[str]) -> str:
    """An answer with each label field coloured: green if it equals `expected`, red if not.

    Invalid JSON is shown whole on red. Taught in notebooks/04_prompt_vs_finetune.ipynb.
    """
    from ftkit.generation import parse_json

    parsed = parse_json(text)
    if parsed is None:
        shown = html.escape(text) if text.strip() else "<i>(empty)</i>"
        return f"<span style='background:{_WRONG}'>{shown}</span> <small>(not JSON)</small>"
    parts = []
    for key, value in parsed.items():
        colour = _UNKNOWN
        if expected is not None and key in fields:
            colour = _RIGHT if str(value) == str(expected.get(key)) else _WRONG
        parts.append(f"<span style='background:{colour}'><b>{html.escape(str(key))}</b>: "
                     f"{html.escape(str(value))}</span>")  # fmt: skip
    return " · ".join(parts)


class Comparator(w.VBox):
    """Side by side: pick a test ticket (or type your own), click Compare, and read every
    approach's answer next to the reference, right fields green, wrong ones red.

    For a typed ticket there is no reference; fields are then compared with the answer most
    approaches gave. Controls: `picker`, `text`, `compare_button`; answers land in
    `answers` (an HTML widget) and `last` (approach name -> answer text).
    Taught in notebooks/04_prompt_vs_finetune.ipynb.
    """

    def __init__(self, model, tokenizer, comparison, examples, shot_pool=(),
                 max_new_tokens: int = 64) -> None:  # fmt: skip
        from ftkit.evaluation import LABEL_FIELDS

        self.model, self.tokenizer, self.comparison = model, tokenizer, comparison
        self.examples, self.shot_pool = list(examples), list(shot_pool)
        self.max_new_tokens = max_new_tokens
        self.fields = LABEL_FIELDS
        self.last: dict[str, str] = {}
        options = [(f"{i + 1}. {_first_words(e.messages[-2]['content'])}", i)
                   for i, e in enumerate(self.examples)]  # fmt: skip
        self.picker = w.Dropdown(
            options=options,
            value=0 if options else None,
            description="test ticket",
            layout=w.Layout(width="95%"),
        )
        self.text = w.Textarea(description="ticket", layout=w.Layout(width="95%", height="90px"))
        self.compare_button = w.Button(description="Compare", button_style="primary",
                                       icon="play")  # fmt: skip
        self.status = w.HTML()
        self.answers = w.HTML()
        self.picker.observe(lambda change: self._fill(change["new"]), names="value")
        self.compare_button.on_click(lambda _: self.run())
        super().__init__([self.picker, self.text, w.HBox([self.compare_button, self.status]),
                          self.answers])  # fmt: skip
        if options:
            self._fill(0)

    def _fill(self, index) -> None:
        if index is not None:
            self.text.value = self.examples[index].messages[-2]["content"]

    def _reference(self) -> dict | None:
        from ftkit.generation import parse_json

        for example in self.examples:
            if example.messages[-2]["content"].strip() == self.text.value.strip():
                return parse_json(example.messages[-1]["content"])
        return None

    def run(self) -> dict[str, str]:
        """Ask every approach about the ticket in `text`; show and return the answers.

        Taught in notebooks/04_prompt_vs_finetune.ipynb.
        """
        from collections import Counter

        from ftkit.data import Example
        from ftkit.evaluation import _adapter, build_prompt, pick_shots
        from ftkit.generation import generate_replies, parse_json

        ticket = self.text.value.strip()
        if not ticket:
            self.answers.value = "<i>Type a ticket or pick one first.</i>"
            return {}
        self.status.value = "asking every approach..."
        question = Example([{"role": "user", "content": ticket}, {"role": "assistant",
                                                                  "content": ""}])  # fmt: skip
        answers, seconds = {}, {}
        for result in self.comparison.results.values():
            approach = result.approach
            shots = pick_shots(self.shot_pool, approach.shots, self.comparison.settings.get(
                "seed", 0))  # fmt: skip
            prompt = build_prompt(question, approach, shots)
            with _adapter(self.model, approach):
                [reply] = generate_replies(self.model, self.tokenizer, [prompt],
                                           max_new_tokens=self.max_new_tokens)  # fmt: skip
            answers[approach.name], seconds[approach.name] = reply.text, reply.seconds
        reference = self._reference()
        expected, basis = reference, "the reference"
        if reference is None:
            votes = {f: Counter(str((parse_json(a) or {}).get(f)) for a in answers.values())
                     for f in self.fields}  # fmt: skip
            expected = {f: votes[f].most_common(1)[0][0] for f in self.fields}
            basis = "the answer most approaches gave (a typed ticket has no reference)"
        rows = []
        if reference is not None:
            shown = answer_html(json_text(reference), None, ())
            rows.append(f"<tr><td><b>reference</b></td><td>{shown}</td><td></td></tr>")
        for name, text in answers.items():
            rows.append(f"<tr><td>{html.escape(name)}</td><td>"
                        f"{answer_html(text, expected, self.fields)}</td>"
                        f"<td>{1000 * seconds[name]:.0f} ms</td></tr>")  # fmt: skip
        self.answers.value = (
            "<table><tr><th>approach</th><th>answer</th><th>time</th></tr>" + "".join(rows)
            + f"</table><small>Green: same as {basis}; red: different.</small>"
        )  # fmt: skip
        self.status.value = f"{len(answers)} answers"
        self.last = answers
        return answers


def json_text(value: dict) -> str:
    """A dict as the one-line JSON the task asks for."""
    import json

    return json.dumps(value, ensure_ascii=False)


def _first_words(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ErrorBrowser(w.VBox):
    """Browse wrong answers: choose an approach, a field (or invalid JSON) and a reference
    label; read each ticket with its reference and the answer, fields coloured.

    Controls: `approach`, `field`, `label`; the list is in `listing`, the count in `count`.
    Taught in notebooks/04_prompt_vs_finetune.ipynb.
    """

    def __init__(self, comparison, limit: int = 20) -> None:
        from ftkit.evaluation import LABEL_FIELDS

        self.comparison, self.limit, self.fields = comparison, limit, LABEL_FIELDS
        names = list(comparison.results)
        self.approach = w.Dropdown(options=names, value=names[-1], description="approach")
        self.field = w.Dropdown(options=[("any label", "any"), *[(f, f) for f in LABEL_FIELDS],
                                         ("invalid JSON", "invalid")],
                                value="any", description="wrong in")  # fmt: skip
        self.label = w.Dropdown(description="reference")
        self.count, self.listing = w.HTML(), w.HTML()
        for control in (self.approach, self.field):
            control.observe(lambda _: self._update_labels(), names="value")
        self.label.observe(lambda _: self.show(), names="value")
        super().__init__([w.HBox([self.approach, self.field, self.label]), self.count,
                          self.listing])  # fmt: skip
        self._update_labels()

    def _update_labels(self) -> None:
        from ftkit.generation import parse_json

        field = self.field.value if self.field.value in self.fields else "category"
        values = sorted({str((parse_json(p.reference) or {}).get(field))
                         for p in self.comparison[self.approach.value].predictions})  # fmt: skip
        self.label.description = f"reference {field}"
        self.label.options = [("all", "all"), *[(v, v) for v in values]]
        self.label.value = "all"
        self.show()

    def matching(self) -> list:
        """The predictions the current choice selects.

        Taught in notebooks/04_prompt_vs_finetune.ipynb.
        """
        from ftkit.generation import parse_json

        result = self.comparison[self.approach.value]
        if self.field.value == "invalid":
            chosen = [p for p in result.predictions if p.parsed is None]
        else:
            chosen = result.wrong(None if self.field.value == "any" else self.field.value)
        if self.label.value not in (None, "all"):
            field = self.field.value if self.field.value in self.fields else "category"
            chosen = [
                p for p in chosen
                if str((parse_json(p.reference) or {}).get(field)) == self.label.value
            ]  # fmt: skip
        return chosen

    def show(self) -> None:
        """Redraw the count and the list for the current choice."""
        from ftkit.generation import parse_json

        chosen = self.matching()
        total = len(self.comparison[self.approach.value].predictions)
        self.count.value = (f"<b>{len(chosen)}</b> of {total} answers match"
                            + (f"; showing the first {self.limit}" if len(chosen) > self.limit
                               else ""))  # fmt: skip
        items = []
        for p in chosen[: self.limit]:
            expected = parse_json(p.reference)
            items.append(
                f"<li><b>{html.escape(p.id)}</b>: {html.escape(_first_words(p.question, 300))}"
                f"<br>reference: {answer_html(p.reference, None, ())}"
                f"<br>answer: {answer_html(p.output, expected, self.fields)}</li>"
            )
        self.listing.value = "<ol>" + "".join(items) + "</ol>" if items else "<i>none</i>"


class ComparisonControls(w.VBox):
    """Change k (solved examples in the few-shot prompt) and the temperature, click Re-run:
    every approach is evaluated again on the first `examples` test tickets; the table and
    the score plot update. The new `Comparison` is in `comparison`.
    Taught in notebooks/04_prompt_vs_finetune.ipynb.
    """

    def __init__(self, model, tokenizer, approaches, examples, shot_pool, n_examples: int = 24,
                 shots: int = 3, temperature: float = 0.0, max_new_tokens: int = 64,
                 n_resamples: int = 200) -> None:  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.approaches, self.examples, self.shot_pool = list(approaches), examples, shot_pool
        self.max_new_tokens, self.n_resamples = max_new_tokens, n_resamples
        self.comparison = None
        self.shots = w.IntSlider(value=shots, min=0, max=8, description="k (shots)")
        self.temperature = w.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.1,
                                         description="temperature")  # fmt: skip
        self.n_examples = w.IntSlider(value=min(n_examples, len(examples)), min=1,
                                      max=len(examples), description="test tickets")  # fmt: skip
        self.run_button = w.Button(description="Re-run", button_style="primary", icon="refresh")
        self.status, self.table = w.HTML(), w.HTML()
        self.plot_output = w.Output()
        self.run_button.on_click(lambda _: self.run())
        controls = w.HBox([self.shots, self.temperature, self.n_examples])
        super().__init__([controls, w.HBox([self.run_button, self.status]), self.table,
                          self.plot_output])  # fmt: skip

    def run(self):
        """Evaluate every approach with the current k and temperature; return the Comparison.

        Taught in notebooks/04_prompt_vs_finetune.ipynb.
        """
        from ftkit.evaluation import compare, with_settings
        from ftkit.plots import plot_approach_scores

        self.run_button.disabled = True
        try:
            approaches = with_settings(self.approaches, self.shots.value)
            examples = list(self.examples)[: self.n_examples.value]
            self.comparison = compare(
                self.model, self.tokenizer, examples, approaches, self.shot_pool,
                max_new_tokens=self.max_new_tokens, temperature=self.temperature.value,
                latency_sample=2, n_resamples=self.n_resamples,
                progress=lambda line: setattr(self.status, "value", html.escape(line)),
            )  # fmt: skip
            self.comparison.settings["shots"] = self.shots.value
            self.table.value = self.comparison.table_html()
            show_figure(self.plot_output, plot_approach_scores(self.comparison), "scores")
            self.status.value = (
                f"done: k={self.shots.value}, temperature={self.temperature.value:.1f}, "
                f"{len(examples)} tickets"
            )
        finally:
            self.run_button.disabled = False
        return self.comparison
