"""Shared-prefix generation: the prefix kept once, attention over it read once, same replies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ftkit.fast import shared_prefix as sp
from ftkit.generation import MIN_SHARED_PREFIX, generate_replies, to_messages
from ftkit.models import load_model
from ftkit.splits import load_dataset_splits
from ftkit.task_data import load_task_data

TICKETS = load_task_data("support_tickets").task  # the shipped ticket task


@pytest.fixture(scope="module")
def splits():
    return load_dataset_splits("support_tickets")


def _whole_attention(q, prefix_k, prefix_v, k, v, mask, scale):
    """Ordinary attention over the prefix repeated per row and each row's own keys."""
    batch = q.shape[0]
    keys = torch.cat([prefix_k.expand(batch, -1, -1, -1), k], dim=2)
    values = torch.cat([prefix_v.expand(batch, -1, -1, -1), v], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                          enable_gqa=True)  # fmt: skip


@pytest.mark.parametrize("queries", [1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_shared_prefix_attention_is_attention_over_the_whole_sequence(queries, masked):
    torch.manual_seed(4)
    batch, heads, kv_heads, prefix, own, dim = 3, 9, 3, 11, 7, 16
    q = torch.randn(batch, heads, queries, dim)
    prefix_k, prefix_v = (
        torch.randn(1, kv_heads, prefix, dim),
        torch.randn(1, kv_heads, prefix, dim),
    )
    k, v = torch.randn(batch, kv_heads, own, dim), torch.randn(batch, kv_heads, own, dim)
    causal = torch.ones(queries, prefix + own, dtype=torch.bool).tril(prefix + own - queries)
    mask = causal[None, None].repeat(batch, 1, 1, 1)
    if masked:  # padding between the prefix and each row's own tokens, as generation lays out
        mask[0, :, :, prefix : prefix + 3] = False
        mask[2, :, :, prefix : prefix + 1] = False
    shared = sp.shared_prefix_attention(q, prefix_k, prefix_v, k, v, mask if masked else None, 0.3)
    whole = _whole_attention(q, prefix_k, prefix_v, k, v, mask, 0.3)
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)


def _prompts(splits, rows):
    return [e.messages[:-1] for e in list(splits["test"])[rows]]


def test_generation_keeps_the_prefix_once_and_reads_it_once(splits, monkeypatch):
    """With share_prefix=True on sdpa, every layer's cache holds the system prompt once and
    each generated token's attention goes through the shared path; the replies are those of
    the plain batch (fp32), and the model's attention implementation is restored after."""
    model, tokenizer = load_model(dtype="fp32")
    prompts, system = _prompts(splits, slice(16, 20)), TICKETS.system_prompt
    caches, calls = [], []
    monkeypatch.setattr(sp, "_PrefixLayer", _recording(sp._PrefixLayer, caches))
    counted = sp.shared_prefix_attention
    monkeypatch.setattr(sp, "shared_prefix_attention",
                        lambda *a: calls.append(a[0].shape) or counted(*a))  # fmt: skip
    shared = generate_replies(model, tokenizer, prompts, system, max_new_tokens=12, batch_size=4,
                              share_prefix=True)  # fmt: skip
    plain = generate_replies(model, tokenizer, prompts, system, max_new_tokens=12, batch_size=4)
    assert [r.text for r in shared] == [r.text for r in plain]
    assert len(caches) == model.config.num_hidden_layers
    prefix_length = caches[0].prefix_keys.shape[2]
    assert all(layer.prefix_keys.shape[0] == 1 for layer in caches)  # once, not once per row
    for layer in caches:  # its own memory, not a view keeping the whole prompt read alive
        for kept in (layer.prefix_keys, layer.prefix_values):
            assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size()
    assert prefix_length > 500 and all(layer.keys.shape[0] == 4 for layer in caches)
    assert all(layer.keys.shape[2] < 200 for layer in caches)  # only the rows' own tokens
    steps = max(r.new_tokens for r in shared)  # the prompts but their last token read before
    assert calls.count(calls[0]) == len(calls) == steps * model.config.num_hidden_layers
    assert calls[0] == (4, model.config.num_attention_heads, 1, model.config.head_dim)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("system", [TICKETS.system_prompt, None])
def test_prompts_are_read_without_padding_with_the_same_replies(splits, system):
    """share_prefix=True reads a batch's prompts but each row's last token as one row: the
    shared prefix once and every row's own tokens, no padding; `generate` then reads one
    token per row. In fp32 the replies are those of the plain padded batch, with a long
    shared system prompt or none (then the chat template's own 24 tokens are shared)."""
    model, tokenizer = load_model(dtype="fp32")
    prompts = _prompts(splits, slice(24, 30))
    read = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda _m, args, _o: read.append(tuple(args[0].shape)))
    try:
        shared = generate_replies(model, tokenizer, prompts, system, max_new_tokens=10,
                                  batch_size=6, share_prefix=True)  # fmt: skip
    finally:
        handle.remove()
    plain = generate_replies(model, tokenizer, prompts, system, max_new_tokens=10, batch_size=6)
    assert [r.text for r in shared] == [r.text for r in plain]
    lengths = [r.prompt_tokens for r in shared]
    assert len(set(lengths)) > 2  # rows of really different lengths: a padded batch pads
    chats = (to_messages(p, system) for p in prompts)
    rows = [_ids(tokenizer.apply_chat_template(m, add_generation_prompt=True)) for m in chats]
    columns = zip(*rows, strict=False)  # up to the shortest row
    prefix = next(i for i, column in enumerate(columns) if len(set(column)) > 1)
    if system:
        assert prefix > 500  # the system prompt, read once
    else:  # the chat template's own system turn and user header, read once too
        assert MIN_SHARED_PREFIX <= prefix < 40
    assert read[0] == (1, prefix + sum(n - prefix - 1 for n in lengths))  # no padding
    assert read[1:] == [(6, 1)] * (len(read) - 1)  # then one token per row per step


def _ids(row):
    return row["input_ids"] if hasattr(row, "keys") else row


def _recording(layer_class, seen):
    class Recording(layer_class):
        def __init__(self, *args):
            super().__init__(*args)
            seen.append(self)

    return Recording


def test_other_attention_implementations_get_one_copy_per_row(splits):
    """Eager attention is not served by the shared path: the cache holds the prefix per row,
    as before, and the replies are those of the plain batch."""
    model, tokenizer = load_model(dtype="fp32")
    model.set_attn_implementation("eager")
    try:
        prompts, system = _prompts(splits, slice(20, 23)), TICKETS.system_prompt
        ids = tokenizer(system, return_tensors="pt")["input_ids"]
        with sp.shared_prefix(model, ids, 3) as cache:
            assert type(cache.layers[0]) is not sp._PrefixLayer
            assert cache.layers[0].keys.shape[0] == 3
            assert model.config._attn_implementation == "eager"
        shared = generate_replies(model, tokenizer, prompts, system, max_new_tokens=8,
                                  batch_size=3, share_prefix=True)  # fmt: skip
        plain = generate_replies(model, tokenizer, prompts, system, max_new_tokens=8,
                                 batch_size=3)  # fmt: skip
        assert [r.text for r in shared] == [r.text for r in plain]
    finally:
        model.set_attn_implementation("sdpa")


def test_an_empty_prefix_yields_no_cache(model_and_tokenizer):
    model, _ = model_and_tokenizer
    with sp.shared_prefix(model, torch.zeros(1, 0, dtype=torch.long), 4) as cache:
        assert cache is None


def test_a_prefix_cache_grows_in_place_and_holds_what_concatenation_would():
    """Generated tokens' keys and values are written into room kept after the rows' own
    (no copy of the whole cache per token); what the layer returns is, at every step, the
    concatenation `DynamicLayer` would return, also after rows leave the batch or a crop."""
    torch.manual_seed(5)
    kv_heads, dim = 3, 8
    layer = sp._PrefixLayer(torch.randn(1, kv_heads, 6, dim), torch.randn(1, kv_heads, 6, dim))
    keys, values = torch.randn(4, kv_heads, 5, dim), torch.randn(4, kv_heads, 5, dim)
    layer.keys, layer.values = keys.clone(), values.clone()  # the prompts' own, as read
    storages = set()
    for step in range(sp.ROOM + 3):
        if step == 10:  # rows 1 and 3 finished: the batch goes on with the others
            rows = torch.tensor([0, 2])
            layer.batch_select_indices(rows)
            keys, values = keys[rows], values[rows]
        if step == 20:
            layer.crop(-2)
            keys, values = keys[:, :, :-2], values[:, :, :-2]
        new_k, new_v = (
            torch.randn(len(keys), kv_heads, 1, dim),
            torch.randn(len(keys), kv_heads, 1, dim),
        )
        got_k, got_v = layer.update(new_k, new_v)
        keys, values = torch.cat([keys, new_k], dim=2), torch.cat([values, new_v], dim=2)
        assert torch.equal(got_k, keys) and torch.equal(got_v, values)
        assert layer.get_seq_length() == 6 + keys.shape[2]
        storages.add(got_k.untyped_storage().data_ptr())
    # one buffer for the first 10 steps, a new one after the selection and after the crop,
    # one more once ROOM tokens filled the last: not one per token
    assert len(storages) <= 4
