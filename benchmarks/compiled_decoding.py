"""Greedy answers with a static KV cache and a compiled decoding step, against ftkit's eager
batches (issue 25, item 2: does compiled decoding pay in a notebook?).

    .venv/bin/python benchmarks/compiled_decoding.py
    .venv/bin/python benchmarks/compiled_decoding.py --tickets 64 --batches 2

The model is the embedded one in 16 bits (`load_model`, as notebook 04's "base" approaches
would run without the fine-tune's 4-bit layers: the friendliest case for a compiler, no
bitsandbytes kernels in the graph). It answers `--batches` batches of `--tickets` test
tickets, zero-shot with the task's system prompt, up to the task's answer budget, three ways,
each in this one process:

- ftkit: `generate_replies` as the notebooks call it (dynamic cache, the shared system
  prompt read once, `fast_generation`);
- static, eager: transformers' `generate(cache_implementation="static")`, not compiled;
- static, compiled: the same with `compile_config` (inductor, `mode="default"`, on a CPU
  only with `_compile_all_devices`): transformers compiles the decoding step's forward.

Each way runs every batch, then the first batch again: the first call of the compiled way
includes the compilation, a batch of another width compiles again (its cache has another
length), and the repeat shows whether the compiled step is reused. Reports seconds per call
and in all, and the replies that differ from ftkit's. Writes
benchmarks/results/compiled_decoding.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=64, help="tickets per batch")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "compiled_decoding.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import CompileConfig

    from ftkit.evaluation import answer_budget
    from ftkit.generation import generate_replies, stop_token_ids, to_messages
    from ftkit.hardware import cpu_has_bf16, cpu_name
    from ftkit.models import load_model
    from ftkit.task_data import load_task_data

    data = load_task_data("support_tickets")
    task = data.task
    model, tokenizer = load_model("smollm2-135m-instruct")
    budget = answer_budget(task, data.train, tokenizer)
    batches = [
        [ex.messages[-2]["content"] for ex in data.test[i * args.tickets : (i + 1) * args.tickets]]
        for i in range(args.batches)
    ]
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"

    def ftkit_way(prompts: list[str]) -> list[str]:
        replies = generate_replies(model, tokenizer, prompts, task.system_prompt, budget,
                                   batch_size=len(prompts), share_prefix=True)  # fmt: skip
        return [r.text for r in replies]

    def static_way(compiled: bool):
        def run(prompts: list[str]) -> list[str]:
            texts = [
                tokenizer.apply_chat_template(
                    to_messages(p, task.system_prompt), tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            extra = {}
            if compiled:
                config = CompileConfig(mode="default", dynamic=False)
                config._compile_all_devices = True
                extra["compile_config"] = config
            else:
                extra["disable_compile"] = True
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=budget, do_sample=False,
                                     eos_token_id=stops, pad_token_id=pad,
                                     cache_implementation="static", **extra)  # fmt: skip
            new = out[:, inputs["input_ids"].shape[1] :]
            return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

        return run

    ways = {"ftkit (eager)": ftkit_way, "static, eager": static_way(False),
            "static, compiled": static_way(True)}  # fmt: skip
    calls = [*range(args.batches), 0]  # every batch, then the first again
    results: dict[str, dict] = {}
    reference: dict[int, list[str]] = {}
    for name, way in ways.items():
        seconds, differ = [], []
        for index in calls:
            started = time.perf_counter()
            texts = way(batches[index])
            seconds.append(time.perf_counter() - started)
            reference.setdefault(index, texts)
            differ.append(sum(a != b for a, b in zip(texts, reference[index], strict=True)))
            print(f"{name}, batch {index}: {seconds[-1]:.1f} s, {differ[-1]} replies differ "
                  "from ftkit's", flush=True)  # fmt: skip
        results[name] = {"seconds": seconds, "differ": differ}
        torch._dynamo.reset()

    cpu = f"{cpu_name()} ({'with' if cpu_has_bf16() else 'without'} native bf16)"
    total = {name: sum(r["seconds"]) for name, r in results.items()}
    summary = {"cpu": cpu, "dtype": str(model.dtype), "tickets": args.tickets,
               "answer_budget": budget, "calls": calls, "results": results,
               "total_seconds": total}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"\n{cpu}, {model.dtype}, {args.tickets} tickets a batch, up to {budget} new tokens; "
          f"calls: batches {calls}\n")  # fmt: skip
    print(
        "| way | " + " | ".join(f"batch {i}" for i in calls) + " | all calls | replies differing |"
    )
    print("|---|" + "---|" * (len(calls) + 2))
    ours = total["ftkit (eager)"]
    for name, r in results.items():
        cells = " | ".join(f"{s:.1f} s" for s in r["seconds"])
        print(f"| {name} | {cells} | {total[name]:.0f} s ({total[name] / ours:.1f}x ftkit's) | "
              f"{max(r['differ'])} of {args.tickets} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
