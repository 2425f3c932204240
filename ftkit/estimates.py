"""How many tokens, and how long will training take? Counts, measured speed, estimates.

`ftkit.formatting` turns examples into token ids and labels; this module counts them
(`token_stats`), measures how fast this machine trains on them (`measure_throughput`),
and turns the two into a time (`estimate_training_time`), or derives a GPU's time
from its FLOPs.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ftkit.catalog import get_model_info
from ftkit.formatting import TokenizedExample, collate, tokenize_example
from ftkit.progress import stop_if_requested

T4_PEAK_FLOPS = 65e12  # NVIDIA T4 datasheet: peak fp16 tensor-core FLOP/s
T4_UTILIZATION = 0.30  # share of that peak a training loop sustains (see estimate_training_time)
FLOPS_PER_TOKEN = {"full": 6, "lora": 4, "qlora": 4}  # training FLOPs per token, x parameters


@dataclass
class TokenStats:
    """How long the tokenized examples are, and how much of them trains."""

    count: int  # examples
    mean_length: float  # tokens per example, after truncation
    median_length: float
    p95_length: float  # 95% of examples are at most this long
    max_length: int
    total_tokens: int  # what training processes per epoch (prompts included, padding not)
    trained_tokens: int  # tokens with a label (assistant replies and their end-of-turn)
    truncated: int  # examples cut at max_length
    lengths: list[int] = field(repr=False, default_factory=list)

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def __str__(self) -> str:
        return (
            f"{self.count} examples, {self.total_tokens:,} tokens "
            f"({self.trained_tokens:,} trained, {self.trained_share:.0%}); length mean "
            f"{self.mean_length:.0f}, median {self.median_length:.0f}, p95 "
            f"{self.p95_length:.0f}, max {self.max_length}; {self.truncated} truncated"
        )


def token_stats(tokenized: list[TokenizedExample]) -> TokenStats:
    """Count tokens: lengths (mean, median, 95th percentile, max), totals, trained share."""
    if not tokenized:
        raise ValueError("token_stats: no examples given.")
    lengths = np.array([len(t.input_ids) for t in tokenized])
    return TokenStats(
        count=len(tokenized),
        mean_length=float(lengths.mean()),
        median_length=float(np.median(lengths)),
        p95_length=float(np.percentile(lengths, 95)),
        max_length=int(lengths.max()),
        total_tokens=int(lengths.sum()),
        trained_tokens=sum(t.num_trained for t in tokenized),
        truncated=sum(t.truncated for t in tokenized),
        lengths=lengths.tolist(),
    )


def measure_throughput(
    model, tokenizer, tokenized=None, batch_size: int = 8, seconds: float = 15.0
) -> float:
    """Training speed in tokens/s: timed forward + backward passes of `model` on real batches.

    Load the model the way you will train it (dtype, 4-bit). A model with trainable
    parameters (a peft LoRA model) is timed as is; on one with none, gradients flow back
    to the inputs through the frozen weights, which is what LoRA costs (its adapters add
    ~2%). Padding is not counted. `tokenized`: examples (tokenized or not); without them,
    random 128-token rows. The first step is a warm-up; gradients are cleared afterwards.
    """
    if tokenized is None:
        random_ids = torch.randint(0, len(tokenizer), (batch_size, 128)).tolist()
        tokenized = [TokenizedExample(ids, ids, [1] * 128, [], "", [], 128) for ids in random_ids]
    tokenized = [t if isinstance(t, TokenizedExample) else tokenize_example(t, tokenizer)
                 for t in tokenized]  # fmt: skip
    batches = [collate(tokenized[i : i + batch_size], tokenizer)
               for i in range(0, len(tokenized), batch_size)]  # fmt: skip
    tokens, started = 0, None
    with torch.enable_grad():
        for batch in itertools.cycle(batches):
            stop_if_requested("the next timed step")  # the runner's Ctrl-C
            _forward_backward(model, {k: v.to(model.device) for k, v in batch.items()})
            if started is None:
                started = time.perf_counter()
                continue
            tokens += int(batch["attention_mask"].sum())
            if time.perf_counter() - started >= seconds:
                break
    for parameter in model.parameters():
        parameter.grad = None
    return tokens / (time.perf_counter() - started)


def _forward_backward(model, batch: dict[str, torch.Tensor]) -> None:
    if any(p.requires_grad for p in model.parameters()):
        model(**batch, use_cache=False).loss.backward()
        return
    embeds = model.get_input_embeddings()(batch.pop("input_ids")).detach().requires_grad_()
    model(inputs_embeds=embeds, **batch, use_cache=False).loss.backward()


@dataclass
class TrainingTimeEstimate:
    """How long training will take, and what the number rests on."""

    hardware: str  # "this machine" or "t4"
    num_epochs: int
    tokens_per_epoch: int  # prompts included: every token is computed, trained or not
    tokens_per_second: float
    basis: str  # where tokens_per_second comes from

    @property
    def seconds(self) -> float:
        return self.num_epochs * self.tokens_per_epoch / self.tokens_per_second

    def __str__(self) -> str:
        minutes = self.seconds / 60
        return (
            f"{self.num_epochs} epoch(s) x {self.tokens_per_epoch:,} tokens at "
            f"{self.tokens_per_second:,.0f} tokens/s on {self.hardware} = {self.seconds:,.0f} s "
            f"(~{minutes:.1f} min). Basis: {self.basis}."
        )


def estimate_training_time(
    stats: TokenStats,
    num_epochs: int = 1,
    tokens_per_second: float | None = None,
    hardware: str = "this machine",
    model: str = "smollm2-135m-instruct",
    method: str = "lora",
    utilization: float = T4_UTILIZATION,
) -> TrainingTimeEstimate:
    """Turn token counts into training time, from a measured speed or a T4's FLOPs.

    "this machine" needs `tokens_per_second` (from `measure_throughput`). "t4" derives it:
    training costs ~6 N FLOPs per token for full fine-tuning (forward 2N, backward 4N;
    Kaplan et al. 2020) and ~4 N with (Q)LoRA, whose backward skips the frozen weights'
    gradients; N = the catalog model's parameters. A T4 peaks at 65 TFLOP/s in fp16; a
    training loop sustains a share of it. 30% is what well-tuned large-model training
    reaches on GPUs (model FLOPs utilisation, PaLM, Chowdhery et al. 2022, reports 30-46%);
    a small model on short rows reaches less, and QLoRA's dequantisation is not counted,
    so read the T4 figure as a lower bound on the time. Padding is not counted either.
    """
    if method not in FLOPS_PER_TOKEN:
        raise ValueError(f"method must be one of {sorted(FLOPS_PER_TOKEN)}, not {method!r}.")
    if hardware == "t4" and tokens_per_second is None:
        flops = FLOPS_PER_TOKEN[method] * get_model_info(model).params
        tokens_per_second = T4_PEAK_FLOPS * utilization / flops
        basis = (f"{FLOPS_PER_TOKEN[method]} x {get_model_info(model).params / 1e6:.0f} M FLOPs "
                 f"per token at {utilization:.0%} of the T4's 65 TFLOP/s")  # fmt: skip
    elif hardware in ("this machine", "t4"):
        if tokens_per_second is None:
            raise ValueError(
                "How fast is this machine? Measure it first: tokens_per_second = "
                "measure_throughput(model, tokenizer, tokenized), then pass it here."
            )
        basis = "tokens/s you gave (e.g. measured with measure_throughput)"
    else:
        raise ValueError(f"hardware must be 'this machine' or 't4', not {hardware!r}.")
    return TrainingTimeEstimate(hardware, num_epochs, stats.total_tokens, tokens_per_second, basis)
