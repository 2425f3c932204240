"""load_model: the embedded model in 16 and 4 bits, local directories, hub ids, errors."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from ftkit.catalog import UnknownModelError
from ftkit.fast.generation_4bit import fast_4bit_generation
from ftkit.generation import generate_replies
from ftkit.hardware import pick_dtype
from ftkit.models import (
    EMBEDDED_MODEL,
    ModelLoadError,
    keep_4bit_trainable,
    load_model,
    model_source,
    quantization_config,
    resolve_model,
)

CAPITAL = [[{"role": "user", "content": "What is the capital of France?"}]]


def test_embedded_model_answers_in_machine_dtype(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # bf16 where the CPU has it natively (AVX512-BF16 or AMX), else fp32: emulated bf16
    # runs matrix products hundreds of times slower (seen on an AVX2-only AMD EPYC);
    # pick_dtype's rule itself is tested in tests/test_hardware.py
    assert model.dtype == pick_dtype()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    [reply] = generate_replies(model, tokenizer, CAPITAL, max_new_tokens=12)
    assert "Paris" in reply.text
    assert reply.new_tokens <= 12 and reply.prompt_tokens > 10


def test_4bit_nf4_load_answers_and_shrinks(model_and_tokenizer):
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_model(quantization="nf4")
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 30 * 7  # q, k, v, o, gate, up, down in each of 30 layers
    assert layers[0].weight.quant_state.nested  # double quantisation
    assert layers[0].weight.quant_state.quant_type == "nf4"
    assert model.get_memory_footprint() < 0.5 * model_and_tokenizer[0].get_memory_footprint()
    [reply] = generate_replies(model, tokenizer, CAPITAL, max_new_tokens=12)
    assert "Paris" in reply.text


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """The address ranges where this process maps `path` (Linux's /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text(encoding="utf-8").splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip() == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's memory map")
def test_a_quantised_fp32_model_keeps_no_view_of_its_checkpoint_file():
    """In fp32 transformers keeps the embeddings and norms as views of the mapped safetensors
    file, which keeps every page of it read while quantising resident (405 of 538 MB):
    `load_model` copies them, the tied output layer stays tied, and the model still answers."""
    model, tokenizer = load_model(quantization="nf4", dtype="fp32")
    checkpoint = Path(model_source(EMBEDDED_MODEL)) / "model.safetensors"
    mapped = _mapped_ranges(checkpoint.resolve())
    tensors = [*model.parameters(), *model.buffers()]
    inside = [t for t in tensors if any(a <= t.data_ptr() < b for a, b in mapped)]
    assert not inside
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    [reply] = generate_replies(model, tokenizer, CAPITAL, max_new_tokens=12)
    assert "Paris" in reply.text


def test_int8_load_answers():
    model, tokenizer = load_model(quantization="int8")
    [reply] = generate_replies(model, tokenizer, CAPITAL, max_new_tokens=12)
    assert "Paris" in reply.text


def test_batched_generation_matches_one_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["Name a colour.", "What is 2 + 2? Answer with a number.", "Say hello in French."]
    batched = generate_replies(model, tokenizer, prompts, max_new_tokens=16, batch_size=3)
    single = [generate_replies(model, tokenizer, [p], max_new_tokens=16)[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in single]


def _lora_gradients(model, tokenizer) -> dict[str, torch.Tensor]:
    """One backward pass of a freshly initialised LoRA (seed 0) on a fixed example."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(0)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():  # make B non-zero so A gets gradients
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    peft_model.train()
    batch = tokenizer(["The capital of France is Paris."], return_tensors="pt")
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def _relative_errors(grads, reference) -> dict[str, float]:
    """|g - g_ref| / |g_ref| per LoRA parameter (Frobenius norms)."""
    return {n: float((grads[n] - ref).norm() / ref.norm()) for n, ref in reference.items()}


def _cosines(grads, reference) -> list[float]:
    """Cosine similarity of each LoRA parameter's gradient with the reference, sorted."""
    cos = torch.nn.functional.cosine_similarity
    return sorted(float(cos(grads[n].flatten(), r.flatten(), dim=0)) for n, r in reference.items())


@pytest.fixture(scope="module")
def reference_gradients():
    """LoRA gradients of a freshly loaded 4-bit model that has never generated."""
    return _lora_gradients(*load_model(quantization="nf4"))


def _generate_with_repacking():
    """A fresh 4-bit model with bitsandbytes' default CPU repacking, after one plain
    `model.generate` (what a learner who skips ftkit's generation helpers would run)."""
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_model(quantization="nf4")
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = True  # bitsandbytes' default on this CPU
    inputs = tokenizer.apply_chat_template(
        CAPITAL[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return model, tokenizer


def _packed(layer) -> bool:
    """Whether bitsandbytes has repacked this layer for its fast CPU kernel."""
    return getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def test_generate_then_train_gives_exact_gradients(reference_gradients):
    """The bitsandbytes CPU trap (shared/FACTS.md): generating before training must not
    change the gradients LoRA receives. generate_replies uses the fast packed kernel inside
    fast_4bit_generation, which restores the original weights afterwards. On a CPU without
    AVX512-BF16 there is no fast kernel: the block keeps dense weights beside the 4-bit
    ones instead, and must leave no trace of them."""
    from bitsandbytes.functional import has_avx512bf16
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_model(quantization="nf4")
    layer = next(m for m in model.modules() if isinstance(m, Linear4bit))
    inputs = tokenizer.apply_chat_template(
        CAPITAL[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    fast = has_avx512bf16()
    with fast_4bit_generation(model) as fast_layers:
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert _packed(layer) == fast  # the fast kernel really ran, where this CPU has it
        with fast_4bit_generation(model) as nested:  # an inner block leaves it to the outer
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert nested == 0
        assert _packed(layer) == fast  # the inner block left the layers to the outer
    assert fast_layers == 210
    assert not _packed(layer) and "forward" not in vars(layer)  # bitsandbytes' own forward
    [reply] = generate_replies(model, tokenizer, CAPITAL, max_new_tokens=12)  # uses it too
    assert "Paris" in reply.text
    grads = _lora_gradients(model, tokenizer)
    assert grads.keys() == reference_gradients.keys() and len(grads) == 2 * 210
    assert all(g.abs().sum() > 0 for g in grads.values()), "some LoRA weight got no gradient"
    assert max(_relative_errors(grads, reference_gradients).values()) == 0.0


def test_fast_4bit_generation_computes_what_bitsandbytes_computes():
    """Inside the block a prompt's products use the weights dequantised once, as
    bitsandbytes' own gemm_4bit dequantises them: the same logits, bit for bit. With
    AVX512-BF16 a one-row product (a decoding step of one prompt) goes to bitsandbytes'
    packed kernel instead: close, not equal (bf16-rounded scales in the repacked layout)."""
    from bitsandbytes.functional import has_avx512bf16
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_model(quantization="nf4")
    layer = next(m for m in model.modules() if isinstance(m, Linear4bit))
    inputs = tokenizer.apply_chat_template(
        CAPITAL[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    last = {k: v[:, -1:] for k, v in inputs.items()}  # one row: a decoding step's shape
    with torch.inference_mode():
        per_call, per_call_row = model(**inputs).logits, model(**last).logits
        with fast_4bit_generation(model):
            fast = model(**inputs).logits
            again = model(**inputs).logits  # the second call reads the kept weights
            assert "forward" in vars(layer)
            assert not _packed(layer)  # no product of fewer than PACKED_ROWS rows yet
            fast_row = model(**last).logits
            assert _packed(layer) == has_avx512bf16()
        after = model(**inputs).logits
    assert torch.equal(after, per_call) and not _packed(layer)
    assert torch.equal(fast, per_call) and torch.equal(again, per_call)
    if has_avx512bf16():
        assert fast_row[0, -1].argmax() == per_call_row[0, -1].argmax()
    else:
        assert torch.equal(fast_row, per_call_row)


def test_trap_is_real_and_repaired(reference_gradients):
    """Control: with bitsandbytes' CPU repacking left on, one generate() scrambles the LoRA
    gradients (measured: median cosine to the reference about 0.02). keep_4bit_trainable
    on such a model converts the weights back; that inverse is not bit-exact, so repair is
    close (measured: every cosine above 0.97) but prevention at load time is what is exact.
    If the first assertion starts failing, bitsandbytes fixed the trap upstream."""
    model, tokenizer = _generate_with_repacking()
    broken = _cosines(_lora_gradients(model, tokenizer), reference_gradients)
    assert broken[len(broken) // 2] < 0.5, "bitsandbytes no longer breaks gradients on CPU"
    model, tokenizer = _generate_with_repacking()
    assert keep_4bit_trainable(model) == 210
    repaired = _cosines(_lora_gradients(model, tokenizer), reference_gradients)
    assert repaired[0] > 0.95


def test_local_directory_loads(embedded_dir, capfd):
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()
    model, tokenizer = load_model(str(embedded_dir), dtype="fp32")
    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>"
    # A local load keeps transformers' per-tensor bar out of the notebook's outputs, and
    # leaves the bars on for what follows (a download, a training run's own bar).
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()


@pytest.mark.parametrize(
    "name, kind",
    [
        ("smollm2-135m-instruct", "embedded"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "embedded"),
        ("qwen2.5-0.5b-instruct", "hub"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "hub"),
        ("someone/their-model", "hub"),
    ],
)
def test_resolve_names(name, kind):
    assert resolve_model(name)[0] == kind


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match=r"qwen2\.5-7b-instruct"):
        load_model("qwen2.5-7b-instruc")


def test_missing_directory_is_named():
    with pytest.raises(ModelLoadError, match="No model directory"):
        load_model("./no/such/model/dir")


def test_directory_without_safetensors_is_refused(tmp_path, embedded_dir):
    shutil.copy(embedded_dir / "config.json", tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(str(tmp_path))


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    "env",
    [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}],
    ids=["unreachable", "offline-mode"],
)
def test_hub_id_offline_fails_fast_naming_the_embedded_model(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="smollm2-135m-instruct") as error:
        load_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.perf_counter() - started < 10
    assert "not reachable" in str(error.value)


def test_quantization_config_is_qlora_recipe():
    config = quantization_config("nf4", torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantization_config("fp4", torch.bfloat16)
