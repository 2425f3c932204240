"""The training benchmark's third contestant, the plain PyTorch loop (benchmarks/train_vs_trl.py):
it must train on the same objective as ftkit, or its tokens per second compare nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_vs_trl import plain_loss

from ftkit.formatting import collate, tokenize_for_training
from ftkit.splits import load_dataset_splits
from ftkit.trainer import _KeepLabelledPositions, causal_lm_loss


def test_the_plain_loops_loss_is_ftkits_on_the_same_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = list(load_dataset_splits("support_tickets")["train"])[:4]
    batch = collate(tokenize_for_training(examples, tokenizer, 512), tokenizer)
    assert (batch["attention_mask"] == 0).any(), "the batch should hold padding"
    hook = _KeepLabelledPositions()
    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            total, count, _ = causal_lm_loss(model, batch, labelled_only=True, hook=hook)
            plain = plain_loss(model, batch, bf16=False)
    finally:
        handle.remove()
    assert count > 0
    torch.testing.assert_close(plain, total / count, rtol=1e-5, atol=1e-5)
    # and it is a loss over the answers only: the same batch with every token labelled differs
    everything = dict(batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0,
                                                                   -100))  # fmt: skip
    with torch.no_grad():
        assert abs(float(plain_loss(model, everything, bf16=False)) - float(plain)) > 0.05
