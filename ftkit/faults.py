"""What can go wrong in training, caught early and explained: data, divergence, memory.

`ftkit.training.train` calls these so that a learner reads a reason and a next step, not a
traceback from deep inside a library (`ftkit.formatting.tokenize_for_training` refuses, before
any training, data in which nothing would train):

- `divergence_advice` explains a NaN/inf loss (`ftkit.trainer.TrainingDiverged`) and names
  the last good checkpoint, which the trainer never overwrites with a bad step;
- `oom_advice` answers a CUDA out-of-memory error with options, each with its peak memory
  from `ftkit.memory.estimate_memory`.
"""

from __future__ import annotations

from pathlib import Path

from ftkit.catalog import UnknownModelError, get_model_info, list_models
from ftkit.config import TrainConfig
from ftkit.memory import estimate_memory
from ftkit.runs import last_checkpoint


def divergence_advice(error: Exception, config: TrainConfig, run_dir: Path) -> str:
    """Explain a NaN/inf loss: where it happened, the checkpoint that is intact, what to try."""
    good = last_checkpoint(run_dir)
    kept = f"The last good checkpoint is {good}" if good else "No checkpoint had been saved yet"
    return (
        f"{error} {kept}; nothing was saved after the bad step. Likely causes: a learning "
        f"rate too high (lr={config.lr:g}; try {config.lr / 10:g}), fp16 overflow (use bf16 "
        "where the hardware has it), or broken data. Resume with train(..., resume=True) "
        "after fixing it."
    )


def oom_advice(config: TrainConfig, gpu_memory_gb: float | None, precision: str = "fp16") -> str:
    """What to change after a CUDA out-of-memory error, each option with its estimated peak."""
    head = (
        f"The GPU ran out of memory training {config.model} ({config.method}, batch "
        f"{config.batch_size} x {config.max_length} tokens)."
    )
    try:
        info = get_model_info(config.model)
    except (UnknownModelError, ValueError):
        return head + (
            " Try a smaller batch_size (raise gradient_accumulation_steps to keep the effective"
            " batch) or micro_batch_tokens (the batch run in pieces of at most that many padded"
            " tokens), a shorter max_length, gradient_checkpointing=True, method='qlora', or a"
            " smaller model."
        )

    def total(model=info, **change) -> float:
        setup = {"method": config.method, "batch_size": config.batch_size,
                 "max_length": config.max_length, "precision": precision,
                 "gradient_checkpointing": config.gradient_checkpointing,
                 "lora_r": config.lora_r} | change  # fmt: skip
        return estimate_memory(model, **setup).total

    def gib(**change) -> str:
        return f"{total(**change):.1f} GiB"

    card = f" on a {gpu_memory_gb:.1f} GiB GPU" if gpu_memory_gb else ""
    options = []
    if config.batch_size > 1:
        half, steps = config.batch_size // 2, config.gradient_accumulation_steps * 2
        pieces = half * config.max_length  # padded tokens per piece: half the batch's rows
        options.append(f"batch_size={half}, gradient_accumulation_steps={steps} (same "
                       f"effective batch), or micro_batch_tokens={pieces} (the same batch, "
                       f"run in pieces): {gib(batch_size=half)}")  # fmt: skip
    if config.max_length > 128:
        options.append(f"max_length={config.max_length // 2}: "
                       f"{gib(max_length=config.max_length // 2)}")  # fmt: skip
    if not config.gradient_checkpointing:
        options.append(f"gradient_checkpointing=True: {gib(gradient_checkpointing=True)}")
    if config.method != "qlora":
        options.append(f"method='qlora' (4-bit base): {gib(method='qlora')}")
    # The nearest smaller model that also needs less memory: fewer parameters alone can
    # mean more (Gemma 3's 262k vocabulary makes its logits outweigh a larger model's).
    now = total()
    lighter = [(m, total(m)) for m in list_models() if m.params < info.params]
    lighter = [(m, gib_needed) for m, gib_needed in lighter if gib_needed < now]
    if lighter:
        model, needed = lighter[-1]
        options.append(f"a smaller model, {model.name}: {needed:.1f} GiB")
    lines = "\n".join(f"  - {option}" for option in options)
    return f"{head} ftkit's estimate for this setup: {gib()}{card}. Try, in order:\n{lines}"
