"""The training benchmark (benchmarks/train_vs_trl.py) compares like with like: its third
contestant, the plain PyTorch loop, trains on the same objective as ftkit, or its tokens per
second compare nothing; and ftkit and TRL, given one seed, start from the same adapters and
see the examples in the same order, so that a seed's validation losses pair up (and, over
several dropout draws, pair up as means with a standard error)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_vs_trl import _stock_lora, adapter_fingerprint, markdown, plain_loss, summarise

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


def test_ftkit_and_trl_draw_the_same_adapters_and_order_from_one_seed(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ftkit.config import TrainConfig
    from ftkit.models import load_model
    from ftkit.trainer import SeededRandomSampler
    from ftkit.training import add_adapters

    seed, count = 3, 24
    model, tokenizer = load_model(dtype="fp32")
    ftkit_model = add_adapters(model, TrainConfig(method="lora", seed=seed))
    # each example's first token says which it is
    rows = {"input_ids": [[100 + i, 200, 300] for i in range(count)],
            "completion_mask": [[0, 1, 1]] * count}  # fmt: skip
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], seed=seed,
                     data_seed=seed, per_device_train_batch_size=8, max_length=None,
                     completion_only_loss=True)  # fmt: skip
    trainer = SFTTrainer(model=load_model(dtype="fp32")[0], args=args,
                         train_dataset=Dataset.from_dict(rows), processing_class=tokenizer,
                         peft_config=_stock_lora(0.05))  # fmt: skip
    assert adapter_fingerprint(trainer.model) == adapter_fingerprint(ftkit_model) != 0.0
    trl_order = [int(first) - 100 for batch in trainer.get_train_dataloader()
                 for first in batch["input_ids"][:, 0]]  # fmt: skip
    assert sorted(trl_order) == list(range(count)) and trl_order != list(range(count))
    assert trl_order == list(SeededRandomSampler(count, seed))
    other = add_adapters(load_model(dtype="fp32")[0], TrainConfig(method="lora", seed=seed + 1))
    assert adapter_fingerprint(other) != adapter_fingerprint(ftkit_model)


def test_several_dropout_draws_of_a_seed_compare_as_means_with_a_standard_error():
    def run(trainer, seed, loss):
        return {"trainer": trainer, "method": "lora", "seed": seed, "val_loss": loss,
                "tokens_per_second": 100.0, "real_tokens_per_second": 90.0, "seconds": 1.0,
                "peak_rss_gib": 2.0, "final_train_loss": 0.4, "parameters": 10,
                "precision": "bf16"}  # fmt: skip

    runs = [run("ftkit", 0, 0.30), run("ftkit", 0, 0.32), run("ftkit", 1, 0.50),
            run("trl", 0, 0.33), run("trl", 0, 0.37), run("trl", 1, 0.40)]  # fmt: skip
    machine = {"bf16_gflops": 100.0, "fp32_gflops": 50.0, "cpu_cores": 2}
    ratio = summarise(runs, machine)["lora"]["ratio"]
    assert ratio["val_loss_delta_by_seed"] == {0: pytest.approx(0.31 - 0.35), 1: pytest.approx(0.1)}
    # variances 0.0002 and 0.0008, two runs each: sqrt(0.0001 + 0.0004)
    assert ratio["val_loss_delta_se_by_seed"] == {0: pytest.approx(0.0005**0.5)}
    table = markdown(summarise(runs, machine), {**machine, "cpu": "x"}, None)
    assert "seed 0: -0.0400 ± 0.0224, seed 1: +0.1000 |" in table
