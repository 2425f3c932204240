"""ftkit's GGUF files run by llama.cpp itself, answer for answer against transformers.

`ftkit.export.check_gguf` loads a GGUF file back with transformers' reader. That reader
undoes the same tensor layout ftkit's writer applies, so a layout both got wrong in the same
way would pass. This script asks llama.cpp's own runtime instead: it exports the embedded
model (or `--merged DIR`, a folder `ftkit.ship.export_merged` wrote) as f16, q8_0 and q4_0,
answers the first `--n` test tickets greedily with llama.cpp's C library, and compares each
answer with the transformers GGUF reader's answer to the same chat and with the 16-bit
model's.

llama.cpp is not a Python package on PyPI in a form that installs on these machines
(llama-cpp-python is a source distribution that needs a compiler and network downloads).
`llama-cpp-cffi` (PyPI, MIT) ships a prebuilt CPU library of llama.cpp in its wheel; its
declared dependencies pin transformers below 5, so the script does not install it:
`--wheel` takes the downloaded wheel and the script loads only that library from it
(through cffi, which the test environment has):

    pip download --no-deps --only-binary=:all: llama-cpp-cffi==0.4.18 -d /tmp/llw
    .venv/bin/python benchmarks/gguf_llama_cpp.py --wheel /tmp/llw/llama_cpp_cffi-*.whl 2>/dev/null

Results: benchmarks/RESULTS.md ("GGUF files in llama.cpp's own runtime").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

LIBRARY = "llama/_llama_cpp_cpu.cpython-311-x86_64-linux-gnu.so"


def load_library(wheel: Path, into: Path):
    """The CPU build of llama.cpp from a llama-cpp-cffi wheel, as a cffi module."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.startswith("llama/_llama_cpp_cpu"))
        path = Path(archive.extract(name, into))
    spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.lib.llama_backend_init()
    return module.lib, module.ffi


def llama_cpp_answers(lib, ffi, gguf: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers of llama.cpp to raw prompt texts (chat template already applied)."""
    model = lib.llama_model_load_from_file(str(gguf).encode(), lib.llama_model_default_params())
    if model == ffi.NULL:
        raise RuntimeError(f"llama.cpp could not load {gguf}")
    vocab = lib.llama_model_get_vocab(model)
    answers = []
    for prompt in prompts:
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_threads, params.n_threads_batch = 1024, 1024, 2, 2
        context = lib.llama_init_from_model(model, params)
        text = prompt.encode()
        tokens = ffi.new("llama_token[]", 1024)
        count = lib.llama_tokenize(vocab, text, len(text), tokens, 1024, False, True)
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        batch, pieces = lib.llama_batch_get_one(tokens, count), []
        for _ in range(max_new_tokens):
            if lib.llama_decode(context, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token = lib.llama_sampler_sample(chain, context, -1)
            if lib.llama_vocab_is_eog(vocab, token):
                break
            buffer = ffi.new("char[]", 256)
            size = lib.llama_token_to_piece(vocab, token, buffer, 256, 0, False)
            pieces.append(ffi.unpack(buffer, size))
            next_token = ffi.new("llama_token[]", [token])
            batch = lib.llama_batch_get_one(next_token, 1)
        answers.append(b"".join(pieces).decode("utf-8", errors="replace"))
        lib.llama_sampler_free(chain)
        lib.llama_free(context)
    lib.llama_model_free(model)
    return answers


def shared_prefix(answers: list[str], reference: list[str]) -> float:
    """How far answers agree before they first differ: the mean share of each reference
    answer's characters up to the first difference (1.0 when identical)."""
    shares = []
    for answer, ref in zip(answers, reference, strict=True):
        pairs = enumerate(zip(answer, ref, strict=False))  # stops at the shorter
        common = next((i for i, (a, b) in pairs if a != b),
                      min(len(answer), len(ref)))  # fmt: skip
        shares.append(1.0 if answer == ref else common / max(len(ref), 1))
    return sum(shares) / len(shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="a llama-cpp-cffi wheel")
    parser.add_argument("--merged", type=Path, help="a merged model folder (default: embedded)")
    parser.add_argument("--n", type=int, default=8, help="test tickets to answer")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per answer")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    import torch

    from ftkit.export import GGUF_TYPES, check_gguf, export_gguf, greedy_answers
    from ftkit.models import load_model
    from ftkit.splits import load_dataset_splits

    scratch = Path(tempfile.mkdtemp(prefix="gguf-llama-cpp-"))
    lib, ffi = load_library(args.wheel, scratch)
    folder = args.merged
    if folder is None:  # the embedded model saved as a merged run would be
        folder = scratch / "merged"
        model, tokenizer = load_model(dtype=torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    reference_model, tokenizer = load_model(str(folder), dtype="fp32")
    test = list(load_dataset_splits("support_tickets")["test"])[: args.n]
    chats = [example.messages[:-1] for example in test]
    reference = greedy_answers(reference_model.eval(), tokenizer, chats, args.tokens)
    rendered = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in chats]  # fmt: skip
    rows = []
    for kind in GGUF_TYPES:
        path = export_gguf(folder, scratch / f"model-{kind}.gguf", kind)
        started = time.perf_counter()
        theirs = llama_cpp_answers(lib, ffi, path, rendered, args.tokens)
        seconds = time.perf_counter() - started
        ours = check_gguf(path, reference, chats, tokenizer, args.tokens).answers
        same = lambda a, b: sum(x == y for x, y in zip(a, b, strict=True))  # noqa: E731
        rows.append({
            "type": kind, "mb": round(path.stat().st_size / 1e6),
            "llama_cpp_vs_transformers_gguf": same(theirs, ours),
            "llama_cpp_vs_16bit": same(theirs, reference),
            "shared_prefix_vs_16bit": round(shared_prefix(theirs, reference), 2),
            "llama_cpp_seconds": round(seconds, 1), "example": theirs[0],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    n = len(chats)
    print(f"\n{n} test tickets, {args.tokens} new tokens, greedy; answers identical out of {n}:")
    print(
        f"{'type':6} {'MB':>5} {'llama.cpp = transformers GGUF':>30} "
        f"{'llama.cpp = 16-bit':>19} {'shared prefix vs 16-bit':>24}"
    )
    for r in rows:
        print(f"{r['type']:6} {r['mb']:>5} {r['llama_cpp_vs_transformers_gguf']:>30} "
              f"{r['llama_cpp_vs_16bit']:>19} {r['shared_prefix_vs_16bit']:>24.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"n": n, "tokens": args.tokens, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
