"""The transformers `Trainer`, taught five things: a cheaper exact loss, batches without
padding, micro-batches, a data order that resumes exactly, and refusing to go on after a NaN.

`ftkit.training.train` builds an `FtkitTrainer`; everything else (checkpoints with optimizer,
scheduler and RNG state, gradient accumulation, mixed precision, evaluation, DDP under
`torchrun` or `accelerate launch`) is the Trainer's own. What this subclass adds:

- **labelled-position logits**: a 49k-token vocabulary makes the (tokens x vocabulary)
  logits the largest tensor of a step, yet completion-only training needs them only where a
  label is (the assistant's reply, about a third of the tokens here). A forward pre-hook on
  the output layer keeps just those positions; the loss is the same cross-entropy, summed
  over the same tokens (tests/test_training.py checks loss and gradients against the full
  computation). On a CPU even those logits are never held whole: the loss and its gradient
  are computed 64 positions at a time (`ftkit.fast.lean_output_loss`);
- **flat batches** (`flat_batches`, on a CPU): each batch runs as one row without padding,
  the tokens all its rows start with once (`shared_prefix_length`; on the support tickets
  the chat template's system turn and user header, 24 of about 93 tokens a row), attention
  keeping each row to its own tokens and that prefix (`ftkit.fast.flat_rows`). The same
  loss and gradients up to rounding (tests/test_flat_rows.py); QLoRA on the benchmark's
  256 tickets 1.2-1.3x the non-padding tokens/s of padded micro-batches (benchmarks/RESULTS.md);
- **micro-batches** (`micro_batches`, on a CPU by default): a batch above
  `micro_batch_tokens` padded tokens is run as length-sorted pieces, each trimmed to its own
  longest row and each divided by the whole batch's labelled tokens, so the step's gradient
  is the whole batch's while the padding mostly goes and only one piece's activations are
  kept at a time (tests/test_training.py checks the gradients);
- **random batches seeded per epoch** (`SeededRandomSampler`), or with
  `group_by_length=True` batches of similar length (`LengthGroupedSampler`), so a resumed
  run sees exactly the batches the interrupted one would have seen. Random is the default:
  on the benchmark's 256 examples, length-grouped batches (less padding still) ended with a
  validation loss up to 0.024 above TRL's random ones, never below (benchmarks/RESULTS.md);
- **a divergence guard**: a NaN or infinite loss (or gradient) raises `TrainingDiverged`
  before the optimizer step, so no checkpoint after the last good step is ever written;
- evaluation that does not disturb training: it runs under a saved-and-restored RNG state,
  so evaluating every N steps gives the same adapter as not evaluating;
- tokens per second (padding excluded) in every training log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft.helpers import disable_input_dtype_casting
from torch.utils.data import Sampler
from transformers import Trainer
from transformers.trainer_pt_utils import get_length_grouped_indices

from ftkit.callbacks import RunLogger, TerminalProgressCallback, read_metrics
from ftkit.fast import flat_rows, flat_rows_serve, lean_output_loss
from ftkit.formatting import IGNORE_INDEX, collate, tokenize_examples
from ftkit.hardware import pick_dtype
from ftkit.runs import checkpoint_step


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite; training stopped before the step."""


class SeededRandomSampler(Sampler):
    """Examples in a random order drawn from seed + epoch, so a resumed run sees exactly the
    batches the interrupted one would have seen.
    """

    def __init__(self, count: int, seed: int = 0) -> None:
        self.count = count  # examples
        self.seed = seed
        self.epoch = 0  # set by the Trainer (through accelerate) before each epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.count

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def __iter__(self):
        return iter(torch.randperm(self.count, generator=self._generator()).tolist())


class LengthGroupedSampler(SeededRandomSampler):
    """A random order in which each batch holds examples of similar length (less padding).

    transformers' sampler of the same name draws from the global RNG when an epoch starts,
    which a resumed run cannot reproduce; this one seeds its own generator with seed + epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)  # tokens per example
        self.batch_size = batch_size  # examples per optimizer step (micro-batch x accumulation)

    def __iter__(self):
        generator = self._generator()
        grouped = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        # transformers' groups come sorted longest first within each mega-batch of 4 to 50
        # batches: steps in a row then see ever shorter (often similar) examples. Shuffling
        # the batches keeps each one's low padding and restores a random order; the batch
        # with the longest example stays first, so running out of memory happens at once.
        size = self.batch_size
        batches = [grouped[start : start + size] for start in range(0, len(grouped), size)]
        order = [0, *(1 + torch.randperm(len(batches) - 1, generator=generator)).tolist()]
        return iter([index for position in order for index in batches[position]])


def micro_batches(inputs: dict, max_tokens: int, padded: bool = True) -> list[dict]:
    """Split a right-padded batch into micro-batches of at most `max_tokens` padded tokens
    (with `padded` False, real tokens: for batches run as flat rows, without padding).

    Rows are sorted by length and cut into contiguous runs, and each run keeps only the
    columns its longest row needs: a random batch of 8 loses most of its padding, and the
    activations kept for the backward pass are those of one micro-batch, not of the whole
    batch. A row longer than `max_tokens` goes alone. Packed rows (4-D attention mask) are
    split by rows only. `max_tokens` 0 keeps the batch whole.
    """
    mask = inputs["attention_mask"]
    rows, width = inputs["input_ids"].shape
    packed = mask.dim() != 2
    lengths = torch.full((rows,), width) if packed else mask.sum(dim=1)
    size = rows * width if padded or packed else int(lengths.sum())
    if max_tokens <= 0 or size <= max_tokens:
        return [inputs]
    order = torch.argsort(lengths, stable=True).tolist()
    runs, current, real = [], [], 0
    for row in order:  # shortest first: a run grows until its size would not fit
        length = int(lengths[row])
        grown = (len(current) + 1) * length if padded or packed else real + length
        if current and grown > max_tokens:
            runs.append(current)
            current, real = [], 0
        current.append(row)
        real += length
    runs.append(current)
    pieces = []
    for run in runs:
        index = torch.tensor(run)
        keep = int(lengths[index].max())
        piece = {}
        for key, value in inputs.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue  # scalars (num_tokens) describe the whole batch
            value = value[index]
            piece[key] = value[:, :keep] if value.dim() == 2 else value  # 4-D: packed, full
        pieces.append(piece)
    return pieces


class _KeepLabelledPositions:
    """Forward pre-hook on the output layer: when `keep` (batch x length, bool) is set, only
    the hidden states at those positions reach it, so only their logits are computed."""

    def __init__(self) -> None:
        self.keep: torch.Tensor | None = None

    def __call__(self, module, args):
        if self.keep is None:
            return None
        return (args[0][self.keep], *args[1:])


def shared_prefix_length(inputs: dict, wanted: torch.Tensor) -> int:
    """How many tokens every row of a right-padded batch starts with whose outputs no loss
    needs: up to the first position where a row differs, is padding, or must predict a
    label (`wanted`, rows x length - 1, marks those), leaving each row a token of its own."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    common = (ids == ids[:1]).all(dim=0) & mask.bool().all(dim=0)
    common[:-1] &= ~wanted.any(dim=0)
    length = int(common.int().cumprod(dim=0).sum())
    return max(0, min(length, int(mask.sum(dim=1).min()) - 1))


def causal_lm_loss(
    model,
    inputs: dict,
    labelled_only: bool = True,
    hook: _KeepLabelledPositions | None = None,
    flat: bool = False,
    lean_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Summed next-token cross-entropy over labelled tokens, and how many there were.

    With `labelled_only` (and the hook on the model's output layer), logits are computed at
    labelled positions only; the sum is the same as from the full logits. With `flat`, a
    right-padded batch runs as one row without padding, the tokens every row starts with
    once (`shared_prefix_length`: on the support tickets the chat template's system turn and
    user header, a quarter of the tokens; `ftkit.fast.flat_rows`): the same loss, the same
    gradients up to rounding (tests/test_flat_rows.py). With `lean_loss`, the output
    layer's logits are never held whole (`ftkit.fast.lean_output_loss`: chunks of 64
    positions, the same loss and gradients up to rounding). The outputs' `logits` are then
    those of the flat row, or the final hidden states under `lean_loss`.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    wanted = targets != IGNORE_INDEX
    keep = torch.cat([wanted, wanted.new_zeros((len(labels), 1))], dim=1)
    flat = flat and inputs.get("attention_mask") is not None and inputs["attention_mask"].dim() == 2
    prefix = shared_prefix_length(inputs, wanted) if flat else 0
    selected = labelled_only and hook is not None  # the hook keeps labelled positions only
    with (
        flat_rows(model, inputs["input_ids"], inputs.get("attention_mask"), prefix, flat) as rows,
        lean_output_loss(model, enabled=lean_loss) as output_loss,
    ):
        if rows is not None:
            inputs = {"input_ids": rows.input_ids, "position_ids": rows.position_ids}
            keep = rows.take(keep)
        try:
            if selected:
                hook.keep = keep
            outputs = model(**inputs, use_cache=False)
        finally:
            if hook is not None:
                hook.keep = None
    outputs_at_labels = outputs.logits if selected else outputs.logits[keep]
    if output_loss is not None:  # final hidden states: the loss without holding the logits
        return output_loss(outputs_at_labels, targets[wanted]), wanted.sum(), outputs
    loss = F.cross_entropy(outputs_at_labels.float(), targets[wanted], reduction="sum")
    return loss, wanted.sum(), outputs


class FtkitTrainer(Trainer):
    """`Trainer` with ftkit's loss, sampler, divergence guard and token counting."""

    def __init__(self, *args, labelled_logits_only: bool = True, lengths=None,
                 micro_batch_tokens: int = 0, flat_batches: bool = False,
                 **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.flat_batches = flat_batches  # each batch one row, no padding, prefix once
        self.lengths = lengths  # tokens per training example, for the length-grouped sampler
        self.micro_batch_tokens = micro_batch_tokens  # split larger batches (0: never)
        self.labelled_logits_only = labelled_logits_only
        self.model_accepts_loss_kwargs = True  # makes the Trainer count labelled tokens for us
        self.hook = _KeepLabelledPositions()
        self.model.get_output_embeddings().register_forward_pre_hook(self.hook)
        self.tokens_seen = 0  # real (non-padding) tokens trained on, this process
        self.eval_seconds = 0.0  # time spent evaluating, excluded from tokens per second
        self.ftkit_first_epoch = 0.0  # epoch training (re)started at (set on resume)
        self._last_log = (time.perf_counter(), 0, 0.0)  # time, tokens, eval seconds at last log

    def _get_train_sampler(self, train_dataset=None):
        seed = self.args.data_seed or self.args.seed
        if self.lengths is None:
            return SeededRandomSampler(len(train_dataset or self.train_dataset), seed)
        per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(self.lengths, per_step, seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {k: v for k, v in inputs.items() if k != "num_tokens"}
        hook = self.hook if self.labelled_logits_only else None
        lean = self.labelled_logits_only  # nor the logits held whole
        # Under autocast, peft's cast of every LoRA input to the adapters' fp32 only copies
        # activations (the matmul runs in 16 bits anyway): skip it, same numbers, ~15% faster.
        with disable_input_dtype_casting(model, active=self.args.bf16 or self.args.fp16):
            total, count, outputs = causal_lm_loss(
                model, inputs, self.labelled_logits_only, hook, self.flat_batches, lean
            )
        loss = total / (
            num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        tokens = int(inputs.get("num_tokens", torch.tensor(0)).sum())
        pieces = micro_batches(inputs, self.micro_batch_tokens, padded=not self.flat_batches)
        if len(pieces) == 1:
            loss = super().training_step(model, inputs, num_items_in_batch)
        else:  # each piece's loss is divided by the whole batch's labelled tokens: same gradient
            if num_items_in_batch is None:  # the Trainer counts them; a direct call may not
                num_items_in_batch = self._get_num_items_in_batch([inputs], self.args.device)
            loss = 0
            for number, piece in enumerate(pieces, start=1):
                last = number == len(pieces)  # DDP: gradients are averaged once, after the last
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    loss = loss + super().training_step(model, piece, num_items_in_batch)
        if not torch.isfinite(loss) or not self._gradients_finite(model):
            what = "loss" if not torch.isfinite(loss) else "gradients"
            raise TrainingDiverged(
                f"The {what} became {float(loss)} at step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch or 0:.2f}); training stopped before that step's update."
            )
        self.tokens_seen += tokens
        return loss

    def _gradients_finite(self, model) -> bool:
        if self.args.fp16:
            return True  # fp16 loss scaling skips steps with inf gradients by design
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))

    def evaluate(self, *args, **kwargs):
        started = time.perf_counter()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # evaluation leaves training's RNG alone
            metrics = super().evaluate(*args, **kwargs)
        self.eval_seconds += time.perf_counter() - started
        return metrics

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: add throughput since the previous one
            now, tokens, evaluating = time.perf_counter(), self.tokens_seen, self.eval_seconds
            since, before, evaluated = self._last_log
            spent = now - since - (evaluating - evaluated)
            logs["tokens_per_second"] = round((tokens - before) / spent, 1) if spent > 0 else 0.0
            logs["tokens_seen"] = tokens
            self._last_log = (now, tokens, evaluating)
        super().log(logs, start_time)


def training_arguments(config, run_dir: Path, precision, evaluating: bool, quiet: bool = False):
    """The transformers `TrainingArguments` that say what `config` says."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        optim=precision.optimizer,
        bf16=precision.name == "bf16",
        fp16=precision.name == "fp16",
        use_cpu=precision.device == "cpu",
        remove_unused_columns=False,  # our examples are TokenizedExample objects, not columns
        disable_tqdm=quiet,
        **config.trainer_settings(evaluating),  # the rest: what the config says, as to_trl
    )


class Collator:
    """`ftkit.formatting.collate`, plus how many real tokens the batch holds."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of  # 8 on CUDA (tensor cores), None on CPU

    def __call__(self, batch) -> dict:
        tensors = collate(batch, self.tokenizer, self.pad_to_multiple_of)
        tensors["num_tokens"] = torch.tensor(sum(len(item.input_ids) for item in batch))
        return tensors


CPU_MICRO_BATCH_TOKENS = 512  # "auto" on a CPU, padded batches: see micro_batch_budget
CPU_FLAT_BATCH_TOKENS = 1024  # "auto" on a CPU, flat batches (real tokens)


def micro_batch_budget(config, precision, flat: bool = False) -> int:
    """Tokens per forward pass above which a batch is split (0: never), from
    `config.micro_batch_tokens`: padded tokens, or with `flat` (batches run as flat rows)
    real ones.

    "auto" splits on a CPU only: there a forward pass's cost grows with its tokens, not its
    rows, so sorted, trimmed micro-batches of 512 padded tokens lose padding and keep half
    the activations for about the same time. Flat batches have no padding to lose: a whole
    batch of 8 support tickets (about 750 tokens) ran faster than pieces of 512, in bf16
    and in fp32 alike (in fp32 1.2x, once glibc's allocator kept its own mmap threshold:
    `ftkit.fast.speed_up_training`), so they split above 1024 (benchmarks/RESULTS.md). A
    GPU runs a whole batch faster than its pieces one after another, so there "auto" keeps
    it whole.
    """
    if config.micro_batch_tokens == "auto":
        if precision.device != "cpu":
            return 0
        return CPU_FLAT_BATCH_TOKENS if flat else CPU_MICRO_BATCH_TOKENS
    return int(config.micro_batch_tokens)


def build_trainer(config, run_dir, precision, model, tokenizer, data, watchers, checkpoint,
                  quiet=False) -> FtkitTrainer:  # fmt: skip
    """An `FtkitTrainer` with ftkit's callbacks; metrics.jsonl cut back to the checkpoint."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    train_items, val_items = data
    args = training_arguments(config, run_dir, precision, val_items is not None, quiet)
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path, checkpoint_step(checkpoint)) if checkpoint else []
    main = int(os.environ.get("RANK", "0")) == 0
    if main:  # drop what an interrupted run logged after its last checkpoint
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    logger = RunLogger(path if main else None, records)
    flat = config.flat_batches and flat_rows_serve(model)
    early = [EarlyStoppingCallback(config.early_stopping_patience)] if (
        args.load_best_model_at_end) else []  # fmt: skip
    trainer = FtkitTrainer(
        model=model,
        args=args,
        data_collator=Collator(tokenizer, 8 if precision.device == "cuda" else None),
        train_dataset=train_items,
        eval_dataset=val_items,
        processing_class=tokenizer,
        callbacks=[logger, *early, *watchers, TerminalProgressCallback(run_dir.name)],
        labelled_logits_only=config.labelled_logits_only,
        lengths=[len(item.input_ids) for item in train_items] if config.group_by_length else None,
        micro_batch_tokens=micro_batch_budget(config, precision, flat),
        flat_batches=flat,
    )
    trainer.ftkit_logger = logger
    if quiet:  # the monitor shows progress instead
        progress_bars = [ProgressCallback, PrinterCallback]
        if importlib.util.find_spec("IPython") is not None:  # transformers' notebook bar needs it
            from transformers.utils.notebook import NotebookProgressCallback

            progress_bars.append(NotebookProgressCallback)
        for progress in progress_bars:
            trainer.remove_callback(progress)
    return trainer


def loss_on(model, tokenizer, examples, max_length: int = 512, batch_size: int = 8,
            flat: bool = True) -> float:  # fmt: skip
    """Mean loss per trained token of `model` on `examples` (completion-only, no gradients).

    Computes in the machine's training precision (bf16 autocast where native), like the
    trainer's evaluation; each batch as one flat row where `flat` (see `causal_lm_loss`).
    """
    items = sorted(
        tokenize_examples(examples, tokenizer, max_length), key=lambda i: len(i.input_ids)
    )
    device = next(model.parameters()).device
    dtype = pick_dtype()
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    autocast = dtype != torch.float32
    hook = _KeepLabelledPositions()  # logits at labelled positions only, as in training
    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=dtype, enabled=autocast),
            disable_input_dtype_casting(model, active=autocast),
        ):
            for start in range(0, len(items), batch_size):
                batch = collate(items[start : start + batch_size], tokenizer)
                batch = {key: value.to(device) for key, value in batch.items()}
                loss, n, _ = causal_lm_loss(model, batch, True, hook, flat=flat, lean_loss=flat)
                total, count = total + float(loss), count + int(n)
    finally:
        handle.remove()
        model.train(was_training)
    return total / max(count, 1)
