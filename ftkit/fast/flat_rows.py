"""A training batch as one row without padding, its shared beginning computed once.

Every support ticket of a batch starts with the same 24 tokens (the chat template's system
turn and the user header) and about a third of each example is that beginning; a random
batch of 8 also carries some padding. Both cost the whole model's work per token: every
product, norm and MLP runs on them.

`FlatRows` lays a padded batch out as one row: the shared prefix once, then each
row's own real tokens, with the positions each token had in its row. Every layer but
attention works token by token, so it computes for each token exactly what it did in the
padded batch, on fewer tokens. Attention (`flat_attention`) puts the row structure back: the
prefix attends to itself causally; each row's own tokens, padded to the longest row again
for this step only, attend to the prefix's keys (shared by every row, its gradient the sum
of theirs) and causally to their own. Same loss, same gradients up to rounding
(tests/test_flat_rows.py).

`flat_rows(model, input_ids, attention_mask, prefix)` sets it up for a Llama-family model
(SmolLM2, Llama, Qwen2/3, Mistral) on transformers' sdpa or ftkit's short attention; any
other model yields None and runs the batch as it is. LoRA dropout draws over the flat row,
so the prefix's positions get one mask for the whole batch (each row's tokens still their
own): the same distribution per row, correlated across rows on the prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from ftkit.fast.common import LLAMA_FAMILY, base_model, trains_with_grad
from ftkit.fast.lean_layers import SHORT_ATTENTION, SHORT_LENGTH, short_attention

FLAT_ATTENTION = "ftkit_flat"  # the attention implementation's registered name
_ACTIVE: ContextVar[FlatRows | None] = ContextVar("ftkit_flat_rows", default=None)


@dataclass
class FlatRows:
    """A padded batch as one row: the first `prefix` tokens (the same in every row)
    once, then each row's own tokens after them, padding left out."""

    input_ids: torch.Tensor  # (1, tokens)
    position_ids: torch.Tensor  # (1, tokens): each token's position in its row
    prefix: int  # tokens every row starts with, first in the flat row
    rows: int
    width: int  # the longest row's own tokens (after the prefix)
    own: torch.Tensor  # (rows, width) bool: which slots of the padded layout hold a token
    slots: torch.Tensor  # (own tokens,) each own token's slot in the flattened (rows * width)

    @classmethod
    def from_batch(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   prefix: int) -> FlatRows:  # fmt: skip
        """From a batch whose rows all start with the same `prefix` tokens, each row's own
        tokens after them padded on the right (training) or on the left (generation); a
        token's position counts the real tokens before it, as `generate` counts them."""
        rows, length = input_ids.shape
        own = attention_mask[:, prefix:].bool()
        positions = (attention_mask.long().cumsum(-1) - 1)[:, prefix:]
        flat_ids = torch.cat([input_ids[0, :prefix], input_ids[:, prefix:][own]])
        flat_positions = torch.cat([positions.new_tensor(range(prefix)), positions[own]])
        return cls(
            input_ids=flat_ids[None],
            position_ids=flat_positions[None],
            prefix=prefix,
            rows=rows,
            width=length - prefix,
            own=own,
            slots=own.flatten().nonzero().squeeze(1),
        )

    def take(self, per_token: torch.Tensor) -> torch.Tensor:
        """Values given per token of the padded batch (rows, length), laid out as the flat
        row (1, tokens): the first row's prefix, then each row's own tokens."""
        own = per_token[:, self.prefix :][self.own]
        return torch.cat([per_token[0, : self.prefix], own])[None]

    def padded(self, flat: torch.Tensor) -> torch.Tensor:
        """(heads, own tokens, dim) -> (rows, heads, width, dim), zeros in the padding."""
        heads, _, dim = flat.shape
        out = flat.new_zeros(heads, self.rows * self.width, dim).index_copy(1, self.slots, flat)
        return out.view(heads, self.rows, self.width, dim).transpose(0, 1)

    def unpadded(self, padded: torch.Tensor) -> torch.Tensor:
        """(rows, heads, width, dim) -> (heads, own tokens, dim): `padded` undone."""
        heads, dim = padded.shape[1], padded.shape[3]
        flat = padded.transpose(0, 1).reshape(heads, self.rows * self.width, dim)
        return flat.index_select(1, self.slots)

    def own_mask(self) -> torch.Tensor:
        """(rows, 1, width, prefix + width) bool: own tokens see the whole prefix, their own
        row's earlier tokens and themselves."""
        causal = torch.ones(self.width, self.width, dtype=torch.bool, device=self.own.device)
        own = causal.tril()[None] & self.own[:, None, :]
        prefix = own.new_ones(self.rows, self.width, self.prefix)
        return torch.cat([prefix, own], dim=-1)[:, None]


def _attend(q, k, v, mask: torch.Tensor | None, scale: float, module) -> torch.Tensor:
    """(batch, heads, queries, dim) attention with grouped kv heads; mask None: causal."""
    if trains_with_grad(module) and k.shape[2] <= SHORT_LENGTH:
        return short_attention(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )  # fmt: skip


def flat_attention(flat: FlatRows, q, k, v, scale: float, module=None) -> torch.Tensor:
    """Attention over a flat row: q (1, heads, tokens, dim), k and v (1, kv heads, tokens,
    dim). Returns (1, tokens, heads, dim), what attention over the padded batch gives at
    each real token."""
    p = flat.prefix
    parts = []
    if p:
        parts.append(_attend(q[:, :, :p], k[:, :, :p], v[:, :, :p], None, scale, module)[0])
    own_q = flat.padded(q[0, :, p:])
    own_k = torch.cat([k[:, :, :p].expand(flat.rows, -1, -1, -1), flat.padded(k[0, :, p:])], 2)
    own_v = torch.cat([v[:, :, :p].expand(flat.rows, -1, -1, -1), flat.padded(v[0, :, p:])], 2)
    own = _attend(own_q, own_k, own_v, flat.own_mask(), scale, module)
    parts.append(flat.unpadded(own))
    return torch.cat(parts, dim=1).transpose(0, 1)[None]


def _flat_attention_interface(module, query, key, value, attention_mask, dropout=0.0,
                              scaling=None, **kwargs):  # fmt: skip
    """transformers' attention interface while `flat_rows` is active."""
    flat = _ACTIVE.get()
    if flat is None or query.shape[0] != 1 or query.shape[2] != flat.input_ids.shape[1]:
        raise RuntimeError("ftkit's flat-row attention was called outside `flat_rows`")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return flat_attention(flat, query, key, value, scale, module).contiguous(), None


def flat_rows_apply(model: torch.nn.Module) -> bool:
    """Whether `flat_rows` can serve `model`: a Llama-family decoder on sdpa or ftkit's
    short attention, without attention dropout, sliding windows or soft-capping, and not
    checkpointing activations (its layers would recompute attention in the backward pass,
    outside `flat_rows`, over the whole flat row)."""
    base = base_model(model)
    config = getattr(base, "config", None)
    decoder = getattr(base, "model", None)
    return (
        config is not None
        and not getattr(decoder, "gradient_checkpointing", False)
        and getattr(config, "model_type", None) in LLAMA_FAMILY
        and getattr(config, "_attn_implementation", None) in ("sdpa", SHORT_ATTENTION)
        and not getattr(config, "attention_dropout", 0.0)
        and not getattr(config, "sliding_window", None)
        and not getattr(config, "attn_logit_softcapping", None)
    )


@contextmanager
def flat_rows(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              prefix: int) -> Iterator[FlatRows | None]:  # fmt: skip
    """Inside this block, `model(input_ids=flat.input_ids, position_ids=flat.position_ids)`
    computes the padded batch (`input_ids`, `attention_mask`, rows sharing their first
    `prefix` tokens) as a `FlatRows` `flat` (yielded); None where `flat_rows_apply` says no.
    The attention implementation is restored on leaving."""
    if not flat_rows_apply(model):
        yield None
        return
    flat = FlatRows.from_batch(input_ids, attention_mask, prefix)
    AttentionInterface.register(FLAT_ATTENTION, _flat_attention_interface)
    base = base_model(model)
    previous = base.config._attn_implementation
    token = _ACTIVE.set(flat)
    base.set_attn_implementation(FLAT_ATTENTION)
    try:
        yield flat
    finally:
        base.set_attn_implementation(previous)
        _ACTIVE.reset(token)
