"""Generation from 4-bit weights on a CPU, and a contiguous input for the output layer:
faster `generate`, the same logits (up to rounding in the output layer's fp32 product), and
a model left exactly as trainable as before.

- `fast_4bit_generation`: bitsandbytes dequantises each 4-bit weight at every forward call;
  inside this block each layer is served by its weight dequantised once, or (with
  AVX512-BF16, for products of a few rows) by bitsandbytes' fast kernel, and restored on
  leaving.
- `contiguous_logits_input`: the output layer gets a contiguous copy of the last position's
  hidden states instead of a strided view, which torch's CPU `matmul` would expand, and in
  fp32, from two rows on, its product taken as (weight x rows^T)^T, faster at its shape.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import psutil
import torch

from ftkit.fast.common import product_inputs

_IN_FAST_BLOCK = "_ftkit_in_fast_4bit_block"
PACKED_ROWS = 8  # with AVX512-BF16: fewer rows than this go to bitsandbytes' packed kernel


@contextmanager
def fast_4bit_generation(model: torch.nn.Module) -> Iterator[int]:
    """Generate from 4-bit weights without re-dequantising them at every step, then leave
    the model exactly as trainable as before.

    bitsandbytes' CPU path dequantises each 4-bit weight at every forward call: at one
    prompt that is about a third of a generation's time on a CPU without AVX512-BF16 (2.9
    of 8.3 s, `torch.profiler`). Inside this block, per CPU:

    - with AVX512-BF16, bitsandbytes' fast kernel for products of fewer than `PACKED_ROWS`
      rows (a decoding step of one to a few prompts), which needs the 4-bit weights
      repacked into its own layout (rounding the double-quantised scales to bf16: training
      on it is broken or inexact, see `keep_4bit_trainable`); from `PACKED_ROWS` rows on (a
      prompt's prefill, a step of a larger batch) the weight dequantised once, as below,
      since that kernel is a loop of vector products: on a 2-core Xeon with AMX, for one
      576x1536 layer, 0.06 ms against 0.08 dense at 1 row, 0.41 against 0.10 at 32 and 50
      against 2.8 at 4,096 (`benchmarks/generation_4bit.py --layer-rows`; an earlier
      measurement with AVX512-BF16 found a decoding step of 32 prompts level, 52 ms dense
      against 54 packed). On leaving, every layer gets back its original weight tensor and a
      copy of its quantisation state taken before the block, so training afterwards is
      bit-for-bit what it would have been. The dense weights need the memory check below.
    - without it, each layer's weight dequantised once, on its first call, as bitsandbytes'
      own `gemm_4bit` dequantises it, and kept for the block: the products are bit-for-bit
      bitsandbytes', and a generation is 1.5x faster at one prompt, 1.3x at eight
      (benchmarks/generation_4bit.py, on a 2-core AMD EPYC). This costs the dense weights'
      memory (425 MB in fp32 for the embedded model) while the block lasts, so it is done
      only where they take at most a quarter of the memory available; else nothing changes.

    Yields how many layers are served fast (0 on CUDA, whose kernels need neither). Blocks
    nest: an inner one leaves the layers to the outer, so an evaluation that generates in
    many batches inside one block repacks or dequantises once (0.2 to 0.4 s for the
    embedded model), not per batch.
    """
    from bitsandbytes.functional import has_avx512bf16
    from bitsandbytes.nn import Linear4bit

    layers = [
        module
        for module in model.modules()
        if isinstance(module, Linear4bit)
        and module.weight.device.type == "cpu"
        and not getattr(module, _IN_FAST_BLOCK, False)  # an outer block serves it
    ]
    saved, dense = [], []
    if has_avx512bf16():
        fits = dense_weights_fit(layers)
        for module in layers:
            with torch.inference_mode(False):  # a copy that is not an inference tensor
                state = copy.deepcopy(module.weight.quant_state)
            saved.append((module, module.weight.data, state))
            module.support_avx512bf16_for_cpu = True
            if fits and "forward" not in vars(module):  # else a hook owns it (accelerate)
                module.forward = DenseForward(module, module.weight.data, state, PACKED_ROWS)
                dense.append(module)
    elif layers and dense_weights_fit(layers):
        for module in layers:
            if "forward" in vars(module):  # a hook owns forward (accelerate): leave it be
                continue
            module.forward = DenseForward(module)
            dense.append(module)
    served = [module for module, _, _ in saved] or dense
    for module in served:
        setattr(module, _IN_FAST_BLOCK, True)
    try:
        yield len(served)
    finally:
        for module, data, state in saved:
            module.weight.data, module.weight.quant_state = data, state
            module.support_avx512bf16_for_cpu = False
        for module in dense:
            del module.forward  # bitsandbytes' own again; the dense weights go with it
        for module in served:
            delattr(module, _IN_FAST_BLOCK)


def dense_weights_fit(layers: list[torch.nn.Module]) -> bool:
    """Whether the layers' weights, dense in fp32, take at most a quarter of free memory."""
    dense_bytes = 4 * sum(m.in_features * m.out_features for m in layers)
    return dense_bytes <= psutil.virtual_memory().available / 4


class DenseForward:
    """`bitsandbytes.nn.Linear4bit.forward` for inference on CPU, with the weight dequantised
    on the first call and kept, per dtype.

    The dequantisation is `gemm_4bit`'s own (its default CPU implementation): the 8-bit
    block scales dequantised and offset, then `dequantize_4bit` into the input's dtype, then
    `linear`. It reads `data` and `state` (the layer's 4-bit weight and quantisation state
    as they were before bitsandbytes repacked them, where it does) or else the layer's own.
    Outside inference (gradients on, or training), and for products of fewer than
    `min_rows` rows, it calls bitsandbytes' forward.
    """

    def __init__(
        self, layer: torch.nn.Module, data: torch.Tensor | None = None, state=None,
        min_rows: int = 0,
    ) -> None:  # fmt: skip
        self.layer, self.data, self.state, self.min_rows = layer, data, state, min_rows
        self.weights: dict[torch.dtype, torch.Tensor] = {}

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The layer's weight dequantised into `dtype`, made on the first call and kept."""
        if dtype not in self.weights:
            self.weights[dtype] = self.dequantize(dtype)
        return self.weights[dtype]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The layer's weight dequantised into `dtype`: a fresh tensor each call."""
        state = self.layer.weight.quant_state if self.state is None else self.state
        data = self.layer.weight.data if self.data is None else self.data
        absmax = state.absmax
        if state.nested:
            absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
                state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize,
                torch.float32,
            ) + state.offset  # fmt: skip
        return torch.ops.bitsandbytes.dequantize_4bit.default(
            data.view(-1, 1), absmax, state.blocksize, state.quant_type, state.shape, dtype,
        )  # fmt: skip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if (
            layer.training
            or (torch.is_grad_enabled() and x.requires_grad)
            or x.numel() < self.min_rows * x.shape[-1]
        ):
            return type(layer).forward(layer, x)
        x, bias, inp_dtype = product_inputs(layer, x)
        return torch.nn.functional.linear(x, self.weight(x.dtype), bias).to(inp_dtype)


@contextmanager
def contiguous_logits_input(model) -> Iterator[None]:
    """Hand the output layer a contiguous input while generating: 1.7x faster on CPU; and
    in fp32, for two rows or more, its product computed as (weight x rows^T)^T.

    The first step of `generate` computes logits for the last position only, a strided
    slice `hidden[:, -1:, :]` of the whole prompt's states. torch's CPU `matmul` cannot fold
    that 3-D view into one matrix product, so it expands the (vocabulary x hidden) weight
    to one copy per prompt: for 32 prompts and a 49k vocabulary, 1.8 GB copied per batch,
    40% of the time of a whole evaluation. A copy of the slice (37 KB) avoids it; the
    logits are the same numbers (tests/test_evaluation.py).

    The output layer is the largest product of a decoding step (49152 x 576 for the
    embedded model), and torch's CPU `linear` is slow at its shape for a few rows: on the
    2-core AMD EPYC with AVX2 only, 41 ms for 8 rows, 54 ms for 32, against 14 and 30 ms
    for the same product taken the other way round (`benchmarks/RESULTS.md`, 2026-12-05),
    bit for bit equal at 1, 16, 24, 32 and 80 rows and within 6e-5 of the logits at 2 to 8
    (float rounding in another order). Measured in fp32 only: in bf16 (CPUs with
    AVX512-BF16) the layer keeps `linear`.
    """
    layer = model.get_output_embeddings()
    if type(layer) is torch.nn.Linear and "forward" not in vars(layer):
        layer.forward = MethodType(_output_product, layer)
        try:
            yield
        finally:
            del layer.forward
        return
    handle = layer.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _output_product(layer: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """`layer(hidden)` for the output layer: (weight x rows^T)^T for two fp32 rows or more."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    if len(rows) < 2 or layer.weight.dtype != torch.float32 or hidden.dtype != torch.float32:
        return torch.nn.functional.linear(hidden.contiguous(), layer.weight, layer.bias)
    logits = torch.mm(layer.weight, rows.t()).t()
    if layer.bias is not None:
        logits = logits + layer.bias
    return logits.contiguous().view(*hidden.shape[:-1], -1)
