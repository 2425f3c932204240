"""GGUF export: a merged model written for llama.cpp and Ollama, checked by loading it back.

`export_gguf` writes a Hugging Face Llama-architecture folder (`ftkit.runs.merge_and_export`
makes one from a run; SmolLM2, Llama and others of that architecture) as one GGUF file with
the `gguf` package's writer (a maintained PyPI package from the llama.cpp project), naming
tensors and metadata as llama.cpp's own converter (`convert_hf_to_gguf.py`) does: the
attention's q and k rows permuted to llama.cpp's rotary layout, the BPE vocabulary with its
merges, special tokens and chat template. Types: `f16` (the 16-bit weights as they are),
`q8_0` (8 bits per weight in blocks of 32 with one scale) and `q4_0` (4 bits; the embedding,
which the output layer shares, kept in 8 bits as llama.cpp does for tied embeddings).

`check_gguf` loads the file back through transformers' GGUF reader and compares greedy
answers with the merged model's: the measure of an export is its answers, not its size.
`ollama_modelfile` writes the Modelfile that `ollama create NAME -f Modelfile` reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

GGUF_TYPES = ("f16", "q8_0", "q4_0")
ARCHITECTURES = ("LlamaForCausalLM",)  # what the tensor naming and the permutation cover
CHATML = ("<|im_start|>", "<|im_end|>")  # SmolLM2's and Qwen's chat turns


class ExportError(ValueError):
    """A model or folder that cannot be exported as asked, with what to do instead."""


def _permute(weight, heads: int):
    """llama.cpp's rotary layout for a q or k projection: (heads, 2, half, in) -> (heads,
    half, 2, in), as `LlamaModel.permute` in llama.cpp's converter."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(
            f"{folder} has no config.json: pass the folder of a merged model "
            "(ftkit.runs.merge_and_export writes one from a run)."
        )
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("architectures") != list(ARCHITECTURES):
        raise ExportError(
            f"{folder}: architecture {config.get('architectures')} is not one ftkit exports "
            f"to GGUF ({', '.join(ARCHITECTURES)}); use llama.cpp's convert_hf_to_gguf.py."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(
            f"{folder}: rope scaling {rope.get('rope_type')!r} is not written by ftkit's "
            "exporter; use llama.cpp's convert_hf_to_gguf.py."
        )
    if not list(folder.glob("*.safetensors")):
        raise ExportError(f"{folder} holds no .safetensors weights (ftkit reads no others).")
    return config


def _add_metadata(writer, config: dict, name: str, file_type) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_vocabulary(writer, folder: Path, vocab_size: int) -> None:
    """The BPE vocabulary as llama.cpp's converter writes a GPT-2-style one: every id up to
    `vocab_size` (unused ids as padding), token types, merges, special ids, chat template."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    kinds = gguf.TokenType
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            types.append(kinds.UNUSED)
        elif i in added:
            types.append(kinds.CONTROL if added[i].special else kinds.USER_DEFINED)
        else:
            types.append(kinds.NORMAL)
    writer.add_tokenizer_model("gpt2")
    # llama.cpp chooses its pre-tokenizer by name; SmolLM's is GPT-2's byte-level split
    writer.add_tokenizer_pre("smollm" if vocab_size == 49152 else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))


def export_gguf(model_dir: str | Path, out_path: str | Path, gguf_type: str = "f16") -> Path:
    """Write the merged model in `model_dir` as one GGUF file of `gguf_type` (`GGUF_TYPES`).

    Norms stay in fp32, as llama.cpp keeps them. Returns the file's path.
    """
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import LlamaFileType as F
    from safetensors import safe_open

    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {gguf_type!r} unknown; choose one of {GGUF_TYPES}.")
    folder, out_path = Path(model_dir), Path(out_path)
    config = _read_config(folder)
    quant, file_type = {"f16": (Q.F16, F.MOSTLY_F16), "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
                        "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0)}[gguf_type]  # fmt: skip
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")  # no half-written file under the name
    writer = gguf.GGUFWriter(str(partial), arch="llama")
    _add_metadata(writer, config, folder.name, file_type)
    _add_vocabulary(writer, folder, config["vocab_size"])
    found = []
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = weights.get_tensor(name).float().numpy()
                if name.endswith("q_proj.weight"):
                    tensor = _permute(tensor, heads)
                elif name.endswith("k_proj.weight"):
                    tensor = _permute(tensor, kv_heads)
                new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if new_name is None:
                    raise ExportError(f"{shard.name}: tensor {name} has no GGUF name for llama.")
                kind = quant if tensor.ndim > 1 else Q.F32
                if gguf_type == "q4_0" and new_name == "token_embd.weight":
                    kind = Q.Q8_0  # shared with the output layer: 4 bits there costs most
                try:
                    data = gguf.quants.quantize(tensor, kind)
                except gguf.QuantError:  # a row length the block type cannot split
                    kind, data = Q.F16, gguf.quants.quantize(tensor, Q.F16)
                writer.add_tensor(new_name, data, raw_dtype=kind)
                found.append(name)
    if "lm_head.weight" not in found and not config.get("tie_word_embeddings", False):
        raise ExportError(f"{folder}: no lm_head.weight and the embeddings are not tied.")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_path)
    return out_path


@dataclass
class GGUFCheck:
    """Greedy answers of a GGUF file against the merged model's, prompt by prompt."""

    path: Path
    gguf_type: str
    size_mb: float
    same: list[bool]  # per prompt: the same greedy answer, token for token
    answers: list[str] = field(repr=False)
    reference: list[str] = field(repr=False)
    seconds: float = 0.0  # loading and generating

    @property
    def agreement(self) -> float:
        """The share of prompts answered exactly as the merged model answers them."""
        return sum(self.same) / len(self.same)

    def describe(self) -> str:
        return (
            f"{self.path.name}: {self.size_mb:.0f} MB, {sum(self.same)} of {len(self.same)} "
            f"greedy answers identical to the merged model's ({100 * self.agreement:.0f}%)"
        )


def greedy_answers(
    model, tokenizer, prompts: Sequence, max_new_tokens: int, together: bool = False
) -> list[str]:
    """Greedy answers to chat `prompts` (message lists), one at a time, no padding: as
    `ftkit.ship.load_in_fresh_process` answers, in plain transformers.

    `together=True` answers them together with `ftkit.generation.generate_replies` (a
    batch's prompts read as one row without padding, the start they share once): the same
    answers up to rounding, for comparing models with each other (an export with the model
    it came from) rather than with a fresh process. 8 test tickets, 48 new tokens, a merged
    fp32 model, one thread of a 2-core Xeon with AMX: 14.4 s one at a time, 4.5 s together,
    all 8 answers the same.
    """
    import torch

    if together:
        # deferred: ftkit.evaluation imports torch, which this module loads only when used
        from ftkit.evaluation import eval_batch_size

        # deferred: as above (ftkit.generation imports torch)
        from ftkit.generation import generate_replies

        batch = eval_batch_size(model)
        replies = generate_replies(model, tokenizer, [list(m) for m in prompts],
                                   max_new_tokens=max_new_tokens, batch_size=batch,
                                   share_prefix=True)  # fmt: skip
        return [reply.text for reply in replies]
    answers = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)  # fmt: skip
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :],
                                        skip_special_tokens=True))  # fmt: skip
    return answers


def check_gguf(
    gguf_path: str | Path, reference: Sequence[str], prompts: Sequence, tokenizer,
    max_new_tokens: int = 48, together: bool = False,
) -> GGUFCheck:  # fmt: skip
    """Load `gguf_path` back with transformers' GGUF reader (weights dequantised to fp32)
    and answer `prompts` greedily with `tokenizer`; compare with `reference`, the merged
    model's greedy answers to the same prompts (`greedy_answers`, with the same
    `together`)."""
    import torch
    from transformers import AutoModelForCausalLM

    # deferred: ftkit.fast imports torch, which this module loads only when it is used
    from ftkit.fast import read_gguf_once

    # deferred: as above (ftkit.models imports torch)
    from ftkit.models import quiet_loading

    path = Path(gguf_path)
    started = time.perf_counter()
    with read_gguf_once(), quiet_loading():  # one parse for config, weights, file type
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()  # fmt: skip
        file_type = gguf_file_type(path)
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, together)
    return GGUFCheck(path, file_type, path.stat().st_size / 1e6,
                     [a == b for a, b in zip(answers, reference, strict=True)], answers,
                     list(reference), time.perf_counter() - started)  # fmt: skip


def gguf_file_type(path: str | Path) -> str:
    """A GGUF file's type as its header says ("f16", "q8_0", "q4_0", ...): `general.file_type`."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        raise ExportError(f"{Path(path).name} has no general.file_type in its GGUF header.")
    kind = gguf.LlamaFileType(int(field.parts[field.data[0]][0]))
    return kind.name.removeprefix("MOSTLY_").lower()


def ollama_modelfile(gguf_path: str | Path, tokenizer, system_prompt: str | None = None,
                     temperature: float = 0.0) -> Path:  # fmt: skip
    """Write `Modelfile` beside `gguf_path` for `ollama create NAME -f Modelfile`: the chat
    turns as Ollama's template, the turn's end as stop token, the system prompt if given.

    Ollama templates are Go templates, not Jinja: ftkit writes the ChatML form (SmolLM2,
    Qwen) and refuses other chat templates rather than guess them. Without `system_prompt`
    the template's own default system message (SmolLM2 adds one to every chat that has
    none) becomes the Modelfile's SYSTEM, so Ollama's prompts are the ones trained on.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    if not all(marker in template for marker in CHATML):
        raise ExportError(
            "The chat template is not ChatML (<|im_start|> ... <|im_end|>); write the "
            "Modelfile's TEMPLATE by hand: https://github.com/ollama/ollama/blob/main/docs/template.md"
        )
    start, end = CHATML
    system_prompt = system_prompt or _default_system(tokenizer)
    lines = [
        f"FROM ./{Path(gguf_path).name}",
        'TEMPLATE """{{- range .Messages }}' + start + "{{ .Role }}\n{{ .Content }}" + end + "\n"
        "{{ end }}" + start + 'assistant\n"""',
        f'PARAMETER stop "{end}"',
        f"PARAMETER temperature {temperature:g}",
    ]
    if system_prompt:
        lines.append('SYSTEM """' + system_prompt.replace('"""', '\\"\\"\\"') + '"""')
    path = Path(gguf_path).with_name("Modelfile")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _default_system(tokenizer) -> str | None:
    """The system message a ChatML template adds to a chat that has none, or None."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = CHATML[0] + "system\n"
    return text[len(head) : text.index(CHATML[1])] if text.startswith(head) else None
