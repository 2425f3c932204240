"""The memory estimator: its parts, and its totals against published measurements.

Calibration (each reference below carries its source and exact setup next to its numbers;
"reserved" compares with `MemoryEstimate.reserved`, torch's allocator view without the CUDA
context; "card" compares `MemoryEstimate.total` with the card a run only just fitted):

| reference                                  | published                  | estimate  | error  |
|--------------------------------------------|----------------------------|-----------|--------|
| torchtune, Llama-3.1-8B QLoRA, RTX 4090    | 7.4 GiB                    | 7.82 GiB  | +5.7%  |
| torchtune, Llama-3.1-8B LoRA, RTX 4090     | 16.2 GiB                   | 17.35 GiB | +7.1%  |
| torchtune, Llama-2-7B LoRA, RTX 4090       | 21.3 GB = 19.84 GiB        | 18.14 GiB | -8.5%  |
| PEFT MetaMathQA, Llama-3.2-3B LoRA, L40S   | 22,273,851,392 B = 20.74 GiB | 22.00 GiB | +6.0% |
| Unsloth, HF+FA2 Llama-3.1-8B QLoRA, 24 GB  | 5,789 tokens fit 24 GiB    | 22.44 GiB | -6.5%  |
| Unsloth, HF+FA2 Llama-3.1-8B QLoRA, 80 GB  | 28,454 tokens fit 80 GiB   | 70.73 GiB | -11.6% |
| Unsloth, HF+FA2 Llama-3.3-70B QLoRA, 80 GB | 6,916 tokens fit 80 GiB    | 79.50 GiB | -0.6%  |

Checked and left out, because the published setup cannot be modelled honestly:
- Unsloth's Colab notebooks (e.g. unslothai/notebooks nb/Llama3.2_(1B_and_3B)-Conversational:
  Llama-3.2-3B QLoRA on a T4, batch 2, max_seq_length 2048, FineTome-100k, "Peak reserved
  memory = 6.531 GB", in GiB) are 47% above the estimate (3.45 GiB, modelled with
  loss="fused", gradient_checkpointing="offload", adamw_8bit, fp16). Their batches vary in
  length, so max_memory_reserved() also counts blocks the caching allocator kept from earlier,
  differently sized batches; Unsloth's own kernels change the rest.
- torchtune's QLoRA tutorial (Llama-2-7B, 9.29 GB reserved) and its mid-2024 README row
  (Llama-2-7B QLoRA, 12.3 GB): the reserved peak is already 9.13 GB right after model init in
  that early NF4 implementation, so it measures loading, not training.
- Unsloth's HF+FA2 rows under ftkit's defaults (today's TRL: no fp32 upcast, 16-bit QLoRA
  adapters) come out 20-30% low; with the classic 2024 recipe below they match. Unsloth does
  not publish its baseline script, so that recipe is an assumption, stated in each row.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest
from _autograd import kept_storages

import ftkit.catalog
import ftkit.memory
from ftkit.catalog import GPU, ModelInfo, architecture_config, get_model_info
from ftkit.memory import (
    GIB,
    NF4_BYTES_PER_PARAM,
    check_fit,
    estimate_memory,
    fit_verdict,
)

# Llama-3.3-70B only serves as a reference here, so it is not in the learner's catalog.
# Numbers from meta-llama/Llama-3.3-70B-Instruct config.json; 70,553,706,496 parameters.
LLAMA_3_3_70B = dataclasses.replace(
    get_model_info("llama-3.1-8b-instruct"),
    name="llama-3.3-70b-instruct",
    hub_id="meta-llama/Llama-3.3-70B-Instruct",
    params=70_553_706_496,
    licence="Llama 3.3 Community License",
    hidden_size=8192,
    num_layers=80,
    intermediate_size=28672,
    num_heads=64,
)  # same vocabulary (128256), 8 kv heads, untied embeddings and context as Llama-3.1-8B
TORCHTUNE = {"loss": "fused", "adapter_precision": "bf16"}  # compiled chunked loss, pure bf16
HF_QLORA_2024 = {"adapter_precision": "fp32", "fp32_unquantized": True}
TORCHTUNE_LORA = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass(frozen=True)
class Reference:
    """One published memory measurement and the setup it was measured with."""

    name: str
    source: str  # where the number is published
    setup: str  # everything about the run that memory depends on
    model: str | ModelInfo
    kwargs: dict  # the same setup, as estimate_memory arguments
    published_gib: float  # the measurement, converted to GiB
    compare: str  # "reserved": torch allocator peak; "card": the card the run just fitted


REFERENCES = [
    Reference(
        "torchtune-llama3.1-8b-qlora-rtx4090",
        "github.com/pytorch/torchtune README.md, 'Memory and training speed' (Llama 3.1 table)",
        "1x RTX 4090; batch 2, no accumulation, packed to 2048 tokens; torch.compile on; config "
        "llama3_1/8B_qlora_single_device: activation checkpointing on, LoRA rank 8 on q,k,v,o "
        "and the MLP, torch AdamW (fused), CEWithChunkedOutputLoss, pure bf16 (LoRA weights "
        "too). 'Peak Memory per GPU' from torchtune's torch.cuda memory stats: 7.4 GiB.",
        "llama-3.1-8b-instruct",
        {"method": "qlora", "batch_size": 2, "max_length": 2048, "lora_r": 8, **TORCHTUNE},
        7.4,
        "reserved",
    ),
    Reference(
        "torchtune-llama3.1-8b-lora-rtx4090",
        "github.com/pytorch/torchtune README.md, 'Memory and training speed' (Llama 3.1 table)",
        "as above with config llama3_1/8B_lora_single_device: bf16 weights, LoRA rank 8 on "
        "q, v, output_proj and the MLP: 16.2 GiB.",
        "llama-3.1-8b-instruct",
        {
            "method": "lora",
            "batch_size": 2,
            "max_length": 2048,
            "lora_r": 8,
            "lora_targets": TORCHTUNE_LORA,
            **TORCHTUNE,
        },
        16.2,
        "reserved",
    ),
    Reference(
        "torchtune-llama2-7b-lora-rtx4090",
        "github.com/pytorch/torchtune README.md as of mid-2024 ('Peak Memory per GPU (GB)' "
        "table, Llama2-7B rows), memory stats then printed in GB of 1e9 bytes",
        "1x RTX 4090; batch 4, seq length 2048; config llama2/7B_lora_single_device: bf16, "
        "LoRA rank 8 on q_proj and v_proj, activation checkpointing on, torch AdamW, "
        "torch.nn.CrossEntropyLoss on fp32 logits, no compile: 21.3 GB.",
        "llama-2-7b",
        {
            "method": "lora",
            "batch_size": 4,
            "max_length": 2048,
            "lora_r": 8,
            "lora_targets": "qv",
            "adapter_precision": "bf16",
        },
        21.3e9 / GIB,
        "reserved",
    ),
    Reference(
        "peft-metamathqa-llama3.2-3b-lora-r32-l40s",
        "github.com/huggingface/peft method_comparison/MetaMathQA/results/"
        "lora--llama-3.2-3B-rank32.json (run 2025-06-19), with default_training_params.json; "
        "the metric is defined in run.py and utils.py",
        "1x L40S; meta-llama/Llama-3.2-3B in bf16, no AMP, no gradient checkpointing; LoRA "
        "rank 32 on q_proj and v_proj, fp32 adapters (autocast_adapter_dtype=True); torch "
        "AdamW; batch 4, padded batches of MetaMathQA capped at 768 tokens (the estimate "
        "assumes the longest batch reaches the cap); cuda_memory_max = max over steps of "
        "torch.cuda.memory_reserved() = 22,273,851,392 bytes.",
        "llama-3.2-3b-instruct",
        {
            "method": "lora",
            "batch_size": 4,
            "max_length": 768,
            "lora_r": 32,
            "lora_targets": "qv",
            "gradient_checkpointing": False,
        },
        22_273_851_392 / GIB,
        "reserved",
    ),
    Reference(
        "unsloth-hf-fa2-llama3.1-8b-qlora-24gb",
        "unslothai/unsloth README.md and docs.unsloth.ai/basics/unsloth-benchmarks, 'Llama 3.1 "
        "(8B) max. context length', column 'Hugging Face + FA2'",
        "Llama 3.1 8B Instruct, 4-bit QLoRA on q,k,v,o,gate,up,down, rank 32, batch 1, "
        "sequences padded to the length tried; the longest that fits a 24 GB card: 5,789 "
        "tokens. Assumed (baseline script unpublished): the 2024 HF QLoRA recipe, i.e. "
        "prepare_model_for_kbit_training, fp32 adapters, gradient checkpointing, torch AdamW.",
        "llama-3.1-8b-instruct",
        {"method": "qlora", "max_length": 5789, "lora_r": 32, **HF_QLORA_2024},
        24.0,
        "card",
    ),
    Reference(
        "unsloth-hf-fa2-llama3.1-8b-qlora-80gb",
        "as above",
        "as above; the longest that fits an 80 GB card: 28,454 tokens.",
        "llama-3.1-8b-instruct",
        {"method": "qlora", "max_length": 28454, "lora_r": 32, **HF_QLORA_2024},
        80.0,
        "card",
    ),
    Reference(
        "unsloth-hf-fa2-llama3.3-70b-qlora-80gb",
        "unsloth.ai/blog/llama3-3 and the README, 'Llama 3.3 (70B) max. context length'",
        "Llama 3.3 70B Instruct on an 80 GB A100, otherwise as above: 6,916 tokens fit (and "
        "nothing fits 48 GB).",
        LLAMA_3_3_70B,
        {"method": "qlora", "max_length": 6916, "lora_r": 32, **HF_QLORA_2024},
        80.0,
        "card",
    ),
]


@pytest.mark.parametrize("ref", REFERENCES, ids=[ref.name for ref in REFERENCES])
def test_estimate_within_20_percent_of_published(ref: Reference) -> None:
    estimate = estimate_memory(ref.model, **ref.kwargs)
    value = estimate.reserved if ref.compare == "reserved" else estimate.total
    error = (value - ref.published_gib) / ref.published_gib
    assert abs(error) <= 0.20, f"{ref.name}: {value:.2f} GiB vs {ref.published_gib:.2f} GiB"


def test_lora_count_matches_peft_for_the_embedded_model() -> None:
    """peft's count for SmolLM2-135M, r=16, all-linear (get_peft_model, print_trainable)."""
    estimate = estimate_memory("smollm2-135m-instruct", "lora", lora_r=16)
    assert estimate.trainable_params == 4_884_480
    assert estimate.adapters == pytest.approx(4_884_480 * 4 / GIB)  # fp32 adapters in peft


def test_nf4_weights_quantise_linears_and_keep_embeddings_16_bit() -> None:
    """[qlora] 4 + 8/64 + 32/(64*256) bits per quantised weight; embeddings stay bf16."""
    assert abs(NF4_BYTES_PER_PARAM - 0.5159) < 1e-4
    info = get_model_info("llama-3.1-8b-instruct")
    assert info.linear_params == 6_979_321_856  # 32 layers x 218,103,808
    expected = NF4_BYTES_PER_PARAM * info.linear_params + 2 * (info.params - info.linear_params)
    assert estimate_memory(info, "qlora").weights == pytest.approx(expected / GIB)
    assert estimate_memory(info, "qlora").weights == pytest.approx(5.31, abs=0.01)


def test_tied_embeddings_are_counted_once() -> None:
    tied = get_model_info("llama-3.2-3b-instruct")
    lora = estimate_memory(tied, "lora").weights
    assert lora == pytest.approx(2 * tied.params / GIB)
    assert tied.params < tied.linear_params + 2 * tied.vocab_size * tied.hidden_size


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_checkpointing_lowers_activations(method: str) -> None:
    def activations(checkpointing):
        setup = {"method": method, "batch_size": 4, "max_length": 1024}
        return estimate_memory(
            "qwen2.5-1.5b-instruct", **setup, gradient_checkpointing=checkpointing
        )

    none, checkpointed, offloaded = (activations(c).activations for c in (False, True, "offload"))
    assert none > 3 * checkpointed > 3 * offloaded


def test_logits_grow_with_vocabulary_and_tokens() -> None:
    small = estimate_memory("smollm2-360m-instruct", batch_size=2, max_length=1024)
    large = estimate_memory("qwen2.5-0.5b-instruct", batch_size=2, max_length=1024)
    assert large.logits / small.logits == pytest.approx(151936 / 49152)
    assert small.logits == pytest.approx(2 * 1024 * 49152 * 12 / GIB)  # fp32 loss buffers
    longer = estimate_memory("smollm2-360m-instruct", batch_size=2, max_length=2048)
    assert longer.logits == pytest.approx(2 * small.logits)
    fused = estimate_memory("smollm2-360m-instruct", batch_size=2, max_length=1024, loss="fused")
    assert fused.logits == pytest.approx(small.logits / 6)


def test_full_fine_tuning_keeps_16_bytes_per_parameter() -> None:
    """[anatomy] fp32 master weights + fp32 gradients + two fp32 AdamW moments."""
    info = get_model_info("qwen2.5-0.5b-instruct")
    full = estimate_memory(info, "full")
    static = full.weights + full.gradients + full.optimizer_states
    assert static * GIB == pytest.approx(16 * info.params)
    eight_bit = estimate_memory(info, "full", optimizer="adamw_8bit")
    assert eight_bit.optimizer_states == pytest.approx(full.optimizer_states / 4)


@pytest.mark.parametrize("model", ["qwen2.5-1.5b-instruct", "mistral-7b-instruct-v0.3"])
def test_qlora_below_lora_below_full(model: str) -> None:
    totals = [estimate_memory(model, m, batch_size=2).total for m in ("qlora", "lora", "full")]
    assert totals == sorted(totals) and totals[2] > 2 * totals[1]


def test_fused_projections_change_the_lora_count() -> None:
    """Phi-3's one qkv_proj adapter is smaller than three separate q, k, v adapters."""
    phi = get_model_info("phi-3.5-mini-instruct")
    unfused = dataclasses.replace(phi, fused_projections=False)
    per_layer = (3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072)  # in + out
    assert phi.lora_params(16, "all-linear") == 32 * 16 * per_layer
    assert phi.lora_params(16, "all-linear") < unfused.lora_params(16, "all-linear")


def _kept_bytes_per_token(info: ModelInfo, tokens: int, **overrides) -> float:
    """What autograd keeps for the backward pass of a frozen bf16 model whose input needs
    gradients (as under LoRA), per token: torch's saved-tensor hooks, parameters excluded."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = architecture_config(info, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.requires_grad_(False)
    model.enable_input_require_grads()
    ids = torch.randint(0, info.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    with kept_storages(model) as kept:
        model(input_ids=ids)
    return sum(kept.values()) / tokens


def test_qk_norms_and_gemma_norms_cost_what_autograd_keeps() -> None:
    """Qwen3's and Gemma 3's per-head q/k RMSNorms keep fp32 copies of q and k; Gemma's two
    extra norms a layer keep fp32 copies of the hidden states. One small layer of each,
    same shapes, measured with saved-tensor hooks: the estimate's difference is the kept one."""
    tokens = 512
    qwen3 = dataclasses.replace(
        get_model_info("qwen3-0.6b"), hidden_size=256, num_layers=1, intermediate_size=512,
        num_heads=4, num_kv_heads=2, head_dim=64, vocab_size=512,
    )  # fmt: skip
    plain = dataclasses.replace(qwen3, model_type="llama")  # no q/k norms
    gemma3 = dataclasses.replace(qwen3, model_type="gemma3_text")  # q/k norms, four norms

    def estimated(info: ModelInfo) -> float:
        setup = {"max_length": tokens, "precision": "bf16", "gradient_checkpointing": False}
        return estimate_memory(info, "qlora", **setup).activations * GIB / tokens

    measured = {
        info.model_type: _kept_bytes_per_token(info, tokens, **extra)
        for info, extra in ((plain, {}), (qwen3, {}), (gemma3, {"layer_types": ["full_attention"]}))
    }  # fmt: skip
    qk = measured["qwen3"] - measured["llama"]
    assert estimated(qwen3) - estimated(plain) == pytest.approx(qk, rel=0.02)
    assert qk == pytest.approx(4 * (4 + 2) * 64, rel=0.02)  # 4 bytes per q and k value
    sandwich = measured["gemma3_text"] - measured["qwen3"]
    assert estimated(gemma3) - estimated(qwen3) == pytest.approx(sandwich, rel=0.02)
    assert sandwich == pytest.approx(2 * 4 * 256, rel=0.02)  # two more fp32 hidden copies


@pytest.mark.parametrize(
    ("share", "verdict"),
    [(0.50, "fits"), (0.84, "fits"), (0.85, "tight"), (1.00, "tight"), (1.01, "does not fit")],
)
def test_verdict_thresholds(share: float, verdict: str) -> None:
    estimate = estimate_memory("smollm2-135m-instruct")
    card = GPU("test card", estimate.total / share, True)
    assert fit_verdict(estimate, card) == verdict


def test_check_fit_lists_every_card_smallest_first() -> None:
    estimate = estimate_memory("qwen2.5-7b-instruct", "qlora", batch_size=2, max_length=1024)
    rows = check_fit(estimate)
    assert [row.memory_gib for row in rows] == sorted(row.memory_gib for row in rows)
    assert rows[0].verdict == "does not fit" and rows[-1].verdict == "fits"
    assert all(row.needed_gib == round(estimate.total, 2) for row in rows)
    assert fit_verdict(estimate, "a100-40gb") == "fits"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"method": "dora"}, "method"),
        ({"precision": "int4"}, "precision"),
        ({"gradient_checkpointing": 1}, "gradient_checkpointing"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 512.0}, "max_length"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"method": "lora", "fp32_unquantized": True}, "fp32_unquantized"),
        ({"lora_targets": "mlp"}, "lora_targets"),
    ],
)
def test_bad_inputs_say_what_and_which_choices(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        estimate_memory("smollm2-135m-instruct", **kwargs)


def test_unknown_gpu_name_lists_the_cards() -> None:
    with pytest.raises(ValueError, match="t4-16gb"):
        fit_verdict(estimate_memory("smollm2-135m-instruct"), "h100")


def test_table_shows_every_part_and_the_total() -> None:
    estimate = estimate_memory("smollm2-135m-instruct", "lora", batch_size=2)
    text = str(estimate)
    assert all(name.replace("_", " ") in text for name in estimate.components())
    assert f"{estimate.total:7.2f} GiB" in text and "smollm2-135m-instruct, lora" in text
    assert estimate.total == pytest.approx(sum(estimate.components().values()))


@pytest.mark.parametrize("module", [ftkit.catalog, ftkit.memory], ids=["catalog", "memory"])
def test_core_modules_import_no_screen_library(module) -> None:
    """DESIGN.md: the core knows no screen; widgets and plots sit on top of it."""
    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported if name} & {"ipywidgets", "matplotlib"}
