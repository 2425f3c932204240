"""LoRA folded into the weights while generating (`ftkit.fast.folded_lora`): peft's logits to
fp32 rounding and its greedy replies, every layer served, the adapter still switchable inside
the block, nothing folded in 16 bits, and the model left as it was."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from ftkit.config import TrainConfig
from ftkit.fast import fast_generation, speed_up_training
from ftkit.fast.folded_lora import folded_lora
from ftkit.fast.lean_4bit import is_lean_forward
from ftkit.generation import generate_replies
from ftkit.models import load_model
from ftkit.task_data import load_task_data
from ftkit.training import add_adapters


def _adapted(method: str, dtype: torch.dtype):
    quantization = "nf4" if method == "qlora" else None
    model, tokenizer = load_model(quantization=quantization, dtype=dtype)
    model = add_adapters(model, TrainConfig(method=method))
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters matter
            parameter.data.normal_(0, 0.02, generator=generator)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def qlora():
    return _adapted("qlora", torch.float32)


@pytest.fixture(scope="module")
def tickets():
    return [e.messages[:-1] for e in load_task_data("support_tickets").test[:6]]


def _batch(tokenizer, conversations) -> dict:
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in conversations]  # fmt: skip
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_folded_logits_are_pefts_to_fp32_rounding(qlora, tickets):
    model, tokenizer = qlora
    batch = _batch(tokenizer, tickets)
    with torch.inference_mode():
        reference = model(**batch).logits
        with folded_lora(model) as served:
            folded = model(**batch).logits
    assert served == len(_lora_layers(model)) == 30 * 7  # every adapted projection
    assert not torch.equal(folded, reference)  # it did compute another way
    difference = (folded - reference).abs().max() / reference.abs().max()
    assert difference < 1e-4
    assert torch.equal(folded[:, -1].argmax(-1), reference[:, -1].argmax(-1))
    with torch.inference_mode(), model.disable_adapter():
        base = model(**batch).logits
    assert (reference - base).abs().max() > 100 * (folded - reference).abs().max()


def test_greedy_replies_are_pefts_but_where_rounding_breaks_a_tie(qlora, tickets, monkeypatch):
    """Folded inside `generate_replies`, the replies are peft's, except where a greedy choice
    between nearly tied tokens flips and the reply goes on differently from there. How often
    depends on the CPU kind: on the AVX2-only EPYC all six replies are the same; on the
    AVX512-BF16 one four (two part after four or five words; bitsandbytes' own 4-bit
    products differ by kind too). The logits themselves: the test above."""
    model, tokenizer = qlora
    folded = generate_replies(model, tokenizer, tickets, max_new_tokens=24)
    monkeypatch.setattr("ftkit.fast.folded_lora", lambda model: nullcontext(0))
    unfolded = generate_replies(model, tokenizer, tickets, max_new_tokens=24)
    assert all(r.text for r in folded)
    pairs = [(a.text, b.text) for a, b in zip(folded, unfolded, strict=True)]
    assert sum(a == b for a, b in pairs) >= len(pairs) // 2 + 1
    for a, b in pairs:  # a flip comes after a common start, not as another reply
        assert a[:12] == b[:12], (a, b)


def test_the_adapter_switches_off_inside_the_block_exactly(qlora, tickets):
    model, tokenizer = qlora
    batch = _batch(tokenizer, tickets[:2])
    with torch.inference_mode():
        with model.disable_adapter():
            base = model(**batch).logits
        with fast_generation(model):
            with model.disable_adapter():
                off = model(**batch).logits
            on = model(**batch).logits
    assert torch.equal(off, base)
    assert not torch.equal(on, base)


def test_new_adapter_weights_inside_the_block_are_folded_again(tickets):
    model, tokenizer = _adapted("qlora", torch.float32)
    batch = _batch(tokenizer, tickets[:2])
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    with fast_generation(model):
        with torch.inference_mode():
            first = model(**batch).logits
        with torch.no_grad():  # a checkpoint loaded into the same adapter, in place
            for parameter in lora_b:
                parameter.mul_(-1)
        with torch.inference_mode():
            second = model(**batch).logits
    with torch.inference_mode():
        reference = model(**batch).logits  # peft's own layers, the new weights
    assert (second - reference).abs().max() / reference.abs().max() < 1e-4
    assert (second - first).abs().max() > 100 * (second - reference).abs().max()


def test_blocks_nest_and_leave_every_forward_as_it_was(qlora):
    model, _ = qlora
    layers = _lora_layers(model)
    before = [vars(m).get("forward") for m in layers]
    with folded_lora(model) as outer, folded_lora(model) as inner:
        assert (outer, inner) == (len(layers), 0)
    assert [vars(m).get("forward") for m in layers] == before


def test_lean_training_forwards_come_back_after_the_block():
    model, _ = load_model(quantization="nf4", dtype=torch.float32)
    model = add_adapters(model, TrainConfig(method="qlora"))
    speed_up_training(model)
    layers = _lora_layers(model)
    lean = [vars(m)["forward"] for m in layers]
    assert all(is_lean_forward(f) for f in lean)
    with torch.inference_mode(), folded_lora(model.eval()) as served:
        assert served == len(layers)
    assert [vars(m)["forward"] for m in layers] == lean


def test_plain_lora_folds_and_bf16_does_not(tickets):
    model, tokenizer = _adapted("lora", torch.float32)
    batch = _batch(tokenizer, tickets[:2])
    with torch.inference_mode():
        reference = model(**batch).logits
        with folded_lora(model) as served:
            folded = model(**batch).logits
    assert served == 30 * 7
    assert (folded - reference).abs().max() / reference.abs().max() < 1e-4
    model = model.to(torch.bfloat16)  # 16 bits: the LoRA term would round away
    with torch.inference_mode():
        reference = model(**batch).logits
        with folded_lora(model):
            folded = model(**batch).logits
    assert torch.equal(folded, reference)
