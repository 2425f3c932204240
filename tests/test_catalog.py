"""The model catalog: records consistent with their architectures, lookups, friendly errors."""

from __future__ import annotations

import pytest

from ftkit.catalog import (
    CATALOG,
    GPUS,
    ModelInfo,
    UnknownModelError,
    get_model_info,
    list_models,
)

MODELS = list_models()


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_params_match_the_architecture(model: ModelInfo) -> None:
    """Embeddings + linear layers account for all parameters but norms and biases (<0.1%)."""
    rest = model.params - model.embedding_params - model.linear_params
    norms = (2 * model.num_layers + 1) * model.hidden_size
    assert norms <= rest < 0.001 * model.params


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_record_is_well_formed(model: ModelInfo) -> None:
    assert CATALOG[model.name] is model
    assert model.name == model.name.lower() and model.hub_id.count("/") == 1
    assert model.num_heads % model.num_kv_heads == 0
    assert model.chat_template in {"chatml", "llama3", "phi3", "mistral", "gemma", "none"}
    assert model.context_length >= 4096 and model.notes


def test_embedded_default_is_smollm2_135m() -> None:
    embedded = [m for m in MODELS if m.embedded]
    assert [m.name for m in embedded] == ["smollm2-135m-instruct"]
    info = embedded[0]
    expected = {
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "params": 134_515_008,
        "hidden_size": 576,
        "num_layers": 30,
        "intermediate_size": 1536,
        "num_heads": 9,
        "num_kv_heads": 3,
        "vocab_size": 49152,
        "tied_embeddings": True,
        "context_length": 8192,
        "licence": "Apache-2.0",
        "gated": False,
        "chat_template": "chatml",
    }
    assert {key: getattr(info, key) for key in expected} == expected


@pytest.mark.parametrize(
    "query", ["qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", " QWEN2.5-1.5B-INSTRUCT "]
)
def test_lookup_by_name_or_hub_id_any_case(query: str) -> None:
    assert get_model_info(query) is CATALOG["qwen2.5-1.5b-instruct"]


def test_unknown_name_suggests_and_explains() -> None:
    with pytest.raises(UnknownModelError) as caught:
        get_model_info("qwen2.5-1.5b-instrct")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "not in ftkit's catalog" in message and "'qwen2.5-1.5b-instruct'" in message
    assert "ftkit.list_models()" in message and "load_model()" in message


def test_list_models_is_sorted_smallest_first() -> None:
    sizes = [m.params for m in MODELS]
    assert sizes == sorted(sizes) and len(MODELS) == len(CATALOG) >= 14


def test_shapes_follow_gqa_head_dim_and_fused_layers() -> None:
    llama = get_model_info("llama-3.1-8b-instruct").linear_shapes()
    assert llama["k_proj"] == (4096, 1024) and llama["down_proj"] == (14336, 4096)
    gemma = get_model_info("gemma-2-2b-it").linear_shapes()
    assert gemma["q_proj"] == (2304, 8 * 256)  # head_dim 256, not 2304 // 8
    phi = get_model_info("phi-3.5-mini-instruct").linear_shapes()
    assert set(phi) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert phi["qkv_proj"] == (3072, 3 * 3072) and phi["gate_up_proj"] == (3072, 2 * 8192)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("qv", ("qkv_proj",)),
        (["gate_proj"], ("gate_up_proj",)),
        ("all-linear", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    ],
)
def test_lora_targets_map_to_phi3_fused_layers(targets, expected) -> None:
    assert get_model_info("phi-3.5-mini-instruct").lora_modules(targets) == expected


@pytest.mark.parametrize("targets", ["everything", ["q_proj", "w_in"]])
def test_bad_lora_targets_name_the_choices(targets) -> None:
    with pytest.raises(ValueError, match="q_proj"):
        get_model_info("llama-3.2-1b-instruct").lora_modules(targets)


def test_gpus_have_sane_memory_and_t4_has_no_real_bf16() -> None:
    assert all(0 < gpu.memory_gib <= 80 for gpu in GPUS.values())
    assert GPUS["t4-16gb"].bf16 is False and GPUS["rtx3060-12gb"].bf16 is True
