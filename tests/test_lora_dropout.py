"""LoRA dropout fused into lora_A: the mask's distribution, exact gradients for a given
mask (fp32 and bf16 autocast), and the embedded model's adapters keeping their keys."""

from __future__ import annotations

import pytest
import torch

from ftkit.config import TrainConfig
from ftkit.fast import speed_up_training
from ftkit.fast.lora_dropout import (
    DropoutLinear,
    fuse_lora_dropout,
    keep_mask,
    pack_bits,
    unpack_bits,
)
from ftkit.models import load_model
from ftkit.training import add_adapters


@pytest.mark.parametrize("p", [0.0, 0.05, 0.5])
def test_the_keep_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1000, 999]), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (1000, 999)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.002  # 999,000 draws: 5 sigma
    columns = mask.float().mean(0)  # no position is favoured (the four 16-bit lanes)
    assert abs(columns[0::4].mean() - columns[3::4].mean()) < 0.01
    torch.manual_seed(0)
    assert torch.equal(mask, keep_mask(torch.Size([1000, 999]), p, torch.device("cpu")))


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 7), (2, 94, 576)])
def test_masks_pack_to_one_bit_per_value_and_back(shape):
    torch.manual_seed(0)
    mask = torch.rand(shape) < 0.9
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    one = torch.zeros(9, dtype=torch.bool)
    one[7] = one[8] = True  # bit order: value i is bit i % 8 of byte i // 8
    assert pack_bits(one).tolist() == [128, 1]


def test_training_keeps_the_mask_as_bits():
    layer = DropoutLinear(576, 16, bias=False)
    layer.p = 0.05
    x = torch.randn(8, 94, 576, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        layer(x)
    masks = [t for t in kept if t.dtype == torch.uint8]
    assert [m.numel() for m in masks] == [x.numel() // 8]
    assert {t.data_ptr() for t in kept} == {
        x.data_ptr(),
        layer.weight.data_ptr(),
        masks[0].data_ptr(),
    }


def _reference(x, weight, p, seed):
    """peft's computation, lora_A(dropout(x)), with the mask DropoutLinear draws."""
    torch.manual_seed(seed)
    keep = keep_mask(x.shape, p, x.device)
    return torch.nn.functional.linear(x * keep / (1 - p), weight)


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_match_dropout_then_linear_for_the_same_mask(autocast):
    torch.manual_seed(1)
    layer = DropoutLinear(48, 8, bias=False)
    layer.p = 0.25
    x = torch.randn(3, 5, 48, dtype=torch.bfloat16 if autocast else torch.float32)
    outputs, grads = [], []
    for fused in (True, False):
        x_ = x.clone().requires_grad_(True)
        w = layer.weight.detach().clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                torch.manual_seed(7)
                layer.weight = torch.nn.Parameter(w)
                out = layer(x_)
            else:
                out = _reference(x_, w, 0.25, seed=7)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outputs.append(out)
        grads.append((x_.grad, layer.weight.grad if fused else w.grad))
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-6, "rtol": 1e-5}
    assert outputs[0].dtype == outputs[1].dtype
    torch.testing.assert_close(outputs[0], outputs[1], **tolerance)
    for fused, plain in zip(grads[0], grads[1], strict=True):
        assert fused.dtype == plain.dtype
        torch.testing.assert_close(fused, plain, **tolerance)


def test_eval_mode_and_no_grad_are_the_plain_layer():
    torch.manual_seed(2)
    layer = DropoutLinear(16, 4, bias=False)
    layer.p = 0.5
    x = torch.randn(2, 16)
    plain = torch.nn.functional.linear(x, layer.weight)
    assert torch.equal(layer.eval()(x), plain)
    with torch.no_grad():
        assert torch.equal(layer.train()(x), plain)
    assert not torch.equal(layer.train()(x), plain)


def test_the_embedded_models_adapters_are_fused_with_peft_keys():
    model, _ = load_model()
    config = TrainConfig(method="lora")
    fused = add_adapters(model, config)
    speed_up_training(fused, config.lean_layers)
    layers = [m for m in fused.modules() if isinstance(m, DropoutLinear)]
    assert len(layers) == 7 * fused.config.num_hidden_layers
    assert all(layer.p == config.lora_dropout for layer in layers)
    assert not any(isinstance(m, torch.nn.Dropout) for m in fused.modules())
    plain_model, _ = load_model()
    plain = add_adapters(plain_model, TrainConfig(method="lora", lora_dropout=0.0))
    speed_up_training(plain)
    assert fuse_lora_dropout(plain) == 0  # no dropout: nothing to fuse
    assert list(fused.state_dict()) == list(plain.state_dict())
