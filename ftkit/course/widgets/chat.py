"""`ChatBox`, the chat of notebook 06: talk to the fine-tuned model, switch its adapter off
and on, and ask base and fine-tuned the same question side by side.

How a reply is made, the same for a click on Send (or Enter) and for `ask()`:

- the conversation (`history`, a list of {"role", "content"} messages) with the system
  prompt put first (it is not stored, so editing it changes the next reply) goes through
  the tokenizer's chat template; if that prompt is longer than `prompt_budget` tokens,
  the oldest turns are left out of it (they stay in `history`) and the status says so;
- `model.generate` runs in a background thread, inside `torch.inference_mode()`, with the
  model in eval mode (each module's mode is restored after), inside `model.disable_adapter()`
  when the adapter is switched off, and inside `ftkit.fast.fast_generation` (4-bit weights
  dequantised once per reply on a CPU, the same tokens); greedy at temperature 0, else
  sampled from the `seed`;
- transformers' `TextIteratorStreamer` hands the text over as it is written; the transcript
  and the status are redrawn at most every `refresh_every` seconds;
- Stop sets an event that a `StoppingCriteria` reads after every token, so generation ends
  within one token; a stopped reply is kept, marked "stopped";
- an error in the thread is shown in the status (escaped), kept in `error`, and raised again
  by `ask()`; the question is then not added to the conversation.

Send, Stop and New are clicked from the kernel's main thread, so a reply written from a
click runs in a thread of its own, and Stop can be clicked while it is written. `ask()` and
`compare()` wait for the reply, for a headless run (papermill, nbclient) where no one clicks.
"""

from __future__ import annotations

import html
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import ipywidgets as w
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from ftkit.fast import fast_generation
from ftkit.generation import Messages, stop_token_ids

_WHOLE_LABEL = {"description_width": "initial"}  # labels and buttons never cut ("temperat…")
PROMPT_BUDGET = 1024  # tokens; older turns are left out of a longer prompt
_USER, _ASSISTANT, _NOTE = "#dbeafe", "#f1f1f1", "#666"
ADAPTER_LABELS = {True: "fine-tuned (adapter on)", False: "base (adapter off)",
                  None: "the model (no adapter)"}  # fmt: skip
NO_ADAPTER = ("This model has no LoRA adapter (it is not a peft PeftModel): there is nothing "
              "to switch off, so it always answers as itself.")  # fmt: skip


@dataclass
class ChatReply:
    """One reply and what it cost."""

    text: str  # the reply, special tokens removed
    token_ids: list[int]  # the tokens generated, end of turn included
    seconds: float  # from the start of the prompt's prefill to the last token
    adapter: bool | None  # True: adapter on; False: off; None: the model has none
    stopped: bool = False  # ended by Stop
    prompt_tokens: int = 0  # tokens in the templated prompt
    left_out: int = 0  # oldest turns (question and reply) left out of the prompt

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def note(self) -> str:
        """What the transcript writes under the reply: adapter, time, speed."""
        parts = [ADAPTER_LABELS[self.adapter], f"{self.seconds:.1f} s",
                 f"{self.tokens} tokens", f"{self.tokens_per_second:.1f} tokens/s"]  # fmt: skip
        return " · ".join(parts + (["stopped"] if self.stopped else []))


class _StopOnEvent(StoppingCriteria):
    """Ends generation once `event` is set; counts the tokens written so far."""

    def __init__(self, event: threading.Event, width: int) -> None:
        self.event, self.width, self.count = event, width, 0

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.count = input_ids.shape[1] - self.width
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)  # fmt: skip


@dataclass
class _Job:
    """One reply being written: what was asked and how far the writing is."""

    question: str
    adapter: bool | None
    inputs: dict
    left_out: int
    max_new_tokens: int
    temperature: float
    seed: int
    streamer: TextIteratorStreamer
    criterion: _StopOnEvent
    text: str = ""  # streamed so far
    token_ids: list[int] = field(default_factory=list)
    started: float = 0.0
    seconds: float = 0.0
    error: BaseException | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def has_adapter(model) -> bool:
    """Whether `model` is a peft `PeftModel`, whose adapter can be switched off."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class ChatBox(w.VBox):
    """Chat with a (fine-tuned) model: type, press Enter or Send, read the reply as it is
    written; Stop ends it, New starts another conversation.

    Controls: `system` (the system prompt), `temperature` (0 = greedy), `seed` (for
    temperature > 0), `max_tokens`, `adapter` (fine-tuned or base; disabled, with a tooltip,
    for a model without an adapter), `text`, `send_button`, `stop`, `new`, `compare_button`
    (the question in `text` to base and fine-tuned side by side). Output: `transcript`
    (the conversation as bubbles, each reply labelled with its adapter, time and speed),
    `comparison`, `status`. State: `history` (messages), `replies` (a `ChatReply` per
    assistant message), `comparisons` ((question, answers) of each side-by-side), `last`
    (the latest reply), `error` (the latest error, or None).
    """

    refresh_every = 0.1  # seconds between redraws while a reply is written

    def __init__(self, model, tokenizer, system_prompt: str | None = None,
                 max_new_tokens: int = 96, temperature: float = 0.0,
                 prompt_budget: int = PROMPT_BUDGET) -> None:  # fmt: skip
        self.model, self.tokenizer, self.prompt_budget = model, tokenizer, prompt_budget
        self.history: Messages = []
        self.replies: list[ChatReply] = []
        self.comparisons: list[tuple[str, dict[str, str]]] = []  # compare(): (question, answers)
        self.last: ChatReply | None = None
        self.error: BaseException | None = None
        self.with_adapter = has_adapter(model)
        self._stop_event = threading.Event()
        self._busy = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stops = stop_token_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self._pad = pad if pad is not None else self._stops[0]

        self.system = w.Textarea(value=system_prompt or "", description="system",
                                 placeholder="optional: how the assistant should behave",
                                 layout=w.Layout(width="95%", height="60px"))  # fmt: skip
        self.temperature = w.FloatSlider(
            value=temperature, min=0.0, max=1.5, step=0.1, description="temperature",
            tooltip="0: greedy, always the likeliest token", style=_WHOLE_LABEL,
        )  # fmt: skip
        self.seed = w.IntText(
            value=0, description="seed", layout=w.Layout(width="160px"),
            tooltip="the same seed samples the same reply (temperature > 0)",
        )  # fmt: skip
        self.max_tokens = w.IntSlider(value=max_new_tokens, min=1,
                                      max=max(512, max_new_tokens),
                                      description="max tokens", style=_WHOLE_LABEL)  # fmt: skip
        self.adapter = w.ToggleButtons(
            options=[(ADAPTER_LABELS[True], True), (ADAPTER_LABELS[False], False)],
            value=True if self.with_adapter else None, description="adapter",
            tooltip="on: the fine-tuned model; off: the base model it was trained from",
            style={"button_width": "auto", **_WHOLE_LABEL},
        )  # fmt: skip
        if not self.with_adapter:
            self.adapter.disabled, self.adapter.tooltip = True, NO_ADAPTER
            self.adapter.tooltips = [NO_ADAPTER, NO_ADAPTER]
        self.transcript = w.HTML()
        self.comparison = w.HTML()
        self.text = w.Text(placeholder="type a message, then Enter",
                           layout=w.Layout(width="60%"))  # fmt: skip
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop = w.Button(description="Stop", button_style="danger", icon="stop",
                             disabled=True, tooltip="end the reply after this token")  # fmt: skip
        self.new = w.Button(description="New", icon="plus", tooltip="a new conversation")
        self.compare_button = w.Button(
            description="Ask both", icon="columns",
            tooltip="ask base and fine-tuned the question in the box, side by side "
            "(the conversation does not change)",
        )  # fmt: skip
        if not self.with_adapter:
            self.compare_button.disabled, self.compare_button.tooltip = True, NO_ADAPTER
        self.status = w.HTML()

        # Enter sends. ipywidgets 8 deprecates on_submit for observing `value` with
        # continuous_update=False, but that also fires when the box loses focus (a click on
        # Send would then send twice); the front end still sends the submit event.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.text.on_submit(lambda _: self._on_send())
        self.send_button.on_click(lambda _: self._on_send())
        self.stop.on_click(lambda _: self._on_stop())
        self.new.on_click(lambda _: self.clear())
        self.compare_button.on_click(lambda _: self._on_compare())
        super().__init__([
            self.system, w.HBox([self.temperature, self.seed, self.max_tokens]), self.adapter,
            self.transcript, self.comparison,
            w.HBox([self.text, self.send_button, self.stop, self.new, self.compare_button]),
            self.status,
        ])  # fmt: skip
        # Stable CSS classes, so a browser test can find each part.
        for widget, name in ((self, ""), (self.transcript, "-transcript"), (self.text, "-input"),
                             (self.send_button, "-send"), (self.stop, "-stop"),
                             (self.status, "-status")):  # fmt: skip
            widget.add_class(f"ftkit-chat{name}")
        self._render()

    # What a learner does -----------------------------------------------------------------

    def ask(self, text: str, adapter: bool | None = None) -> str:
        """Say `text` and wait for the reply (adapter on or off as `adapter` says, else as the
        toggle does); returns it. An empty message is ignored (returns ""); a failed reply
        raises its error. The conversation grows by the question and the reply."""
        question = self._accepted(text)
        if question is None:
            return ""
        adapter = self._resolve(adapter)
        self._claim()
        try:
            reply = self._turn(question, adapter)
        finally:
            self._release()
        return reply.text

    def compare(self, text: str) -> dict[str, str]:
        """Ask base and fine-tuned the same question, each after the same conversation; show
        the replies side by side in `comparison` and return {"fine-tuned": ..., "base": ...}.
        The conversation does not change."""
        if not self.with_adapter:
            raise ValueError(NO_ADAPTER)
        question = self._accepted(text)
        if question is None:
            return {}
        self._claim()
        try:
            return self._ask_both(question)
        finally:
            self._release()

    def clear(self) -> None:
        """Start a new conversation: history, replies and the side-by-side cleared."""
        if self.running:
            self.status.value = "A reply is being written: press Stop first."
            return
        self.history.clear()
        self.replies.clear()
        self.comparison.value = ""
        self.status.value = "new conversation"
        self._render()

    @property
    def running(self) -> bool:
        """Whether a reply is being written."""
        return self._busy.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a reply started by a click to end; False if still running at `timeout`."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.running

    # Clicks --------------------------------------------------------------------------------

    def _on_send(self) -> None:
        question = self._accepted(self.text.value)
        if question is None or not self._claim(quietly=True):
            return
        adapter = self._resolve(None)
        self.text.value = ""
        self._in_background(self._turn, question, adapter)

    def _on_compare(self) -> None:
        if not self.with_adapter:  # the button is disabled then; a click can still arrive
            self.status.value = html.escape(NO_ADAPTER)
            return
        question = self._accepted(self.text.value)
        if question is None or not self._claim(quietly=True):
            return
        self._in_background(self._ask_both, question)

    def _on_stop(self) -> None:
        self._stop_event.set()
        self.stop.disabled = True
        self.status.value = "stopping…"

    def _in_background(self, work: Callable, *args) -> None:
        def run() -> None:
            try:
                work(*args)
            except Exception:  # shown in the status and kept in `error` by `_run`
                pass
            finally:
                self._release()

        self._worker = threading.Thread(target=run, name="ftkit-chat", daemon=True)
        self._worker.start()

    # One reply -----------------------------------------------------------------------------

    def _accepted(self, text: str) -> str | None:
        question = (text or "").strip()
        if not question:
            self.status.value = "Type something first."
            return None
        return question

    def _resolve(self, adapter: bool | None) -> bool | None:
        if not self.with_adapter:
            if adapter:
                raise ValueError(NO_ADAPTER)
            return None
        return self.adapter.value if adapter is None else bool(adapter)

    def _claim(self, quietly: bool = False) -> bool:
        """Take the one generation slot and set the buttons for writing."""
        if not self._busy.acquire(blocking=False):
            if quietly:
                self.status.value = "A reply is being written: wait, or press Stop."
                return False
            raise RuntimeError("A reply is being written: wait for it, or press Stop.")
        self._stop_event.clear()
        self.send_button.disabled = self.new.disabled = self.compare_button.disabled = True
        self.stop.disabled = False
        return True

    def _release(self) -> None:
        self.send_button.disabled = self.new.disabled = False
        self.compare_button.disabled = not self.with_adapter
        self.stop.disabled = True
        self._busy.release()

    def _turn(self, question: str, adapter: bool | None) -> ChatReply:
        job = self._job(question, adapter, self.history)
        try:
            reply = self._run(job, lambda: self._render(live=job))
        except BaseException:
            self._render()  # the conversation as it was: the question is not added
            raise
        self.history += [{"role": "user", "content": question},
                         {"role": "assistant", "content": reply.text}]  # fmt: skip
        self.replies.append(reply)
        self._render()
        self.status.value = self._done_status(reply)
        return reply

    def _ask_both(self, question: str) -> dict[str, str]:
        done: dict[bool, ChatReply] = {}
        for adapter in (True, False):
            if self._stop_event.is_set():
                break
            job = self._job(question, adapter, self.history)
            label = f"{ADAPTER_LABELS[adapter]}: "
            show = lambda job=job: self._render_comparison(question, done, job)  # noqa: E731
            try:
                done[adapter] = self._run(job, show, label)
            except BaseException:
                self._render_comparison(question, done)
                raise
        self._render_comparison(question, done)
        self.status.value = " · ".join(f"{ADAPTER_LABELS[a]}: {self._done_status(r)}"
                                       for a, r in done.items())  # fmt: skip
        answers = {"fine-tuned": done[True].text if True in done else "",
                   "base": done[False].text if False in done else ""}  # fmt: skip
        self.comparisons.append((question, answers))
        return answers

    def _job(self, question: str, adapter: bool | None, history: Messages) -> _Job:
        inputs, left_out = self._prompt(history, question)
        width = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True,
                                        timeout=self.refresh_every)  # fmt: skip
        return _Job(question, adapter, inputs, left_out, self.max_tokens.value,
                    self.temperature.value, self.seed.value, streamer,
                    _StopOnEvent(self._stop_event, width))  # fmt: skip

    def _prompt(self, history: Messages, question: str) -> tuple[dict, int]:
        """The templated prompt (input_ids, attention_mask) and how many of the oldest turns
        were left out of it to keep it within `prompt_budget` tokens."""
        system = self.system.value.strip()
        turns = [*history, {"role": "user", "content": question}]
        left_out = 0
        while True:
            messages = ([{"role": "system", "content": system}] if system else []) + turns
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            if inputs["input_ids"].shape[1] <= self.prompt_budget or len(turns) < 3:
                break
            turns, left_out = turns[2:], left_out + 1
        device = self.model.device
        return {key: inputs[key].to(device) for key in ("input_ids", "attention_mask")}, left_out

    def _run(self, job: _Job, show: Callable[[], None], label: str = "") -> ChatReply:
        """Write `job`'s reply in a thread, follow its text here, redraw with `show`."""
        thread = threading.Thread(target=self._generate, args=(job,),
                                  name="ftkit-chat-generate", daemon=True)  # fmt: skip
        self.error = None
        self.status.value = f"{label}thinking… (reading the {job.prompt_tokens}-token prompt)"
        show()
        job.started = time.perf_counter()
        thread.start()
        shown = time.perf_counter()
        try:
            for piece in self._pieces(job, thread):
                job.text += piece
                if time.perf_counter() - shown >= self.refresh_every:
                    count = job.criterion.count
                    if count:
                        self.status.value = f"{label}writing… {count} tokens"
                    show()
                    shown = time.perf_counter()
        except BaseException:  # an interrupt of `ask()` (the kernel's Stop): stop the thread
            self._stop_event.set()
            raise
        finally:
            thread.join()
        if job.error is not None:
            self.error = job.error
            self.status.value = (
                f"<span style='color:#b00020'>{html.escape(label)}error: "
                f"{html.escape(f'{type(job.error).__name__}: {job.error}')}</span>"
            )
            raise job.error
        ids = job.token_ids
        stopped = self._stop_event.is_set() and not (ids and ids[-1] in self._stops)
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        self.last = ChatReply(text, ids, job.seconds, job.adapter, stopped, job.prompt_tokens,
                              job.left_out)  # fmt: skip
        return self.last

    def _pieces(self, job: _Job, thread: threading.Thread) -> Iterator[str]:
        """The streamer's text as it comes, and "" every `refresh_every` seconds without."""
        while True:
            try:
                yield next(job.streamer)
            except StopIteration:
                return
            except queue.Empty:
                if not thread.is_alive() and job.streamer.text_queue.empty():
                    return
                yield ""

    def _generate(self, job: _Job) -> None:
        """The generation thread: `model.generate` with the streamer and the Stop criterion."""
        model = self.model
        modes = [(module, module.training) for module in model.modules()]
        sampling = ({"do_sample": True, "temperature": job.temperature}
                    if job.temperature > 0 else {"do_sample": False})  # fmt: skip
        try:
            model.eval()
            with torch.inference_mode(), self._adapter(job.adapter), fast_generation(model):
                if job.temperature > 0:
                    torch.manual_seed(job.seed)
                output = model.generate(
                    **job.inputs, max_new_tokens=job.max_new_tokens, streamer=job.streamer,
                    stopping_criteria=StoppingCriteriaList([job.criterion]),
                    eos_token_id=self._stops, pad_token_id=self._pad, **sampling,
                )  # fmt: skip
            job.token_ids = output[0, job.prompt_tokens :].tolist()
        except BaseException as error:
            job.error = error
            job.streamer.end()  # generate did not: let the reader stop waiting
        finally:
            job.seconds = time.perf_counter() - job.started
            for module, training in modes:
                module.training = training

    def _adapter(self, adapter: bool | None):
        return self.model.disable_adapter() if adapter is False else nullcontext()

    # Drawing -------------------------------------------------------------------------------

    def _done_status(self, reply: ChatReply) -> str:
        said = (f"stopped after {reply.tokens} tokens" if reply.stopped else
                f"done: {reply.tokens} tokens in {reply.seconds:.1f} s "
                f"({reply.tokens_per_second:.1f} tokens/s)")  # fmt: skip
        if reply.left_out:
            said += (f"; the oldest {reply.left_out} turn(s) were left out of the prompt to "
                     f"keep it within {self.prompt_budget} tokens")  # fmt: skip
        return said

    def _render(self, live: _Job | None = None) -> None:
        """Redraw the transcript, with the reply being written (`live`) at the end."""
        bubbles, replies = [], iter(self.replies)
        for message in self.history:
            if message["role"] == "user":
                bubbles.append(_bubble(message["content"], user=True))
            else:
                reply = next(replies, None)
                bubbles.append(_bubble(message["content"], note=reply.note() if reply else ""))
        if live is not None:
            bubbles.append(_bubble(live.question, user=True))
            bubbles.append(_bubble(live.text, note=f"{ADAPTER_LABELS[live.adapter]} · writing…",
                                   writing=True))  # fmt: skip
        self.transcript.value = _column(bubbles) if bubbles else (
            "<i>No messages yet: type below and press Enter.</i>")  # fmt: skip

    def _render_comparison(self, question: str, done: dict[bool, ChatReply],
                           live: _Job | None = None) -> None:  # fmt: skip
        cells = []
        for adapter in (True, False):
            if adapter in done:
                cell = _bubble(done[adapter].text, note=done[adapter].note())
            elif live is not None and live.adapter is adapter:
                cell = _bubble(live.text, note="writing…", writing=True)
            else:
                cell = "<i>waiting</i>" if live is not None else "<i>not asked (stopped)</i>"
            cells.append(f"<div style='flex:1;min-width:0'><b>{ADAPTER_LABELS[adapter]}</b>"
                         f"{cell}</div>")  # fmt: skip
        self.comparison.value = (
            "<div><b>The same question to both</b> (the conversation is unchanged)"
            + _bubble(question, user=True)
            + f"<div style='display:flex;gap:12px'>{''.join(cells)}</div></div>"
        )


def _bubble(text: str, user: bool = False, note: str = "", writing: bool = False) -> str:
    """One message as HTML: the user's on the right, the assistant's on the left."""
    shown = html.escape(text) + ("▌" if writing else "")
    if not shown.strip():
        shown = "<i>(empty)</i>"
    side, colour = ("flex-end", _USER) if user else ("flex-start", _ASSISTANT)
    below = f"<div style='font-size:80%;color:{_NOTE}'>{html.escape(note)}</div>" if note else ""
    box = f"background:{colour};padding:6px 10px;border-radius:12px;white-space:pre-wrap"
    return (
        f"<div class='ftkit-chat-{'question' if user else 'reply'}' "
        f"style='display:flex;justify-content:{side};margin:4px 0'>"
        f"<div style='max-width:75%'><div style='{box}'>{shown}</div>{below}</div></div>"
    )


def _column(bubbles: list[str]) -> str:
    return f"<div style='display:flex;flex-direction:column'>{''.join(bubbles)}</div>"
