"""The training loss over a 49k-token vocabulary without holding its logits.

Completion-only training needs logits only at labelled positions (ftkit's trainer already
computes no others), yet those still take 10 bytes per position per vocabulary entry
between the forward and the backward pass: the 16-bit logits, their fp32 copy and its log
softmax, then the gradient in fp32 and 16 bits. For a flat batch of 8 support tickets
(about 280 labelled tokens) that is some 190 MB at the peak of a step, more than the
activations of a layer block.

`linear_cross_entropy(hidden, weight, targets)` computes the summed cross-entropy of
`hidden @ weight.T` in chunks of `CHUNK_ROWS` rows, and with each chunk's logits still at
hand the gradient for `hidden` (softmax minus the one-hot target, times the weight) and,
when the weight trains (full fine-tuning), for the weight. Only those gradients are kept:
(positions x hidden size), not (positions x vocabulary). Each chunk's arithmetic is the
library's own in the same dtypes (the product in the autocast dtype, the softmax in fp32,
its gradient cast back for the product), so the loss and gradients are the same up to
rounding (tests/test_linear_cross_entropy.py). Liger Kernel's and Apple's Cut
Cross-Entropy fuse the same way on GPUs.

`hidden_at_output(model)` makes the model's output layer return its input inside a block,
so `model(...).logits` holds the final hidden states to give here; None where the output
layer is not a plain bias-free linear layer of a Llama-family model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ftkit.fast.common import LLAMA_FAMILY, base_model

CHUNK_ROWS = 64  # rows of logits alive at a time: 64 x 49152 x 10 bytes, about 31 MB


def _chunk_size(rows: int) -> int:
    """At most `CHUNK_ROWS` rows a chunk, the chunks as even as can be: a chunk of a few
    rows (a remainder) takes other CPU kernels, several times less accurate in fp32."""
    chunks = max(1, -(-rows // CHUNK_ROWS))
    return max(1, -(-rows // chunks))


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One chunk's logits as the output layer computes them (autocast included), in fp32."""
    return F.linear(hidden, weight).float()


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets); the gradients are
    computed in the forward pass, chunk by chunk, and only they are kept."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, autocast_dtype):
        train_weight = ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if train_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        device, size = hidden.device.type, _chunk_size(len(hidden))
        for start in range(0, len(hidden), size):
            rows = hidden[start : start + size]
            chosen = targets[start : start + size]
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = _chunk_logits(rows, weight)
            log_probs = torch.log_softmax(logits, dim=-1)
            total += -log_probs.gather(1, chosen[:, None]).sum()
            grad_logits = log_probs.exp_()
            grad_logits[torch.arange(len(chosen), device=hidden.device), chosen] -= 1
            compute = autocast_dtype or weight.dtype  # the product's dtype, as in autograd
            grad_logits = grad_logits.to(compute)
            grad_hidden[start : start + size] = grad_logits @ weight.to(compute)
            if train_weight:
                grad_weight += (grad_logits.transpose(0, 1) @ rows.to(compute)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_w = None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden * grad_total.to(grad_hidden.dtype), grad_w, None, None


def autocast_dtype_now(device: str) -> torch.dtype | None:
    """The dtype autocast gives products on `device` here, None where it is off."""
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         autocast: torch.dtype | str | None = "here") -> torch.Tensor:  # fmt: skip
    """`F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")`, the
    logits never held whole: `hidden` (rows, size), `weight` (vocabulary, size), `targets`
    (rows,). The product runs under `autocast`, the dtype the output layer ran under (None:
    no autocast; "here": whatever is active at this call)."""
    device = hidden.device.type
    autocast_dtype = autocast_dtype_now(device) if autocast == "here" else autocast
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not grads:  # evaluation: the loss alone, chunk by chunk
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        size = _chunk_size(len(hidden))
        for start in range(0, len(hidden), size):
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = _chunk_logits(hidden[start : start + size], weight)
            total += F.cross_entropy(logits, targets[start : start + size], reduction="sum")
        return total
    return _LinearCrossEntropy.apply(hidden, weight, targets, autocast_dtype)


class OutputLayer:
    """The output layer's weight, and the autocast dtype it was last called under (the
    model's forward may run under an autocast its caller does not see: accelerate's)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.autocast: torch.dtype | None = None

    def passed_on(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer's forward inside `hidden_at_output`: its input, unchanged."""
        self.autocast = autocast_dtype_now(hidden.device.type)
        return hidden


@contextmanager
def hidden_at_output(model: torch.nn.Module) -> Iterator[OutputLayer | None]:
    """Inside this block `model`'s output layer returns its input, so the model's `logits`
    are the final hidden states; yields an `OutputLayer` (None, and nothing changed, where
    the model is not a Llama-family decoder with a plain bias-free output layer)."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    plain = (
        type(head) is torch.nn.Linear
        and head.bias is None
        and getattr(config, "model_type", None) in LLAMA_FAMILY
        and not getattr(config, "final_logit_softcapping", None)
    )
    if not plain:
        yield None
        return
    layer = OutputLayer(head.weight)
    head.forward = layer.passed_on
    try:
        yield layer
    finally:
        del head.forward  # the class's forward again
