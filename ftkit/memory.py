"""Will it fit? Estimate peak GPU memory for full, LoRA and QLoRA fine-tuning.

Adds to `ftkit.catalog` a model of training memory built from each model's
architecture, not from its parameter count alone: NF4 only where bitsandbytes
quantises (the decoder's linear layers), LoRA adapters from the real layer
shapes, activations per decoder layer with and without gradient checkpointing,
and the logits, which dominate for 128k-256k vocabularies. `estimate_memory`
returns a `MemoryEstimate` (every part in GiB, 2**30 bytes); `fit_verdict` and
`check_fit` compare it with the cards in `GPUS`.

Sources, cited where each term is computed:
  [anatomy] transformers docs, "Model training anatomy": bytes per parameter for weights,
            gradients and AdamW states; fp32 master weights in mixed precision.
  [qlora]   Dettmers et al. 2023, "QLoRA", sections 2-3: NF4, double quantisation, paged
            optimizers.
  [korth]   Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
            Models", section 4.1: activations per layer, adapted to Llama-style blocks
            (RMSNorm, SwiGLU, grouped-query attention) with fused SDPA attention, which keeps
            no (seq x seq) scores; only the padding mask grows with seq x seq.
  [chen]    Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost": checkpoint each
            layer's input, recompute one layer at a time in the backward pass.
  [accel]   accelerate's `estimate-memory`: its "x4 the fp32 weights" AdamW rule is the full
            fine-tuning case here, before activations.
The per-layer activations match torch's saved-tensor hooks on SmolLM2-135M with peft to
within 0.3%; the totals are calibrated against published measurements in tests/test_memory.py.
Qwen3's and Gemma 3's per-head q/k RMSNorms and Gemma's four norms per layer add what the
same hooks measure on frozen layers: 4 bytes per q and k value, and 4 per hidden value per norm.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ftkit.catalog import GPU, GPUS, ModelInfo, get_gpu, get_model_info

GIB = 2**30  # every size in this module is in GiB
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}  # compute dtype -> bytes per value
# [qlora] NF4: 4 bits per weight, one absmax per 64 weights quantised to 8 bits, one fp32
# constant per 256 absmax values (double quantisation): 4 + 8/64 + 32/(64*256) bits.
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# AdamW's two moments per trainable parameter: in the parameter's dtype for torch's AdamW
# (None: 2 x the parameter's bytes), one byte each for bitsandbytes' 8-bit AdamW. Paged states
# sit in CUDA unified memory: counted here as on the GPU, where they stay until memory runs
# short; then the driver pages them to CPU RAM (slower steps instead of a crash).
OPTIMIZER_STATE_BYTES = {"adamw": None, "adamw_8bit": 2, "paged_adamw_8bit": 2}
# Bytes per logit the loss holds at its peak. "standard" is transformers' ForCausalLMLoss: it
# upcasts the logits to fp32, and the backward of log_softmax then holds three fp32
# (tokens x vocab) tensors at once (log-probs, their gradient, the input gradient).
# "fused": a fused or chunked cross-entropy kernel (Unsloth, Liger, torchtune's compiled
# chunked loss) keeps only the 16-bit logits whole (None: the compute dtype's bytes).
LOSS_BYTES_PER_LOGIT = {"standard": 12, "fused": None}
CHECKPOINTING = (False, True, "offload")  # "offload": checkpoints parked in CPU RAM (Unsloth)
CUDA_CONTEXT_GIB = 0.5  # CUDA context + loaded kernels: seen by nvidia-smi, not by torch
ALLOCATOR_SLACK = 0.10  # caching-allocator fragmentation, as a share of activations + logits
FITS_BELOW = 0.85  # under 85% of the card: fits, with room for the estimate's error
TIGHT_UP_TO = 1.0  # 85-100%: may fit; lower batch_size or max_length if it runs out
_CHOICES = {
    "method": ("full", "lora", "qlora"),
    "precision": tuple(PRECISION_BYTES),
    "gradient_checkpointing": CHECKPOINTING,
    "optimizer": tuple(OPTIMIZER_STATE_BYTES),
    "loss": tuple(LOSS_BYTES_PER_LOGIT),
    "adapter_precision": (None, *PRECISION_BYTES),
    "fp32_unquantized": (False, True),
}
MODEL_STATE = ("weights", "adapters", "gradients", "optimizer_states")  # set by the model
STEP_MEMORY = ("activations", "logits", "overhead")  # grows with batch_size x max_length
COMPONENTS = MODEL_STATE + STEP_MEMORY  # the parts of the peak, in plotting order


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU memory of one training setup, split into parts. Sizes in GiB (2**30 bytes)."""

    weights: float  # base model: fp32 master copy (full), 16-bit (LoRA), NF4 + 16-bit (QLoRA)
    adapters: float  # LoRA A and B matrices (0 for full fine-tuning)
    gradients: float  # one gradient per trainable parameter
    optimizer_states: float  # AdamW's two moments per trainable parameter
    activations: float  # tensors the decoder layers keep for the backward pass
    logits: float  # the (tokens x vocab) scores and the loss's working copies
    overhead: float  # CUDA context, dequantisation buffer, allocator fragmentation
    model: str  # catalog name
    method: str  # "full", "lora" or "qlora"
    batch_size: int  # sequences per step (per device)
    max_length: int  # tokens per sequence (padded or packed)
    precision: str  # compute dtype: "bf16", "fp16" or "fp32"
    gradient_checkpointing: bool | str  # True, False or "offload"
    lora_r: int  # LoRA rank (ignored for full fine-tuning)
    lora_targets: str  # which linear layers carry adapters
    optimizer: str  # "adamw", "adamw_8bit" or "paged_adamw_8bit"
    loss: str  # "standard" or "fused"
    adapter_precision: str | None  # LoRA weights' dtype; None: as ftkit's stack does it
    fp32_unquantized: bool  # True: prepare_model_for_kbit_training's fp32 upcast (QLoRA)
    trainable_params: int  # parameters the optimizer updates

    @property
    def total(self) -> float:
        """Peak memory the card must hold (what nvidia-smi would show), in GiB."""
        return sum(self.components().values())

    @property
    def reserved(self) -> float:
        """The part PyTorch's allocator holds (`torch.cuda.max_memory_reserved()`), in GiB."""
        return self.total - CUDA_CONTEXT_GIB

    def components(self) -> dict[str, float]:
        """The parts of the peak, in GiB, in plotting order."""
        return {name: getattr(self, name) for name in COMPONENTS}

    def table(self) -> str:
        """A plain-text breakdown a learner can print."""
        head = f"{self.model}, {self.method}, batch {self.batch_size} x {self.max_length} tokens"
        head += f", {self.precision}, gradient checkpointing {self.gradient_checkpointing}"
        parts = self.components().items()
        rows = [f"  {name.replace('_', ' '):<17}{gib:7.2f} GiB" for name, gib in parts]
        return "\n".join([head, *rows, f"  {'total':<17}{self.total:7.2f} GiB"])

    def __str__(self) -> str:
        return self.table()


def estimate_memory(
    model: str | ModelInfo,
    method: str = "qlora",
    batch_size: int = 1,
    max_length: int = 512,
    precision: str = "bf16",
    gradient_checkpointing: bool | str = True,
    lora_r: int = 16,
    lora_targets: str | Iterable[str] = "all-linear",
    optimizer: str = "adamw",
    *,
    loss: str = "standard",
    adapter_precision: str | None = None,
    fp32_unquantized: bool = False,
) -> MemoryEstimate:
    """Estimate the peak GPU memory of one fine-tuning setup, split into components.

    `loss="fused"` models a fused cross-entropy kernel (Unsloth, Liger, torchtune);
    `gradient_checkpointing="offload"` parks the checkpoints in CPU RAM (Unsloth);
    `adapter_precision` is the LoRA weights' dtype, None following ftkit's stack
    (peft keeps LoRA adapters in fp32, TRL casts QLoRA adapters to 16-bit);
    `fp32_unquantized=True` models `peft.prepare_model_for_kbit_training` (QLoRA
    only), which casts every weight bitsandbytes did not quantise to fp32.
    """
    info = model if isinstance(model, ModelInfo) else get_model_info(model)
    choices = {
        "method": method,
        "precision": precision,
        "gradient_checkpointing": gradient_checkpointing,
        "optimizer": optimizer,
        "loss": loss,
        "adapter_precision": adapter_precision,
        "fp32_unquantized": fp32_unquantized,
    }
    sizes = {"batch_size": batch_size, "max_length": max_length, "lora_r": lora_r}
    _check_inputs(choices, sizes)
    s = _Setup(info, info.lora_modules(lora_targets), **choices, **sizes)
    parts = {name: nbytes / GIB for name, nbytes in s.components().items()}
    label = lora_targets if isinstance(lora_targets, str) else ",".join(s.targets)
    inputs = choices | sizes | {"lora_targets": label, "trainable_params": s.trainable}
    return MemoryEstimate(**parts, **inputs, model=info.name)


@dataclass(frozen=True)
class _Setup:
    """One training setup, resolved; its methods compute each part of the peak in bytes."""

    info: ModelInfo
    targets: tuple[str, ...]  # real module names carrying LoRA adapters
    method: str
    precision: str
    gradient_checkpointing: bool | str
    optimizer: str
    loss: str
    adapter_precision: str | None
    fp32_unquantized: bool
    batch_size: int
    max_length: int
    lora_r: int

    @property
    def p(self) -> int:  # bytes per activation value
        return PRECISION_BYTES[self.precision]

    @property
    def full(self) -> bool:
        return self.method == "full"

    @property
    def tokens(self) -> int:
        return self.batch_size * self.max_length

    @property
    def trainable(self) -> int:
        return self.info.params if self.full else self.info.lora_params(self.lora_r, self.targets)

    @property
    def adapter_bytes(self) -> int:
        if self.adapter_precision is not None:
            return PRECISION_BYTES[self.adapter_precision]
        # TRL casts QLoRA adapters to 16-bit; peft's autocast_adapter_dtype keeps LoRA's fp32
        return self.p if self.method == "qlora" else 4

    def components(self) -> dict[str, float]:
        """Every part of the peak, in bytes."""
        # [anatomy] full fine-tuning in mixed precision keeps fp32 weights, gradients and
        # states: 16 bytes per parameter. The guide's 18 adds a 16-bit copy, which autocast
        # frees layer by layer in the backward pass as gradients appear: never at the peak.
        train = 4 if self.full else self.adapter_bytes
        states = OPTIMIZER_STATE_BYTES[self.optimizer] or 2 * train
        logits = self.tokens * self.info.vocab_size * (LOSS_BYTES_PER_LOGIT[self.loss] or self.p)
        activations = self.activation_bytes(loss_bytes=logits)
        return {
            "weights": self.weight_bytes(),
            "adapters": 0 if self.full else self.trainable * self.adapter_bytes,
            "gradients": self.trainable * train,
            "optimizer_states": self.trainable * states,
            "activations": activations,
            "logits": logits,
            "overhead": self.overhead_bytes(dynamic=activations + logits),
        }

    def weight_bytes(self) -> float:
        """[anatomy] full: fp32 master weights; LoRA: the compute dtype. [qlora] QLoRA: NF4 for
        the decoder's linears; embeddings, lm_head (once when tied), norms and biases 16-bit,
        or fp32 after prepare_model_for_kbit_training, whose fp32 lm_head autocast copies to
        16-bit in every forward pass and keeps until the backward pass."""
        info = self.info
        if self.method != "qlora":
            return (4 if self.full else self.p) * info.params
        quantized = NF4_BYTES_PER_PARAM * info.linear_params
        unquantized = info.params - info.linear_params
        if self.fp32_unquantized:
            return quantized + 4 * unquantized + self.p * info.vocab_size * info.hidden_size
        return quantized + self.p * unquantized

    def activation_bytes(self, loss_bytes: float) -> float:
        """What the layers keep for the backward pass, all layers, at the peak.

        [korth] per layer (`layer_bytes_per_token`). [chen] with checkpointing, each layer's
        input is kept and one layer at a time is recomputed; that starts after the loss has
        freed its buffers, so only the part of one layer larger than the loss's adds to the
        peak. fp32 embeddings (full, prepare_model_for_kbit_training) make checkpoints fp32."""
        h, layers = self.info.hidden_size, self.info.num_layers
        layer = self.tokens * self.layer_bytes_per_token()
        final_norm = self.tokens * (4 * h + (self.p * h if self.full else 0))
        if self.gradient_checkpointing is False:
            return layers * layer + final_norm
        kept = layers if self.gradient_checkpointing is True else 2  # offload: ~2 in flight
        residual = 4 if self.full or self.fp32_unquantized else self.p
        return kept * self.tokens * residual * h + final_norm + max(0.0, layer - loss_bytes)

    def layer_bytes_per_token(self) -> float:
        """[korth] for one Llama-style block as transformers runs it, per token."""
        info, p = self.info, self.p
        h, f, d = info.hidden_size, info.intermediate_size, info.attention_head_dim
        q, kv = info.num_heads * d, info.num_kv_heads * d
        padded = self.batch_size > 1  # padding mask: k, v repeated to all heads, mask per layer
        upcast = 2 if self.full else 1  # RMSNorms keep fp32 copies (+ outputs when trained)
        total = info.norms_per_layer * 4 * h * upcast  # Gemma 2 and 3: four, not two
        if info.qk_norm:  # Qwen3, Gemma 3: per-head norms on q and k, and their rsqrt
            total += 4 * (q + kv) * upcast + 4 * (info.num_heads + info.num_kv_heads)
        total += p * (2 * q + 2 * (q if padded else kv)) + 4 * info.num_heads  # SDPA q,k,v,out
        total += p * self.max_length if padded else 0  # SDPA's float copy of the bool mask
        total += 3 * p * f  # SwiGLU keeps the gate output, its activation and the up output
        lora_a_outputs = len(self.targets) * self.lora_r * self.adapter_bytes
        return total + self.saved_inputs(h, f) + lora_a_outputs

    def saved_inputs(self, h: int, f: int) -> float:
        """Layer inputs kept for weight gradients (full) or for lora_A. peft casts a 16-bit
        input to fp32 adapters' dtype once per adapted layer, and lora_A keeps that copy."""
        shapes = self.info.linear_shapes()
        if self.adapter_bytes > self.p and not self.full:
            return sum(4 * shapes[name][0] for name in self.targets)
        if self.full:
            return self.p * (2 * h + f)
        shared = (  # layers sharing one input; o_proj's input is SDPA's output, kept already
            (h, {"q_proj", "k_proj", "v_proj", "qkv_proj"}),
            (h, {"gate_proj", "up_proj", "gate_up_proj"}),
            (f, {"down_proj"}),
        )
        return self.p * sum(width for width, names in shared if names & set(self.targets))

    def overhead_bytes(self, dynamic: float) -> float:
        """CUDA context, allocator fragmentation on the activations, and for QLoRA the 16-bit
        copy of the largest weight bitsandbytes dequantises in the backward pass."""
        largest = max(i * o for i, o in self.info.linear_shapes().values())
        dequant = largest * self.p if self.method == "qlora" else 0
        return CUDA_CONTEXT_GIB * GIB + ALLOCATOR_SLACK * dynamic + dequant


def _check_inputs(choices: dict, sizes: dict) -> None:
    for name, value in choices.items():  # `is` first, so that 1 and 0 are not True and False
        allowed = _CHOICES[name]
        if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            raise ValueError(f"estimate_memory: {name}={value!r} is not one of {list(allowed)}.")
    for name, value in sizes.items():
        if type(value) is not int or value < 1:
            raise ValueError(f"estimate_memory: {name} must be a whole number >= 1, not {value!r}.")
    if choices["fp32_unquantized"] and choices["method"] != "qlora":
        raise ValueError(
            "estimate_memory: fp32_unquantized=True describes prepare_model_for_kbit_training, "
            "which only QLoRA uses. Drop it, or set method='qlora'."
        )


@dataclass(frozen=True)
class FitRow:
    """One line of `check_fit`: how an estimate compares with one card."""

    gpu: str  # card name
    memory_gib: float  # the card's memory, GiB
    needed_gib: float  # the estimate's total, GiB
    share: float  # needed / memory
    verdict: str  # "fits", "tight" or "does not fit"

    def __str__(self) -> str:
        return (
            f"{self.gpu:<16} {self.memory_gib:6.2f} GiB  needs {self.needed_gib:6.2f} GiB "
            f"({self.share:4.0%})  {self.verdict}"
        )


def fit_verdict(estimate: MemoryEstimate, gpu: GPU | str) -> str:
    """Say whether an estimate fits a card: "fits" (<85%), "tight" (85-100%), "does not fit"."""
    share = estimate.total / get_gpu(gpu).memory_gib
    if share < FITS_BELOW:
        return "fits"
    return "tight" if share <= TIGHT_UP_TO else "does not fit"


def check_fit(estimate: MemoryEstimate, gpus: Iterable[GPU] | None = None) -> list[FitRow]:
    """Compare one estimate with every card in `GPUS` (or the cards given), smallest first."""
    cards = sorted(GPUS.values() if gpus is None else gpus, key=lambda card: card.memory_gib)
    need = round(estimate.total, 2)
    verdicts = [fit_verdict(estimate, card) for card in cards]
    return [
        FitRow(card.name, card.memory_gib, need, round(need / card.memory_gib, 3), verdict)
        for card, verdict in zip(cards, verdicts, strict=True)
    ]
