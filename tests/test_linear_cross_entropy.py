"""The training loss without holding the logits (`ftkit.fast.lean_output_loss`): the same
loss and gradients as cross-entropy over the output layer's full logits, chunk by chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from ftkit.fast import lean_output_loss
from ftkit.fast.linear_cross_entropy import CHUNK_ROWS, linear_cross_entropy
from ftkit.formatting import collate, tokenize_examples
from ftkit.splits import load_dataset_splits
from ftkit.trainer import _KeepLabelledPositions, causal_lm_loss


def _reference(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def _loss_and_grads(loss_fn, hidden, weight, targets, autocast: bool):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(hidden, weight, targets)
    (loss / 7).backward()  # a scale, as the trainer divides by the labelled tokens
    return float(loss), hidden.grad, weight.grad


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_loss_and_gradients_match_the_full_logits(autocast):
    torch.manual_seed(0)
    rows = 2 * CHUNK_ROWS + 5  # three chunks, the last one short
    hidden, weight = torch.randn(rows, 48), torch.randn(997, 48) / 7
    targets = torch.randint(0, 997, (rows,))
    full = _loss_and_grads(_reference, hidden, weight, targets, autocast)
    lean = _loss_and_grads(linear_cross_entropy, hidden, weight, targets, autocast)
    rel = 1e-3 if autocast else 1e-5  # bf16 products: both round the same products
    assert lean[0] == pytest.approx(full[0], rel=rel)
    for mine, theirs in zip(lean[1:], full[1:], strict=True):
        assert mine.dtype == theirs.dtype
        if autocast:  # bf16 rounds the gradient elementwise: compare it as a whole
            assert float((mine - theirs).norm() / theirs.norm()) < 1e-2
        else:
            assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # evaluation: the loss alone
        assert float(linear_cross_entropy(hidden, weight, targets)) == pytest.approx(
            float(_reference(hidden, weight, targets)), rel=1e-5
        )


@pytest.fixture(scope="module")
def batch_and_model(lora_fp32):
    model, tokenizer = lora_fp32
    examples = list(load_dataset_splits("support_tickets")["train"])[:3]
    return collate(tokenize_examples(examples, tokenizer), tokenizer), model


def test_the_trainers_loss_is_the_same_without_the_logits(batch_and_model):
    batch, model = batch_and_model
    hook = _KeepLabelledPositions()
    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    model.train()
    results = []
    try:
        for lean in (False, True):
            model.zero_grad()
            loss, count, outputs = causal_lm_loss(model, batch, True, hook, True, lean)
            (loss / count).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            results.append((float(loss / count), outputs.logits.shape[-1], grads))
    finally:
        handle.remove()
        model.zero_grad()
    (full, full_width, full_grads), (lean, lean_width, lean_grads) = results
    assert full_width == model.config.vocab_size  # logits ...
    assert lean_width == model.config.hidden_size  # ... against the final hidden states
    assert lean == pytest.approx(full, rel=1e-5)
    for name, grad in full_grads.items():
        assert torch.allclose(lean_grads[name], grad, rtol=1e-3, atol=1e-6), name
    ids = batch["input_ids"][:1, :5]
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size  # restored


def test_other_output_layers_keep_their_logits():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100))
    with lean_output_loss(gpt2) as loss:
        assert loss is None
        assert gpt2(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == 100
