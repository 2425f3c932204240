"""Loading a GGUF file with transformers: plain, against inside `ftkit.fast.read_gguf_once`.

    .venv/bin/python benchmarks/gguf_loading.py
    .venv/bin/python benchmarks/gguf_loading.py --rounds 3 --types f16 q8_0

Two loads are timed, both sides in this one process, alternating per round (median
reported): a GGUF that `ftkit.export.export_gguf` wrote from the embedded model (what
`check_gguf` and notebook 06 load back), and the embedded model's own GGUF with its
tokenizer (what `ftkit prepare` converts on first use). Checks that both sides give the same
tensors bit for bit. Writes benchmarks/results/gguf_loading.json and prints a Markdown
table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(folder: Path, name: str, tokenizer: bool, block) -> tuple[float, dict]:
    """Seconds to load the model (and tokenizer) from `folder / name` inside `block`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    with block:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        if tokenizer:
            AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return time.perf_counter() - started, model.state_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--types", nargs="+", default=["f16"], help="exported GGUF types")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' progress bars

    import torch

    from ftkit.export import export_gguf
    from ftkit.fast import read_gguf_once
    from ftkit.hardware import detect_hardware
    from ftkit.models import embedded_model_dir, find_embedded_gguf

    embedded = find_embedded_gguf()
    cases = {"embedded model + tokenizer": (embedded.parent, embedded.name, True)}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types:
            path = export_gguf(embedded_model_dir(), Path(tmp) / f"embedded-{kind}.gguf", kind)
            cases[f"exported {kind}"] = (path.parent, path.name, False)
        seconds: dict[str, dict[str, list[float]]] = {c: {"plain": [], "once": []} for c in cases}
        for _ in range(args.rounds):
            for case, (folder, name, tokenizer) in cases.items():
                t_plain, plain = _load(folder, name, tokenizer, nullcontext())
                t_once, once = _load(folder, name, tokenizer, read_gguf_once())
                assert plain.keys() == once.keys()
                assert all(torch.equal(plain[k], once[k]) for k in plain), case
                seconds[case]["plain"].append(t_plain)
                seconds[case]["once"].append(t_once)
    hardware = detect_hardware()
    rows = {case: {side: statistics.median(s) for side, s in sides.items()}
            for case, sides in seconds.items()}  # fmt: skip
    out = HERE / "results" / "gguf_loading.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpu": hardware.device_name, "rounds": args.rounds,
                               "seconds": seconds, "median": rows}, indent=1))  # fmt: skip
    print(f"{hardware.device_name}, median of {args.rounds} rounds, alternating in one process\n")
    print("| load | plain transformers | inside read_gguf_once | speed-up |")
    print("|---|---|---|---|")
    for case, row in rows.items():
        print(f"| {case} | {row['plain']:.1f} s | {row['once']:.1f} s | "
              f"{row['plain'] / row['once']:.1f}x |")  # fmt: skip
    print(f"\nSame tensors bit for bit on every load. Raw numbers: {out}")


if __name__ == "__main__":
    main()
