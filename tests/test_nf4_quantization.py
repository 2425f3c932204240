"""Quantising to 4 bits on a CPU by counting levels (`ftkit.fast.nf4_quantization`): the
bytes bitsandbytes' own kernel writes, bit for bit, and only inside the block."""

from __future__ import annotations

import pytest
import torch

from ftkit.fast import nf4_quantization
from ftkit.fast.nf4_quantization import fast_nf4_quantization
from ftkit.models import load_model


def _bytes(result):
    packed, absmax = result
    return packed.view(torch.uint8), absmax


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(
    ("shape", "dtype", "storage"),
    [
        ((1536, 576), torch.bfloat16, torch.uint8),  # a layer of the embedded model
        ((1000, 3), torch.float32, torch.uint8),  # not whole blocks of 64
        ((77,), torch.float32, torch.uint8),  # fewer than a block, an odd count
        ((576, 576), torch.float32, torch.bfloat16),  # codes stored as another dtype
    ],
)
def test_the_codes_are_bitsandbytes_own(quant_type, shape, dtype, storage):
    torch.manual_seed(3)
    weights = (torch.randn(shape) * 0.05).to(dtype)
    weights.view(-1)[:5] = torch.tensor([0.0, 1e-9, -0.05, 0.05, 0.0])  # zeros, ties, extremes
    args = (weights, 64, quant_type, storage)
    theirs = _bytes(torch.ops.bitsandbytes.quantize_4bit(*args))
    with fast_nf4_quantization() as on:
        assert on
        ours = _bytes(torch.ops.bitsandbytes.quantize_4bit(*args))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_a_value_on_a_midpoint_takes_the_lower_code_as_bucketize_gives_it():
    bounds, _ = nf4_quantization._bounds("nf4", torch.device("cpu"))
    values = torch.cat([bounds, bounds + 1e-7, bounds - 1e-7, torch.tensor([-1.0, 1.0])])
    assert torch.equal(
        nf4_quantization.codes(values, bounds).long(), torch.bucketize(values, bounds).long()
    )


def test_a_4bit_load_counts_inside_the_block_only(monkeypatch):
    """`load_model(quantization="nf4")` on a CPU quantises through `codes` (counted here),
    its layers holding the bytes bitsandbytes gives the 16-bit weights; afterwards the op
    is bitsandbytes' own again."""
    calls = []
    counted = nf4_quantization.codes
    monkeypatch.setattr(nf4_quantization, "codes", lambda *a: calls.append(1) or counted(*a))
    model, _ = load_model(quantization="nf4", dtype="fp32")
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(calls) == len(layers) == 7 * model.config.num_hidden_layers
    base, _ = load_model(dtype="fp32")
    gate = base.model.layers[3].mlp.gate_proj.weight.data
    theirs = _bytes(torch.ops.bitsandbytes.quantize_4bit(gate, 64, "nf4", torch.uint8))
    loaded = model.model.layers[3].mlp.gate_proj.weight
    assert torch.equal(loaded.data.view(torch.uint8).reshape(-1), theirs[0].reshape(-1))
    assert len(calls) == len(layers)  # the op outside the block: bitsandbytes' own
