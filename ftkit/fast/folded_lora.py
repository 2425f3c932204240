"""LoRA folded into its layer's weight while generating in fp32 on a CPU: one product per
layer and token instead of three.

peft computes a LoRA layer as `base(x) + lora_B(lora_A(x)) * scaling`: the base product
plus two thin ones, a scaling, a cast and an addition. While generating nothing trains, so
inside `folded_lora` each such layer computes `x @ (W + scaling * B @ A)^T` instead, with
that sum formed once per block, and again if the adapter's weights change in it (W
dequantised as bitsandbytes' own `gemm_4bit` does for a 4-bit base). The logits agree with
peft's to fp32 rounding (the same sum, added in another order). On the 2-core AVX2-only
EPYC a fine-tune answered 80 test tickets in 54.9 s instead of 66.1, every reply the same
(benchmarks/folded_lora.py, benchmarks/RESULTS.md).

Only in fp32: in bf16 the sum would round the small LoRA term away against the weight
(bf16 keeps 8 bits), where peft adds it in fp32. A layer is served folded only on calls
where peft would compute exactly one vanilla adapter (not training, gradients off, the
adapter on, not merged, no DoRA or other variant, no per-row `adapter_names`); any other
call, such as the adapter switched off inside the block, gets the layer's own forward, so
the block may surround a toggle. On leaving, every layer gets back the forward it had.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ftkit.fast.common import product_inputs
from ftkit.fast.generation_4bit import DenseForward, dense_weights_fit
from ftkit.fast.lean_4bit import is_lean_forward

_IN_BLOCK = "_ftkit_in_folded_lora_block"


@contextmanager
def folded_lora(model: torch.nn.Module) -> Iterator[int]:
    """Serve every CPU LoRA layer of `model` with its adapter folded into its weight, for
    the calls described in the module docstring; yields how many layers may be served.

    The folded weights (one fp32 copy of each adapted layer, made on its first folded call)
    are made only where they take at most a quarter of free memory, else nothing changes.
    Blocks nest: an inner one leaves the layers to the outer.
    """
    from peft.tuners.lora import LoraLayer  # peft loads with the adapters, not with ftkit.fast

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and _foldable(m)]
    if not layers or not dense_weights_fit([module.base_layer for module in layers]):
        yield 0
        return
    kept = []
    for module in layers:
        own = vars(module).get("forward")  # ftkit's lean training forward, or none
        kept.append((module, own))
        module.forward = _FoldedForward(module, own)
        setattr(module, _IN_BLOCK, True)
    try:
        yield len(layers)
    finally:
        for module, own in kept:
            if own is None:
                del module.forward
            else:
                module.forward = own
            delattr(module, _IN_BLOCK)


def _foldable(module: torch.nn.Module) -> bool:
    """Whether a peft LoRA layer is a `Linear` over a plain or 4-bit linear layer on the
    CPU, whose forward is peft's or ftkit's lean one (not a hook's), not served by an outer
    block."""
    if getattr(module, _IN_BLOCK, False):
        return False
    base = getattr(module, "base_layer", None)
    own = vars(module).get("forward")
    return (
        (type(base) is torch.nn.Linear or _is_4bit(base))
        and base.weight.device.type == "cpu"
        and not getattr(module, "fan_in_fan_out", False)
        and not hasattr(module, "_hf_hook")
        and (own is None or is_lean_forward(own))
    )


def _is_4bit(layer) -> bool:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    return isinstance(layer, Linear4bit)


class _FoldedForward:
    """A LoRA layer's forward inside `folded_lora`: the folded product where it computes
    what peft would, else the layer's own forward (`own`, or peft's)."""

    def __init__(self, layer: torch.nn.Module, own=None) -> None:
        self.layer, self.own = layer, own
        self.four_bit = _is_4bit(layer.base_layer)  # decided once: this is on every token's path
        self.weights: dict[str, tuple[tuple, torch.Tensor]] = {}  # name -> (version, weight)

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._adapter(x, args, kwargs)
        if name is None:
            if self.own is not None:
                return self.own(x, *args, **kwargs)
            return type(self.layer).forward(self.layer, x, *args, **kwargs)
        base = self.layer.base_layer
        if self.four_bit:
            x, bias, out_dtype = product_inputs(base, x)
        else:
            bias, out_dtype = base.bias, x.dtype
        return torch.nn.functional.linear(x, self.weight(name), bias).to(out_dtype)

    def _adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one vanilla adapter peft would add on this call, if folding computes it."""
        layer = self.layer
        adapters = [name for name in layer.active_adapters if name in layer.lora_A]
        if (
            args
            or kwargs
            or x.dtype != torch.float32
            or layer.training
            or (torch.is_grad_enabled() and x.requires_grad)
            or layer.disable_adapters
            or layer.merged
            or len(adapters) != 1
            or adapters[0] in layer.lora_variant
        ):
            return None
        name = adapters[0]
        a, b = layer.lora_A[name], layer.lora_B[name]
        if a.training or b.bias is not None or a.weight.dtype != torch.float32:
            return None
        base = layer.base_layer
        if getattr(base, "compute_dtype", None) not in (None, torch.float32):
            return None  # a 4-bit layer computing in 16 bits
        state = getattr(base.weight, "quant_state", None)
        served = vars(base).get("forward")
        if getattr(state, "packing_format_for_cpu", False) and not isinstance(served, DenseForward):
            return None  # repacked for bitsandbytes' bf16 kernel, the original not at hand
        return name

    def weight(self, name: str) -> torch.Tensor:
        """`W + scaling * B @ A` in fp32, formed on the first call for `name` and kept until
        the adapter's weights change (a checkpoint loaded into it in place, a step trained)."""
        layer = self.layer
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        version = (a.data_ptr(), a._version, b.data_ptr(), b._version, layer.scaling[name])
        kept = self.weights.get(name)
        if kept is None or kept[0] != version:
            base = layer.base_layer
            if self.four_bit:
                served = vars(base).get("forward")
                source = served if isinstance(served, DenseForward) else DenseForward(base)
                weight = source.dequantize(torch.float32)  # a fresh tensor, not the cached one
            else:
                weight = base.weight.detach().to(torch.float32, copy=True)
            weight.addmm_(b.detach().float(), a.detach().float(), alpha=layer.scaling[name])
            self.weights[name] = kept = (version, weight)
        return kept[1]
