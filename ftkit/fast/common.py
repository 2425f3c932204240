"""What the speed-ups share: when a module trains, the model inside a PeftModel, and the step
bitsandbytes takes before every 4-bit product.

Each speed-up in `ftkit.fast` replaces a piece of a library's forward pass only while it
computes what the library would; these are the tests and preludes they agree on.
"""

from __future__ import annotations

import functools

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

# `model_type`s built like Llama: RoPE from position_ids, logits straight from the output layer
LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3"}


def trains_with_grad(module: torch.nn.Module) -> bool:
    """True while `module` is in training mode with gradients on (the lean paths' condition)."""
    return module.training and torch.is_grad_enabled()


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PeftModel (or `model` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def product_inputs(layer: torch.nn.Module, x: torch.Tensor):
    """What bitsandbytes' `Linear4bit.forward` does before its product, step for step:
    `(x in the compute dtype, the bias to add, the dtype to return)`."""
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(layer)
    if not layer.compute_type_is_set:
        layer.set_compute_type(x)
        layer.compute_type_is_set = True
    inp_dtype = x.dtype
    if layer.compute_dtype is not None:
        x = x.to(layer.compute_dtype)
    bias = layer.bias
    if bias is not None:
        if bias.dtype != x.dtype:
            bias.data = bias.data.to(x.dtype)
        bias = bias.to(layer.compute_dtype)
    return x, bias, inp_dtype


@functools.cache
def cache_name() -> str:
    """What transformers calls the KV cache in `generate`'s arguments and in model outputs:
    "cache" from 5.24 on (where "past_key_values" is a deprecated alias that warns), else
    "past_key_values"."""
    fields = getattr(BaseModelOutputWithPast, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"
