"""Generating for many prompts that share a long beginning, reading that beginning once.

Notebook 04's prompting approaches put the same 600 to 800 tokens (an engineered system
prompt, solved examples) in front of every ticket. `generate_replies(share_prefix=True)`
already computes that prefix's keys and values once per batch instead of once per prompt.
But the usual KV cache then holds one copy of them per prompt, and every generated token
reads all of those copies: for 32 prompts behind an 817-token prefix, 21 MB per layer per
token. In a few-shot evaluation on the course CPU that made attention 37% of the time and
the cache's copying another 12%, more than the model's weights (27%).

Here the cache keeps the prefix once (batch 1) and only each prompt's own tokens per row;
`shared_prefix_attention` scores every query against the prefix in one product over all
rows, against its row's own keys in another, and takes one softmax over both (what
FlashInfer and vLLM call cascade attention). The numbers are those of attention over the
whole sequence, up to rounding; tests/test_shared_prefix.py checks them, and the greedy
replies against generation without sharing. On notebook 04's 3-shot evaluation (160
tickets) attention fell from 48 to 11 s, the whole evaluation from 135 to 79 s. Reading
the prompts themselves (the first step, many queries per row) stays with torch's flash
kernel over a temporary full copy, which is faster there.

`shared_prefix(model, prefix_ids, batch)` sets it up for any model on transformers' sdpa
attention; anything else gets one copy of the prefix per row.

`prefilled(model, input_ids, attention_mask, prefix)` goes one step further: it reads the
whole batch's prompts but each row's last token before `generate` starts, as one row without
padding (`flat_rows`), into the same cache. Sorted by length, a batch of 64 short tickets is
still 59% padding, and reading a prompt costs the model's whole work per token, padding or
not: notebook 04's five base-model approaches on 64 test tickets took 152 s, not 186, on one
core of the AVX512-BF16 CPU (zero-shot 16.0 -> 13.1, 3 retrieved shots 80.7 -> 66.9).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ftkit.fast.common import base_model, cache_name
from ftkit.fast.flat_rows import flat_rows
from ftkit.fast.lean_layers import SHORT_ATTENTION, plain_products_apply

PREFIX_ATTENTION = "ftkit_prefix"  # the attention implementation's registered name
_ACTIVE: ContextVar[DynamicCache | None] = ContextVar("ftkit_shared_prefix", default=None)
_FALLBACK: ContextVar[str] = ContextVar("ftkit_prefix_fallback", default="sdpa")
ROOM = 64  # tokens a `_PrefixLayer`'s rows can grow by before their buffer is copied


class _PrefixLayer(DynamicLayer):
    """A cache layer holding a prefix once (batch 1) and each row's later tokens separately.

    `update` grows and returns the rows' own keys and values only; the sequence length it
    reports (for positions and masks) counts the prefix too."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.lazy_initialization(prefix_keys, prefix_values)
        self._room: tuple[torch.Tensor, torch.Tensor] | None = None  # see `update`

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Append the new tokens' keys and values in place; returns the rows' own so far.

        `DynamicLayer` concatenates, copying every row's whole cache at every generated
        token: behind 3 retrieved shots (about 280 tokens of each row's own) that was 15% of
        notebook 04's evaluation in fp32. Here the rows' tokens live in a buffer with room
        for `ROOM` more, and `keys` and `values` are views of its filled part: a token costs
        its own keys' copy, and the whole cache is copied once every `ROOM` tokens. In fp32
        only: attention's products read such views in place there (MKL's sgemm takes their
        strides), where in bf16 (oneDNN) they are copied whole again, and the buffer's
        upkeep made that evaluation 4% slower (64 tickets, one core of the AVX512-BF16
        CPU: 57.7-58.0 s concatenating, 60.3-60.6 in place; fp32, the AVX2 stand-in: 104.8
        -> 96.7 s, the same replies).
        """
        own = self.keys.shape[-2] if self.keys.dim() > 1 else 0
        in_place = key_states.dtype == torch.float32
        if own == 0 or key_states.shape[0] != self.keys.shape[0] or not in_place:
            return super().update(key_states, value_states, *args, **kwargs)
        end = own + key_states.shape[-2]
        if not self._holds_keys() or end > self._room[0].shape[-2]:
            self._room = tuple(
                torch.cat([held, held.new_empty(*held.shape[:2], end - own + ROOM,
                                                held.shape[3])], dim=-2)
                for held in (self.keys, self.values)
            )  # fmt: skip
        keys_room, values_room = self._room
        keys_room[:, :, own:end] = key_states
        values_room[:, :, own:end] = value_states
        self.keys, self.values = keys_room[:, :, :end], values_room[:, :, :end]
        return self.keys, self.values

    def _holds_keys(self) -> bool:
        """Whether `keys` is still the start of the buffer (a batch selection or a crop
        replaces it with a tensor of its own)."""
        return (
            self._room is not None
            and self.keys.data_ptr() == self._room[0].data_ptr()
            and self.keys.shape[:2] == self._room[0].shape[:2]
            and self.values.data_ptr() == self._room[1].data_ptr()
        )

    def get_seq_length(self) -> int:
        own = self.keys.shape[-2] if self.keys.dim() > 1 else 0
        return self.prefix_keys.shape[-2] + own

    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix and rows' tokens as one ordinary (batch, heads, length, dim) pair."""
        batch = len(self.keys) if self.keys.dim() > 1 else 1
        keys = torch.cat([self.prefix_keys.expand(batch, -1, -1, -1), self.keys], dim=-2)
        values = torch.cat([self.prefix_values.expand(batch, -1, -1, -1), self.values], dim=-2)
        return keys, values


@contextmanager
def shared_prefix(model, prefix_ids: torch.Tensor, batch: int) -> Iterator[DynamicCache | None]:
    """Yield the KV cache of `prefix_ids` (shape (1, length)) for `batch` rows that all
    start with it: pass it to `generate` (as `cache`, or `past_key_values` before
    transformers 5.24: `ftkit.fast.common.cache_name`) inside this block.

    Where `prefix_attention` can serve the model, the prefix is kept once and attention
    reads it once per step (`shared_prefix_attention`); elsewhere (other attention
    implementations, sliding-window layers) the cache holds one copy per row, as
    transformers would. An empty prefix yields None.
    """
    if prefix_ids.shape[-1] == 0:
        yield None
        return
    cache = model(input_ids=prefix_ids, use_cache=True)[cache_name()]
    if not (_on_sdpa(model) and all(type(layer) is DynamicLayer for layer in cache.layers)):
        cache.batch_repeat_interleave(batch)
        yield cache
        return
    cache.layers = [_PrefixLayer(layer.keys, layer.values) for layer in cache.layers]
    with prefix_attention(model, cache):
        yield cache


@contextmanager
def prefilled(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              prefix: int) -> Iterator[DynamicCache | None]:  # fmt: skip
    """Yield the KV cache of a batch's prompts but each row's last token, read as one row
    without padding (`flat_rows`), the first `prefix` tokens (the same in every row) once:
    pass it to `generate` with the whole batch, which then reads one token per row.

    `input_ids` and `attention_mask` are laid out as `generate_replies` lays them out: the
    prefix, then padding, then each row's own tokens, so that every row ends in the last
    column. The cache keeps the prefix once and each row's own tokens in that layout, and
    attention reads the prefix once per generated token, as `shared_prefix`'s does. On a
    batch of short prompts a third to a half of a padded batch's prompt tokens is padding
    (notebook 04's zero-shot tickets, batches of 64): reading a prompt costs the model's
    whole work per token, padding or not. Where `flat_rows` cannot serve the model this is
    `shared_prefix` (the rows' own tokens then read padded, by `generate`).
    """
    rows, width = input_ids.shape
    cache = None
    if width - prefix >= 2 and _on_sdpa(model):
        cache = _read_flat(model, input_ids[:, :-1], attention_mask[:, :-1], prefix)
    if cache is None:
        with shared_prefix(model, input_ids[:1, :prefix], rows) as cache:
            yield cache
        return
    with prefix_attention(model, cache):
        yield cache


def _read_flat(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               prefix: int) -> DynamicCache | None:  # fmt: skip
    """`prefilled`'s cache of the batch (`input_ids`, `attention_mask`), read as one flat row:
    the prefix once (batch 1), each row's own tokens in the batch's layout; None where
    `flat_rows` cannot serve the model or its cache is not plain `DynamicLayer`s."""
    with flat_rows(model, input_ids, attention_mask, prefix) as flat:
        if flat is None:
            return None
        cache = model(input_ids=flat.input_ids, position_ids=flat.position_ids,
                      use_cache=True, logits_to_keep=1)[cache_name()]  # fmt: skip
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    layers = []
    for layer in cache.layers:  # (1, kv heads, tokens, dim): the prefix, then the rows' own
        # copies: a view would keep the whole flat row's keys and values alive
        kept = _PrefixLayer(layer.keys[:, :, :prefix].clone(), layer.values[:, :, :prefix].clone())
        kept.keys = flat.padded(layer.keys[0, :, prefix:])
        kept.values = flat.padded(layer.values[0, :, prefix:])
        layers.append(kept)
    cache.layers = layers
    return cache


def _on_sdpa(model) -> bool:
    implementation = getattr(
        getattr(base_model(model), "config", None), "_attn_implementation", None
    )
    return implementation in ("sdpa", SHORT_ATTENTION)


@contextmanager
def prefix_attention(model, cache: DynamicCache) -> Iterator[None]:
    """Run `model`'s attention as `shared_prefix_attention` over `cache` in this block.

    The previous attention implementation is restored on leaving, and serves any layer or
    call the shared path does not cover (dropout, soft-capping, float masks).
    """
    AttentionInterface.register(PREFIX_ATTENTION, _prefix_or_fallback)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)
    base = base_model(model)
    previous = base.config._attn_implementation
    active, fallback = _ACTIVE.set(cache), _FALLBACK.set(previous)
    base.set_attn_implementation(PREFIX_ATTENTION)
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
        _ACTIVE.reset(active)
        _FALLBACK.reset(fallback)


def shared_prefix_attention(q, prefix_k, prefix_v, k, v, mask: torch.Tensor | None,
                            scale: float) -> torch.Tensor:  # fmt: skip
    """softmax(q [prefix_k; k]^T * scale + mask) [prefix_v; v], reading the prefix once.

    q (batch, heads, queries, dim); prefix_k and prefix_v (1, kv heads, prefix, dim), shared
    by every row; k and v (batch, kv heads, keys, dim), each row's own tokens after the
    prefix; mask bool (batch or 1, 1, queries, prefix + keys), or None for causal (every
    query sees the whole prefix). Returns (batch, heads, queries, dim).
    """
    batch, heads, queries, dim = q.shape
    groups, prefix, keys = k.shape[1], prefix_k.shape[2], k.shape[2]
    rows = heads // groups * queries
    qg = q.reshape(batch, groups, rows, dim)
    # All rows' queries against the one prefix: (groups, batch * rows, prefix).
    across = qg.transpose(0, 1).reshape(groups, batch * rows, dim)
    prefix_scores = torch.matmul(across, prefix_k[0].transpose(-1, -2))
    prefix_scores = prefix_scores.view(groups, batch, rows, prefix).transpose(0, 1)
    own_scores = torch.matmul(qg, k.transpose(-1, -2))
    # fp32 before the softmax: torch's CPU softmax from bf16 to fp32 is 9x slower.
    scores = torch.cat([prefix_scores, own_scores], dim=-1).to(torch.float32) * scale
    if mask is None and queries > 1:
        mask = torch.ones(queries, prefix + keys, dtype=torch.bool, device=q.device)
        mask = mask.tril(prefix + keys - queries)[None, None]
    if mask is not None:
        scores = scores.view(batch, groups, heads // groups, queries, prefix + keys)
        scores = scores.masked_fill_(~mask.unsqueeze(2), torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.view(batch, groups, rows, prefix + keys), -1).to(q.dtype)
    prefix_probs = probs[..., :prefix].transpose(0, 1).reshape(groups, batch * rows, prefix)
    output = torch.matmul(prefix_probs, prefix_v[0]).view(groups, batch, rows, dim)
    output = output.transpose(0, 1) + torch.matmul(probs[..., prefix:], v)
    return output.reshape(batch, heads, queries, dim)


def _prefix_or_fallback(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        is_causal=None, **kwargs):  # fmt: skip
    """transformers' attention interface: `shared_prefix_attention` where this layer's cache
    holds a shared prefix, else the implementation that was set before."""
    cache = _ACTIVE.get()
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if cache is not None and layer_idx is not None else None
    shared = (
        isinstance(layer, _PrefixLayer)
        and key is layer.keys
        and query.shape[2] == 1  # generating; reading a prompt, torch's flash kernel is faster
        and plain_products_apply(query, key, attention_mask, dropout, kwargs)
    )
    if not shared:
        if isinstance(layer, _PrefixLayer) and key is layer.keys:
            key, value = layer.whole()
        fallback = ALL_ATTENTION_FUNCTIONS.get(_FALLBACK.get(), sdpa_attention_forward)
        return fallback(module, query, key, value, attention_mask, dropout=dropout,
                        scaling=scaling, is_causal=is_causal, **kwargs)  # fmt: skip
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    output = shared_prefix_attention(query, layer.prefix_keys, layer.prefix_values, key, value,
                                     attention_mask, scale)  # fmt: skip
    return output.transpose(1, 2).contiguous(), None
