"""Flat batches (`ftkit.fast.flat_rows`): a padded batch as one row without padding, the
tokens every row starts with computed once. The layout holds every token once, and the
loss and gradients are those of the padded batch (the embedded model in fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ftkit.fast import flat_rows
from ftkit.fast.flat_rows import FlatRows
from ftkit.formatting import IGNORE_INDEX, collate, tokenize_examples
from ftkit.splits import load_dataset_splits
from ftkit.trainer import (
    _KeepLabelledPositions,
    causal_lm_loss,
    micro_batches,
    shared_prefix_length,
)


@pytest.fixture(scope="module")
def tickets():
    return list(load_dataset_splits("support_tickets")["train"])[:4]


@pytest.fixture(scope="module")
def lora_hooked(lora_fp32):
    """The fp32 LoRA model, its tokenizer and the trainer's labelled-logits hook on it."""
    model, tokenizer = lora_fp32
    hook = _KeepLabelledPositions()
    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    yield model, tokenizer, hook
    handle.remove()


def _wanted(batch: dict) -> torch.Tensor:
    return batch["labels"][:, 1:] != IGNORE_INDEX


def test_a_flat_row_holds_the_shared_prefix_once_and_each_rows_own_tokens(tickets, lora_hooked):
    _, tokenizer, _ = lora_hooked
    items = tokenize_examples(tickets, tokenizer)
    batch = collate(items, tokenizer)
    prefix = shared_prefix_length(batch, _wanted(batch))
    text = tokenizer.decode(items[0].input_ids[:prefix])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>user\n"), text
    assert all(item.input_ids[:prefix] == items[0].input_ids[:prefix] for item in items)

    flat = FlatRows.from_batch(batch["input_ids"], batch["attention_mask"], prefix)
    lengths = [len(item.input_ids) for item in items]
    assert flat.input_ids.shape == (1, prefix + sum(n - prefix for n in lengths))
    ids, positions = flat.input_ids[0].tolist(), flat.position_ids[0].tolist()
    assert ids[:prefix] == items[0].input_ids[:prefix] and positions[:prefix] == list(range(prefix))
    start = prefix
    for item, n in zip(items, lengths, strict=True):  # then each row's own tokens, in order
        assert ids[start : start + n - prefix] == item.input_ids[prefix:]
        assert positions[start : start + n - prefix] == list(range(prefix, n))
        start += n - prefix
    # per-token values come along in the same layout; no labelled position is in the prefix
    keep = torch.cat([_wanted(batch), _wanted(batch)[:, :1] & False], dim=1)
    assert int(flat.take(keep).sum()) == int(_wanted(batch).sum())
    heads = torch.randn(3, flat.input_ids.shape[1] - prefix, 5)
    assert torch.equal(flat.unpadded(flat.padded(heads)), heads)


def test_the_shared_prefix_stops_where_rows_differ_pad_or_must_predict_a_label():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 9, 9, 0], [1, 2, 3, 4, 5, 8, 0]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": mask}
    assert shared_prefix_length(batch, labels[:, 1:] != IGNORE_INDEX) == 4  # rows differ at 4
    labels[1, 3] = 4  # position 2 predicts a label: its logits are needed
    assert shared_prefix_length(batch, labels[:, 1:] != IGNORE_INDEX) == 2
    short = {"input_ids": ids[:, :3], "attention_mask": mask[:, :3]}
    none = torch.zeros((3, 2), dtype=torch.bool)
    assert shared_prefix_length(short, none) == 2  # every row keeps a token of its own


@pytest.mark.parametrize("labelled_only", [True, False])
def test_flat_batches_give_the_padded_batchs_loss_and_gradients(tickets, lora_hooked,
                                                                labelled_only):  # fmt: skip
    model, tokenizer, hook = lora_hooked
    batch = collate(tokenize_examples(tickets[:3], tokenizer), tokenizer)
    assert shared_prefix_length(batch, _wanted(batch)) > 0
    model.train()
    results = []
    for flat in (False, True):
        model.zero_grad()
        loss, count, _ = causal_lm_loss(model, batch, labelled_only, hook, flat)
        (loss / count).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss / count), int(count), grads))
    (padded, padded_count, padded_grads), (flat, flat_count, flat_grads) = results
    assert flat_count == padded_count
    assert flat == pytest.approx(padded, rel=1e-5)
    for name, grad in padded_grads.items():
        assert torch.allclose(flat_grads[name], grad, rtol=1e-3, atol=1e-7), name
    model.zero_grad()
    model.eval()  # evaluation (no gradients: transformers' sdpa inside) agrees as well
    with torch.no_grad():
        losses = [float(causal_lm_loss(model, batch, labelled_only, hook, f)[0]) for f in (0, 1)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    model.train()


def test_other_models_and_packed_rows_run_as_they_are(tickets, lora_hooked):
    _, tokenizer, _ = lora_hooked
    batch = collate(tokenize_examples(tickets[:2], tokenizer), tokenizer)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50000)).eval()
    with flat_rows(gpt2, batch["input_ids"], batch["attention_mask"], 4) as rows:
        assert rows is None  # not a Llama-family decoder: the padded batch
    losses = [float(causal_lm_loss(gpt2, batch, False, None, flat)[0]) for flat in (False, True)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    packed_mask = torch.ones(2, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    model, _, _ = lora_hooked
    with flat_rows(model, batch["input_ids"], packed_mask.bool(), 4) as rows:
        assert rows is None  # a packed batch's 4-D mask: already without padding
    with flat_rows(model, batch["input_ids"], batch["attention_mask"], 4, enabled=False) as rows:
        assert rows is None
    model.gradient_checkpointing_enable()  # attention recomputed in backward: outside the block
    try:
        with flat_rows(model, batch["input_ids"], batch["attention_mask"], 4) as rows:
            assert rows is None
    finally:
        model.gradient_checkpointing_disable()
    with flat_rows(model, batch["input_ids"], batch["attention_mask"], 4) as rows:
        assert rows is not None


def test_flat_micro_batches_count_real_tokens(tickets, lora_hooked):
    _, tokenizer, _ = lora_hooked
    items = tokenize_examples(tickets, tokenizer)
    batch = collate(items, tokenizer)
    lengths = sorted(len(item.input_ids) for item in items)
    budget = lengths[0] + lengths[1]  # the two shortest rows fit, padded or not ...
    padded = micro_batches(batch, budget)
    flat = micro_batches(batch, budget, padded=False)
    assert len(flat[0]["input_ids"]) == 2
    assert len(flat) <= len(padded)
    assert micro_batches(batch, sum(lengths), padded=False) == [batch]  # all real tokens fit
    assert len(micro_batches(batch, sum(lengths), padded=True)) > 1  # padded, they do not
