"""QLoRA's 4-bit layers with their adapters, leaner in training: the same numbers, less work.

In training, peft's 4-bit LoRA layer (`peft.tuners.lora.bnb.Linear4bit`) computes
`base(x).clone() + lora_B(lora_A(dropout(x))) * scaling`, where bitsandbytes' `base`
dequantises the NF4 weight for the product. Per layer and call, on this kit's CPU:

- the clone copies the layer's whole output. peft's comment calls it defensive ("in some
  cases backprop does not work on a manipulated view"); the output of bitsandbytes' product
  is a fresh tensor, not a view, and its backward pass does not read it;
- `* scaling` and `+` each allocate another tensor of the output's size;
- with double quantisation (ftkit's NF4 default, `compress_statistics`), every
  dequantisation first dequantises the 8-bit block scales, in the forward pass and again in
  the backward pass, though the scales never change while the base is frozen.

`use_lean_4bit(model)` gives each such layer a forward that, while it trains with gradients
on, keeps the dequantised block scales (fp32, one number per 64 weights: 6.6 MB for the
embedded model) and hands bitsandbytes' own `matmul_4bit` a quantisation state that uses
them, then scales the adapter's output and adds it to the base output in place. The values
are peft's and bitsandbytes' operation for operation (tests/test_lean_4bit.py). Evaluation,
generation, merged or disabled adapters, several adapters per call and adapter variants
(DoRA) run peft's own code.
"""

from __future__ import annotations

import types

import torch

from ftkit.fast.common import product_inputs, trains_with_grad

_SCALES = "_ftkit_block_scales"  # per layer: (state, its 8-bit scales, their version, flat state)


def flat_quant_state(layer: torch.nn.Module):
    """`layer`'s 4-bit quantisation state with its block scales dequantised once and kept.

    A double-quantised state stores the scales in 8 bits (`nested`) and bitsandbytes
    dequantises them before each use; the flat state holds the same fp32 scales, computed as
    `bitsandbytes.functional.dequantize_4bit` computes them, so products and gradients are
    unchanged. Recomputed if the layer's state or its scales change.
    """
    import bitsandbytes.functional as bnbf

    state = layer.weight.quant_state
    if not state.nested:
        return state
    # an inference tensor has no version counter (and changes only inside inference mode);
    # moving the layer to another device gives the same state a new scales tensor
    version = None if state.absmax.is_inference() else state.absmax._version
    kept = getattr(layer, _SCALES, None)
    if kept is not None and kept[0] is state and kept[1] is state.absmax and kept[2] == version:
        return kept[3]
    scales = bnbf.dequantize_blockwise(state.absmax, state.state2)
    scales += state.offset
    flat = bnbf.QuantState(
        absmax=scales.float(),
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=state.dtype,
    )
    setattr(layer, _SCALES, (state, state.absmax, version, flat))
    return flat


def _base_product(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' `Linear4bit.forward` in training, with the kept block scales."""
    import bitsandbytes as bnb

    x, bias, inp_dtype = product_inputs(layer, x)
    state = flat_quant_state(layer)
    return bnb.matmul_4bit(x, layer.weight, bias=bias, quant_state=state).to(inp_dtype)


def _lean_adapter(module: torch.nn.Module, args: tuple, kwargs: dict) -> str | None:
    """The one active vanilla adapter when the lean path applies to this call, else None."""
    state = getattr(module.base_layer.weight, "quant_state", None)
    adapters = [name for name in module.active_adapters if name in module.lora_A]
    applies = (
        trains_with_grad(module)
        and not args
        and not kwargs
        and not module.disable_adapters
        and not module.merged
        and len(adapters) == 1
        and adapters[0] not in module.lora_variant
        and state is not None
        and not getattr(state, "packing_format_for_cpu", False)
    )
    return adapters[0] if applies else None


def _lean_lora_4bit_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _lean_adapter(self, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    result = _base_product(self.base_layer, x)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    # peft's vanilla LoRA, step by step: its fp32 cast when autocast is off (or not), then
    # `lora_B(lora_A(dropout(x))) * scaling`, back to the result's dtype, added
    converting = not torch.is_autocast_enabled()
    if converting:
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
    output = lora_b(lora_a(self.lora_dropout[name](x))).mul_(self.scaling[name])
    if converting:
        output = output.to(result.dtype)
    if torch.promote_types(result.dtype, output.dtype) != result.dtype:
        return result + output  # in place would round to the narrower dtype
    return result.add_(output)


def is_lean_forward(forward) -> bool:
    """Whether `forward` (a module's own) is the lean 4-bit forward `use_lean_4bit` set."""
    return getattr(forward, "__func__", None) is _lean_lora_4bit_forward


def use_lean_4bit(model: torch.nn.Module) -> int:
    """Give every peft 4-bit LoRA layer in `model` the lean training forward; returns how many."""
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    except ImportError:  # bitsandbytes missing: peft defines no 4-bit layers
        return 0
    layers = 0
    for module in model.modules():
        if isinstance(module, LoraLinear4bit):
            module.forward = types.MethodType(_lean_lora_4bit_forward, module)
            layers += 1
    return layers
