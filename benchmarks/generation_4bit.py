"""Greedy generation from the 4-bit (NF4) model: plain `model.generate` on bitsandbytes'
layers against the same call inside `ftkit.fast.generation_4bit.fast_4bit_generation`.

    .venv/bin/python benchmarks/generation_4bit.py
    .venv/bin/python benchmarks/generation_4bit.py --batches 1 8 --new-tokens 40 --rounds 3
    .venv/bin/python benchmarks/generation_4bit.py --layer-rows 1 8 32 512 4096

The embedded model in NF4 with ftkit's LoRA adapters (r=16 on every linear layer, as
notebook 04 compares it), test tickets under the task's system prompt, left padding,
greedy. Both sides run in this one process, alternating per round; the median is reported.
On a CPU without AVX512-BF16, bitsandbytes dequantises every weight at every call and
ftkit's block keeps each weight dequantised for the block; with AVX512-BF16 the block
also sends products of fewer than `PACKED_ROWS` rows to bitsandbytes' repacked kernel and
restores the weights on leaving. Also checks that the replies are the same and that a
prompt's logits are equal bit for bit. `--layer-rows` times one 576x1536 layer's product
at those numbers of rows, the repacked kernel against the weight dequantised once (the
choice `PACKED_ROWS` makes; AVX512-BF16 only).
Writes benchmarks/results/generation_4bit.json and prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _generate(model, tokenizer, prompts: list, new_tokens: int, block) -> tuple[float, list[str]]:
    """Seconds for one greedy `generate` over `prompts` inside `block`, and the replies."""
    import torch

    from ftkit.generation import stop_token_ids

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
             for p in prompts]  # fmt: skip
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    with torch.inference_mode(), block:
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=stop_token_ids(tokenizer),
                                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    seconds = time.perf_counter() - started
    width = inputs["input_ids"].shape[1]
    return seconds, [tokenizer.decode(row[width:], skip_special_tokens=True) for row in output]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "generation_4bit.json"))
    parser.add_argument("--layer-rows", nargs="+", type=int, default=None)
    args = parser.parse_args(argv)
    if args.layer_rows:
        return _layer_rows(args.layer_rows)

    import torch
    from bitsandbytes.functional import has_avx512bf16

    from ftkit.config import TrainConfig
    from ftkit.fast.generation_4bit import fast_4bit_generation
    from ftkit.hardware import cpu_name
    from ftkit.models import load_model
    from ftkit.splits import load_dataset_splits
    from ftkit.task_data import load_task_data
    from ftkit.training import add_adapters

    model, tokenizer = load_model(quantization="nf4")
    model = add_adapters(model, TrainConfig(method="qlora")).eval()
    system = {"role": "system", "content": load_task_data("support_tickets").task.system_prompt}
    test = list(load_dataset_splits("support_tickets")["test"])
    prompts = [[system, *example.messages[:-1]] for example in test[: max(args.batches)]]

    probe = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.inference_mode():
        plain_logits = model(**probe).logits
        with fast_4bit_generation(model) as layers:
            block_logits = model(**probe).logits
    rows = []
    for batch in args.batches:
        sides: dict[str, list[float]] = {"bitsandbytes": [], "ftkit": []}
        replies: dict[str, list[str]] = {}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for side in order:
                block = fast_4bit_generation(model) if side == "ftkit" else nullcontext()
                seconds, replies[side] = _generate(model, tokenizer, prompts[:batch],
                                                   args.new_tokens, block)  # fmt: skip
                sides[side].append(seconds)
        plain, fast = (statistics.median(sides[s]) for s in ("bitsandbytes", "ftkit"))
        rows.append({"batch": batch, "bitsandbytes_seconds": plain, "ftkit_seconds": fast,
                     "speedup": plain / fast, "all_seconds": sides,
                     "same_replies": replies["bitsandbytes"] == replies["ftkit"]})  # fmt: skip
        print(f"[bench] batch {batch}: bitsandbytes {plain:.2f} s, ftkit {fast:.2f} s",
              flush=True)  # fmt: skip
    results = {
        "command": "python benchmarks/generation_4bit.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "avx512bf16": bool(has_avx512bf16()),
        "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "layers_served": layers,
        "logits_bit_equal": bool(torch.equal(plain_logits, block_logits)),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\n{results['cpu']}, AVX512-BF16: {results['avx512bf16']}; {layers} layers served; "
          f"logits bit for bit equal: {results['logits_bit_equal']}\n")  # fmt: skip
    print("| prompts | bitsandbytes per call | ftkit's block | speedup | same replies |")
    print("|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['bitsandbytes_seconds']:.2f} s | {r['ftkit_seconds']:.2f} s "
              f"| {r['speedup']:.2f}x | {r['same_replies']} |")  # fmt: skip
    print(f"[bench] wrote {args.out}")
    return 0


def _layer_rows(counts: list[int]) -> int:
    """One MLP layer's product at `counts` rows: the repacked kernel against dense."""
    import torch
    from bitsandbytes.functional import has_avx512bf16

    from ftkit.fast.generation_4bit import DenseForward, fast_4bit_generation
    from ftkit.hardware import cpu_name
    from ftkit.models import load_model

    if not has_avx512bf16():
        print("[bench] no AVX512-BF16 here: bitsandbytes has no repacked kernel to compare")
        return 0
    model, _ = load_model(quantization="nf4")
    layer = model.model.layers[0].mlp.gate_proj
    weight = DenseForward(layer).weight(torch.bfloat16)  # before the kernel repacks it

    def median_ms(call) -> float:
        call()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            call()
            times.append(1000 * (time.perf_counter() - started))
        return statistics.median(times)

    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, layer {layer.in_features}x"
        f"{layer.out_features}, bf16\n\n| rows | repacked kernel | dense | kernel / dense |"
    )
    print("|---:|---:|---:|---:|")
    with torch.inference_mode(), fast_4bit_generation(model):
        for rows in counts:
            x = torch.randn(1, rows, layer.in_features, dtype=torch.bfloat16)
            packed = median_ms(lambda x=x: type(layer).forward(layer, x))
            dense = median_ms(lambda x=x: torch.nn.functional.linear(x, weight))
            print(f"| {rows} | {packed:.3f} ms | {dense:.3f} ms | {packed / dense:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
