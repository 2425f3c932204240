"""LoRA's dropout fused into the adapter's first matrix: the same training, faster and leaner.

peft computes each adapter as `lora_B(lora_A(dropout(x)))`. In training that costs, per
adapted layer (seven per block, three of them on the same input to q, k and v):

- a dropped copy of the layer's input, kept until the backward pass (16 bits per value);
- its mask, drawn by torch's CPU Bernoulli sampler at one random number per value: a fifth
  of a QLoRA step's time on this kit's 2-core CPU (benchmarks/RESULTS.md has the profile).

`DropoutLinear` takes `lora_A`'s place (a `torch.nn.Linear` subclass, so the adapter's
weights and state-dict keys stay as peft wrote them) and `lora_dropout` becomes the
identity. It draws only the positions it drops: the gaps between dropped values of a
Bernoulli(p) sequence are geometric, so `dropped_positions` draws about `p * n` geometric
gaps and adds them up (at LoRA's usual p = 0.05, one random number per twenty values, each
value dropped independently with probability p, to 1e-7). It keeps those positions (32 bits
per dropped value, 1.6 bits per value at p = 0.05) instead of the dropped copy, zeroes them
in a copy of the input that lives only while the product runs, recomputes that copy in the
backward pass, and scales the adapter's 16-wide output by 1 / (1 - p) instead of its input.
Same distribution, same gradients for a given mask (tests/test_lora_dropout.py); in eval
mode it is the plain linear layer. The version before drew a 16-bit number for every value
and kept the mask as bits: forward and backward of one layer on the course CPU (bf16, 460
tokens) 1.7 -> 0.9 ms at width 576, 3.7 -> 2.2 ms at 1536 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dropped_positions(count: int, p: float, device: torch.device) -> torch.Tensor:
    """The positions of `range(count)` that dropout with probability `p` drops: sorted int64,
    each position in with probability p, independently of the others."""
    if p <= 0.0 or count == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if p >= 1.0:
        return torch.arange(count, device=device)
    mean = count * p  # gaps drawn per round: the mean count plus six standard deviations
    draws = int(mean + 6 * math.sqrt(mean * (1 - p))) + 16
    per_log = 1.0 / math.log1p(-p)
    rounds, reached = [], 0
    while reached < count:  # a second round about once in a billion calls
        # geometric gaps by inversion, floor(log(u) / log(1 - p)) + 1 for u uniform on (0, 1]:
        # three times faster than torch's geometric_ here; float32's u (24 bits) cuts the
        # gaps' tail where it has probability below 1e-7 (at p = 0.05, gaps over 325)
        gaps = torch.rand(draws, device=device).neg_().add_(1).log_().mul_(per_log)
        ends = gaps.floor_().add_(1).to(torch.int64).cumsum_(0).add_(reached)
        rounds.append(ends)
        reached = int(ends[-1])
    ends = rounds[0] if len(rounds) == 1 else torch.cat(rounds)
    return ends[ends <= count].sub_(1)  # a gap of g ends at value g - 1


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What autocast would compute a linear layer in here: its dtype if on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _dropped_copy(x: torch.Tensor, dtype: torch.dtype, positions: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `x` in `dtype` with the values at the flat `positions` (in `x`'s
    logical order, whatever its strides) set to zero."""
    copy = x.to(dtype, copy=True, memory_format=torch.contiguous_format)
    copy.view(-1).index_fill_(0, positions, 0)
    return copy


class _DropoutLinear(torch.autograd.Function):
    """y = (x * keep) @ W.T / (1 - p), saving x (already alive) and the dropped positions."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        dtype = _compute_dtype(x)
        positions = dropped_positions(x.numel(), p, x.device)
        dropped = _dropped_copy(x, dtype, positions)
        # int32 halves what is kept; a layer's input of 2**31 values or more keeps int64
        small = x.numel() < 2**31
        ctx.save_for_backward(x, weight, positions.to(torch.int32) if small else positions)
        ctx.scale, ctx.dtype = 1.0 / (1.0 - p), dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(dropped, weight.to(dtype)).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, positions = ctx.saved_tensors
        positions = positions.to(torch.int64)
        grad = grad.to(ctx.dtype) * ctx.scale
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight.to(ctx.dtype)
            grad_x.view(-1).index_fill_(0, positions, 0)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = _dropped_copy(x, ctx.dtype, positions)
            rows = grad.reshape(-1, grad.shape[-1])
            grad_w = (rows.t() @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return grad_x, grad_w, None


class DropoutLinear(torch.nn.Linear):
    """`lora_A` with LoRA's dropout inside (see the module docstring); no bias, like peft's."""

    p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or not torch.is_grad_enabled():
            return super().forward(x)
        return _DropoutLinear.apply(x, self.weight, self.p)


def fuse_lora_dropout(model: torch.nn.Module) -> int:
    """Move every LoRA adapter's dropout into its `lora_A` (in place); returns how many."""
    fused = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            first = module.lora_A[name]
            if not isinstance(dropout, torch.nn.Dropout) or type(first) is not torch.nn.Linear:
                continue
            if first.bias is not None:
                continue
            first.__class__ = DropoutLinear  # same parameters, same state-dict keys
            first.p = float(dropout.p)
            dropouts[name] = torch.nn.Identity()
            fused += 1
    return fused
