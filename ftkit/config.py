"""The settings of a training run and the error training raises: a leaf every module may import.

`TrainConfig` says everything that decides a run, one commented field each, with defaults that
train the embedded model on a laptop CPU in minutes; `ftkit.training.train` runs it. It lives
apart from the training code so that run folders, reuse, error advice and the trainer can read
a config without importing the code that trains (and without import circles).
`TrainConfig.to_trl` says the same run in TRL's terms, for training it with `SFTTrainer`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from ftkit.catalog import EMBEDDED_MODEL

if TYPE_CHECKING:  # for the annotations only: importing this module imports no torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig

METHODS = ("qlora", "lora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TRACKERS = {  # report_to value -> the package that tracker logs through (what to pip install)
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
    "mlflow": "mlflow",
}
_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # precision -> dtype


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
    flat_batches: bool = True  # each batch one row: no padding, shared beginning once
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
    report_to: str | list[str] = "none"  # also log to "tensorboard", "trackio", "wandb", "mlflow"

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
        self._check_report_to()

    def _check_report_to(self) -> None:
        """report_to names trackers ftkit knows, each with its package installed."""
        names = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        if (
            not isinstance(names, list)
            or not all(isinstance(name, str) and name in {*TRACKERS, "none"} for name in names)
            or ("none" in names and len(names) > 1)
        ):
            raise TrainingError(
                f'TrainConfig: report_to must be "none", one of {tuple(TRACKERS)} or a list of '
                f"them. Got report_to={self.report_to!r}."
            )
        for name in names:
            if name != "none" and not _tracker_installed(name):
                raise TrainingError(
                    f"report_to={self.report_to!r}: {name} logs through the {TRACKERS[name]!r} "
                    f"package, which is not installed. Run `pip install {TRACKERS[name]}`, or "
                    'set report_to="none".'
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

    def trainer_settings(self, evaluating: bool) -> dict:
        """The transformers `TrainingArguments` this config decides whatever the machine:
        ftkit's trainer (`ftkit.trainer.training_arguments`) and `to_trl` both start from
        them and add the device, the precision and the output folder."""
        periodic = evaluating and self.eval_steps is not None
        return {
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": 2 * self.batch_size,  # no gradients: room for more
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_train_epochs": self.num_epochs,
            "max_steps": self.max_steps or -1,
            "learning_rate": self.lr,
            "lr_scheduler_type": self.lr_scheduler,
            "warmup_steps": self.warmup_ratio,  # a float below 1 is a share of all steps
            "weight_decay": self.weight_decay,
            "max_grad_norm": self.max_grad_norm,
            "activation_checkpointing": self.gradient_checkpointing,
            "activation_checkpointing_kwargs": {"use_reentrant": False},
            "logging_steps": self.logging_steps,
            "logging_first_step": True,
            "logging_nan_inf_filter": False,  # a NaN must be seen (the trainer stops on it)
            "eval_strategy": "steps" if periodic else "no",
            "eval_steps": self.eval_steps if periodic else None,
            "save_strategy": "steps",
            "save_steps": self.save_steps,
            "save_total_limit": self.keep_checkpoints,
            "load_best_model_at_end": periodic and self.early_stopping_patience is not None,
            "metric_for_best_model": "eval_loss" if evaluating else None,
            "greater_is_better": False,
            "prediction_loss_only": True,
            "restore_callback_states_from_checkpoint": True,  # early stopping's patience too
            "ddp_find_unused_parameters": False,
            "report_to": self.report_to,  # "none", or trackers check() allowed (a str or list)
            "seed": self.seed,
            "data_seed": self.seed,
        }

    def to_trl(self, output_dir: str | None = None, *, evaluating: bool = True) -> TrlSetup:
        """The same training set up for TRL's `SFTTrainer`: its arguments, adapters and loading.

        Use it to leave ftkit behind with the settings you found here::

            setup = config.to_trl()
            trainer = SFTTrainer(model, train_dataset=data, **setup.trainer_kwargs())

        `model` is a loaded model or a path (`ftkit.models.model_source(config.model)`, the
        embedded model's converted folder); `data` a `datasets.Dataset` (see "The data"
        below). `output_dir` defaults to `<runs_dir>/<run_name or method>-trl`. With
        `evaluating=False` there is no validation set: no evaluation every `eval_steps`
        (the Trainer refuses periodic evaluation without an `eval_dataset`).

        What maps to what (`setup.args`, an `SFTConfig`, is a transformers `TrainingArguments`):

        - lr -> learning_rate; lr_scheduler -> lr_scheduler_type; warmup_ratio ->
          warmup_steps (a float below 1 is a share of all steps in transformers 5, which
          dropped `warmup_ratio`); weight_decay, max_grad_norm, seed (and data_seed) as named;
        - num_epochs -> num_train_epochs; max_steps -> max_steps (None -> -1: epochs decide);
          batch_size -> per_device_train_batch_size (and twice that for evaluation);
          gradient_accumulation_steps as named;
        - max_length, packing as named; group_by_length -> train_sampling_strategy;
        - gradient_checkpointing -> activation_checkpointing (transformers 5's name), always
          set: TRL's own default turns it on, ftkit's is off;
        - logging_steps, eval_steps, save_steps as named; keep_checkpoints ->
          save_total_limit; early_stopping_patience -> load_best_model_at_end on eval_loss
          and an `EarlyStoppingCallback` in `setup.callbacks`; report_to as named;
        - precision "bf16" -> bf16=True, "fp16" -> fp16=True, "fp32" -> neither; use_cpu
          where there is no CUDA GPU, as ftkit (transformers refuses bf16 on a CPU without
          it). "auto" is left to the caller: TRL then turns bf16 on (its default unless
          fp16), even on a CPU that only emulates it (slowly), where ftkit picks from the
          hardware. To get ftkit's choice, resolve it first:
          `p = choose_precision()` (`ftkit.hardware`), then
          `replace(config, precision=p.name, optimizer=p.optimizer).to_trl()`. optimizer
          "auto" likewise leaves TRL's AdamW (ftkit: 8-bit paged AdamW on CUDA);
        - lora_r, lora_alpha, lora_dropout, target_modules -> `setup.peft_config`, a peft
          `LoraConfig` (None for method "full");
        - method "qlora" -> `setup.quantization_config`, a `BitsAndBytesConfig` (4-bit NF4,
          double quantisation, computing in bf16, or the precision's dtype when it is
          "fp16" or "fp32"). TRL uses it only when `model` is a path; with a model you
          loaded, load it in 4-bit yourself: `load_model(name, quantization="nf4")`.
          The base model's dtype (for a path) is in `args.model_init_kwargs`: fp32 for
          "full" (as ftkit), the precision's dtype for LoRA (unset for "auto": TRL's fp32).

        The data: ftkit trains on the assistant replies only, and so does this setup, with
        `completion_only_loss=True`. That needs prompt/completion rows, such as
        `{"prompt": messages[:-1], "completion": messages[-1:]}`: for one reply per
        conversation (all of ftkit's shipped data) TRL then trains exactly the tokens ftkit
        trains (tests/test_trl_bridge.py checks). Two traps: a dataset with a "messages"
        column trains on *every* token under completion_only_loss (TRL 1.16 finds no
        completion to mask, silently); and `assistant_only_loss=True`, TRL's way for
        multi-turn chats, needs a chat template with `{% generation %}` markers, which
        SmolLM2's lacks and TRL cannot add (it raises a ValueError). For multi-turn data,
        give a marked template (tests/test_formatting.py has one), or pre-tokenized rows:
        "input_ids" and "completion_mask" from `ftkit.formatting.tokenize_for_training`.

        What does NOT carry over (ftkit's trainer, `ftkit.trainer`, and `ftkit.fast`): the
        loss from labelled-position logits only (`labelled_logits_only`: TRL computes all
        logits, same loss, more memory), flat batches (`flat_batches`: no padding, the
        shared beginning of a batch's examples computed once), micro-batches
        (`micro_batch_tokens`), the lean
        layers and fused LoRA dropout (`lean_layers`): the same numbers, faster and leaner
        in ftkit, on a CPU above all. Also ftkit's seeded samplers (a resumed run sees the
        same batches), its stop on a NaN loss, evaluation that leaves the RNG alone, the
        tokens-per-second logs, run folders, fingerprints and reuse. For QLoRA, TRL casts
        the adapters to bf16 (ftkit keeps them in fp32), and ftkit's guard against
        bitsandbytes repacking 4-bit weights on a CPU (`keep_4bit_trainable`) is applied
        only if you load the model with `load_model`. TRL's packing is its own
        (best-fit, padding-free), not ftkit's.
        """
        import torch
        from peft import LoraConfig
        from transformers import BitsAndBytesConfig, EarlyStoppingCallback
        from trl import SFTConfig

        self.check()
        dtype = "float32" if self.method == "full" else _DTYPE_NAMES.get(self.precision)
        folder = os.path.join(self.runs_dir, f"{self.run_name or self.method}-trl")
        args = SFTConfig(
            output_dir=output_dir or folder,
            **({} if self.optimizer == "auto" else {"optim": self.optimizer}),
            bf16=None if self.precision == "auto" else self.precision == "bf16",
            fp16=self.precision == "fp16",
            use_cpu=not torch.cuda.is_available(),  # as ftkit; transformers wants it for bf16
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            max_length=self.max_length,
            packing=self.packing,
            completion_only_loss=True,  # the replies train, not the prompts (see "The data")
            assistant_only_loss=False,
            model_init_kwargs={"dtype": dtype} if dtype else None,
            **self.trainer_settings(evaluating),
        )
        lora = None
        if self.method != "full":
            targets = self.target_modules
            lora = LoraConfig(
                r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                target_modules=targets if isinstance(targets, str) else list(targets),
                task_type="CAUSAL_LM",
            )
        quantization = None
        if self.method == "qlora":
            compute = {"fp16": torch.float16, "fp32": torch.float32}.get(self.precision)
            quantization = BitsAndBytesConfig(  # as ftkit.models.quantization_config("nf4")
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute or torch.bfloat16,
            )
        early = args.load_best_model_at_end  # periodic evaluation with a patience
        callbacks = [EarlyStoppingCallback(self.early_stopping_patience)] if early else []
        return TrlSetup(args, lora, quantization, callbacks)


def _tracker_installed(name: str) -> bool:
    """Whether the package a `report_to` tracker logs through can be imported (not importing it)."""
    packages = ("tensorboard", "tensorboardX") if name == "tensorboard" else (TRACKERS[name],)
    return any(importlib.util.find_spec(package) is not None for package in packages)


@dataclass
class TrlSetup:
    """What `TrainConfig.to_trl` returns: TRL `SFTTrainer` arguments for the same training."""

    args: SFTConfig  # TRL's TrainingArguments: steps, lr, batches, data, logging, checkpoints
    peft_config: LoraConfig | None  # the LoRA adapters; None for full fine-tuning
    quantization_config: BitsAndBytesConfig | None  # QLoRA's 4-bit loading; else None
    callbacks: list[TrainerCallback] = field(default_factory=list)  # early stopping, if asked

    def describe(self) -> str:
        """The settings that decide the training, one per line, as TRL and peft name them."""
        a, lora, quant = self.args, self.peft_config, self.quantization_config
        steps = f"max_steps={a.max_steps}" if a.max_steps > 0 else f"epochs={a.num_train_epochs:g}"
        lines = [
            f"SFTConfig: learning_rate={a.learning_rate:g}, lr_scheduler_type="
            f"{a.lr_scheduler_type.value}, warmup_steps={a.warmup_steps:g}, {steps}",
            f"           per_device_train_batch_size={a.per_device_train_batch_size}, "
            f"gradient_accumulation_steps={a.gradient_accumulation_steps}, "
            f"max_length={a.max_length}, packing={a.packing}",
            f"           completion_only_loss={a.completion_only_loss}, seed={a.seed}, "
            f"report_to={a.report_to}, output_dir={a.output_dir}",
            f"           bf16={a.bf16}, fp16={a.fp16}, optim={getattr(a.optim, 'value', a.optim)}",
        ]
        if lora is not None:
            targets = lora.target_modules
            targets = targets if isinstance(targets, str) else sorted(targets)
            lines.append(f"LoraConfig: r={lora.r}, lora_alpha={lora.lora_alpha}, "
                         f"lora_dropout={lora.lora_dropout}, target_modules={targets}")  # fmt: skip
        if quant is not None:
            lines.append(f"BitsAndBytesConfig: 4-bit {quant.bnb_4bit_quant_type}, double quant "
                         f"{quant.bnb_4bit_use_double_quant}, compute "
                         f"{str(quant.bnb_4bit_compute_dtype).removeprefix('torch.')}")  # fmt: skip
        return "\n".join(lines)

    def trainer_kwargs(self) -> dict:
        """Keyword arguments for `SFTTrainer(model, train_dataset=data, **these)`."""
        kwargs = {
            "args": self.args,
            "peft_config": self.peft_config,
            "callbacks": [*self.callbacks],
        }
        if self.quantization_config is not None:
            kwargs["quantization_config"] = self.quantization_config
        return kwargs
