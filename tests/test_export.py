"""GGUF export of the embedded model: written with llama.cpp's naming, loaded back by
transformers, greedy answers compared with the 16-bit model's; the Ollama Modelfile."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftkit.export import (
    ExportError,
    check_gguf,
    export_gguf,
    greedy_answers,
    ollama_modelfile,
)
from ftkit.fast import read_gguf_once
from ftkit.models import load_model
from ftkit.splits import load_dataset_splits

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The embedded model saved as a 16-bit safetensors folder (what merge_and_export
    writes for a run), its tokenizer, and its greedy answers to four test tickets."""
    folder = tmp_path_factory.mktemp("merged")
    model, tokenizer = load_model(dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    test = list(load_dataset_splits("support_tickets")["test"])[:4]
    prompts = [example.messages[:-1] for example in test]
    reference_model, _ = load_model(str(folder), dtype=torch.float32)
    reference = greedy_answers(reference_model.eval(), tokenizer, prompts, NEW_TOKENS)
    return folder, tokenizer, prompts, reference


@pytest.fixture(scope="module")
def exported(merged, tmp_path_factory):
    folder = merged[0]
    out = tmp_path_factory.mktemp("gguf")
    return {kind: export_gguf(folder, out / f"model-{kind}.gguf", kind) for kind in ("f16", "q8_0")}


def test_f16_answers_as_the_merged_model_does(merged, exported, capfd):
    _, tokenizer, prompts, reference = merged
    capfd.readouterr()
    check = check_gguf(exported["f16"], reference, prompts, tokenizer, NEW_TOKENS)
    # transformers' GGUF bar (tqdm direct) stays out of notebook 06's outputs
    assert "GGUF tensors" not in capfd.readouterr().err
    assert check.same == [True] * len(prompts), check.answers
    assert 250 < check.size_mb < 300  # 135M weights in 16 bits, norms in fp32
    assert "4 of 4 greedy answers identical" in check.describe()
    assert check.gguf_type == "f16"  # read from the file's header, not its name


def test_answers_together_are_the_answers_one_at_a_time(merged, exported):
    """`together` (notebook 06's forms, each answering in one batch) gives the merged model
    and its f16 file the answers they give one prompt at a time, as a fresh process asks."""
    folder, tokenizer, prompts, reference = merged
    model, _ = load_model(str(folder), dtype=torch.float32)
    together = greedy_answers(model.eval(), tokenizer, prompts, NEW_TOKENS, together=True)
    assert together == reference
    check = check_gguf(exported["f16"], together, prompts, tokenizer, NEW_TOKENS, together=True)
    assert check.answers == reference and check.agreement == 1


def test_q8_0_is_smaller_and_its_agreement_is_measured(merged, exported):
    """8 bits per weight move the base model's rambling answers off their near-ties: on 8
    test tickets and 32 tokens, 4 of 8 identical (q4_0: 1 of 8; f16: 8 of 8), measured on
    a 2-core Xeon. The check reports the share; the writer's correctness is f16's test."""
    _, tokenizer, prompts, reference = merged
    check = check_gguf(exported["q8_0"], reference, prompts, tokenizer, NEW_TOKENS)
    assert check.size_mb < 0.6 * exported["f16"].stat().st_size / 1e6
    assert 0 < check.agreement <= 1, list(zip(check.answers, reference, strict=True))
    assert all(answer.strip() for answer in check.answers)


def test_the_gguf_carries_the_tokenizer_and_chat_template(merged, exported):
    _, tokenizer, prompts, _ = merged
    path = exported["q8_0"]
    again = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    text += " 3333 🦙 Ça va?"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.chat_template == tokenizer.chat_template
    assert again.eos_token == tokenizer.eos_token == "<|im_end|>"


def test_reading_a_gguf_once_loads_the_same_model_and_tokenizer(merged, exported, tmp_path):
    """`ftkit.fast.read_gguf_once` (around check_gguf and the embedded model's conversion):
    the file parsed once for the config, the weights and the tokenizer, the same tensors
    bit for bit as without it, the tokenizer the file carries; a file replaced under the
    same name is parsed again; gguf's own functions are back afterwards."""
    import gguf

    path = exported["f16"]

    def load():
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                    dtype=torch.float32).state_dict()  # fmt: skip

    library = gguf.GGUFReader, gguf.get_tensor_name_map
    plain = load()
    with read_gguf_once() as counts:
        once = load()
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert counts == {"parsed": 1, "reused": 2}
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == library
    assert plain.keys() == once.keys()
    for name, tensor in plain.items():
        assert torch.equal(tensor, once[name]), name
    assert tokenizer.get_vocab() == merged[1].get_vocab()  # as the model's own tokenizer
    assert tokenizer.chat_template == merged[1].chat_template

    copy, other = tmp_path / "model.gguf", tmp_path / "other.gguf"
    copy.write_bytes(exported["q8_0"].read_bytes())
    other.write_bytes(path.read_bytes())
    with read_gguf_once() as counts:
        first = gguf.GGUFReader(copy)
        assert gguf.GGUFReader(str(copy)) is first  # the same file, by any spelling
        other.replace(copy)  # another file under the same name, as export_gguf writes one
        assert gguf.GGUFReader(copy) is not first
    assert counts == {"parsed": 2, "reused": 1}


def test_reading_a_gguf_once_without_the_gguf_package_leaves_the_error_to_transformers(
    exported, monkeypatch
):
    """No gguf installed: entering the block raises nothing, and loading inside it fails
    where transformers reads the file, with its own message naming gguf."""
    path = exported["q8_0"]
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    with read_gguf_once() as counts, pytest.raises(ImportError, match="gguf"):
        AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    assert counts == {"parsed": 0, "reused": 0}


def test_no_partial_file_is_left_and_the_name_is_the_one_asked(exported):
    folder = exported["f16"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["model-f16.gguf", "model-q8_0.gguf"]


def test_modelfile_uses_the_chat_turns_and_the_templates_default_system(merged, exported):
    _, tokenizer, _, _ = merged
    path = ollama_modelfile(exported["q8_0"], tokenizer)
    text = path.read_text()
    assert path.name == "Modelfile" and path.parent == exported["q8_0"].parent
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert f'SYSTEM """{default}"""' in text
    mine = ollama_modelfile(exported["q8_0"], tokenizer, system_prompt='Say "yes".').read_text()
    assert 'SYSTEM """Say "yes"."""' in mine


def test_what_cannot_be_exported_says_why(merged, tmp_path):
    folder = merged[0]
    with pytest.raises(ExportError, match=r"no config\.json"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(ExportError, match="GGUF type 'q3'"):
        export_gguf(folder, tmp_path / "x.gguf", "q3")
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((folder / "config.json").read_text())
    gpt2 = config | {"architectures": ["GPT2LMHeadModel"]}
    (other / "config.json").write_text(json.dumps(gpt2))
    with pytest.raises(ExportError, match=r"convert_hf_to_gguf\.py"):
        export_gguf(other, tmp_path / "x.gguf")
    tokenizer_without = AutoTokenizer.from_pretrained(folder)
    tokenizer_without.chat_template = "{{ messages[0]['content'] }}"
    with pytest.raises(ExportError, match="not ChatML"):
        ollama_modelfile(tmp_path / "x.gguf", tokenizer_without)
