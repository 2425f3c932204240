"""Speed-ups that change no number: the same losses, gradients and replies, in less time or
memory. The core switches them on through the entry points below and never reaches inside.

`speed_up_training(model, lean_layers)`, on a model with its LoRA adapters, before training:

- `lora_dropout`: LoRA's dropout fused into `lora_A`, drawing and keeping only the dropped
  positions (a fifth of a QLoRA step was torch's Bernoulli sampler, then 14% a 16-bit draw
  per value; tests/test_lora_dropout.py);
- `lean_layers` (with `lean_layers=True`): frozen RMS norms, SwiGLU and short attention
  that keep less for the backward pass (709 MiB kept per QLoRA step, of which the norms
  99 and SwiGLU 198; tests/test_lean_layers.py);
- `lean_4bit` (with `lean_layers=True`): QLoRA's 4-bit LoRA layers without peft's clone,
  the block scales dequantised once (+2% and +5% tokens/s; tests/test_lean_4bit.py);
- `cpu_memory` (on a CPU with glibc): freed activations returned to the OS, and the heap
  trimmed after every backward pass (peak 2.7 -> 2.1 GiB, then 2.20 -> 1.95 GiB).

`flat_rows(model, input_ids, attention_mask, prefix)`, around each training forward pass
(`ftkit.trainer.causal_lm_loss`): `flat_rows`, a padded batch as one row without padding,
the `prefix` tokens all its rows start with computed once, attention keeping each row to
its own tokens and that prefix (QLoRA on 256 support tickets 260 -> 330 non-padding tokens/s
on the AVX512-BF16 CPU; tests/test_flat_rows.py).

`lean_output_loss(model)`, around the same forward pass: `linear_cross_entropy`, the loss
over the output layer's 49k logits and its gradient computed 64 positions at a time, the
logits never held whole (that QLoRA run's peak 1.57 -> 1.47 GiB;
tests/test_linear_cross_entropy.py).

`fast_generation(model, input_ids, attention_mask, prefix)`, around `generate`:

- `generation_4bit`: 4-bit weights served by bitsandbytes' AVX512-BF16 kernel or
  dequantised once per block (1.5x at one prompt, 1.3x at eight without AVX512-BF16;
  benchmarks/generation_4bit.py), then restored exactly; and the output layer given a
  contiguous input (1.7x on CPU, the same logits);
- `folded_lora`: in fp32, each LoRA layer served by one product with its adapter folded into
  its weight, not three (a fine-tuned model's decoding step 10-15% faster on an AVX2 CPU;
  peft's logits to fp32 rounding; tests/test_folded_lora.py);
- `shared_prefix`: a prefix every prompt shares (system prompt, few-shot examples) kept
  once in the cache and read once per generated token (3-shot evaluation 135 -> 79 s;
  tests/test_shared_prefix.py), and the batch's prompts read before `generate` as one row
  without padding (`prefilled`: notebook 04's five base-model approaches on 64 tickets
  186 -> 152 s; tests/test_shared_prefix.py).

`read_gguf_once()`, around transformers' loading of a GGUF file (the embedded model's
conversion, `ftkit.export.check_gguf`): `gguf_reading`, the file's header parsed once, not
once for the config, the weights and the tokenizer each, and gguf's tensor-name map built
once, not once per submodule (a 16-bit GGUF of the embedded model loaded in 8 s, not 20;
the embedded model's conversion 10 s, not 28; the same weights bit for bit). It reads files,
so it is the same on every device.

`fast_nf4_quantization()`, around a 4-bit load on a CPU (`ftkit.models.load_model`):
`nf4_quantization`, bitsandbytes' 4-bit codes counted with one vectorised comparison per
level instead of `torch.bucketize`, the same bytes (a load of the embedded model 3.8 -> 2.3
s under the AVX2 stand-in; tests/test_nf4_quantization.py).

`cap_onednn_kernels()`, before a process's first bf16 product (`ftkit.models.load_model`):
oneDNN keeps 64 compiled kernels, not 1024 (a 256-example QLoRA run peaked at 1.50 GiB,
not 1.78).

Every figure was measured on the course's 2-core CPUs (benchmarks/RESULTS.md says which),
and none of these speed-ups has run on a GPU: on any other device (CUDA, MPS) both entry
points leave the model alone and the libraries' own code runs (`measured_on`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ftkit.fast.common import cache_name
from ftkit.fast.cpu_memory import HeapRelease, cap_onednn_kernels, return_freed_memory
from ftkit.fast.flat_rows import FlatRows, flat_rows_apply
from ftkit.fast.flat_rows import flat_rows as flat_rows_of
from ftkit.fast.folded_lora import folded_lora
from ftkit.fast.generation_4bit import contiguous_logits_input, fast_4bit_generation
from ftkit.fast.gguf_reading import read_gguf_once
from ftkit.fast.lean_4bit import use_lean_4bit
from ftkit.fast.lean_layers import use_lean_layers
from ftkit.fast.linear_cross_entropy import hidden_at_output, linear_cross_entropy
from ftkit.fast.lora_dropout import fuse_lora_dropout
from ftkit.fast.nf4_quantization import fast_nf4_quantization
from ftkit.fast.shared_prefix import prefilled

__all__ = [
    "MEASURED_DEVICES",
    "TrainingSpeedUps",
    "cache_name",
    "cap_onednn_kernels",
    "fast_generation",
    "fast_nf4_quantization",
    "flat_rows",
    "flat_rows_serve",
    "lean_output_loss",
    "measured_on",
    "read_gguf_once",
    "speed_up_training",
]

MEASURED_DEVICES = ("cpu",)  # where the speed-ups were measured (benchmarks/RESULTS.md)


def measured_on(model: torch.nn.Module) -> bool:
    """Whether `model` sits on a device the speed-ups were measured on: only there do
    `speed_up_training` and `fast_generation` change anything."""
    first = next(model.parameters(), None)
    return first is None or first.device.type in MEASURED_DEVICES


@dataclass
class TrainingSpeedUps:
    """What `speed_up_training` switched on, and the trainer callbacks it needs."""

    changed: list[str] = field(default_factory=list)  # one line per speed-up switched on
    callbacks: list = field(default_factory=list)  # TrainerCallbacks to pass to the Trainer


def speed_up_training(
    model: torch.nn.Module, lean_layers: bool = True, dtype: torch.dtype | None = None
) -> TrainingSpeedUps:
    """Switch on every training speed-up that applies to `model`, a model with its adapters.

    What changes: LoRA dropout fused into `lora_A` (always); frozen norms, SwiGLU, short
    attention and 4-bit LoRA layers that keep less for the backward pass (`lean_layers`);
    on a CPU with glibc, when training computes in bf16 or fp16 (`dtype`, by default the
    model's), freed memory returned at once and the heap trimmed after every backward pass
    (the returned `HeapRelease` callback). Not in fp32: there every tensor is twice the
    bytes, so many more cross the 1 MiB threshold and come as fresh pages from the OS, and
    with it a step on the AVX2-only CPU ran 1.27x slower for 0.6 GiB less
    (benchmarks/RESULTS.md, 2026-12-07). Same losses and gradients
    (tests/test_lora_dropout.py, test_lean_layers.py, test_lean_4bit.py); measured on the
    course's 2-core CPUs in benchmarks/RESULTS.md (QLoRA 1.5-1.7x TRL's tokens/s at 0.4x
    its peak memory with all of them). The lean paths act only while a module trains with
    gradients on: evaluation and generation run the libraries' own code. Safe to call
    again on the same model. On a device they were not measured on (a GPU) nothing changes.
    """
    found = TrainingSpeedUps()
    if not measured_on(model):
        return found  # never run on this device: the libraries' own code, as measured there
    if fused := fuse_lora_dropout(model):
        found.changed.append(f"{fused} LoRA dropouts fused into lora_A")
    if lean_layers:
        found.changed += use_lean_layers(model)
        if lean := use_lean_4bit(model):
            found.changed.append(f"{lean} lean 4-bit LoRA layers")
    on_cpu = next(model.parameters()).device.type == "cpu"
    dtype = dtype or getattr(model, "dtype", None)
    if on_cpu and dtype != torch.float32 and return_freed_memory():
        found.changed.append("glibc returns freed memory at once; heap trimmed every step")
        found.callbacks.append(HeapRelease())
    return found


@contextmanager
def flat_rows(model: torch.nn.Module, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None, prefix: int = 0,
              enabled: bool = True) -> Iterator[FlatRows | None]:  # fmt: skip
    """A padded batch (`input_ids`, `attention_mask`, its rows sharing their first
    `prefix` tokens) as one row without padding, the prefix once (`flat_rows.FlatRows`):
    inside this block, `model(input_ids=rows.input_ids, position_ids=rows.position_ids)`
    computes for each real token what the padded batch would, on fewer tokens. Yields None
    (run the batch as it is) when not `enabled`, without a 2-D mask, on a model
    `flat_rows.flat_rows_apply` rejects, or on a device this was not measured on (a GPU).

    Training and its validation loss run every batch this way (`ftkit.trainer.causal_lm_loss`):
    on the support tickets a quarter of each example is the shared beginning (QLoRA 260 ->
    330 non-padding tokens/s on the AVX512-BF16 CPU, benchmarks/RESULTS.md).
    """
    if not enabled or attention_mask is None or attention_mask.dim() != 2:
        yield None
        return
    if not measured_on(model):
        yield None
        return
    with flat_rows_of(model, input_ids, attention_mask, prefix) as rows:
        yield rows


def flat_rows_serve(model: torch.nn.Module) -> bool:
    """Whether `flat_rows` runs `model`'s batches flat (else they run padded): a Llama-family
    decoder on sdpa or ftkit's short attention, on a device this was measured on."""
    return measured_on(model) and flat_rows_apply(model)


@contextmanager
def lean_output_loss(model: torch.nn.Module, enabled: bool = True) -> Iterator:
    """Inside this block `model(...).logits` are the final hidden states (the output layer
    passes its input on), and this yields `loss(hidden, targets)`: the summed cross-entropy
    of the output layer's logits, computed in chunks without ever holding them whole
    (`linear_cross_entropy`). Yields None (the model as it is) when not `enabled`, where the
    output layer is not a plain linear layer of a Llama-family model, or on a device this
    was not measured on (a GPU).

    Training and its validation loss use it (`ftkit.trainer.causal_lm_loss`): the logits
    and their gradient are about 10 bytes per labelled token per vocabulary entry (190 MB
    for a batch of 8 support tickets), the chunks' 31 MB (QLoRA peak 1.57 -> 1.47 GiB;
    tests/test_linear_cross_entropy.py).
    """
    if not enabled or not measured_on(model):
        yield None
        return
    with hidden_at_output(model) as layer:
        if layer is None:
            yield None
            return

        def loss(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return linear_cross_entropy(hidden, layer.weight, targets, layer.autocast)

        yield loss


@contextmanager
def fast_generation(
    model: torch.nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    prefix: int = 0,
) -> Iterator[dict]:
    """Generate faster inside this block; yields the keyword arguments to add to `generate`
    (the prompts' KV cache, under the name this transformers uses, or nothing).

    What changes: 4-bit weights dequantised once (1.5x at one prompt, 1.3x at eight on an
    AVX2 CPU, benchmarks/generation_4bit.py), or with AVX512-BF16 served by bitsandbytes'
    repacked kernel for products of a few rows and dequantised once for longer ones (a
    prompt's prefill: 5 to 20x faster per layer than that kernel on an AMX Xeon), the output
    layer given a contiguous input (1.7x on CPU; in fp32 its product taken as weight x
    rows^T, 2-3x for 2 to 80 rows on an AVX2 CPU), in fp32 each LoRA adapter folded into its
    layer's weight (one product, not three: a decoding step 10-15% faster on an AVX2 CPU,
    benchmarks/folded_lora.py). Given the batch (`input_ids`, `attention_mask`, laid out as
    `ftkit.generation` lays it out: the `prefix` tokens every row starts with, padding, each
    row's own tokens), its prompts are read here but for each row's last token, as one row
    without padding and the prefix once, and the prefix is kept once in the cache and read
    once per generated token (`shared_prefix.prefilled`; notebook 04's 3-shot evaluation
    135 -> 79 s for the prefix; without the padding, its five base-model approaches on 64
    test tickets 186 -> 152 s on one core of the AVX512-BF16 CPU). The same logits up to rounding
    (tests/test_models.py, test_evaluation.py, test_shared_prefix.py, test_folded_lora.py).
    Blocks nest: an outer one around many batches prepares the 4-bit weights once. On
    leaving, the model is exactly as trainable as before. On a device this was not measured
    on (a GPU) the block changes nothing.
    """
    if not measured_on(model):  # never run on this device: plain `generate`, same replies
        yield {}
        return
    with fast_4bit_generation(model), folded_lora(model), contiguous_logits_input(model):
        if input_ids is None:
            yield {}
            return
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with prefilled(model, input_ids, attention_mask, prefix) as cache:
            yield {} if cache is None else {cache_name(): cache}
