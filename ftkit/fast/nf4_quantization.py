"""Quantising a model to 4 bits on a CPU: the same codes as bitsandbytes, in a third of the time.

Every QLoRA load quantises the base model's 210 linear layers (SmolLM2-135M) from 16 bits
to NF4 codes: blocks of 64 weights scaled by their absolute maximum, each scaled weight
given the code of the nearest of 16 levels. bitsandbytes' CPU kernel finds that code with
`torch.bucketize` over the 15 midpoints between levels, which runs one weight at a time:
2.2 of a 3.8-second load of the embedded model (one core of the AMD EPYC, fp32 under the
AVX2 stand-in; about 2.7 of 3.5 s with AVX512-BF16). The series loads a 4-bit model about
17 times (notebook 05 alone 10), every test that trains QLoRA at least once.

Here the code is counted instead: the number of midpoints below the weight, one vectorised
comparison per midpoint (6.4 ms against 17 for a 576 x 1536 layer). A weight equal to a
midpoint gets the lower code, as `bucketize` gives it, so the codes, the scales and the
packed bytes are bitsandbytes' own, bit for bit (tests/test_nf4_quantization.py).

`fast_nf4_quantization()` serves bitsandbytes' `quantize_4bit` op with it on CPU tensors
inside the block (a kernel registered for the CPU, removed on leaving); where this
bitsandbytes lacks what it needs, the block changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

OP = "bitsandbytes::quantize_4bit"


def _bounds(quant_type: str, device: torch.device):
    """bitsandbytes' own midpoints between its sorted 4-bit levels and their order, or None
    where this version does not have them."""
    try:
        from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds
    except ImportError:
        return None
    return _get_4bit_quantize_bounds(quant_type, device)


def quantize_4bit(A: torch.Tensor, blocksize: int, quant_type: str,
                  quant_storage: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """bitsandbytes' `quantize_4bit` for a CPU tensor: (packed codes, per-block absmax), as
    its default kernel computes them, each code counted (`codes`) rather than bucketized."""
    bounds, order = _bounds(quant_type, A.device)
    flat = A.reshape(-1).float()
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = flat[:full].reshape(full // blocksize, blocksize)
    absmax = blocks.abs().max(dim=-1)[0]
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    code = codes(scaled, bounds)
    if quant_type != "nf4":
        code = order[code.long()].to(torch.uint8)
    packed = ((code[::2] << 4) | code[1::2]).unsqueeze(1)
    if quant_storage != torch.uint8:
        packed = packed.squeeze().view(quant_storage).unsqueeze(1)
    return packed, absmax


def codes(scaled: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """For each value, how many of the sorted `bounds` lie below it (uint8): the index
    `torch.bucketize(scaled, bounds)` gives, a value equal to a bound counted below it."""
    code = torch.zeros(scaled.shape, dtype=torch.uint8, device=scaled.device)
    for bound in bounds.tolist():
        code += scaled > bound
    return code


@contextmanager
def fast_nf4_quantization() -> Iterator[bool]:
    """Inside this block bitsandbytes quantises CPU tensors to 4 bits with `quantize_4bit`
    (the same bytes, a third of the time); yields whether it does (False where this
    bitsandbytes has no such op or no midpoints to reuse)."""
    try:
        import bitsandbytes  # noqa: F401  (defines the op)
    except ImportError:
        yield False
        return
    if _bounds("nf4", torch.device("cpu")) is None or not hasattr(torch.ops.bitsandbytes,
                                                                   "quantize_4bit"):  # fmt: skip
        yield False
        return
    library = torch.library.Library("bitsandbytes", "FRAGMENT")
    torch.library.register_kernel(OP, "cpu", quantize_4bit, lib=library)
    try:
        yield True
    finally:
        library._destroy()
