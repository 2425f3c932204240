"""Generation from 4-bit weights on a CPU, and a contiguous input for the output layer:
faster `generate`, the same logits, and a model left exactly as trainable as before.

- `fast_4bit_generation`: bitsandbytes dequantises each 4-bit weight at every forward call;
  inside this block each layer is served by bitsandbytes' fast kernel (AVX512-BF16) or by
  its weight dequantised once (elsewhere), and restored on leaving.
- `contiguous_logits_input`: the output layer gets a contiguous copy of the last position's
  hidden states instead of a strided view, which torch's CPU `matmul` would expand.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import torch

from ftkit.fast.common import product_inputs

_IN_FAST_BLOCK = "_ftkit_in_fast_4bit_block"


@contextmanager
def fast_4bit_generation(model: torch.nn.Module) -> Iterator[int]:
    """Generate from 4-bit weights without re-dequantising them at every step, then leave
    the model exactly as trainable as before.

    bitsandbytes' CPU path dequantises each 4-bit weight at every forward call: at one
    prompt that is about a third of a generation's time on a CPU without AVX512-BF16 (2.9
    of 8.3 s, `torch.profiler`). Inside this block, per CPU:

    - with AVX512-BF16, bitsandbytes' fast kernel, which needs the 4-bit weights repacked
      into its own layout (rounding the double-quantised scales to bf16: training on it is
      broken or inexact, see `keep_4bit_trainable`). On leaving, every layer gets back its
      original weight tensor and a copy of its quantisation state taken before the block,
      so training afterwards is bit-for-bit what it would have been. (Dequantising to bf16
      once is no faster there: 54 vs 52 ms per step of 32 prompts, memory-bound.)
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
        for module in layers:
            with torch.inference_mode(False):  # a copy that is not an inference tensor
                state = copy.deepcopy(module.weight.quant_state)
            saved.append((module, module.weight.data, state))
            module.support_avx512bf16_for_cpu = True
            setattr(module, _IN_FAST_BLOCK, True)
    elif layers and _dense_weights_fit(layers):
        for module in layers:
            if "forward" in vars(module):  # a hook owns forward (accelerate): leave it be
                continue
            module.forward = _DenseForward(module)
            setattr(module, _IN_FAST_BLOCK, True)
            dense.append(module)
    try:
        yield len(saved) + len(dense)
    finally:
        for module, data, state in saved:
            module.weight.data, module.weight.quant_state = data, state
            module.support_avx512bf16_for_cpu = False
            delattr(module, _IN_FAST_BLOCK)
        for module in dense:
            del module.forward  # bitsandbytes' own again; the dense weights go with it
            delattr(module, _IN_FAST_BLOCK)


def _dense_weights_fit(layers: list[torch.nn.Module]) -> bool:
    """Whether the layers' weights, dense in fp32, take at most a quarter of free memory."""
    dense_bytes = 4 * sum(m.in_features * m.out_features for m in layers)
    return dense_bytes <= psutil.virtual_memory().available / 4


class _DenseForward:
    """`bitsandbytes.nn.Linear4bit.forward` for inference on CPU (without AVX512-BF16), with
    the weight dequantised on the first call and kept, per dtype.

    The dequantisation is `gemm_4bit`'s own (its default CPU implementation): the 8-bit
    block scales dequantised and offset, then `dequantize_4bit` into the input's dtype, then
    `linear`. Outside inference (gradients on, or training) it calls bitsandbytes' forward.
    """

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer
        self.weights: dict[torch.dtype, torch.Tensor] = {}

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self.weights:
            state = self.layer.weight.quant_state
            absmax = state.absmax
            if state.nested:
                absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
                    state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize,
                    torch.float32,
                ) + state.offset  # fmt: skip
            self.weights[dtype] = torch.ops.bitsandbytes.dequantize_4bit.default(
                self.layer.weight.data.view(-1, 1), absmax, state.blocksize, state.quant_type,
                state.shape, dtype,
            )  # fmt: skip
        return self.weights[dtype]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if layer.training or (torch.is_grad_enabled() and x.requires_grad):
            return type(layer).forward(layer, x)
        x, bias, inp_dtype = product_inputs(layer, x)
        return torch.nn.functional.linear(x, self.weight(x.dtype), bias).to(inp_dtype)


@contextmanager
def contiguous_logits_input(model) -> Iterator[None]:
    """Hand the output layer a contiguous input while generating: 1.7x faster on CPU.

    The first step of `generate` computes logits for the last position only, a strided
    slice `hidden[:, -1:, :]` of the whole prompt's states. torch's CPU `matmul` cannot fold
    that 3-D view into one matrix product, so it expands the (vocabulary x hidden) weight
    to one copy per prompt: for 32 prompts and a 49k vocabulary, 1.8 GB copied per batch,
    40% of the time of a whole evaluation. A copy of the slice (37 KB) avoids it; the
    logits are the same numbers (tests/test_evaluation.py).
    """
    layer = model.get_output_embeddings()
    handle = layer.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
