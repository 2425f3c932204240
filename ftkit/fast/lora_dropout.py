"""LoRA's dropout fused into the adapter's first matrix: the same training, faster and leaner.

peft computes each adapter as `lora_B(lora_A(dropout(x)))`. In training that costs, per
adapted layer (seven per block, three of them on the same input to q, k and v):

- a dropped copy of the layer's input, kept until the backward pass (16 bits per value);
- its mask, drawn by torch's CPU Bernoulli sampler at one random number per value: a fifth
  of a QLoRA step's time on this kit's 2-core CPU (benchmarks/RESULTS.md has the profile).

`DropoutLinear` takes `lora_A`'s place (a `torch.nn.Linear` subclass, so the adapter's
weights and state-dict keys stay as peft wrote them) and `lora_dropout` becomes the
identity. It draws the keep mask from 64-bit random integers read as four 16-bit ones (the
keep probability exact to 1/65536, four times fewer draws), keeps the mask as one bit per
value instead of the dropped copy, and recomputes the dropped input in the backward pass.
Same distribution, same gradients for a given mask (tests/test_lora_dropout.py); in eval
mode it is the plain linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LEVELS = 1 << 16  # the mask's resolution: 16-bit random numbers
# times 8 bytes of 0/1 read as one int64 (little-endian), moves byte i's bit to bit 56 + i
_GATHER = 0x0102040810204080


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each value True with probability 1 - p (to 1/65536)."""
    count = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), device=device)
    draws = words.view(torch.int16)[:count].view(shape)  # uniform on [-32768, 32767]
    return draws >= round(p * _LEVELS) - _LEVELS // 2


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as one bit per value: uint8, ceil(n / 8) long (see `unpack_bits`)."""
    flat = mask.reshape(-1)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    words = flat.view(torch.uint8).view(torch.int64)
    return ((words * _GATHER) >> 56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = packed.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and_(1)
    return bits.view(-1)[: math.prod(shape)].view(torch.bool).view(shape)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What autocast would compute a linear layer in here: its dtype if on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _zero_dropped(values: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """`values` (a fresh tensor) with the dropped positions zeroed in place. Multiplying by the
    bool mask instead first converts the whole mask to `values`' dtype, a copy as large as
    `values`: on the AVX2-only CPU (fp32) a QLoRA run of 128 examples peaked at 2.16 GiB
    this way against 2.25, same losses, same speed within noise (benchmarks/RESULTS.md)."""
    return values.masked_fill_(drop, 0)


class _DropoutLinear(torch.autograd.Function):
    """y = (x * keep / (1 - p)) @ W.T, saving x (already alive) and the mask's bits."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        dtype = _compute_dtype(x)
        keep = keep_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        dropped = _zero_dropped(x.to(dtype).mul(scale), keep.logical_not())
        ctx.save_for_backward(x, weight, pack_bits(keep))
        ctx.scale, ctx.dtype = scale, dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(dropped, weight.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, packed = ctx.saved_tensors
        drop = unpack_bits(packed, x.shape).logical_not()
        grad = grad.to(ctx.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _zero_dropped(grad @ weight.to(ctx.dtype), drop).mul_(ctx.scale).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = _zero_dropped(x.to(ctx.dtype).mul(ctx.scale), drop)
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
