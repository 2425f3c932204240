"""The model catalog: records consistent with their architectures, lookups, friendly errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ftkit.catalog import (
    CATALOG,
    GPUS,
    ModelInfo,
    UnknownModelError,
    architecture_config,
    get_model_info,
    list_models,
)
from ftkit.memory import estimate_memory, fit_verdict

MODELS = list_models()


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_params_match_the_architecture(model: ModelInfo) -> None:
    """Embeddings + linear layers account for all parameters but norms and biases (<0.1%)."""
    rest = model.params - model.embedding_params - model.linear_params
    per_layer = model.norms_per_layer * model.hidden_size
    per_layer += 2 * model.attention_head_dim if model.qk_norm else 0  # one q and one k norm
    norms = model.num_layers * per_layer + model.hidden_size  # + the final norm
    assert norms <= rest < 0.001 * model.params


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_architecture_config_builds_the_catalog_model(model: ModelInfo) -> None:
    """The published architecture, built on the meta device (no memory, no download), has
    exactly the catalog's parameter count, linear layer names and shapes, and norms."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if model.model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {model.model_type!r}")
    with torch.device("meta"):
        built = transformers.AutoModelForCausalLM.from_config(architecture_config(model))
    assert built.num_parameters() == model.params
    layer = built.model.layers[0]
    modules = list(layer.named_modules())
    linears = {
        name.rsplit(".", 1)[-1]: (module.in_features, module.out_features)
        for name, module in modules
        if isinstance(module, torch.nn.Linear)
    }
    assert linears == model.linear_shapes()
    norms = [name for name, module in modules if type(module).__name__.endswith("RMSNorm")]
    assert len(norms) == model.norms_per_layer + (2 if model.qk_norm else 0)


def test_architecture_config_takes_overrides_for_smaller_test_models() -> None:
    transformers = pytest.importorskip("transformers")
    config = architecture_config("qwen3-0.6b", num_hidden_layers=2)
    assert isinstance(config, transformers.Qwen3Config)
    assert (config.num_hidden_layers, config.head_dim, config.hidden_size) == (2, 128, 1024)
    assert architecture_config("Qwen/Qwen3-0.6B").num_hidden_layers == 28  # hub ids work too
    gemma = architecture_config("gemma-3-270m-it", num_hidden_layers=2)
    assert gemma.sliding_window == 512 and len(gemma.layer_types) == 2
    phi = architecture_config("phi-4-mini-instruct", vocab_size=1024, num_hidden_layers=1)
    assert phi.vocab_size == 1024 and phi.pad_token_id is None  # 32000 would be out of range
    assert phi.partial_rotary_factor == 0.75
    with pytest.raises(UnknownModelError):
        architecture_config("qwen3-0.7b")


def test_catalog_imports_no_transformers_or_torch() -> None:
    """architecture_config imports transformers when called, not when the catalog loads."""
    code = "import sys, ftkit.catalog; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


T4_CLAIM = re.compile(r"Colab T4 QLoRA: (.*)$")


def _t4_claim(model: ModelInfo) -> str:
    """What the notes say about QLoRA on a Colab T4, recomputed with ftkit.memory: the largest
    batch that fits "t4-16gb" with the model picker's other defaults, in fp16 (a T4's dtype)."""
    verdicts = {
        batch: fit_verdict(
            estimate_memory(model, "qlora", batch_size=batch, max_length=512, precision="fp16"),
            "t4-16gb",
        )
        for batch in (1, 2, 4, 8, 16)
    }
    fitting = [batch for batch, verdict in verdicts.items() if verdict == "fits"]
    if not fitting:
        return f"{verdicts[1]} at batch 1, 512 tokens"
    if max(fitting) == 1:
        return "fits at batch 1 only, 512 tokens"
    return f"fits up to batch {max(fitting)} at 512 tokens"


CLAIMED = [m for m in MODELS if T4_CLAIM.search(m.notes)]


@pytest.mark.parametrize("model", CLAIMED, ids=[m.name for m in CLAIMED])
def test_notes_t4_verdict_is_the_estimators(model: ModelInfo) -> None:
    assert T4_CLAIM.search(model.notes).group(1) == _t4_claim(model)


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_record_is_well_formed(model: ModelInfo) -> None:
    assert CATALOG[model.name] is model
    assert model.name == model.name.lower() and model.hub_id.count("/") == 1
    assert model.num_heads % model.num_kv_heads == 0
    assert model.chat_template in {"chatml", "llama3", "phi3", "mistral", "gemma", "none"}
    assert model.model_type and model.model_type == model.model_type.lower()
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
    assert sizes == sorted(sizes) and len(MODELS) == len(CATALOG) >= 24


def test_shapes_follow_gqa_head_dim_and_fused_layers() -> None:
    llama = get_model_info("llama-3.1-8b-instruct").linear_shapes()
    assert llama["k_proj"] == (4096, 1024) and llama["down_proj"] == (14336, 4096)
    gemma = get_model_info("gemma-2-2b-it").linear_shapes()
    assert gemma["q_proj"] == (2304, 8 * 256)  # head_dim 256, not 2304 // 8
    phi = get_model_info("phi-3.5-mini-instruct").linear_shapes()
    assert set(phi) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert phi["qkv_proj"] == (3072, 3 * 3072) and phi["gate_up_proj"] == (3072, 2 * 8192)
    phi4 = get_model_info("phi-4-mini-instruct").linear_shapes()  # fused, and 24 q / 8 kv heads
    assert phi4["qkv_proj"] == (3072, 3072 + 2 * 8 * 128) and phi4["o_proj"] == (3072, 3072)
    qwen3 = get_model_info("qwen3-0.6b").linear_shapes()
    assert qwen3["q_proj"] == (1024, 16 * 128) and qwen3["o_proj"] == (2048, 1024)  # head_dim 128
    gemma3 = get_model_info("gemma-3-270m-it").linear_shapes()
    assert gemma3["q_proj"] == (640, 4 * 256) and gemma3["k_proj"] == (640, 256)  # one kv head


def test_norms_follow_the_architecture() -> None:
    """Qwen3 and Gemma 3 normalise each query and key head; Gemma keeps four norms a layer."""
    qwen3, gemma3 = get_model_info("qwen3-8b"), get_model_info("gemma-3-4b-it")
    assert qwen3.qk_norm and gemma3.qk_norm and not get_model_info("qwen2.5-7b-instruct").qk_norm
    assert (qwen3.norms_per_layer, gemma3.norms_per_layer) == (2, 4)
    assert get_model_info("gemma-2-2b-it").norms_per_layer == 4


def test_new_models_carry_their_licences_and_gating() -> None:
    for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "smollm3-3b"):
        info = get_model_info(name)
        assert (info.licence, info.gated, info.chat_template) == ("Apache-2.0", False, "chatml")
    gemma_terms = ("Gemma Terms of Use", True, "gemma")
    for name in ("gemma-3-270m-it", "gemma-3-1b-it", "gemma-3-4b-it"):
        info = get_model_info(name)
        assert (info.licence, info.gated, info.chat_template) == gemma_terms
    phi4 = get_model_info("phi-4-mini-instruct")
    assert (phi4.licence, phi4.fused_projections, phi4.tied_embeddings) == ("MIT", True, True)


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
