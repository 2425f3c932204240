"""The chat widget, driven from Python the way a learner drives it: typed text, Enter, Send,
Stop, New and the adapter toggle, on the embedded model and on it with a real LoRA adapter."""

from __future__ import annotations

import inspect
import re
import time
from contextlib import nullcontext

import ipywidgets as widgets
import pytest
import torch
from peft import LoraConfig, get_peft_model

from ftkit.course.widgets import ChatBox
from ftkit.course.widgets.chat import ADAPTER_LABELS
from ftkit.generation import stop_token_ids
from ftkit.models import load_model

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def tuned():
    """The embedded model (a copy of its own: peft changes the model it wraps) with a random
    LoRA adapter, so that adapter on and off answer differently."""
    model, tokenizer = load_model()
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(model, config)
    model.eval()
    return model, tokenizer


def _greedy(model, tokenizer, messages, max_new_tokens: int, adapter: bool = True) -> list[int]:
    """The reply's tokens from a plain `model.generate`, greedy."""
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    stops = stop_token_ids(tokenizer)
    with torch.inference_mode(), nullcontext() if adapter else model.disable_adapter():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def _wait_for(condition, timeout: float = 120.0) -> None:
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("adapter", [True, False])
def test_ask_is_the_greedy_decode_of_the_same_chat(tuned, adapter):
    model, tokenizer = tuned
    chat = ChatBox(model, tokenizer, system_prompt="Answer in one sentence.", max_new_tokens=12)
    chat.adapter.value = adapter
    first = chat.ask(QUESTION)
    second = chat.ask("And of Italy?")
    messages = [{"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": first},
                {"role": "user", "content": "And of Italy?"}]  # fmt: skip
    expected = _greedy(model, tokenizer, messages, 12, adapter)
    assert chat.last.token_ids == expected  # token for token
    assert second == tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert [r.adapter for r in chat.replies] == [adapter, adapter]
    assert ADAPTER_LABELS[adapter] in chat.transcript.value
    assert "tokens/s" in chat.transcript.value and chat.status.value.startswith("done")


def test_the_adapter_changes_the_logits_and_compare_asks_both(tuned):
    model, tokenizer = tuned
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )  # fmt: skip
    with torch.inference_mode():
        on = model(**inputs).logits
        with model.disable_adapter():
            off = model(**inputs).logits
    assert (on - off).abs().max() > 0.1

    chat = ChatBox(model, tokenizer, max_new_tokens=10)
    answers = chat.compare("Tell me a fun fact.")
    assert set(answers) == {"fine-tuned", "base"}
    assert answers["fine-tuned"] != answers["base"]
    assert chat.history == []  # the comparison leaves the conversation as it was
    assert ADAPTER_LABELS[True] in chat.comparison.value
    assert ADAPTER_LABELS[False] in chat.comparison.value
    # each side is what that model says after the same (empty) history
    assert chat.ask("Tell me a fun fact.", adapter=False) == answers["base"]
    assert chat.replies[-1].adapter is False
    assert chat.adapter.value is True  # ask(adapter=...) does not move the toggle
    assert chat.comparisons == [("Tell me a fun fact.", answers)]  # kept for notebook 06's check
    # The chat shows as a widget (a notebook cell's value): its repr uses the base classes'
    # own methods, which no attribute of the chat may shadow (a `_compare` once did).
    assert "ChatBox" in repr(chat)
    own = set(re.findall(r"self\.(\w+)\s*(?::[^=]+)?=", inspect.getsource(ChatBox)))
    own |= set(re.findall(r"^    def (\w+)", inspect.getsource(ChatBox), re.M)) - {"__init__"}
    assert not own & set(dir(widgets.VBox))


def test_history_grows_two_messages_a_turn_and_new_clears_it(model_and_tokenizer):
    chat = ChatBox(*model_and_tokenizer, max_new_tokens=8)
    chat.ask("Hello!")
    assert [m["role"] for m in chat.history] == ["user", "assistant"]
    chat.ask("Name a colour.")
    assert [m["role"] for m in chat.history] == ["user", "assistant"] * 2
    assert len(chat.replies) == 2 and "Name a colour." in chat.transcript.value
    chat.new.click()
    assert chat.history == [] and chat.replies == []
    assert "No messages yet" in chat.transcript.value


def test_the_transcript_escapes_what_the_user_types(model_and_tokenizer):
    chat = ChatBox(*model_and_tokenizer, max_new_tokens=6)
    typed = "<script>alert('hi')</script> & <b>bold</b>"
    chat.text.value = typed
    chat.text._handle_custom_msg({"event": "submit"}, [])  # Enter, as the front end sends it
    assert chat.wait(120)
    assert chat.history[0] == {"role": "user", "content": typed}
    assert chat.text.value == ""  # the box is cleared for the next message
    assert "<script>" not in chat.transcript.value and "<b>bold" not in chat.transcript.value
    assert "&lt;script&gt;" in chat.transcript.value


def test_stop_ends_a_long_reply_early(model_and_tokenizer):
    chat = ChatBox(*model_and_tokenizer)
    statuses = []
    chat.status.observe(lambda change: statuses.append(change["new"]), names="value")
    chat.max_tokens.value = 200
    chat.text.value = "Write a long story about a dragon who learns to bake bread."
    assert chat.stop.disabled
    chat.send_button.click()
    assert chat.running and chat.send_button.disabled and not chat.stop.disabled
    with pytest.raises(RuntimeError, match="being written"):
        chat.ask("Meanwhile?")  # one reply at a time
    assert chat.new.disabled  # no new conversation in the middle of a reply
    _wait_for(lambda: "writing" in chat.status.value or not chat.running)
    chat.stop.click()
    assert chat.wait(120)
    assert chat.last.stopped and chat.last.tokens < 200
    assert chat.status.value.startswith("stopped after")
    assert statuses[0].startswith("thinking") and any(s.startswith("writing") for s in statuses)
    assert chat.stop.disabled and not chat.send_button.disabled
    assert len(chat.history) == 2 and "stopped" in chat.transcript.value  # the part kept


def test_the_adapter_toggle_is_disabled_without_an_adapter(model_and_tokenizer, tuned):
    chat = ChatBox(*model_and_tokenizer)
    assert chat.adapter.disabled and chat.adapter.value is None
    assert "no LoRA adapter" in chat.adapter.tooltip
    assert chat.compare_button.disabled
    with pytest.raises(ValueError, match="no LoRA adapter"):
        chat.compare(QUESTION)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        chat.ask(QUESTION, adapter=True)
    with_adapter = ChatBox(*tuned)
    assert not with_adapter.adapter.disabled and with_adapter.adapter.value is True
    assert not with_adapter.compare_button.disabled


def test_temperature_zero_is_deterministic_and_a_seed_repeats_a_sample(model_and_tokenizer):
    chat = ChatBox(*model_and_tokenizer, max_new_tokens=12)
    answers = {}
    for temperature in (0.0, 1.2):
        chat.temperature.value, chat.seed.value = temperature, 3
        answers[temperature] = [chat.ask("Tell me a fun fact."), None]
        chat.new.click()
        answers[temperature][1] = chat.ask("Tell me a fun fact.")
        chat.new.click()
    assert answers[0.0][0] == answers[0.0][1]
    assert answers[1.2][0] == answers[1.2][1]


def test_an_empty_message_is_ignored(model_and_tokenizer):
    chat = ChatBox(*model_and_tokenizer)
    assert chat.ask("   ") == ""
    assert "Type something" in chat.status.value
    chat.text.value = ""
    chat.send_button.click()
    assert not chat.running and chat.history == []


def test_an_error_in_the_thread_is_shown_escaped_and_raised(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer

    def broken(**kwargs):
        raise ValueError("<bad> input")

    monkeypatch.setattr(model, "generate", broken)
    chat = ChatBox(model, tokenizer)
    with pytest.raises(ValueError, match="<bad> input"):
        chat.ask("Hello")
    assert "ValueError: &lt;bad&gt; input" in chat.status.value
    assert chat.history == [] and isinstance(chat.error, ValueError)
    chat.text.value = "Hello again"
    chat.send_button.click()  # from a click: shown and kept, not raised into the kernel
    assert chat.wait(60)
    assert "&lt;bad&gt;" in chat.status.value and chat.history == []
    assert not chat.send_button.disabled and chat.stop.disabled


def test_generation_runs_in_eval_and_inference_mode_and_restores_the_mode(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    seen = []
    handle = model.register_forward_pre_hook(
        lambda module, args: seen.append((module.training, torch.is_inference_mode_enabled()))
    )
    model.train()
    try:
        ChatBox(model, tokenizer, max_new_tokens=2).ask("Hi")
        assert model.training  # as it was before
    finally:
        handle.remove()
        model.eval()
    assert seen and all(mode == (False, True) for mode in seen)


def test_a_long_conversation_leaves_its_oldest_turns_out_of_the_prompt(model_and_tokenizer):
    chat = ChatBox(*model_and_tokenizer, max_new_tokens=2, prompt_budget=120)
    for i in range(3):
        chat.history += [{"role": "user", "content": f"Question {i}: " + "words " * 20},
                         {"role": "assistant", "content": "An answer."}]  # fmt: skip
    chat.ask("Last question?")
    assert chat.last.left_out >= 1 and chat.last.prompt_tokens <= 120
    assert "left out of the prompt" in chat.status.value
    assert len(chat.history) == 8  # the conversation itself keeps every turn
