"""LoRA dropout fused into lora_A: the dropped positions' distribution, exact gradients for a
given mask (fp32 and bf16 autocast), and the embedded model's adapters keeping their keys."""

from __future__ import annotations

import pytest
import torch

from ftkit.config import TrainConfig
from ftkit.fast import speed_up_training
from ftkit.fast.lora_dropout import DropoutLinear, dropped_positions, fuse_lora_dropout
from ftkit.models import load_model
from ftkit.training import add_adapters


def _keep(shape, p, seed):
    """The keep mask `DropoutLinear` draws after `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    keep = torch.ones(shape, dtype=torch.bool)
    keep.view(-1)[dropped_positions(keep.numel(), p, keep.device)] = False
    return keep


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_each_position_is_dropped_with_probability_p_independently(p):
    count = 1000 * 999
    torch.manual_seed(0)
    positions = dropped_positions(count, p, torch.device("cpu"))
    assert positions.dtype == torch.int64
    assert torch.equal(positions, positions.unique())  # sorted, no position twice
    assert int(positions[0]) >= 0 and int(positions[-1]) < count
    keep = _keep((1000, 999), p, seed=0)
    sigma = (p * (1 - p) / count) ** 0.5
    assert abs(keep.logical_not().float().mean().item() - p) < 5 * sigma
    columns = keep.float().mean(0)  # no position is favoured: first and last columns alike
    assert abs(columns[:100].mean() - columns[-100:].mean()) < 10 * (p * (1 - p) / 1e5) ** 0.5
    # neighbours independent: both dropped with probability p squared
    drop = keep.logical_not().view(-1)
    both = (drop[1:] & drop[:-1]).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / count) ** 0.5
    assert torch.equal(keep, _keep((1000, 999), p, seed=0))  # the seed decides
    assert not torch.equal(keep, _keep((1000, 999), p, seed=1))


def test_no_dropout_drops_nothing_and_certain_dropout_everything():
    cpu = torch.device("cpu")
    assert dropped_positions(1000, 0.0, cpu).numel() == 0
    assert dropped_positions(0, 0.05, cpu).numel() == 0
    assert dropped_positions(7, 1.0, cpu).tolist() == list(range(7))
    sizes = [dropped_positions(3, 0.05, cpu).numel() for _ in range(2000)]  # a tiny input
    assert max(sizes) <= 3 and abs(sum(sizes) / (3 * 2000) - 0.05) < 0.015


def test_training_keeps_the_dropped_positions_not_a_copy():
    layer = DropoutLinear(576, 16, bias=False)
    layer.p = 0.05
    x = torch.randn(8, 94, 576, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        layer(x)
    positions = [t for t in kept if t.dtype == torch.int32]
    assert len(positions) == 1 and abs(positions[0].numel() / x.numel() - 0.05) < 0.005
    assert {t.data_ptr() for t in kept} == {
        x.data_ptr(),
        layer.weight.data_ptr(),
        positions[0].data_ptr(),
    }


def _reference(x, weight, p, seed):
    """peft's computation, lora_A(dropout(x)), with the mask DropoutLinear draws."""
    keep = _keep(x.shape, p, seed)
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


def test_an_input_that_is_a_strided_view_drops_by_its_logical_order():
    torch.manual_seed(3)
    layer = DropoutLinear(24, 4, bias=False)
    layer.p = 0.3
    base = torch.randn(24, 6, 5)
    outputs, grads = [], []
    for x in (base.transpose(0, 2), base.transpose(0, 2).contiguous()):  # (5, 6, 24)
        x = x.detach().requires_grad_(True)
        torch.manual_seed(9)
        out = layer(x)
        out.sum().backward()
        outputs.append(out)
        grads.append(x.grad)
    assert not base.transpose(0, 2).is_contiguous()
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    torch.testing.assert_close(outputs[0], _reference(base.transpose(0, 2), layer.weight, 0.3, 9))


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
