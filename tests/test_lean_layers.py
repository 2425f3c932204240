"""Lean autograd for the frozen norms, SwiGLU and short attention: the library's forward
values, autograd's gradients, less kept for the backward pass, and nothing changed outside
training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _autograd import kept_storages
from peft.helpers import disable_input_dtype_casting

from ftkit.config import TrainConfig
from ftkit.fast import speed_up_training
from ftkit.fast.lean_layers import SHORT_ATTENTION, rms_norm, short_attention, silu_mul
from ftkit.models import load_model
from ftkit.training import add_adapters

DTYPES = [torch.float32, torch.bfloat16]


def _grads(output, inputs, seed=3):
    torch.manual_seed(seed)
    return torch.autograd.grad(output, inputs, torch.randn_like(output))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_llamas_norm_and_its_gradient(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-5).to(dtype).requires_grad_(False)
    norm.weight.copy_(torch.randn(64))
    x = (3 * torch.randn(4, 7, 64)).to(dtype).requires_grad_(True)
    library, lean = norm(x), rms_norm(x, norm.weight, norm.variance_epsilon)
    assert lean.dtype == library.dtype and torch.equal(lean, library)
    torch.testing.assert_close(_grads(lean, x), _grads(library, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_swiglu_and_its_gradients(dtype):
    torch.manual_seed(1)
    gate, up = (torch.randn(4, 7, 32, dtype=dtype, requires_grad=True) for _ in range(2))
    library, lean = F.silu(gate) * up, silu_mul(gate, up)
    assert torch.equal(lean, library)
    for a, b in zip(_grads(lean, (gate, up)), _grads(library, (gate, up)), strict=True):
        assert torch.equal(a, b)


def _eager(q, k, v, mask, scale):
    """transformers' eager attention: repeated kv heads, additive minimum, fp32 softmax."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padded", [False, True])
def test_short_attention_matches_eager_attention_with_grouped_heads(dtype, padded):
    torch.manual_seed(2)
    batch, heads, kv_heads, length, dim = 3, 9, 3, 13, 16
    q = torch.randn(batch, heads, length, dim, dtype=dtype, requires_grad=True)
    k, v = (
        torch.randn(batch, kv_heads, length, dim, dtype=dtype, requires_grad=True) for _ in "kv"
    )
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    mask = causal.repeat(batch, 1, 1, 1)
    if padded:  # the first row's last four positions are padding (right padding)
        mask[0, :, :, -4:] = False
        mask[0, :, -4:, -4:] = torch.eye(4, dtype=torch.bool)  # as transformers' sdpa mask
    lean = short_attention(q, k, v, mask if padded else None, 0.25)
    library = _eager(q, k, v, mask, 0.25)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(lean, library, **tolerance)
    for a, b in zip(_grads(lean, (q, k, v)), _grads(library, (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def _saved_activation_bytes(model, batch) -> int:
    """Bytes autograd keeps for the decoder blocks' backward pass, parameters excluded (the
    output layer's logits, which ftkit's trainer computes at labelled positions only, too)."""
    with (
        kept_storages(model) as kept,
        torch.autocast("cpu", dtype=torch.bfloat16),  # as ftkit's trainer on this CPU
        disable_input_dtype_casting(model),
    ):
        decoder = model.get_base_model().model
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        decoder(**inputs).last_hidden_state.float().square().mean().backward()
    return sum(kept.values())


def _adapted(lean: bool, dtype: torch.dtype):
    model, tokenizer = load_model(dtype=dtype)
    config = TrainConfig(method="lora", lora_dropout=0.0, lean_layers=lean)
    adapted = add_adapters(model, config)
    speed_up_training(adapted, config.lean_layers)
    return adapted.train(), tokenizer


def _batch(tokenizer) -> dict:
    texts = ["A printer that will not print.", "Refund my order, please"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def test_the_embedded_model_trains_the_same():
    grads, losses = {}, {}
    for lean in (False, True):
        model, tokenizer = _adapted(lean, torch.float32)  # fp32: differences are the method's
        losses[lean] = model(**_batch(tokenizer)).loss
        losses[lean].backward()
        grads[lean] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert model.config._attn_implementation == SHORT_ATTENTION
    assert losses[True].item() == pytest.approx(losses[False].item(), rel=1e-5)
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_training_keeps_less_for_the_backward_pass():
    saved = {}
    for lean in (False, True):
        model, tokenizer = _adapted(lean, torch.bfloat16)
        batch = _batch(tokenizer)
        saved[lean] = _saved_activation_bytes(model, batch)
    c, tokens = model.config, batch["input_ids"].numel()
    # per token: every norm's fp32 copy becomes its 16-bit input (2 bytes less per value),
    # and neither silu(gate) nor attention's output is kept (2 bytes per value each)
    per_token = 2 * ((2 * c.num_hidden_layers + 1) * c.hidden_size
                     + c.num_hidden_layers * (c.intermediate_size + c.hidden_size))  # fmt: skip
    assert saved[False] - saved[True] >= 0.95 * tokens * per_token, saved


def test_outside_training_the_model_computes_exactly_as_before():
    model, tokenizer = load_model()
    inputs = tokenizer("Where is my parcel?", return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits
    adapted = add_adapters(model, TrainConfig(method="lora"))
    speed_up_training(adapted)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(**inputs).logits, before)
        assert torch.equal(adapted.train()(**inputs).logits, before)  # no gradients: library path


def test_other_architectures_are_left_alone():
    from transformers import GPT2Config, GPT2LMHeadModel

    from ftkit.fast.lean_layers import use_lean_layers

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert use_lean_layers(model) == []
    assert model.config._attn_implementation != SHORT_ATTENTION


def test_full_fine_tuning_under_bf16_autocast_trains_as_without_lean_layers():
    # Full fine-tuning keeps fp32 weights and computes in bf16 under autocast: rotary
    # embeddings hand attention an fp32 q beside a bf16 v, and the backward must cope.
    grads, losses = {}, {}
    for lean in (False, True):
        model, tokenizer = load_model(dtype=torch.float32)
        speed_up_training(model, lean)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[lean] = model(**_batch(tokenizer)).loss
        losses[lean].backward()
        grads[lean] = torch.cat([p.grad.flatten().float() for p in model.parameters()])
    assert losses[True].item() == pytest.approx(losses[False].item(), rel=1e-2)
    gap = (grads[True] - grads[False]).norm() / grads[False].norm()
    assert gap < 0.05, f"gradients differ by {gap:.3f} of their norm"
