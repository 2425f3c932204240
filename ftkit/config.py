"""The settings of a training run and the error training raises: a leaf every module may import.

`TrainConfig` says everything that decides a run, one commented field each, with defaults that
train the embedded model on a laptop CPU in minutes; `ftkit.training.train` runs it. It lives
apart from the training code so that run folders, reuse, error advice and the trainer can read
a config without importing the code that trains (and without import circles).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ftkit.catalog import EMBEDDED_MODEL

METHODS = ("qlora", "lora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what to do."""


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
        """Raise a `TrainingError` naming the first impossible setting."""
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
        """Build a config from a dict (config.json), naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"Unknown TrainConfig field(s) {unknown}; known: {sorted(known)}.")
        return cls(**values)
