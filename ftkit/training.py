"""Training: QLoRA, LoRA or full fine-tuning from one typed config, on the `Trainer`.

`train(config, train_examples, validation_examples)` loads the base model (4-bit NF4 for
QLoRA), adds LoRA adapters with peft, and runs `ftkit.trainer.FtkitTrainer` (the
transformers `Trainer` with a cheaper exact loss and length-grouped batches). What this
module adds for a learner:

- `TrainConfig`: every knob with a comment, defaults that train the embedded model on a
  laptop CPU in minutes;
- precision and optimizer chosen from the hardware (`choose_precision`): bf16 autocast
  where native (recent CPUs, Ampere+), fp16 with loss scaling on a T4, fp32 otherwise;
  paged 8-bit AdamW on CUDA;
- data checked before any model work: an empty split, or one in which nothing would train,
  fails with the reason;
- a run folder (`ftkit.runs`): config, metrics.jsonl, checkpoints, adapter, model card;
  `resume=True` continues from the last complete checkpoint;
- faults answered in words: NaN loss (`TrainingDiverged`), CUDA out of memory (advice from
  `ftkit.memory.estimate_memory`), Ctrl-C (a clean stop with a checkpoint).

The same config runs on several GPUs (or CPU processes) unchanged:
`torchrun --nproc_per_node 2 -m ftkit.training --config cfg.json --dataset support_tickets`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from ftkit.callbacks import StopControl, stop_on_interrupt
from ftkit.faults import TrainingError, divergence_advice, oom_advice, prepare_data
from ftkit.hardware import HardwareInfo, detect_hardware, return_freed_memory
from ftkit.lean_4bit import use_lean_4bit
from ftkit.lean_layers import use_lean_layers
from ftkit.lora_dropout import fuse_lora_dropout
from ftkit.models import EMBEDDED_MODEL, keep_4bit_trainable, load_model, load_tokenizer
from ftkit.trainer import TrainingDiverged, build_trainer

METHODS = ("qlora", "lora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved as config.json in the run folder."""

    model: str = EMBEDDED_MODEL  # catalog name, hub id or local directory of the base model
    method: str = "qlora"  # "qlora" (4-bit base + LoRA), "lora" (16-bit base + LoRA), "full"
    lora_r: int = 16  # rank of each LoRA update (its two matrices are d x r and r x d)
    lora_alpha: int = 32  # LoRA scaling: the update is multiplied by lora_alpha / lora_r
    lora_dropout: float = 0.05  # dropout on the LoRA branch's input, during training only
    target_modules: str | list[str] = "all-linear"  # layers that get adapters
    num_epochs: float = 2.0  # passes over the training examples
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs); wins
    lr: float = 3e-4  # peak learning rate (LoRA takes larger ones than full fine-tuning)
    lr_scheduler: str = "cosine"  # how lr decays after warm-up: "cosine", "linear", "constant"
    warmup_ratio: float = 0.05  # share of the steps over which lr climbs from 0 to its peak
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this norm (0: no clipping)
    batch_size: int = 8  # examples per forward pass (per device)
    gradient_accumulation_steps: int = 1  # forward passes per optimizer step
    max_length: int = 512  # tokens per example; longer ones are cut at the end
    packing: bool = False  # several examples per row (pays off for long, uneven examples)
    group_by_length: bool = False  # batches of similar length: less padding, but less random
    micro_batch_tokens: int | str = "auto"  # split bigger batches (same step); 0: never
    labelled_logits_only: bool = True  # logits only where the loss needs them: same loss
    lean_layers: bool = True  # frozen norms, SwiGLU, attention, 4-bit layers: same loss
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    logging_steps: int = 5  # log the training loss every this many steps
    eval_steps: int | None = 20  # validation loss every this many steps (None: at the end)
    early_stopping_patience: int | None = None  # evaluations without improvement; None: off
    save_steps: int = 20  # checkpoint every this many steps (resume starts from the last)
    keep_checkpoints: int = 2  # older checkpoints are deleted (the best one is kept)
    seed: int = 0  # adapters' initialisation, data order, dropout
    precision: str = "auto"  # "auto" (from the hardware), "bf16", "fp16" or "fp32"
    optimizer: str = "auto"  # "auto": paged_adamw_8bit on CUDA, adamw_torch on CPU
    run_name: str | None = None  # folder name under runs_dir; None: method and time
    runs_dir: str = "runs"  # where run folders go
    overwrite: bool = False  # replace an existing run of the same name (else: an error)

    def check(self) -> None:
        """Raise a `TrainingError` naming the first impossible setting.

        Taught in notebooks/03_qlora_training.ipynb.
        """
        budget = self.micro_batch_tokens
        problems = [
            (self.method not in METHODS, f"method must be one of {METHODS}"),
            (self.precision not in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.batch_size < 1 or self.gradient_accumulation_steps < 1, "batch sizes >= 1"),
            (self.max_steps is not None and self.max_steps < 1, "max_steps >= 1, or None"),
            (self.max_length < 16, "max_length of at least 16 tokens"),
            (
                budget != "auto" and (type(budget) is not int or budget < 0),
                'micro_batch_tokens "auto", 0 (never split) or a number of tokens',
            ),
            (not 0 <= self.warmup_ratio < 1, "warmup_ratio in [0, 1)"),
            (self.lr <= 0, "a positive lr"),
        ]
        for bad, need in problems:
            if bad:
                raise TrainingError(f"TrainConfig: {need}. Got {self._summary()}.")
        if self.early_stopping_patience and self.eval_steps and self.save_steps % self.eval_steps:
            raise TrainingError(
                f"Early stopping restores the best checkpoint, so checkpoints must fall on "
                f"evaluations: save_steps ({self.save_steps}) must be a multiple of eval_steps "
                f"({self.eval_steps}). Try save_steps={self.eval_steps}."
            )

    def _summary(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)[:12])

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build a config from a dict (config.json), naming any unknown key.

        Taught in notebooks/03_qlora_training.ipynb.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"Unknown TrainConfig field(s) {unknown}; known: {sorted(known)}.")
        return cls(**values)


@dataclass
class Precision:
    """How training computes on this machine."""

    dtype: torch.dtype  # the compute dtype (autocast), and the frozen base's dtype for LoRA
    name: str  # "bf16", "fp16" or "fp32"
    optimizer: str  # a TrainingArguments `optim` name
    device: str  # "cuda" or "cpu" (or "mps")
    reason: str  # one line a learner can read


def choose_precision(
    hardware: HardwareInfo, requested: str = "auto", optimizer: str = "auto"
) -> Precision:
    """Pick compute dtype and optimizer: bf16 where native, fp16 + loss scaling on T4s.

    Taught in notebooks/03_qlora_training.ipynb.
    """
    cuda = hardware.device == "cuda"
    if requested == "auto":
        requested = "bf16" if hardware.bf16 else "fp16" if cuda else "fp32"
    if requested == "bf16" and not hardware.bf16:
        raise TrainingError(
            f"precision='bf16', but {hardware.device_name} has no native bf16 (a T4 only "
            "emulates it, many times slower). Use precision='auto'."
        )
    if requested == "fp16" and not cuda:
        raise TrainingError("precision='fp16' needs a CUDA GPU (loss scaling); use 'auto'.")
    reasons = {
        "bf16": "bf16 autocast: native on this hardware, no loss scaling needed",
        "fp16": "fp16 autocast with loss scaling: this GPU has no native bf16",
        "fp32": "fp32: this CPU has no native bf16 (fp16 would be slower than fp32 here)",
    }
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda else "adamw_torch"
    return Precision(dtypes[requested], requested, optimizer, hardware.device, reasons[requested])


def load_for_training(config: TrainConfig, precision: Precision):
    """Load the base model for `config.method`: NF4 for QLoRA, 16-bit for LoRA, fp32 for full.

    Taught in notebooks/03_qlora_training.ipynb.
    """
    dtype = torch.float32 if config.method == "full" else precision.dtype
    quantization = "nf4" if config.method == "qlora" else None
    device = precision.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return load_model(config.model, quantization=quantization, dtype=dtype, device=device)


def add_adapters(model, config: TrainConfig):
    """Freeze the base (kept in its 16-bit dtype) and add LoRA adapters (kept in fp32).

    Returns the model unchanged for full fine-tuning. Taught in
    notebooks/03_qlora_training.ipynb.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.method == "full" or isinstance(model, PeftModel):
        return model
    if config.method == "qlora":
        keep_4bit_trainable(model)  # the bitsandbytes CPU trap: see ftkit.models
    # No `prepare_model_for_kbit_training`: its fp32 copies of the norms and embeddings make
    # the whole residual stream fp32 (twice the activations, a cast before every 4-bit
    # layer) for no accuracy here, since the RMS norms already compute in fp32 inside.
    model.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # the adapters' initialisation
    model = get_peft_model(model, lora)
    fuse_lora_dropout(model)  # same dropout, a fifth faster and leaner: see ftkit.lora_dropout
    if config.lean_layers:
        use_lean_layers(model)  # less kept for the backward pass: see ftkit.lean_layers
        use_lean_4bit(model)  # QLoRA: no clone, scales dequantised once: see ftkit.lean_4bit
    return model


@dataclass
class TrainResult:
    """What a training run produced and what it cost."""

    run_dir: Path  # the run folder (config.json, metrics.jsonl, adapter/, README.md, ...)
    adapter_dir: Path  # the final adapter, loadable with PeftModel.from_pretrained
    history: list[dict]  # every train/eval record, as in metrics.jsonl
    steps: int  # optimizer steps done (including those before a resume)
    status: str  # "finished", "early stopping", "stopped: <reason>"
    train_loss: float | None  # the last logged training loss
    val_loss: float | None  # validation loss of the returned adapter (the best, if stopping early)
    best_step: int | None  # step of the lowest validation loss
    seconds: float  # wall time of this call: model loading and evaluation included
    seconds_per_epoch: float  # training time (no loading, no evaluation) per pass over the data
    tokens_per_second: float  # real (non-padding) tokens trained per second, evaluation excluded
    peak_memory_gb: float  # peak RSS of this process (CPU) or peak GPU memory allocated, GiB
    trainable_params: int  # parameters the optimizer updated
    reused: bool = False  # True: an identical finished run, read back (its times, not this call's)
    model: object = field(default=None, repr=False)  # the trained model (a PeftModel for LoRA)
    tokenizer: object = field(default=None, repr=False)

    def summary(self) -> str:
        """One paragraph a learner can print.

        Taught in notebooks/03_qlora_training.ipynb.
        """
        val = f"{self.val_loss:.3f}" if self.val_loss is not None else "n/a"
        train = f"{self.train_loss:.3f}" if self.train_loss is not None else "n/a"
        again = " (reused: an identical earlier run)" if self.reused else ""
        return (
            f"{self.run_dir.name}: {self.status} after {self.steps} steps in {self.seconds:.0f} s"
            f"{again}; "
            f"train loss {train}, validation loss {val}; {self.tokens_per_second:.0f} tokens/s, "
            f"peak memory {self.peak_memory_gb:.2f} GiB; adapter in {self.adapter_dir}"
        )


def peak_memory_gb(device: str) -> float:
    """Peak memory of this process so far: GPU memory allocated on CUDA, else peak RSS (GiB).

    Taught in notebooks/03_qlora_training.ipynb.
    """
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def train(
    config: TrainConfig,
    train_examples,
    validation_examples=None,
    *,
    resume: bool = False,
    reuse: bool = False,
    callbacks=(),
    monitor=None,
    model=None,
    tokenizer=None,
) -> TrainResult:
    """Fine-tune `config.model` on the examples; return the run's result (see `TrainResult`).

    `monitor` is a callback that also replaces the progress bar (the notebook's
    `TrainingMonitor`); `model`/`tokenizer` reuse a base model already loaded as the config
    says. `resume=True` continues the run `config.run_name` from its last checkpoint;
    `reuse=True` returns the finished run `config.run_name` instead of training, if its
    fingerprint (config, data, base weights, precision, versions: `ftkit.reuse`) matches.
    Taught in notebooks/03_qlora_training.ipynb.
    """
    from ftkit import reuse as reusing
    from ftkit import runs

    started = time.perf_counter()
    config.check()
    train_examples = list(train_examples or [])
    if config.early_stopping_patience and (validation_examples is None or not config.eval_steps):
        raise TrainingError(
            "early_stopping_patience watches the validation loss: pass validation_examples "
            "and set eval_steps, or set early_stopping_patience=None."
        )
    if not train_examples:  # before minutes of model loading
        prepare_data(train_examples, tokenizer, config, "train")
    precision = choose_precision(detect_hardware(), config.precision, config.optimizer)
    if tokenizer is None:  # the data first: it decides reuse, and fails before model loading
        tokenizer = load_tokenizer(config.model)
    train_items = prepare_data(train_examples, tokenizer, config, "train")
    val_items = None
    if validation_examples is not None:
        val_items = prepare_data(validation_examples, tokenizer, config, "validation")
    key = reusing.fingerprint(config, precision, train_items, val_items)
    found = reusing.reusable_run(config, key) if reuse else None
    if found:
        return reused_result(found, config, model, tokenizer)
    run_dir = runs.open_run_dir(config, resume)
    config = replace(config, run_name=run_dir.name)
    if precision.device == "cpu":
        return_freed_memory()  # a quarter less peak memory: see ftkit.hardware
    if model is None:
        model, _ = load_for_training(config, precision)
    model = add_adapters(model, config)
    checkpoint = runs.last_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        print(f"[ftkit] {run_dir.name}: no complete checkpoint yet, starting from step 0.")
    runs.write_config(run_dir, config, train_items, val_items, key)
    stopper = monitor if isinstance(monitor, StopControl) else StopControl()
    watchers = [stopper, *([monitor] if monitor not in (None, stopper) else []), *callbacks]
    trainer = build_trainer(
        config, run_dir, precision, model, tokenizer, (train_items, val_items), watchers,
        checkpoint, quiet=monitor is not None,
    )  # fmt: skip
    try:
        with stop_on_interrupt(stopper):
            trainer.ftkit_first_epoch = runs.checkpoint_epoch(checkpoint)
            trainer.ftkit_train_started = time.perf_counter()
            trainer.train(resume_from_checkpoint=checkpoint)
    except TrainingDiverged as error:
        raise TrainingError(divergence_advice(error, config, run_dir)) from None
    except torch.OutOfMemoryError as error:
        raise TrainingError(oom_advice(config, detect_hardware().gpu_memory_gb)) from error
    return finish(trainer, config, run_dir, precision, stopper, time.perf_counter() - started)


def finish(trainer, config, run_dir, precision, stopper, seconds) -> TrainResult:
    """Evaluate the final adapter if needed, save it, and write result.json and the card.

    Taught in notebooks/03_qlora_training.ipynb.
    """
    from ftkit import runs

    state, records = trainer.state, trainer.ftkit_logger.records
    evals = [r for r in records if r["event"] == "eval"]
    best_loaded = trainer.args.load_best_model_at_end and state.best_metric is not None
    if trainer.eval_dataset is not None and not best_loaded and (
        not evals or evals[-1]["step"] != state.global_step):  # fmt: skip
        trainer.evaluate()
        evals = [r for r in records if r["event"] == "eval"]
    final = runs.final_dir(run_dir, config.method)
    trainer.save_model(str(final))
    if stopper.requested:
        status = f"stopped: {stopper.reason}"
    elif state.global_step < state.max_steps:
        status = "early stopping"
    else:
        status = "finished"
    trained = [r["loss"] for r in records if r["event"] == "train"]
    train_seconds = time.perf_counter() - trainer.ftkit_train_started - trainer.eval_seconds
    epochs = (state.epoch or 0.0) - trainer.ftkit_first_epoch
    result = TrainResult(
        run_dir=run_dir,
        adapter_dir=final,
        history=records,
        steps=state.global_step,
        status=status,
        train_loss=trained[-1] if trained else None,
        val_loss=state.best_metric if best_loaded else (evals[-1]["val_loss"] if evals else None),
        best_step=min(evals, key=lambda r: r["val_loss"])["step"] if evals else None,
        seconds=seconds,
        seconds_per_epoch=train_seconds / epochs if epochs > 0 else float("nan"),
        tokens_per_second=trainer.tokens_seen / max(train_seconds, 1e-9),
        peak_memory_gb=peak_memory_gb(precision.device),
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        model=trainer.model.eval(),
        tokenizer=trainer.processing_class,
    )
    if trainer.is_world_process_zero():
        runs.write_result(run_dir, result, config, precision)
    return result


def reused_result(run_dir: Path, config, model, tokenizer) -> TrainResult:
    """A finished run read back as the `TrainResult` training it gave (`reused=True`): its
    history, losses and timings, with its adapter loaded into `model` (or onto a fresh base).

    Taught in notebooks/03_qlora_training.ipynb.
    """
    from ftkit import runs
    from ftkit.reuse import load_adapter_into

    final = runs.final_dir(run_dir, config.method)
    if model is None or config.method == "full":
        run = runs.load_run(run_dir)
        model, tokenizer = run.model, run.tokenizer
    else:
        run = runs.read_run(run_dir)
        if config.method == "qlora":
            keep_4bit_trainable(model)
        model = load_adapter_into(add_adapters(model, config), final)
    saved = run.result
    return TrainResult(
        run_dir=run_dir,
        adapter_dir=final,
        history=run.metrics,
        steps=saved["steps"],
        status=saved["status"],
        train_loss=saved["train_loss"],
        val_loss=saved["val_loss"],
        best_step=saved["best_step"],
        seconds=saved["seconds"],
        seconds_per_epoch=saved["seconds_per_epoch"],
        tokens_per_second=saved["tokens_per_second"],
        peak_memory_gb=saved["peak_memory_gb"],
        trainable_params=saved["trainable_params"],
        reused=True,
        model=model.eval(),
        tokenizer=tokenizer,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m ftkit.training --config cfg.json --dataset support_tickets`.

    Works under `torchrun --nproc_per_node N` and `accelerate launch` unchanged.
    Taught in notebooks/03_qlora_training.ipynb.
    """
    from ftkit.data import load_examples
    from ftkit.splits import load_dataset_splits

    parser = argparse.ArgumentParser(prog="python -m ftkit.training", description=main.__doc__)
    parser.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    parser.add_argument("--dataset", help="a dataset shipped in data/ (e.g. support_tickets)")
    parser.add_argument("--train", help="training data file (JSONL/JSON/CSV), instead")
    parser.add_argument("--validation", help="validation data file, with --train")
    parser.add_argument("--limit", type=int, help="use only the first N training examples")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    if args.dataset:
        splits = load_dataset_splits(args.dataset)
        train_examples, validation = list(splits["train"]), list(splits["validation"])
    elif args.train:
        train_examples = list(load_examples(args.train))
        validation = list(load_examples(args.validation)) if args.validation else None
    else:
        parser.error("give --dataset NAME or --train FILE")
    result = train(config, train_examples[: args.limit], validation, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
        print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
