"""Training: it learns (QLoRA and LoRA), survives the evaluate-then-train trap, stops when
asked, refuses useless data and NaNs, and chooses precision like the hardware says.

Runs are tiny (six examples, a few steps) so the default tier stays fast on 2 CPU cores.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _callbacks import AtStep
from transformers import TrainerCallback

from ftkit.config import TrainConfig, TrainingError
from ftkit.course.widgets import TrainingMonitor
from ftkit.faults import oom_advice
from ftkit.formatting import collate, tokenize_examples, tokenize_for_training
from ftkit.generation import generate_replies
from ftkit.hardware import HardwareInfo, choose_precision
from ftkit.models import load_model
from ftkit.splits import load_dataset_splits
from ftkit.task_data import load_task_data
from ftkit.trainer import (
    FtkitTrainer,
    LengthGroupedSampler,
    SeededRandomSampler,
    _KeepLabelledPositions,
    causal_lm_loss,
    loss_on,
    micro_batch_budget,
    micro_batches,
    training_arguments,
)
from ftkit.training import load_for_training, train

TICKETS = load_task_data("support_tickets").task  # the shipped ticket task

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits():
    return load_dataset_splits("support_tickets")


@pytest.fixture(scope="module")
def few(splits):
    """Six training examples (the fixed set whose loss must fall) and four to validate."""
    return list(splits["train"])[:6], list(splits["validation"])[:4]


def tiny(tmp_path, **changes) -> TrainConfig:
    """A run small enough for a unit test: 6 examples, 3 epochs of 3 steps at a high lr."""
    settings = {
        "batch_size": 2,
        "max_steps": 9,
        "lr": 1e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "save_steps": 3,
        "eval_steps": 3,
        "runs_dir": str(tmp_path / "runs"),
        "run_name": "t",
    }
    return TrainConfig(**(settings | changes))


_RUNS: dict[str, object] = {}


def _learned(method: str, few, tmp_path_factory):
    """One run per method, no validation; cached for the module."""
    if method not in _RUNS:
        train_examples, _ = few
        config = tiny(tmp_path_factory.mktemp(method), method=method)
        result = train(config, train_examples)
        _RUNS[method] = result
    return _RUNS[method]


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_training_lowers_the_loss_on_a_fixed_batch(method, few, tmp_path_factory):
    train_examples, _ = few
    result = _learned(method, few, tmp_path_factory)
    base, tokenizer = load_for_training(TrainConfig(method=method), choose_precision(_cpu()))
    before = loss_on(base, tokenizer, train_examples)
    after = loss_on(result.model, result.tokenizer, train_examples)
    assert after < 0.7 * before, f"{method}: loss {before:.3f} -> {after:.3f}"
    assert result.steps == 9 and result.status == "finished"
    assert result.trainable_params == 4_884_480  # r=16 on every linear layer of 30 blocks
    assert result.tokens_per_second > 0 and result.peak_memory_gb > 0.5
    assert [r["step"] for r in result.history if r["event"] == "train"] == list(range(1, 10))


def test_evaluate_and_generate_then_train_still_learns(few, tmp_path, tmp_path_factory):
    """The bitsandbytes CPU trap (shared/FACTS.md): inference before and during training must
    not stop QLoRA from learning. Generate and evaluate first, evaluate every 3 steps while
    training: the fixed-batch loss falls as much as in the run that never evaluated."""
    train_examples, validation = few
    plain = _learned("qlora", few, tmp_path_factory)
    model, tokenizer = load_model(quantization="nf4")
    generate_replies(model, tokenizer, ["What is the capital of France?"], max_new_tokens=8)
    # and with the system prompt read once (ftkit.shared_prefix switches attention meanwhile)
    generate_replies(model, tokenizer, ["Where is my refund?", "The app crashes."],
                     system_prompt=TICKETS.system_prompt, max_new_tokens=4,
                     share_prefix=True)  # fmt: skip
    model.generate(**tokenizer(["Hello"], return_tensors="pt"), max_new_tokens=4)  # plain one
    untrained = loss_on(model, tokenizer, train_examples)  # an eval-mode, no-grad pass
    result = train(tiny(tmp_path), train_examples, validation, model=model, tokenizer=tokenizer)
    after = loss_on(result.model, tokenizer, train_examples)
    assert [r["step"] for r in result.history if r["event"] == "eval"] == [3, 6, 9]
    assert after < 0.7 * untrained, f"loss {untrained:.3f} -> {after:.3f}: QLoRA stopped learning"
    assert after == pytest.approx(loss_on(plain.model, tokenizer, train_examples), rel=0.02)
    evaluated = [r["loss"] for r in result.history if r["event"] == "train"]
    never = [r["loss"] for r in plain.history if r["event"] == "train"]
    assert evaluated == pytest.approx(never, rel=0.02)  # same curve: evaluation changed nothing


def test_labelled_logits_give_the_same_loss_and_gradients(few, lora_fp32):
    model, tokenizer = lora_fp32
    batch = collate(tokenize_examples(few[0][:3], tokenizer), tokenizer)
    hook = _KeepLabelledPositions()
    model.get_output_embeddings().register_forward_pre_hook(hook)
    results = []
    for labelled_only in (False, True):
        model.zero_grad()
        loss, count, _ = causal_lm_loss(model, batch, labelled_only, hook)
        (loss / count).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss / count), grads))
    (full, full_grads), (fast, fast_grads) = results
    assert fast == pytest.approx(full, rel=1e-5)
    for name, grad in full_grads.items():
        assert torch.allclose(fast_grads[name], grad, rtol=1e-3, atol=1e-7), name


def test_micro_batches_sort_rows_and_trim_padding(splits, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    items = tokenize_examples(list(splits["train"])[:8], tokenizer)
    batch = collate(items, tokenizer)
    lengths = batch["attention_mask"].sum(dim=1)
    pieces = micro_batches(batch, max_tokens=int(lengths.max()) * 3)
    assert len(pieces) >= 3
    for piece in pieces:  # each piece fits, and its longest row decides its width
        rows, width = piece["input_ids"].shape
        assert rows * width <= int(lengths.max()) * 3
        assert int(piece["attention_mask"].sum(dim=1).max()) == width
    pairs = [zip(piece["input_ids"], piece["attention_mask"], strict=True) for piece in pieces]
    rows = [ids[mask.bool()].tolist() for pair in pairs for ids, mask in pair]
    assert sorted(rows) == sorted(item.input_ids for item in items)  # every row once, none cut
    labelled = sum(int((piece["labels"] != -100).sum()) for piece in pieces)
    assert labelled == int((batch["labels"] != -100).sum())
    assert micro_batches(batch, 0) == [batch]  # 0: never split
    assert micro_batches(batch, batch["input_ids"].numel()) == [batch]  # fits: whole


@pytest.mark.parametrize(
    "device, dtype, flat, expected",
    [("cpu", "bf16", False, 512), ("cpu", "bf16", True, 1024), ("cpu", "fp32", False, 512),
     ("cpu", "fp32", True, 1024), ("cuda", "bf16", False, 0), ("cuda", "bf16", True, 0)],
)  # fmt: skip
def test_micro_batch_budget_auto_splits_on_cpu_only(device, dtype, flat, expected):
    hardware = _cpu(bf16=dtype == "bf16") if device == "cpu" else _gpu((8, 0))
    precision = choose_precision(hardware, "auto")
    assert precision.name == dtype
    assert micro_batch_budget(TrainConfig(), precision, flat) == expected
    assert micro_batch_budget(TrainConfig(micro_batch_tokens=300), precision, flat) == 300


def test_a_split_step_gives_the_gradients_of_the_whole_batch(few, lora_fp32, tmp_path):
    """FtkitTrainer.training_step over micro-batches: the same loss and gradients as one
    pass over the whole batch (each piece is divided by the whole batch's labelled tokens)."""
    model, tokenizer = lora_fp32
    config = TrainConfig(method="lora", lora_dropout=0.0, precision="fp32")
    batch = collate(tokenize_examples(few[0][:6], tokenizer), tokenizer)
    precision = choose_precision(_cpu(bf16=False), "fp32")
    args = training_arguments(config, tmp_path, precision, evaluating=False, quiet=True)
    results = []
    for budget in (0, 2 * int(batch["attention_mask"].sum(dim=1).max())):
        trainer = FtkitTrainer(model=model, args=args, processing_class=tokenizer,
                               micro_batch_tokens=budget)  # fmt: skip
        assert (len(micro_batches(batch, budget)) > 1) == (budget > 0)
        model.zero_grad()
        labelled = trainer._get_num_items_in_batch([batch], "cpu")  # as the Trainer passes it
        loss = trainer.training_step(model, dict(batch), labelled)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss), grads))
    (whole, whole_grads), (split, split_grads) = results
    assert split == pytest.approx(whole, rel=1e-5)
    for name, grad in whole_grads.items():
        assert torch.allclose(split_grads[name], grad, rtol=1e-3, atol=1e-7), name


def test_random_sampler_is_seeded_per_epoch():
    sampler = SeededRandomSampler(40, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(40)) and first != list(range(40))
    assert list(SeededRandomSampler(40, seed=3)) == first  # a resumed run agrees
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_stop_button_ends_training_with_a_checkpoint(few, tmp_path):
    monitor = TrainingMonitor()
    click = AtStep(2, monitor.stop_button.click)
    config = tiny(tmp_path, method="lora", save_steps=100)
    result = train(config, few[0], few[1], callbacks=[click], monitor=monitor)
    assert result.steps in (2, 3) and result.status == "stopped: Stop button"
    assert (
        result.run_dir / "checkpoints" / f"checkpoint-{result.steps}" / "trainer_state.json"
    ).is_file()
    assert monitor.progress.value == result.steps and monitor.stop_button.disabled
    assert monitor.plot_output.outputs[0]["data"]["image/png"]
    assert "done" in monitor.status.value and result.val_loss is not None


def test_first_interrupt_stops_cleanly(few, tmp_path):
    # What SIGINT did before: Python's KeyboardInterrupt, or ignored where the test session
    # was started in the background by a shell (`cmd &`): training must leave it as it was.
    before = signal.getsignal(signal.SIGINT)
    click = AtStep(2, lambda: signal.raise_signal(signal.SIGINT))
    result = train(tiny(tmp_path, method="lora", save_steps=100), few[0], callbacks=[click])
    assert result.steps in (2, 3) and result.status.startswith("stopped: interrupted")
    assert (result.run_dir / "checkpoints" / f"checkpoint-{result.steps}").is_dir()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


class _PoisonAt(TrainerCallback):
    """From step `at` on, the model's logits are NaN (what a diverging run looks like)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * torch.nan)


def test_nan_loss_stops_before_saving_anything_bad(few, tmp_path):
    config = tiny(tmp_path, method="lora", save_steps=2, eval_steps=None)
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*checkpoint-2") as error:
        train(config, few[0], callbacks=[_PoisonAt(3)])
    assert "lr=0.001; try 0.0001" in str(error.value)
    checkpoints = sorted(p.name for p in (tmp_path / "runs" / "t" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2"]
    saved = tmp_path / "runs/t/checkpoints/checkpoint-2/adapter_model.safetensors"
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(saved).values())


def test_empty_data_fails_before_loading_a_model(tmp_path):
    with pytest.raises(TrainingError, match="train data is empty"):
        train(tiny(tmp_path), [])
    assert not (tmp_path / "runs").exists()


def test_all_masked_data_fails_before_training(few, tmp_path, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    with pytest.raises(TrainingError, match=r"No token of the 6 train examples.*max_length=16"):
        tokenize_for_training(few[0], tokenizer, max_length=16)
    no_reply = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(TrainingError, match="no assistant message"):
        tokenize_for_training(no_reply, tokenizer, tiny(tmp_path).max_length)


def test_config_errors_say_what_to_change():
    with pytest.raises(TrainingError, match="method must be one of"):
        TrainConfig(method="qlor").check()
    with pytest.raises(TrainingError, match=r"save_steps \(10\) must be a multiple of eval_steps"):
        TrainConfig(early_stopping_patience=2, eval_steps=4, save_steps=10).check()
    with pytest.raises(TrainingError, match=r"Unknown TrainConfig field.*'epochs'"):
        TrainConfig.from_dict({"epochs": 2})


def _cpu(bf16: bool = True) -> HardwareInfo:
    return HardwareInfo("cpu", "test CPU", None, None, bf16, False, 2, 8.0, 4.0, 10.0)


def _gpu(capability: tuple[int, int]) -> HardwareInfo:
    return HardwareInfo("cuda", "test GPU", capability, 16.0, capability >= (8, 0), True,
                        8, 32.0, 16.0, 100.0)  # fmt: skip


@pytest.mark.parametrize(
    "hardware, name, optimizer",
    [
        (_cpu(bf16=True), "bf16", "adamw_torch"),
        (_cpu(bf16=False), "fp32", "adamw_torch"),
        (_gpu((8, 0)), "bf16", "paged_adamw_8bit"),  # A100
        (_gpu((7, 5)), "fp16", "paged_adamw_8bit"),  # T4: fp16 with loss scaling
    ],
    ids=["cpu-bf16", "cpu-fp32", "a100", "t4"],
)
def test_precision_and_optimizer_follow_the_hardware(hardware, name, optimizer):
    precision = choose_precision(hardware)
    assert (precision.name, precision.optimizer) == (name, optimizer)
    assert precision.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16,
                               "fp32": torch.float32}[name]  # fmt: skip


def test_bf16_is_refused_where_it_is_only_emulated():
    with pytest.raises(TrainingError, match=r"only\s+emulates"):
        choose_precision(_gpu((7, 5)), "bf16")
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
        choose_precision(_cpu(), "fp16")


def test_oom_advice_gives_options_with_estimates():
    config = TrainConfig(model="llama-3.2-3b-instruct", method="lora", batch_size=8,
                         max_length=2048)  # fmt: skip
    message = oom_advice(config, gpu_memory_gb=15.6)
    assert "ran out of memory" in message and "15.6 GiB GPU" in message
    for option in ("batch_size=4, gradient_accumulation_steps=2", "micro_batch_tokens=8192",
                   "max_length=1024", "gradient_checkpointing=True", "method='qlora'",
                   "a smaller model"):  # fmt: skip
        assert option in message
    assert message.count("GiB") >= 6
    generic = oom_advice(TrainConfig(model="/my/own/model"), None)
    assert "smaller batch_size" in generic and "gradient_checkpointing=True" in generic
    assert "micro_batch_tokens" in generic


def test_length_grouped_sampler_is_seeded_per_epoch():
    lengths = [10, 200, 30, 180, 50, 160, 70, 140, 90, 120, 110, 100] * 4
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))
    assert list(LengthGroupedSampler(lengths, 4, seed=3)) == first  # a resumed run agrees
    sampler.set_epoch(1)
    assert list(sampler) != first
    spreads = [max(lengths[i] for i in first[k : k + 4]) - min(lengths[i] for i in first[k : k + 4])
               for k in range(0, len(first), 4)]  # fmt: skip
    assert sum(spreads) / len(spreads) < 60  # random batches of 4 would spread ~130 tokens


def test_length_grouped_batches_come_in_random_order_longest_first():
    """Batches of similar length, but not a long-to-short run of steps (transformers sorts
    each mega-batch); the batch holding the longest example comes first."""
    lengths = torch.randint(20, 400, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    order = list(LengthGroupedSampler(lengths, batch_size=8, seed=0))
    maxima = [max(lengths[i] for i in order[k : k + 8]) for k in range(0, len(order), 8)]
    assert maxima[0] == max(lengths)
    falls = sum(a > b for a, b in itertools.pairwise(maxima[1:]))
    assert falls < 0.7 * (len(maxima) - 2)  # sorted mega-batches: about 90% fall


@pytest.mark.slow
def test_torchrun_two_processes(few, tmp_path):
    """The same config under `torchrun --nproc_per_node 2` (gloo on CPU): two ranks, one run;
    each rank's batch of 2 runs as two micro-batches (gradients synchronised after the last)."""
    config = tiny(tmp_path, method="qlora", max_steps=3, batch_size=2, eval_steps=None,
                  micro_batch_tokens=128)  # fmt: skip
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config.__dict__))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "-m", "ftkit.training", "--config", str(path), "--dataset", "support_tickets",
               "--limit", "16"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "runs/t/metrics.jsonl").open()]
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert train_records[-1]["epoch"] == pytest.approx(0.75)  # 3 steps x 2 ranks x 2 of 16


def test_a_run_started_by_a_big_process_reports_its_own_peak_memory():
    # Linux keeps ru_maxrss across fork and exec: a run started from a notebook's kernel
    # would report the kernel's memory. peak_memory_gb reads the process's own high water.
    ballast = bytearray(3 * 2**30)  # this process now holds 3 GiB more
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched, so resident
    code = "from ftkit.training import peak_memory_gb; print(peak_memory_gb('cpu'))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(child.stdout.split()[-1]) < 2.0  # torch and ftkit alone take well under 1 GiB
    del ballast


def test_oom_advice_suggests_a_smaller_model_that_needs_less_memory():
    """Fewer parameters can need more memory (a 262k vocabulary's logits): the suggestion is
    the nearest smaller model whose estimate is below the failing setup's."""
    config = TrainConfig(model="smollm2-360m-instruct", method="qlora", batch_size=8,
                         max_length=512)  # fmt: skip
    message = oom_advice(config, gpu_memory_gb=4.0)
    suggested = re.search(r"a smaller model, (\S+): ([\d.]+) GiB", message)
    assert suggested and suggested.group(1) == "smollm2-135m-instruct"  # not gemma-3-270m-it
    now = float(re.search(r"estimate for this setup: ([\d.]+) GiB", message).group(1))
    assert float(suggested.group(2)) < now
