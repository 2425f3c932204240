"""Training: QLoRA, LoRA or full fine-tuning from one typed config, on the `Trainer`.

`train(config, train_examples, validation_examples)` loads the base model (4-bit NF4 for
QLoRA), adds LoRA adapters with peft, and runs `ftkit.trainer.FtkitTrainer` (the
transformers `Trainer` with a cheaper exact loss and length-grouped batches). What this
module adds for a learner:

- `TrainConfig` (`ftkit.config`): every knob with a comment, defaults that train the
  embedded model on a laptop CPU in minutes;
- precision and optimizer chosen from the hardware (`ftkit.hardware.choose_precision`):
  bf16 autocast where native (recent CPUs, Ampere+), fp16 with loss scaling on a T4, fp32
  otherwise; paged 8-bit AdamW on CUDA;
- data checked before any model work (`ftkit.formatting.tokenize_for_training`): an empty
  split, or one in which nothing would train, fails with the reason;
- the speed-ups that change no number switched on (`ftkit.fast.speed_up_training`);
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ftkit import locks, runs
from ftkit.callbacks import StopControl, stop_on_interrupt
from ftkit.config import TrainConfig, TrainingError
from ftkit.data import load_examples
from ftkit.fast import speed_up_training
from ftkit.faults import divergence_advice, oom_advice
from ftkit.formatting import tokenize_for_training
from ftkit.hardware import Precision, choose_precision, detect_hardware
from ftkit.models import keep_4bit_trainable, load_model, load_tokenizer
from ftkit.progress import stop_if_requested, stop_requested
from ftkit.reuse import fingerprints, load_adapter_into, resumable_run, reusable_run, shared_run
from ftkit.splits import load_dataset_splits
from ftkit.trainer import TrainingDiverged, build_trainer


def load_for_training(config: TrainConfig, precision: Precision):
    """Load the base model for `config.method`: NF4 for QLoRA, 16-bit for LoRA, fp32 for full."""
    dtype = torch.float32 if config.method == "full" else precision.dtype
    quantization = "nf4" if config.method == "qlora" else None
    device = precision.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return load_model(config.model, quantization=quantization, dtype=dtype, device=device)


def add_adapters(model, config: TrainConfig):
    """Freeze the base (kept in its 16-bit dtype) and add LoRA adapters (kept in fp32).

    Returns the model unchanged for full fine-tuning (or when it has adapters already).
    `train` then switches on the speed-ups that change no number (`ftkit.fast`).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.method == "full" or isinstance(model, PeftModel):
        return model
    remove_adapters(model)  # a training cell run again on the model it was given before
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
    return get_peft_model(model, lora)


def trained_adapters(model) -> bool:
    """Whether `model` holds LoRA adapters that have been trained: B starts at zero, and any
    step moves it."""
    return any("lora_B" in name and bool(p.detach().any()) for name, p in model.named_parameters())


def remove_adapters(model) -> list[str]:
    """Take out the LoRA layers an earlier `add_adapters` put into `model` itself (peft adds
    them in place), each replaced by the layer it wraps; returns their names.

    A model given to `train` a second time (a training cell run again) still holds the first
    run's adapters: on the base model peft would wrap them again, warning twice, and a fresh
    run must not start from trained ones (`trained_adapters`). Taken out, the new adapters
    start as on a freshly loaded model.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in wrapped:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).get_base_layer())
    if wrapped and "peft_config" in vars(model):
        del model.peft_config
    return wrapped


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
        """One paragraph a learner can print."""
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

    On Linux the peak RSS is the kernel's high-water mark of this process's own memory
    (VmHWM): `getrusage`'s ru_maxrss would also count the RSS of the process that started
    this one (Linux keeps it across fork and exec), so a run started from a notebook's
    kernel would report the kernel's memory as its own.
    """
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_gb()


def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB (VmHWM on Linux, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
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
    says (adapters it holds from an earlier run are replaced by fresh ones: a new run starts
    where a fresh one does; to go on from a run, resume it). `resume=True` continues the run
    `config.run_name` from its last checkpoint; `reuse=True` returns the finished run
    `config.run_name` instead of training, if its fingerprint (config, data, base weights,
    precision, versions: `ftkit.reuse`) matches, and continues it from its last checkpoint
    if it was interrupted (`resumable_run`); without validation examples, any finished run
    under `config.runs_dir` that trained the same adapter is returned (`shared_run`).

    One process at a time trains a given run name (`ftkit.locks.run_lock`): another one
    training it now is waited for, and its finished run then reused.
    """
    started = time.perf_counter()
    stop_if_requested(f"training {config.run_name or config.method}")  # the runner's Ctrl-C
    config.check()
    train_examples = list(train_examples or [])
    if config.early_stopping_patience and (validation_examples is None or not config.eval_steps):
        raise TrainingError(
            "early_stopping_patience watches the validation loss: pass validation_examples "
            "and set eval_steps, or set early_stopping_patience=None."
        )
    if not train_examples:  # before minutes of model loading
        tokenize_for_training(train_examples, tokenizer, config.max_length)
    precision = choose_precision(detect_hardware(), config.precision, config.optimizer)
    if tokenizer is None:  # the data first: it decides reuse, and fails before model loading
        tokenizer = load_tokenizer(config.model)
    train_items = tokenize_for_training(train_examples, tokenizer, config.max_length,
                                        config.packing)  # fmt: skip
    val_items = None
    if validation_examples is not None:
        val_items = tokenize_for_training(validation_examples, tokenizer, config.max_length,
                                          split="validation")  # fmt: skip
    with locks.run_lock(config):  # only now: a call with bad data writes nothing
        return _train_run(config, precision, tokenizer, train_items, val_items, started,
                          resume=resume, reuse=reuse, callbacks=callbacks, monitor=monitor,
                          model=model)  # fmt: skip


def _train_run(config, precision, tokenizer, train_items, val_items, started, *, resume, reuse,
               callbacks, monitor, model) -> TrainResult:  # fmt: skip
    """`train` once the data is checked and tokenized, inside its run's lock: reuse,
    continue, or train."""
    key, weights_key = fingerprints(config, precision, train_items, val_items)
    found = None
    if reuse and val_items is None:  # nothing to record: any run that trained this adapter
        found = shared_run(config, weights_key)
    found = found or (reusable_run(config, key) if reuse else None)
    if found:
        return reused_result(found, config, model, tokenizer)
    interrupted = resumable_run(config, key) if reuse and not resume else None
    if interrupted:
        print(f"[ftkit] Continuing the interrupted run at {Path(interrupted).parents[1]} from its "
              f"checkpoint at step {runs.checkpoint_step(interrupted)}: same config, data, base "
              "model and library versions. To start it again, pass reuse=False.")  # fmt: skip
        resume = True
    run_dir = runs.open_run_dir(config, resume)
    config = replace(config, run_name=run_dir.name)
    checkpoint = runs.last_checkpoint(run_dir) if resume else None
    if model is None:
        model, _ = load_for_training(config, precision)
    elif checkpoint is None and config.method != "full" and trained_adapters(model):
        print("[ftkit] The model passed in carries adapters trained before (the training cell "
              "run again?): this run starts from fresh ones, as its settings say.")  # fmt: skip
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
    model = add_adapters(model, config)  # (taking out adapters it holds already)
    speed_ups = speed_up_training(model, config.lean_layers, precision.dtype)  # see ftkit.fast
    if resume and checkpoint is None:
        print(f"[ftkit] {run_dir.name}: no complete checkpoint yet, starting from step 0.")
    runs.write_config(run_dir, config, train_items, val_items, key, weights_key)
    stopper = monitor if isinstance(monitor, StopControl) else StopControl()
    watchers = [stopper, *([monitor] if monitor not in (None, stopper) else []), *callbacks]
    watchers += speed_ups.callbacks
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
    """Evaluate the final adapter if needed, save it, and write result.json and the card."""
    state, records = trainer.state, trainer.ftkit_logger.records
    evals = [r for r in records if r["event"] == "eval"]
    best_loaded = trainer.args.load_best_model_at_end and state.best_metric is not None
    # Ctrl-C in `make main` (the runner's stop file): save now, the validation loss can wait
    # for the run's end when it continues
    if trainer.eval_dataset is not None and not best_loaded and not stop_requested() and (
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
    """
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


def load_or_train(config, train_examples, validation_examples=None, monitor=None) -> runs.Run:
    """The finished run `config.run_name` if it fine-tuned the same base model with the same
    method, else a run trained now with `config`; returned loaded (`run.model`, `run.tokenizer`).

    Notebook 04 uses it to pick up notebook 03's fine-tune (whatever settings the learner
    chose there) instead of training it twice; `run.config` says how it was trained.
    """
    path = Path(config.runs_dir) / str(config.run_name)
    same = True
    if config.run_name and (path / "result.json").is_file():
        saved = runs.read_run(path)
        status = saved.result.get("status")
        same = (saved.config.model, saved.config.method) == (config.model, config.method)
        if same and status in runs.FINISHED:
            loss = saved.result.get("val_loss")
            loss = f"validation loss {loss:.3f}" if isinstance(loss, float) else "no validation"
            print(f"[ftkit] reusing {path}: {status} after {saved.result.get('steps')} steps, "
                  f"{loss}")  # fmt: skip
            return runs.load_run(path)
        if not same:
            why = f"{saved.config.method} of {saved.config.model}"
            print(f"[ftkit] {path} is not reusable ({why}): training it again")
    # reuse: a run interrupted with these very settings continues from its last checkpoint
    result = train(replace(config, overwrite=True), train_examples, validation_examples,
                   monitor=monitor, reuse=same)  # fmt: skip
    run = runs.read_run(result.run_dir)
    run.model, run.tokenizer = result.model, result.tokenizer
    return run


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m ftkit.training --config cfg.json --dataset support_tickets`.

    Works under `torchrun --nproc_per_node N` and `accelerate launch` unchanged.
    """
    parser = argparse.ArgumentParser(prog="python -m ftkit.training", description=main.__doc__)
    parser.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    parser.add_argument("--dataset", help="a dataset shipped in data/ (e.g. support_tickets)")
    parser.add_argument("--train", help="training data file (JSONL/JSON/CSV), instead")
    parser.add_argument("--validation", help="validation data file, with --train")
    parser.add_argument("--limit", type=int, help="use only the first N training examples")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    reuse = "read back a finished run with the same fingerprint instead of training"
    parser.add_argument("--reuse", action="store_true", help=reuse)
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
    result = train(config, train_examples[: args.limit], validation, resume=args.resume,
                   reuse=args.reuse)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
        print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
