"""ftkit's training against TRL's `SFTTrainer` and a plain PyTorch loop on the same run, side by
side, in one invocation.

    .venv/bin/python benchmarks/train_vs_trl.py                 # QLoRA and LoRA, one round each
    .venv/bin/python benchmarks/train_vs_trl.py --methods qlora --trainers ftkit plain  # two only
    .venv/bin/python benchmarks/train_vs_trl.py --methods qlora --rounds 3 --limit 256  # seeds 0-2
    .venv/bin/python benchmarks/train_vs_trl.py --methods qlora --micro-batch-tokens 0  # no split
    .venv/bin/python benchmarks/train_vs_trl.py --methods qlora --group-by-length  # sorted batches
    .venv/bin/python benchmarks/train_vs_trl.py --methods lora --lora-dropout 0  # same draws
    .venv/bin/python benchmarks/train_vs_trl.py --methods lora --dropout-draws 1  # other masks
    .venv/bin/python benchmarks/train_vs_trl.py --methods lora --seeds 1 2 --dropout-draws 3 4

The third contestant, "plain", is the loop a careful practitioner writes without a trainer
library (`_run_plain`): stock peft on stock bitsandbytes layers, length-sorted batches in a
shuffled order, logits at labelled positions only, AdamW, nothing else. It shows how much of
ftkit's lead over TRL is ftkit's own work and how much is TRL's overhead.

What is the same for every trainer: the embedded SmolLM2-135M-Instruct (loaded by
`ftkit.training.load_for_training`, NF4 for QLoRA), the shipped support-ticket training split
tokenized once by ftkit (TRL gets the token ids and the completion mask, so all train on
exactly the same tokens with the same labels), LoRA r=16 / alpha 32 / dropout 0.05 on all
linear layers, bf16 autocast where the CPU has it, batch 8, one epoch, lr 1e-3 with the same
schedule and warm-up, the same seed (round r of `--rounds`: seed r), no packing, no
gradient checkpointing, no evaluation or checkpoints during training, random batches
(ftkit's default; `--group-by-length` for its length-grouped ones). ftkit runs each batch
of 8 as one flat row without padding, the 24 tokens every ticket starts with (the chat
template's system turn and user header) computed once per batch, and never holds the
output layer's logits whole (its CPU defaults: `ftkit.fast.flat_rows`,
`ftkit.fast.lean_output_loss`; a batch above 1024 tokens in bf16, 512 in fp32,
`--micro-batch-tokens`, runs as length-sorted micro-batches), with the same loss and
gradients; its "trained tokens" count what the model computed (the prefix once per batch).
MFU counts 4 N FLOPs per non-padding token for every trainer, so ftkit's shared prefix
shows there as utilisation it did not need. Each run is a
separate process (the parent reads its peak resident memory from the operating system
with `wait4`), and which trainer goes first turns (per method from round to round, and
between methods within a round) so a machine that slows down over time hurts none more.

TRL's and the plain loop's workers get oneDNN's own kernel cache
(ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024), as they run without ftkit; importing ftkit keeps 64
kernels (ftkit.hardware), a saving of ftkit's.

Each record also says what its seed drew: the adapters' initial values (the sum of every
lora_A value) and the order of the examples (real tokens per batch). ftkit and TRL draw both
alike from the same seed (the adapters after `torch.manual_seed(seed)`, the order as
`torch.randperm` under seed + epoch), so their runs differ by LoRA dropout's draws (each
its own way) and by arithmetic; `--lora-dropout 0` leaves the arithmetic alone, and
`--dropout-draws K` draws the masks from another stream (the adapters and order unchanged;
several K: a run for each, so each seed's validation loss is a mean over masks, with its
standard error).

Measured per run: trained tokens per second (padding included), non-padding tokens per
second, peak RSS, the last logged training loss, and the validation loss of the trained
adapter (ftkit.trainer.loss_on, the same function for all). Measured once: the processor,
whether it has native bf16, and fp32 and bf16 matmul throughput (2048 x 2048; smaller where
the CPU only emulates bf16), which turns tokens per second into model-FLOPs utilisation
(LoRA: about 4 N FLOPs per token, N the model's parameters; against the bf16 figure when
training ran in bf16, else the fp32 one), and evaluation speed: greedy generation for test
tickets one at a time against batched (fp32, outputs compared).

Writes benchmarks/results/train_vs_trl.json, a plot next to it, and prints a Markdown
table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TRAINERS = ("ftkit", "trl", "plain")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
BATCH, EPOCHS, LR, LOG_EVERY = 8, 1.0, 1e-3, 5


def matmul_gflops(dtype_name: str, n: int = 2048, seconds: float = 3.0) -> tuple[float, int]:
    """Sustained n x n matmul throughput of this machine in GFLOP/s (best of short bursts).

    Returns the figure and the size it was measured at: a dtype this CPU only emulates (bf16
    without AVX512-BF16 or AMX runs hundreds of times slower than fp32) is measured on
    smaller matrices, so that the figure takes seconds rather than minutes.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    probe = torch.randn(256, 256, dtype=dtype)
    probe @ probe
    started = time.perf_counter()
    probe @ probe
    rate = 2 * 256**3 / max(time.perf_counter() - started, 1e-9)  # FLOP/s, roughly
    while n > 256 and 2 * n**3 / rate > seconds / 2:  # one product: under half the budget
        n //= 2
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best, n


# ----------------------------------------------------------------------------- worker side


class _Meter:
    """A transformers callback timing the training loop, and a counter of the tokens fed."""

    def __init__(self, dropout_draws: int | None = None) -> None:
        self.dropout_draws = dropout_draws  # None: dropout draws from the seed's own stream
        self.started = self.ended = 0.0
        self.padded = self.real = 0  # tokens in the batches, with and without padding
        self.batches: list[int] = []  # real tokens of each batch, in order: the data's order
        self.adapters_at_start = None  # a fingerprint of the adapters' initial values

    def add(self, tensors: dict) -> dict:
        """Count one collated batch (and pass it on)."""
        self.padded += int(tensors["input_ids"].numel())
        self.count_real(tensors)
        return tensors

    def count_real(self, tensors: dict) -> None:
        real = int(tensors["attention_mask"].sum())
        self.real += real
        self.batches.append(real)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.adapters_at_start = adapter_fingerprint(model)
        self.redraw()
        self.started = time.perf_counter()

    def redraw(self) -> None:
        """With `dropout_draws` K, re-seed torch's global generator with 1000 + K as training
        begins: LoRA dropout's masks come from another stream, while the adapters' start
        and the examples' order (drawn before, or from the samplers' own generators) stay
        those of the seed."""
        if self.dropout_draws is not None:
            import torch

            torch.manual_seed(1000 + self.dropout_draws)

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()

    def __getattr__(self, name: str):  # every other event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def adapter_fingerprint(model) -> float:
    """The sum of every lora_A value, in float64: equal for two trainers whose adapters start
    from the same draws (lora_B starts at zero in both)."""
    return sum(
        float(p.detach().double().sum()) for name, p in model.named_parameters() if "lora_A" in name
    )


def _data(limit: int | None):
    from ftkit.splits import load_dataset_splits

    splits = load_dataset_splits("support_tickets")
    return list(splits["train"])[:limit], list(splits["validation"])


def _config(method: str, seed: int, grouping: bool = False, micro: int | str = "auto",
            dropout: float = LORA["dropout"]):  # fmt: skip
    from ftkit.config import TrainConfig

    return TrainConfig(
        method=method, lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout,
        num_epochs=EPOCHS, lr=LR, batch_size=BATCH, logging_steps=LOG_EVERY, eval_steps=None,
        save_steps=10**6, seed=seed, run_name=f"bench-{method}", overwrite=True,
        group_by_length=grouping, micro_batch_tokens=micro,
    )  # fmt: skip


def _run_ftkit(config, train, model, tokenizer, meter, runs_dir: Path):
    from dataclasses import replace

    from ftkit import trainer as ftkit_trainer
    from ftkit.formatting import IGNORE_INDEX
    from ftkit.training import train as ftkit_train

    collate, split = ftkit_trainer.Collator.__call__, ftkit_trainer.micro_batches

    def count_real(self, batch):  # real tokens in the batches ftkit's collator builds
        tensors = collate(self, batch)
        meter.count_real(tensors)
        return tensors

    def count_padded(inputs, max_tokens, padded=True):  # tokens the model computes
        pieces = split(inputs, max_tokens, padded)
        for piece in pieces:
            if padded or piece["attention_mask"].dim() != 2:
                meter.padded += int(piece["input_ids"].numel())
            else:  # a flat row: the shared prefix once, then each row's own tokens
                wanted = piece["labels"][:, 1:] != IGNORE_INDEX
                prefix = ftkit_trainer.shared_prefix_length(piece, wanted)
                rows = len(piece["input_ids"])
                meter.padded += int(piece["attention_mask"].sum()) - prefix * (rows - 1)
        return pieces

    ftkit_trainer.Collator.__call__, ftkit_trainer.micro_batches = count_real, count_padded
    config = replace(config, runs_dir=str(runs_dir))
    result = ftkit_train(config, train, None, model=model, tokenizer=tokenizer, callbacks=[meter])
    losses = [r["loss"] for r in result.history if r["event"] == "train"]
    return result.model, losses


def _stock_lora(dropout: float):
    """peft's own LoRA settings for the contestants without ftkit (TRL, the plain loop): the
    same adapters as ftkit's, on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )  # fmt: skip


def _run_trl(config, train, model, tokenizer, meter, runs_dir: Path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ftkit.formatting import tokenize_for_training

    items = tokenize_for_training(
        train, tokenizer, config.max_length, config.packing
    )  # the tokens ftkit trains on
    dataset = Dataset.from_dict(
        {
            "input_ids": [item.input_ids for item in items],
            "completion_mask": [[int(label != -100) for label in item.labels] for item in items],
        }
    )
    args = SFTConfig(
        output_dir=str(runs_dir / "trl"), per_device_train_batch_size=BATCH,
        num_train_epochs=EPOCHS, learning_rate=LR, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, bf16=_bf16(), use_cpu=True,
        gradient_checkpointing=False, packing=False, completion_only_loss=True,
        max_length=config.max_length, logging_steps=LOG_EVERY, save_strategy="no",
        eval_strategy="no", report_to="none", seed=config.seed, data_seed=config.seed,
        dataset_num_proc=None, disable_tqdm=True,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=_stock_lora(config.lora_dropout), callbacks=[meter],
    )  # fmt: skip
    collate = trainer.data_collator
    trainer.data_collator = lambda batch: meter.add(collate(batch))
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return trainer.model, losses


def plain_loss(causal_lm, batch: dict, bf16: bool):
    """The plain loop's loss: mean next-token cross-entropy over the batch's labelled tokens,
    with logits computed at those positions only (the output layer applied to their hidden
    states alone)."""
    import torch
    import torch.nn.functional as F

    from ftkit.formatting import IGNORE_INDEX

    targets = batch["labels"][:, 1:]
    wanted = targets != IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = causal_lm.model(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state  # fmt: skip
        logits = causal_lm.lm_head(hidden[:, :-1][wanted])
    return F.cross_entropy(logits.float(), targets[wanted])


def _run_plain(config, train, model, tokenizer, meter, runs_dir: Path):
    """A plain PyTorch loop, as a careful practitioner writes it without ftkit: stock peft on
    the stock bitsandbytes layers, batches of similar lengths (sorted, then the batches
    shuffled), logits computed at labelled positions only, AdamW with the same schedule and
    clipping, autocast to bf16 where the CPU has it. Nothing else: no micro-batches, no lean
    layers, no fused dropout, no heap release."""
    import math
    import random

    import torch
    from peft import get_peft_model
    from transformers import get_scheduler

    from ftkit.formatting import collate, tokenize_for_training

    items = tokenize_for_training(train, tokenizer, config.max_length, config.packing)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    random.Random(config.seed).shuffle(batches)
    torch.manual_seed(config.seed)
    model = get_peft_model(model, _stock_lora(config.lora_dropout))
    meter.adapters_at_start = adapter_fingerprint(model)
    meter.redraw()
    inner = model.get_base_model()  # the causal LM, its linear layers wrapped by peft in place
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=config.weight_decay)
    steps = math.ceil(EPOCHS * len(batches))
    schedule = get_scheduler(config.lr_scheduler, optimizer,
                             num_warmup_steps=math.ceil(config.warmup_ratio * steps),
                             num_training_steps=steps)  # fmt: skip
    bf16 = _bf16()
    model.train()
    losses, window = [], []
    meter.started = time.perf_counter()
    for step in range(steps):
        batch = collate([items[i] for i in batches[step % len(batches)]], tokenizer)
        meter.add(batch)
        loss = plain_loss(inner, batch, bf16)
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
            losses.append(sum(window) / len(window))
            window = []
    meter.ended = time.perf_counter()
    return model, losses


def _bf16() -> bool:
    from ftkit.hardware import detect_hardware

    return detect_hardware().bf16


def worker(trainer: str, method: str, limit: int | None, seed: int, out: Path,
           grouping: bool = False, micro: int | str = "auto",
           dropout: float = LORA["dropout"],
           dropout_draws: int | None = None) -> None:  # fmt: skip
    """One training run in this process; writes its measurements as JSON to `out`."""
    import tempfile

    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.trainer import loss_on, micro_batch_budget
    from ftkit.training import load_for_training

    train, validation = _data(limit)
    config = _config(method, seed, grouping, micro, dropout)
    precision = choose_precision(detect_hardware())
    model, tokenizer = load_for_training(config, precision)
    meter = _Meter(dropout_draws)
    run = {"ftkit": _run_ftkit, "trl": _run_trl, "plain": _run_plain}[trainer]
    with tempfile.TemporaryDirectory() as runs_dir:
        trained, losses = run(config, train, model, tokenizer, meter, Path(runs_dir))
    seconds = meter.ended - meter.started
    record = {
        "trainer": trainer,
        "method": method,
        "seed": seed,
        "lora_dropout": dropout,
        "dropout_draws": dropout_draws,
        "length_grouped": grouping if trainer == "ftkit" else False,
        "micro_batch_tokens": (
            micro_batch_budget(config, precision, config.flat_batches) if trainer == "ftkit" else 0
        ),
        "flat_batches": config.flat_batches if trainer == "ftkit" else False,
        "precision": precision.name,
        "examples": len(train),
        "seconds": seconds,
        "tokens": meter.padded,
        "real_tokens": meter.real,
        "tokens_per_second": meter.padded / seconds,
        "real_tokens_per_second": meter.real / seconds,
        "final_train_loss": losses[-1] if losses else None,
        "val_loss": loss_on(trained, tokenizer, validation),
        "parameters": _parameters(trained.get_base_model()),
        # What the seed drew: the adapters' initial values and the order of the examples
        # (real tokens per batch; the plain loop's length-sorted batches differ by design).
        "adapters_at_start": meter.adapters_at_start,
        "batch_tokens": meter.batches,
    }
    out.write_text(json.dumps(record))


def _parameters(model) -> int:
    """The base model's parameter count (LoRA's excluded), 4-bit weights counted unpacked."""
    import math

    def count(p) -> int:
        state = getattr(p, "quant_state", None)
        return math.prod(state.shape) if state is not None else p.numel()

    return sum(count(p) for name, p in model.named_parameters() if "lora_" not in name)


# ----------------------------------------------------------------------------- parent side


def run_worker(trainer: str, method: str, limit: int | None, seed: int, out: Path,
               grouping: bool = False, micro: int | str = "auto",
               dropout: float = LORA["dropout"],
               dropout_draws: int | None = None) -> dict:  # fmt: skip
    """Start a worker process and return its record plus its peak RSS read from the OS."""
    command = [sys.executable, __file__, "--worker", trainer, "--methods", method]
    command += ["--seed", str(seed), "--out", str(out), "--lora-dropout", str(dropout)]
    if dropout_draws is not None:
        command += ["--dropout-draws", str(dropout_draws)]
    command += ["--micro-batch-tokens", str(micro)] + (["--group-by-length"] if grouping else [])
    if limit:
        command += ["--limit", str(limit)]
    # TRL and the plain loop run with oneDNN's own kernel cache (1024 shapes), as without ftkit;
    # ftkit's import keeps 64 (ftkit.hardware), part of what is measured for ftkit.
    own_cache = trainer != "ftkit"
    env = os.environ | ({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"} if own_cache else {})
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{trainer} {method} run failed (exit {process.returncode}).")
    record = json.loads(out.read_text())
    record["peak_rss_gib"] = usage.ru_maxrss / 2**20  # Linux reports KiB
    return record


def evaluation_speed(tickets: int, max_new_tokens: int) -> dict:
    """Greedy replies to test tickets one at a time and batched (fp32), timed and compared."""
    import torch

    from ftkit.curve import subsample
    from ftkit.evaluation import Approach, build_prompt
    from ftkit.generation import generate_replies
    from ftkit.models import load_model
    from ftkit.splits import load_dataset_splits
    from ftkit.task_data import load_task_data

    model, tokenizer = load_model(dtype=torch.float32)
    approach = Approach(
        "system prompt", system_prompt=load_task_data("support_tickets").task.system_prompt
    )
    test = subsample(list(load_dataset_splits("support_tickets")["test"]), tickets)
    prompts = [build_prompt(example, approach) for example in test]
    timings, replies = {}, {}
    for name, batch in (("one_at_a_time", 1), ("batched", len(prompts))):
        started = time.perf_counter()
        out = generate_replies(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch, share_prefix=batch > 1)  # fmt: skip
        timings[name] = time.perf_counter() - started
        replies[name] = [reply.text for reply in out]
    same = sum(a == b for a, b in zip(replies["one_at_a_time"], replies["batched"], strict=True))
    return {
        "tickets": len(prompts),
        "max_new_tokens": max_new_tokens,
        "one_at_a_time_seconds": timings["one_at_a_time"],
        "batched_seconds": timings["batched"],
        "speedup": timings["one_at_a_time"] / timings["batched"],
        "identical_replies": same,
    }


def summarise(runs: list[dict], machine: dict) -> dict:
    """Medians per trainer and method, MFU, and ftkit's ratios to TRL."""
    peak = machine[f"{mfu_reference(runs)}_gflops"]
    table: dict = {}
    for record in runs:
        table.setdefault(record["method"], {}).setdefault(record["trainer"], []).append(record)
    summary = {}
    for method, by_trainer in table.items():
        rows = {}
        for trainer, records in by_trainer.items():
            keys = ("tokens_per_second", "real_tokens_per_second", "peak_rss_gib",
                    "final_train_loss", "val_loss", "seconds")  # fmt: skip
            row = {key: _median([r[key] for r in records]) for key in keys}
            # Validation loss varies with the seed: the mean over seeds, and each seed's.
            row["val_loss"] = statistics.fmean(r["val_loss"] for r in records)
            by_seed: dict = {}
            for r in records:  # several per seed with several --dropout-draws
                by_seed.setdefault(r.get("seed", 0), []).append(r["val_loss"])
            row["val_loss_by_seed"] = {k: statistics.fmean(v) for k, v in by_seed.items()}
            row["val_losses_by_seed"] = by_seed
            flops = 4 * records[0]["parameters"]
            row["mfu"] = flops * row["real_tokens_per_second"] / (peak * 1e9)
            row["runs"] = len(records)
            rows[trainer] = row
        for other, key in (("trl", "ratio"), ("plain", "ratio_plain")):
            if "ftkit" in rows and other in rows:
                rows[key] = _ratio(rows["ftkit"], rows[other])
        summary[method] = rows
    return summary


def _ratio(f: dict, t: dict) -> dict:
    """ftkit's row against another trainer's: speed and memory ratios, validation-loss gaps."""
    seeds = sorted(set(f["val_loss_by_seed"]) & set(t["val_loss_by_seed"]))
    return {
        "speed": f["real_tokens_per_second"] / t["real_tokens_per_second"],
        "memory": f["peak_rss_gib"] / t["peak_rss_gib"],
        "val_loss_delta": f["val_loss"] - t["val_loss"],
        "val_loss_delta_by_seed": {
            seed: f["val_loss_by_seed"][seed] - t["val_loss_by_seed"][seed] for seed in seeds
        },
        # Where each has two or more runs of a seed (other dropout masks): the gap's
        # standard error, sqrt(s_f^2 / n_f + s_t^2 / n_t).
        "val_loss_delta_se_by_seed": {
            seed: _gap_error(f["val_losses_by_seed"][seed], t["val_losses_by_seed"][seed])
            for seed in seeds
            if min(len(f["val_losses_by_seed"][seed]), len(t["val_losses_by_seed"][seed])) > 1
        },
    }


def _gap_error(a: list[float], b: list[float]) -> float:
    """The standard error of mean(a) - mean(b), two independent samples."""
    return math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def _median(values: list) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def markdown(summary: dict, machine: dict, evaluation: dict | None) -> str:
    """The results as the Markdown tables RESULTS.md holds."""
    lines = [
        "| method | trainer | tokens/s (all) | tokens/s (non-pad) | MFU | peak RSS GiB | "
        "final train loss | val loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in summary.items():
        for trainer in TRAINERS:
            if trainer in rows:
                r = rows[trainer]
                lines.append(
                    f"| {method} | {trainer} | {r['tokens_per_second']:.0f} | "
                    f"{r['real_tokens_per_second']:.0f} | {100 * r['mfu']:.0f}% | "
                    f"{r['peak_rss_gib']:.2f} | {_loss(r['final_train_loss'])} | "
                    f"{_loss(r['val_loss'])} |"
                )
        for key, other in (("ratio", "TRL"), ("ratio_plain", "plain")):
            if key not in rows:
                continue
            q = rows[key]
            lines.append(
                f"| {method} | **ftkit / {other}** | | **{q['speed']:.2f}x** | | "
                f"**{q['memory']:.2f}x** | | {q['val_loss_delta']:+.3f} |"
            )
            errors = q.get("val_loss_delta_se_by_seed", {})
            per_seed = ", ".join(
                f"seed {k}: {v:+.4f}" + (f" ± {errors[k]:.4f}" if k in errors else "")
                for k, v in q["val_loss_delta_by_seed"].items()
            )
            lines.append(f"| {method} | val loss ftkit - {other} by seed | | | | | | {per_seed} |")
    lines.append("")
    lines.append(
        "Medians over runs, except validation loss: the mean over runs (by seed: the mean "
        "over that seed's dropout draws, ± its standard error where there are several)."
    )
    lines.append(machine_line(machine))
    if evaluation:
        e = evaluation
        lines.append(
            f"Evaluation speed ({e['tickets']} test tickets, up to {e['max_new_tokens']} new "
            f"tokens, fp32): one at a time {e['one_at_a_time_seconds']:.0f} s, batched "
            f"{e['batched_seconds']:.0f} s, **{e['speedup']:.1f}x**; identical greedy replies: "
            f"{e['identical_replies']} of {e['tickets']}."
        )
    return "\n".join(lines)


def mfu_reference(runs: list[dict]) -> str:
    """The matmul figure MFU is measured against: bf16 if every run trained in bf16."""
    return "bf16" if runs and all(run["precision"] == "bf16" for run in runs) else "fp32"


def machine_line(machine: dict) -> str:
    """Which machine, its matmul figures, and which of them MFU is measured against."""
    sizes = {d: machine.get(f"{d}_matmul_size", 2048) for d in ("fp32", "bf16")}
    figures = ", ".join(
        f"{d} {machine[f'{d}_gflops']:.{0 if machine[f'{d}_gflops'] >= 10 else 1}f} GFLOP/s "
        f"({sizes[d]}x{sizes[d]})"
        for d in ("fp32", "bf16")
    )
    reference = machine.get("mfu_reference", "bf16")
    where = f"{machine['cpu']}, " if machine.get("cpu") else ""
    native = {True: "native bf16", False: "no native bf16"}.get(machine.get("native_bf16"), "")
    return (
        f"Machine: {where}{machine['cpu_cores']} cores{', ' + native if native else ''}. "
        f"Matmul: {figures}. MFU is against the {reference} figure (training ran in "
        f"{reference})."
    )


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot(summary: dict, path: Path) -> None:
    """Bars of non-padding tokens/s and peak RSS per method and trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in (
        (axes[0], "real_tokens_per_second", "non-padding tokens / s (higher is better)"),
        (axes[1], "peak_rss_gib", "peak RSS, GiB (lower is better)"),
    ):
        present = [t for t in TRAINERS if any(t in summary[m] for m in methods)]
        width = 0.8 / len(present)
        for i, trainer in enumerate(present):
            values = [summary[m].get(trainer, {}).get(key, 0) for m in methods]
            xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(methods))]
            bars = ax.bar(xs, values, width=0.95 * width, label=trainer)
            ax.bar_label(bars, fmt="%.1f" if key == "peak_rss_gib" else "%.0f", fontsize=8)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(label, fontsize=10)
    axes[0].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def versions() -> dict:
    """Versions of what was measured."""
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "ftkit")
    found = {name: md.version(name) for name in names}
    return {"python": platform.python_version(), **found}


def _budget(value: str) -> int | str:
    return value if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["qlora", "lora"])
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS),
                        help="the contestants (default: all three)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per trainer and method; round r uses seed r")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="these seeds instead of --rounds' 0 .. rounds - 1")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--group-by-length", action="store_true",
                        help="ftkit in length-grouped batches (TRL: random batches)")  # fmt: skip
    parser.add_argument("--micro-batch-tokens", default="auto", type=_budget,
                        help="ftkit: auto, or a number (0: never split)")  # fmt: skip
    parser.add_argument("--limit", type=int, help="train on the first N examples only")
    parser.add_argument("--lora-dropout", type=float, default=LORA["dropout"],
                        help="LoRA's dropout for every trainer (0: no draws beyond the "
                        "adapters' start and the data's order)")  # fmt: skip
    parser.add_argument("--dropout-draws", type=int, nargs="+",
                        help="K: LoRA dropout's masks from stream 1000 + K, the "
                        "adapters' start and the order still the seed's; several K: a run "
                        "for each")  # fmt: skip
    parser.add_argument("--eval-tickets", type=int, default=32, help="0 skips evaluation speed")
    parser.add_argument("--eval-new-tokens", type=int, default=48)
    parser.add_argument("--out", default=str(RESULTS / "train_vs_trl.json"))
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.worker:
        worker(args.worker, args.methods[0], args.limit, args.seed, out,
               args.group_by_length, args.micro_batch_tokens, args.lora_dropout,
               args.dropout_draws[0] if args.dropout_draws else None)  # fmt: skip
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    from ftkit.hardware import cpu_has_bf16, cpu_name

    machine = {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "native_bf16": cpu_has_bf16()}
    for dtype in ("fp32", "bf16"):
        gflops, size = matmul_gflops({"fp32": "float32", "bf16": "bfloat16"}[dtype])
        machine[f"{dtype}_gflops"], machine[f"{dtype}_matmul_size"] = gflops, size
    print(f"[bench] {machine['cpu']}, {machine['cpu_cores']} cores, native bf16: "
          f"{machine['native_bf16']}; matmul: {machine['fp32_gflops']:.0f} fp32 / "
          f"{machine['bf16_gflops']:.1f} bf16 GFLOP/s", flush=True)  # fmt: skip
    runs, scratch = [], out.with_suffix(".run.json")
    seeds = args.seeds if args.seeds is not None else list(range(args.rounds))
    rounds = [(seed, draws) for seed in seeds for draws in args.dropout_draws or [None]]
    for round_, (seed, draws) in enumerate(rounds):
        for index, method in enumerate(args.methods):
            # Who goes first turns from round to round for each method, and from method to
            # method within a round, so a machine slowing down over time hurts none more.
            shift = (round_ + index) % len(args.trainers)
            order = args.trainers[shift:] + args.trainers[:shift]
            masks = "" if draws is None else f", dropout draws {draws}"
            for trainer in order:
                print(f"[bench] round {round_ + 1} (seed {seed}{masks}): {trainer} {method} ...",
                      flush=True)  # fmt: skip
                record = run_worker(trainer, method, args.limit, seed, scratch,
                                    args.group_by_length, args.micro_batch_tokens,
                                    args.lora_dropout, draws)  # fmt: skip
                print(f"[bench]   {record['real_tokens_per_second']:.0f} tokens/s, peak RSS "
                      f"{record['peak_rss_gib']:.2f} GiB, val loss {record['val_loss']:.3f}",
                      flush=True)  # fmt: skip
                runs.append(record)
    scratch.unlink(missing_ok=True)
    evaluation = None
    if args.eval_tickets:
        print("[bench] evaluation speed ...", flush=True)
        evaluation = evaluation_speed(args.eval_tickets, args.eval_new_tokens)
    machine["mfu_reference"] = mfu_reference(runs)
    summary = summarise(runs, machine)
    command = "python benchmarks/train_vs_trl.py " + " ".join(argv or sys.argv[1:])
    results = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M"),
               "versions": versions(), "machine": machine, "runs": runs,
               "summary": summary, "evaluation": evaluation}  # fmt: skip
    out.write_text(json.dumps(results, indent=2))
    plot(summary, out.with_suffix(".png"))
    print(markdown(summary, machine, evaluation))
    print(f"[bench] wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
