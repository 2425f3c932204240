"""What can I fine-tune, and on what? Typed records of base models and graphics cards.

Each `ModelInfo` holds what a learner chooses a base model by (size, context,
licence, whether the hub gates it, chat template family) and the architecture
numbers the memory estimator (`ftkit.memory`) needs, including the real shapes
of the linear layers LoRA adapts. Every number was checked against the model's
`config.json` on the Hugging Face hub (a multimodal model's `text_config`); `params`
is the exact count `model.num_parameters()` reports. `GPUS` lists common cards to
compare with.

Look a model up with `get_model_info("qwen2.5-1.5b-instruct")` (or its hub id)
and list them all, smallest first, with `list_models()`. `architecture_config(name)`
rebuilds a model's transformers config from these figures, so a model with random
weights can be built without downloading anything; tests/test_catalog.py builds every
catalog model that way on the meta device and checks its count and layer shapes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # transformers is imported lazily: the catalog works without torch
    from transformers import PretrainedConfig

# Linear layers of one decoder layer, in the names peft and transformers use.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LORA_TARGETS = {
    "all-linear": ATTENTION_MODULES + MLP_MODULES,  # peft's target_modules="all-linear"
    "attention": ATTENTION_MODULES,
    "qv": ("q_proj", "v_proj"),  # the original LoRA paper's choice
}
_FUSED = {"qkv_proj": {"q_proj", "k_proj", "v_proj"}, "gate_up_proj": {"gate_proj", "up_proj"}}
EMBEDDED_MODEL = "smollm2-135m-instruct"  # catalog name of the model ftkit ships (works offline)
# Decoder layers with four RMSNorms (before and after attention and the MLP), not two.
_SANDWICH_NORMS = {"gemma2", "gemma3_text"}
# Attention with an RMSNorm over each query and key head (before RoPE).
_QK_NORMS = {"qwen3", "gemma3_text"}


class UnknownModelError(ValueError):
    """A model name that is neither a catalog name nor a catalog hub id."""


@dataclass(frozen=True)
class ModelInfo:
    """One base model: what a learner chooses by, and the shapes memory estimates use."""

    name: str  # catalog key, lowercase, e.g. "qwen2.5-1.5b-instruct"
    hub_id: str  # Hugging Face hub id, e.g. "Qwen/Qwen2.5-1.5B-Instruct"
    params: int  # total parameter count (tied embeddings counted once)
    context_length: int  # max_position_embeddings in config.json, in tokens
    licence: str  # e.g. "Apache-2.0", "Llama 3.2 Community License"
    gated: bool  # True if the hub asks you to accept terms before downloading
    chat_template: str  # template family: "chatml", "llama3", "phi3", "mistral", "gemma", "none"
    # config.json's model_type (for a multimodal model, its text_config's): which transformers
    # architecture the shapes below describe. A keyword: ModelInfo(..., model_type="qwen3").
    model_type: str = field(kw_only=True)
    hidden_size: int  # width of the residual stream (d_model)
    num_layers: int  # decoder layers
    intermediate_size: int  # width of the MLP (SwiGLU/GeGLU gate and up projections)
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (fewer than num_heads: grouped-query attention)
    vocab_size: int  # rows of the embedding matrix and of lm_head
    tied_embeddings: bool  # True if lm_head shares the embedding matrix
    head_dim: int | None = None  # per-head width when not hidden_size // num_heads (Gemma, Qwen3)
    fused_projections: bool = False  # True for Phi-3: one qkv_proj and one gate_up_proj
    embedded: bool = False  # True only for the model ftkit ships (works offline)
    notes: str = ""  # one line for the learner: why pick (or not pick) this model

    @property
    def attention_head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def norms_per_layer(self) -> int:
        """RMSNorms over the residual stream in one decoder layer: 4 for Gemma 2 and 3."""
        return 4 if self.model_type in _SANDWICH_NORMS else 2

    @property
    def qk_norm(self) -> bool:
        """True if attention normalises each query and key head (Qwen3, Gemma 3)."""
        return self.model_type in _QK_NORMS

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, f, d = self.hidden_size, self.intermediate_size, self.attention_head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        if self.fused_projections:  # Phi-3
            attention = {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h)}
            return attention | {"gate_up_proj": (h, 2 * f), "down_proj": (f, h)}
        attention = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        return attention | {"gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    @property
    def embedding_params(self) -> int:
        """Parameters in the embedding matrix plus an untied lm_head."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear weights (what 4-bit quantisation shrinks)."""
        return self.num_layers * sum(i * o for i, o in self.linear_shapes().values())

    def lora_modules(self, targets: str | Iterable[str] = "all-linear") -> tuple[str, ...]:
        """The real module names LoRA wraps for a preset or a list of names (Phi-3: fused)."""
        if isinstance(targets, str) and targets not in LORA_TARGETS:
            raise ValueError(
                f"lora_targets={targets!r} is not a preset. Use one of {sorted(LORA_TARGETS)} "
                "or a list of module names like ['q_proj', 'v_proj']."
            )
        names = set(LORA_TARGETS[targets] if isinstance(targets, str) else targets)
        unknown = names - set(ATTENTION_MODULES + MLP_MODULES) - set(self.linear_shapes())
        if unknown:
            raise ValueError(
                f"Unknown LoRA target(s) {sorted(unknown)} for {self.name}. Its linear layers "
                f"are {list(self.linear_shapes())}."
            )
        shapes = self.linear_shapes()
        return tuple(m for m in shapes if m in names or names & _FUSED.get(m, set()))

    def lora_params(self, lora_r: int = 16, targets: str | Iterable[str] = "all-linear") -> int:
        """LoRA parameters (A and B, every layer) from the real shapes of the targeted layers."""
        shapes = self.linear_shapes()
        return self.num_layers * sum(lora_r * sum(shapes[m]) for m in self.lora_modules(targets))


def _model(identity: tuple, terms: tuple, shape: tuple, notes: str, **extra) -> ModelInfo:
    """identity: (name, hub id, params, context); terms: (licence, gated, chat template);
    shape: (hidden, layers, intermediate, heads, kv heads, vocab, tied embeddings)."""
    return ModelInfo(*identity, *terms, *shape, notes=notes, **extra)


_LLAMA_3_2 = ("Llama 3.2 Community License", True, "llama3")
_QWEN3 = ("Apache-2.0", False, "chatml")
_GEMMA = ("Gemma Terms of Use", True, "gemma")
# Models added in 2026 (issue 24). Each shape is its config.json on the hub, as mirrors of it
# quote it (mlx-community, onnx-community, unsloth copies; for Gemma 3 4B the text_config, whose
# unset fields take transformers' Gemma3TextConfig defaults); `params` is what num_parameters()
# reports for that config, built on the meta device, and equals the exact count keras-hub
# publishes for the same checkpoint (keras_hub/src/models/*/..._presets.py), where a comment
# says so. Their notes' "Colab T4 QLoRA" verdicts are ftkit.memory's: the
# largest batch of 1, 2, 4, 8 or 16 that fits "t4-16gb" with the model picker's other defaults
# (QLoRA rank 16 on all linear layers, 512 tokens, gradient checkpointing), in fp16 as on a T4;
# tests/test_catalog.py recomputes them.
_MODELS = (
    _model(
        ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, 8192),
        ("Apache-2.0", False, "chatml"),
        (576, 30, 1536, 9, 3, 49152, True),
        "ships with ftkit: fine-tunes on a laptop CPU in minutes",
        embedded=True,
        model_type="llama",
    ),
    _model(
        # keras-hub gemma3_instruct_270m: 268,098,176 ("170m embedding, 100m transformer")
        ("gemma-3-270m-it", "google/gemma-3-270m-it", 268_098_176, 32768),
        _GEMMA,
        (640, 18, 2048, 4, 1, 262144, True),
        "270M, gated (Gemma terms); its 262k vocabulary is 63% of the weights and "
        "dominates memory; Colab T4 QLoRA: fits up to batch 4 at 512 tokens",
        head_dim=256,
        model_type="gemma3_text",
    ),
    _model(
        ("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", 361_821_120, 8192),
        ("Apache-2.0", False, "chatml"),
        (960, 32, 2560, 15, 5, 49152, True),
        "the next step up from the embedded model; still fine on a CPU",
        model_type="llama",
    ),
    _model(
        ("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 32768),
        ("Apache-2.0", False, "chatml"),
        (896, 24, 4864, 14, 2, 151936, True),
        "strong for its size, multilingual; its 152k vocabulary makes the logits large",
        model_type="qwen2",
    ),
    _model(
        # keras-hub qwen3_0.6b_en: 596,049,920; model card: 0.6B (0.44B non-embedding)
        ("qwen3-0.6b", "Qwen/Qwen3-0.6B", 596_049_920, 40960),
        _QWEN3,
        (1024, 28, 3072, 16, 8, 151936, True),
        "0.6B, Apache-2.0, thinking and non-thinking modes, 32k context; "
        "Colab T4 QLoRA: fits up to batch 8 at 512 tokens",
        head_dim=128,
        model_type="qwen3",
    ),
    _model(
        # keras-hub gemma3_instruct_1b: 999,885,952
        ("gemma-3-1b-it", "google/gemma-3-1b-it", 999_885_952, 32768),
        _GEMMA,
        (1152, 26, 6912, 4, 1, 262144, True),
        "1B, gated (Gemma terms), text only; its 262k vocabulary makes the logits large; "
        "Colab T4 QLoRA: fits up to batch 4 at 512 tokens",
        head_dim=256,
        model_type="gemma3_text",
    ),
    _model(
        ("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400, 131072),
        _LLAMA_3_2,
        (2048, 16, 8192, 32, 8, 128256, True),
        "gated: accept Meta's licence on the hub first",
        model_type="llama",
    ),
    _model(
        ("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 32768),
        ("Apache-2.0", False, "chatml"),
        (1536, 28, 8960, 12, 2, 151936, True),
        "a good default for one consumer GPU",
        model_type="qwen2",
    ),
    _model(
        ("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1_711_376_384, 8192),
        ("Apache-2.0", False, "chatml"),
        (2048, 24, 8192, 32, 32, 49152, True),
        "fully open training data; its small vocabulary keeps the logits cheap",
        model_type="llama",
    ),
    _model(
        # keras-hub qwen3_1.7b_en: 1,720,574,976
        ("qwen3-1.7b", "Qwen/Qwen3-1.7B", 1_720_574_976, 40960),
        _QWEN3,
        (2048, 28, 6144, 16, 8, 151936, True),
        "1.7B, Apache-2.0, thinking and non-thinking modes, 32k context; "
        "Colab T4 QLoRA: fits up to batch 8 at 512 tokens",
        head_dim=128,
        model_type="qwen3",
    ),
    _model(
        ("gemma-2-2b-it", "google/gemma-2-2b-it", 2_614_341_888, 8192),
        ("Gemma Terms of Use", True, "gemma"),
        (2304, 26, 9216, 8, 4, 256000, True),
        "gated; its 256k vocabulary makes the logits dominate memory at long max_length",
        head_dim=256,
        model_type="gemma2",
    ),
    _model(
        # keras-hub smollm3_3b_en: 3,075,100,928, which also counts a non-trainable RoPE
        # inv_freq of 64 values in each of the 36 layers (2,304); without them, this count
        ("smollm3-3b", "HuggingFaceTB/SmolLM3-3B", 3_075_098_624, 65536),
        ("Apache-2.0", False, "chatml"),
        (2048, 36, 11008, 16, 4, 128256, True),
        "3B, Apache-2.0, open training data and recipe, thinking and non-thinking modes, 64k "
        "context; Colab T4 QLoRA: fits up to batch 8 at 512 tokens",
        model_type="smollm3",
    ),
    _model(
        ("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", 3_085_938_688, 32768),
        ("Qwen Research License", False, "chatml"),
        (2048, 36, 11008, 16, 2, 151936, True),
        "research licence: not for commercial use",
        model_type="qwen2",
    ),
    _model(
        ("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824, 131072),
        _LLAMA_3_2,
        (3072, 28, 8192, 24, 8, 128256, True),
        "gated: accept Meta's licence on the hub first",
        model_type="llama",
    ),
    _model(
        ("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", 3_821_079_552, 131072),
        ("MIT", False, "phi3"),
        (3072, 32, 8192, 32, 32, 32064, False),
        "MIT licence; fused qkv_proj and gate_up_proj layers",
        fused_projections=True,
        model_type="phi3",
    ),
    _model(
        # model card: 3.8B parameters; RoPE on 3/4 of each head (partial_rotary_factor 0.75)
        ("phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct", 3_836_021_760, 131072),
        ("MIT", False, "phi3"),
        (3072, 32, 8192, 24, 8, 200064, True),
        "3.8B, MIT licence; fused qkv_proj and gate_up_proj like Phi-3; its 200k vocabulary "
        "makes the logits large; Colab T4 QLoRA: fits up to batch 4 at 512 tokens",
        fused_projections=True,
        model_type="phi3",
    ),
    _model(
        # text model only. keras-hub gemma3_instruct_4b_text: 3,880,099,328 with a 262,144-row
        # embedding; the hub checkpoint has 262,208 rows (+64 x 2560 = this count).
        # keras-hub gemma3_instruct_4b (vision + text): 4,299,915,632 on the same 262,144 rows.
        # Gemma3ForConditionalGeneration, which AutoModelForCausalLM loads for this hub id, has
        # 4,300,079,472 (meta-device build of the whole config.json): a SigLIP vision tower and
        # projector of 419,816,304. Its T4 verdict still holds with them in 16-bit (+0.78 GiB).
        ("gemma-3-4b-it", "google/gemma-3-4b-it", 3_880_263_168, 131072),
        _GEMMA,
        (2560, 34, 10240, 8, 4, 262208, True),
        "4B, gated (Gemma terms); multimodal: figures are the text model's, loading it also "
        "brings a 0.42B vision tower (+0.8 GiB); Colab T4 QLoRA: fits up to batch 4 at 512 tokens",
        head_dim=256,
        model_type="gemma3_text",
    ),
    _model(
        # keras-hub qwen3_4b_en: 4,022,468,096
        ("qwen3-4b", "Qwen/Qwen3-4B", 4_022_468_096, 40960),
        _QWEN3,
        (2560, 36, 9728, 32, 8, 151936, True),
        "4B, Apache-2.0, thinking and non-thinking modes, 32k context; "
        "Colab T4 QLoRA: fits up to batch 8 at 512 tokens",
        head_dim=128,
        model_type="qwen3",
    ),
    _model(
        ("llama-2-7b", "meta-llama/Llama-2-7b-hf", 6_738_415_616, 4096),
        ("Llama 2 Community License", True, "none"),
        (4096, 32, 11008, 32, 32, 32000, False),
        "a base model without chat template, kept as a memory-calibration reference",
        model_type="llama",
    ),
    _model(
        ("mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", 7_248_023_552, 32768),
        ("Apache-2.0", True, "mistral"),
        (4096, 32, 14336, 32, 8, 32768, False),
        "gated (share contact details on the hub); QLoRA needs a 12 GB card or more",
        model_type="mistral",
    ),
    _model(
        ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 32768),
        ("Apache-2.0", False, "chatml"),
        (3584, 28, 18944, 28, 4, 152064, False),
        "the largest Qwen2.5 model here",
        model_type="qwen2",
    ),
    _model(
        ("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, 131072),
        ("Llama 3.1 Community License", True, "llama3"),
        (4096, 32, 14336, 32, 8, 128256, False),
        "gated; the usual 8B QLoRA benchmark model",
        model_type="llama",
    ),
    _model(
        # keras-hub qwen3_8b_en: 8,190,735,360
        ("qwen3-8b", "Qwen/Qwen3-8B", 8_190_735_360, 40960),
        _QWEN3,
        (4096, 36, 12288, 32, 8, 151936, False),
        "8B, Apache-2.0, thinking and non-thinking modes, 32k context; "
        "Colab T4 QLoRA: fits up to batch 4 at 512 tokens",
        head_dim=128,
        model_type="qwen3",
    ),
    _model(
        # keras-hub qwen3_14b_en: 14,768,307,200
        ("qwen3-14b", "Qwen/Qwen3-14B", 14_768_307_200, 40960),
        _QWEN3,
        (5120, 40, 17408, 40, 8, 151936, False),
        "14B, Apache-2.0, the largest model here, 32k context; "
        "Colab T4 QLoRA: fits at batch 1 only, 512 tokens",
        head_dim=128,
        model_type="qwen3",
    ),
)

CATALOG: dict[str, ModelInfo] = {model.name: model for model in _MODELS}


@dataclass(frozen=True)
class GPU:
    """A graphics card to compare memory estimates with."""

    name: str  # what learners call it
    memory_gib: float  # total memory as torch.cuda.get_device_properties() reports it, GiB
    bf16: bool  # native bf16 (Ampere or newer); False: train in fp16 (a T4 only emulates bf16)


GPUS: dict[str, GPU] = {
    "laptop-8gb": GPU("8 GB laptop GPU", 8.0, True),  # e.g. RTX 4060 or 4070 Laptop
    "rtx3060-12gb": GPU("RTX 3060 12 GB", 12.0, True),
    "t4-16gb": GPU("T4 16 GB", 14.75, False),  # ECC takes ~1 GiB: Colab reports 14.75 GiB
    "rtx4090-24gb": GPU("RTX 4090 24 GB", 23.99, True),
    "a100-40gb": GPU("A100 40 GB", 39.39, True),
}


def get_gpu(gpu: GPU | str) -> GPU:
    """Look up a card in `GPUS` by its key, or pass a `GPU` record through."""
    if isinstance(gpu, GPU):
        return gpu
    if gpu not in GPUS:
        raise ValueError(
            f"Unknown GPU {gpu!r}. Use one of {sorted(GPUS)}, or describe your own card as "
            "ftkit.catalog.GPU(name, memory_gib, bf16)."
        )
    return GPUS[gpu]


def get_model_info(name: str) -> ModelInfo:
    """Look up a catalog model by its catalog name or hub id (any case)."""
    key = str(name).strip().lower()
    for model in CATALOG.values():
        if key in (model.name, model.hub_id.lower()):
            return model
    raise UnknownModelError(_unknown_message(str(name)))


def _unknown_message(name: str) -> str:
    keys = list(CATALOG) + [model.hub_id.lower() for model in CATALOG.values()]
    close = difflib.get_close_matches(name.strip().lower(), keys, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"Model {name!r} is not in ftkit's catalog.{hint} "
        "See every catalog model with ftkit.list_models(). "
        "load_model() also accepts a local model directory or any hub id "
        "(like 'Qwen/Qwen2.5-0.5B-Instruct'); only catalog models get memory estimates."
    )


def list_models() -> list[ModelInfo]:
    """Every catalog model, smallest first."""
    return sorted(CATALOG.values(), key=lambda model: model.params)


# Published settings that shape how a model computes but not its parameter count or its layers'
# shapes, so that a model built by architecture_config behaves like the checkpoint (config.json).
_CONFIG_EXTRAS: dict[str, dict[str, Any]] = {
    "gemma-3-270m-it": {"sliding_window": 512},
    "gemma-3-1b-it": {"sliding_window": 512},
    "gemma-3-4b-it": {"sliding_window": 1024},
    "phi-4-mini-instruct": {"partial_rotary_factor": 0.75},
}
_SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id")


def architecture_config(info: ModelInfo | str, **overrides: Any) -> PretrainedConfig:
    """A transformers config of a catalog model's architecture, built from the catalog's figures.

    `AutoModelForCausalLM.from_config(architecture_config("qwen3-0.6b"))` builds the model with
    random weights and exactly `info.params` parameters, with nothing downloaded (Gemma 3 4B:
    its text model only). `overrides` replace any config field, e.g. `num_hidden_layers=2` for a
    smaller model of the same widths; special token ids a smaller `vocab_size` leaves out of
    range become None. Needs transformers, which it imports only when called.
    """
    import transformers

    info = info if isinstance(info, ModelInfo) else get_model_info(info)
    settings = {
        "hidden_size": info.hidden_size,
        "num_hidden_layers": info.num_layers,
        "intermediate_size": info.intermediate_size,
        "num_attention_heads": info.num_heads,
        "num_key_value_heads": info.num_kv_heads,
        "head_dim": info.attention_head_dim,
        "vocab_size": info.vocab_size,
        "tie_word_embeddings": info.tied_embeddings,
        "max_position_embeddings": info.context_length,
        **_CONFIG_EXTRAS.get(info.name, {}),
        **overrides,
    }
    if settings["vocab_size"] < info.vocab_size:  # keep the defaults' token ids in range
        defaults = transformers.CONFIG_MAPPING[info.model_type]()
        for token in _SPECIAL_TOKENS:
            value = getattr(defaults, token, None)
            if token not in settings and isinstance(value, int) and value >= settings["vocab_size"]:
                settings[token] = None
    return transformers.AutoConfig.for_model(info.model_type, **settings)
