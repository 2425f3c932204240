"""The lean 4-bit LoRA layer: bit for bit peft's and bitsandbytes' training numbers, the
8-bit block scales dequantised once (and again only when they change), peft's code
everywhere else."""

from __future__ import annotations

import pytest
import torch
from peft.helpers import disable_input_dtype_casting
from torch.utils._python_dispatch import TorchDispatchMode

from ftkit.config import TrainConfig
from ftkit.fast import speed_up_training
from ftkit.fast.lean_4bit import flat_quant_state
from ftkit.models import load_model
from ftkit.training import add_adapters


def _qlora(lean: bool):
    model, tokenizer = load_model(quantization="nf4")
    model = add_adapters(model, TrainConfig(method="qlora", lora_dropout=0.1)).train()
    speed_up_training(model)
    for module in model.modules():
        if not lean and "forward" in vars(module) and type(module).__name__ == "Linear4bit":
            del module.forward  # back to peft's own forward
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters matter
            parameter.data.normal_(0, 0.02, generator=generator)
    return model, tokenizer


@pytest.fixture(scope="module")
def models():
    return {lean: _qlora(lean) for lean in (False, True)}


def _batch(tokenizer) -> dict:
    texts = ["A printer that will not print.", "Refund my order, please: it came broken"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def _losses_and_grads(model, tokenizer, autocast: bool, steps: int = 2):
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks for both models
    losses = []
    for _ in range(steps):
        with (
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
            disable_input_dtype_casting(model, active=autocast),
        ):
            loss = model(**_batch(tokenizer)).loss
        loss.backward()
        losses.append(loss.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, grads


@pytest.mark.parametrize("autocast", [True, False])
def test_training_numbers_are_peft_and_bitsandbytes_bit_for_bit(models, autocast):
    (library, tokenizer), (lean, _) = models[False], models[True]
    expected_losses, expected_grads = _losses_and_grads(library, tokenizer, autocast)
    losses, grads = _losses_and_grads(lean, tokenizer, autocast)
    assert [loss.item() for loss in losses] == [loss.item() for loss in expected_losses]
    assert grads.keys() == expected_grads.keys() and len(grads) == 420  # 30 blocks x 7 x A, B
    assert not [name for name, grad in grads.items() if not torch.equal(grad, expected_grads[name])]


class _CountScaleDequantisations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()  # gemm_4bit's 8th argument: 8-bit scales it dequantises inside
        self.calls += name == "bitsandbytes::dequantize_blockwise" or (
            name == "bitsandbytes::gemm_4bit" and len(args) > 7 and args[7] is not None
        )
        return func(*args, **(kwargs or {}))


def test_block_scales_are_dequantised_once_and_again_when_they_change(models):
    counts = {}
    for lean, (model, tokenizer) in models.items():
        _losses_and_grads(model, tokenizer, autocast=True, steps=1)  # scales kept (lean)
        with _CountScaleDequantisations() as counter:
            _losses_and_grads(model, tokenizer, autocast=True, steps=1)
        counts[lean] = counter.calls
    assert counts[True] == 0
    # the library: 210 in the forward pass, 207 in the backward (block 0's q, k and v take
    # the embeddings, which need no gradient)
    assert counts[False] == 210 + 207

    model, tokenizer = models[True]
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    state = layer.base_layer.weight.quant_state
    kept = flat_quant_state(layer.base_layer)
    original = state.absmax.clone()
    try:
        state.absmax.add_(1)  # the 8-bit scales change: the kept fp32 ones must follow
        changed = flat_quant_state(layer.base_layer)
        assert changed is not kept and not torch.equal(changed.absmax, kept.absmax)
        import bitsandbytes.functional as bnbf

        library = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
        assert torch.equal(changed.absmax, library.float())
    finally:
        state.absmax.copy_(original)
    assert torch.equal(flat_quant_state(layer.base_layer).absmax, kept.absmax)
    moved = flat_quant_state(layer.base_layer)
    state.absmax = state.absmax.clone()  # as moving the layer to another device does
    assert flat_quant_state(layer.base_layer) is not moved


def test_outside_training_peft_runs_its_own_code(models):
    model, _ = models[True]
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16)
    with torch.no_grad():  # no gradients: peft's forward, whose clone leaves x's result alone
        assert torch.equal(layer(x), type(layer).forward(layer, x))
    model.eval()
    try:
        assert torch.equal(layer(x), type(layer).forward(layer, x))
    finally:
        model.train()
