"""Leaner training autograd for the frozen parts of a decoder block: same numbers, less memory.

In LoRA and QLoRA training the base model is frozen, yet autograd still keeps, per block,
whatever its generic operators need for their backward passes. An itemised account of one
QLoRA step on the embedded model (batch 8 x 94 tokens; benchmarks/RESULTS.md) found 709 MiB
kept for the backward pass, of which:

- the two RMS norms: 99 MiB, an fp32 copy of every norm's 16-bit input (the norm computes
  in fp32). `rms_norm` keeps the 16-bit input and one fp32 number per token, and redoes the
  cheap arithmetic in the backward pass;
- the MLP's SwiGLU, `silu(gate) * up`: 198 MiB, `gate`, `silu(gate)` and `up`.
  `silu_mul` keeps `gate` and `up` and recomputes `silu(gate)`;
- attention: torch's CPU flash kernel keeps q, k, v, the output and the log-sum-exp, and at
  this kit's lengths (under 200 tokens) is 2 to 3 times slower than plain matrix products.
  `short_attention` uses plain products (grouped query heads without copying k and v) and
  keeps only q, k and v, recomputing the probabilities in the backward pass.

Each takes effect only while the module is training with gradients on; evaluation and
generation run the library's own code, so their outputs cannot change. Forward values are
the library's operation for operation; gradients match autograd's to rounding
(tests/test_lean_layers.py). `use_lean_layers(model)` installs all three on a Llama-family
model (SmolLM2, Llama, Qwen2/3, Mistral) and leaves other architectures as they are.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ftkit.fast.common import base_model, trains_with_grad

SHORT_ATTENTION = "ftkit_short"  # the attention implementation's registered name
SHORT_LENGTH = 192  # keys up to this many: plain products beat torch's CPU flash kernel
_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}


# ----------------------------------------------------------------------------- RMS norm


class _RMSNorm(torch.autograd.Function):
    """y = w * (x * rsqrt(mean(x^2) + eps)) in fp32 then cast; saves x and the rsqrt only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        x32 = x.to(torch.float32)
        grad_normed = (grad * weight).to(torch.float32)  # as autograd: the product, then fp32
        dot = (grad_normed * x32).sum(-1, keepdim=True)
        grad_x = grad_normed * rstd - x32 * (rstd.pow(3) * dot / x.shape[-1])
        return grad_x.to(x.dtype), None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMS norm with a frozen weight, keeping 16-bit input instead of an fp32 copy."""
    return _RMSNorm.apply(x, weight, eps)


def _lean_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if trains_with_grad(self) and not self.weight.requires_grad:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return type(self).forward(self, hidden_states)


# ----------------------------------------------------------------------------- SwiGLU


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up, saving gate and up (not silu(gate))."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's `silu(gate) * up`, keeping two of the three tensors autograd would keep."""
    return _SiluMul.apply(gate, up)


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    if trains_with_grad(self):
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))
    return type(self).forward(self, x)


# ----------------------------------------------------------------------------- attention


def _grouped(q: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch, kv heads, heads per kv head * length, dim)."""
    batch, heads, length, dim = q.shape
    return q.reshape(batch, groups, heads // groups * length, dim)


def _probabilities(qg, k, mask, scale: float, length: int) -> torch.Tensor:
    """Softmax of the masked scores in fp32, shaped (batch, kv heads, rows, keys)."""
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale
    batch, groups, rows, keys = scores.shape
    scores = scores.view(batch, groups, rows // length, length, keys)
    scores = scores.masked_fill(~mask.unsqueeze(2), torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).view(batch, groups, rows, keys)


class _ShortAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) v with grouped kv heads; saves q, k and v only.

    Under autocast (full fine-tuning keeps fp32 weights and computes in bf16) q may come in
    fp32 and v in bf16: the backward then runs under the forward's autocast state
    (`custom_bwd`), so its products take the dtypes the forward's took.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, q, k, v, mask, scale: float) -> torch.Tensor:
        qg = _grouped(q, k.shape[1])
        probs = _probabilities(qg, k, mask, scale, q.shape[2]).to(q.dtype)
        ctx.save_for_backward(q, k, v, mask)
        ctx.scale = scale
        return torch.matmul(probs, v).view(q.shape)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor):
        q, k, v, mask = ctx.saved_tensors
        qg = _grouped(q, k.shape[1])
        probs = _probabilities(qg, k, mask, ctx.scale, q.shape[2])
        grad = _grouped(grad.to(q.dtype), k.shape[1])
        grad_v = torch.matmul(probs.to(q.dtype).transpose(-1, -2), grad)
        grad_probs = torch.matmul(grad, v.transpose(-1, -2)).to(torch.float32)
        grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
        grad_scores = grad_scores.to(q.dtype)
        grad_q = (torch.matmul(grad_scores, k) * ctx.scale).view(q.shape)
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), qg) * ctx.scale
        return grad_q, grad_k, grad_v, None, None


def short_attention(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention by plain products for short sequences; q (batch, heads, length, dim), k and v
    (batch, kv heads, keys, dim), mask bool (batch or 1, 1, length, keys) or None for causal.

    Returns (batch, heads, length, dim).
    """
    if mask is None:
        length, keys = q.shape[2], k.shape[2]
        mask = torch.ones(length, keys, dtype=torch.bool, device=q.device)
        mask = mask.tril(keys - length)[None, None]
    return _ShortAttention.apply(q, k, v, mask, scale)


def _short_or_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                   is_causal=None, **kwargs):  # fmt: skip
    """transformers' attention interface: `short_attention` in training at short lengths
    with a boolean (or no) mask and no dropout, else transformers' own sdpa."""
    plain = (
        trains_with_grad(module)
        and key.shape[2] <= SHORT_LENGTH
        and (attention_mask is not None or is_causal is not False)
        and plain_products_apply(query, key, attention_mask, dropout, kwargs)
    )
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)  # fmt: skip
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    output = short_attention(query, key, value, attention_mask, scale)
    return output.transpose(1, 2).contiguous(), None


def plain_products_apply(query, key, attention_mask, dropout, kwargs) -> bool:
    """Whether an attention call is one that plain products with grouped kv heads compute
    exactly: no dropout, a boolean (or no) mask, whole groups of query heads per kv head,
    and none of soft-capping, attention sinks or position biases.
    """
    return (
        not dropout
        and (attention_mask is None or attention_mask.dtype == torch.bool)
        and query.shape[1] % key.shape[1] == 0
        and all(kwargs.get(name) is None for name in ("softcap", "s_aux", "position_bias"))
    )


def _register_short_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SHORT_ATTENTION, _short_or_sdpa)
    AttentionMaskInterface.register(SHORT_ATTENTION, sdpa_mask)


# ----------------------------------------------------------------------------- installing


def use_lean_layers(model: torch.nn.Module) -> list[str]:
    """Install the three on a Llama-family model (a PeftModel or not); returns what changed.

    Norms and MLPs get a per-instance forward that takes the lean path only while training
    with gradients on; attention switches to `SHORT_ATTENTION`, which is transformers' sdpa
    outside training. Other architectures are left as they are (an empty list).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return []
    norms = mlps = 0
    for module in model.modules():
        name = type(module).__name__
        if name in _NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_lean_norm_forward, module)
            norms += 1
        elif name.endswith("MLP") and _is_swiglu(module):
            module.forward = types.MethodType(_lean_mlp_forward, module)
            mlps += 1
    if not norms and not mlps:
        return []
    _register_short_attention()
    base_model(model).set_attn_implementation(SHORT_ATTENTION)
    return [f"{norms} RMS norms", f"{mlps} SwiGLU MLPs", "short-sequence attention"]


def _is_swiglu(module: torch.nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    has_projections = all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
    return has_projections and type(act).__name__ in {"SiLU", "SiLUActivation"}
