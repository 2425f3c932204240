"""Runs as versions: one folder per training run, listed, reloaded, merged and exported.

`ftkit.training.train` writes `runs/<name>/`:

    config.json      the TrainConfig, the data it saw, ftkit's version
    metrics.jsonl    one line per training log and evaluation (see ftkit.callbacks)
    checkpoints/     checkpoint-<step>/: adapter, optimizer, scheduler, RNG state, data position
    adapter/         the final LoRA adapter (peft format) and the tokenizer
    result.json      how it ended: status, losses, timings, memory
    README.md        a model card: base model, data, hyperparameters, results, how to load it

This module reads them back: `list_runs`, `load_run` (any run, or any of its checkpoints,
onto its base model: roll back to an earlier version), `merge_and_export` (the adapter
merged into a 16-bit copy of the base, saved as safetensors).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from ftkit import __version__
from ftkit.callbacks import read_metrics
from ftkit.cards import model_card
from ftkit.catalog import get_model_info
from ftkit.config import TrainConfig
from ftkit.hardware import half_dtype
from ftkit.models import load_model, quiet_loading, resolve_model

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {
    "run_name", "runs_dir", "overwrite", "logging_steps", "keep_checkpoints", "report_to",
}  # fmt: skip
FINISHED = ("finished", "early stopping")  # statuses of a run that ended on its own
SMOKE_RUNS_ENV = "FTKIT_SMOKE_RUNS"  # the scratch folder a smoke series shares (see runs_folder)


class RunError(RuntimeError):
    """A run folder is missing, incomplete, or already taken; the message says what to do."""


def runs_folder(mode: str, group: str | None = None) -> str:
    """Where a notebook keeps its runs: `runs/` beside it in full mode; in smoke mode a
    scratch folder, so a quick check never touches (or reuses) a learner's runs. With a
    `group`, a folder of that name inside it (notebook 05's many small runs: `runs/iterate`),
    which `list_runs` of the outer folder does not list.

    The scratch folder is `$FTKIT_SMOKE_RUNS` when set: `ftkit.course.runner.run_series` sets it,
    so the notebooks of one smoke series share their runs as full mode's share `runs/`
    (notebook 04 picks up notebook 03's fine-tune). Otherwise it is a new temporary folder,
    removed when the Python process (the notebook's kernel) ends, so smoke checks leave no
    gigabytes behind in the system's temporary folder.
    """
    if mode == "full":
        return "runs" if group is None else f"runs/{group}"
    if mode != "smoke":
        raise ValueError(f'MODE must be "full" or "smoke", not {mode!r}.')
    shared = os.environ.get(SMOKE_RUNS_ENV)
    if shared:
        folder = Path(shared) if group is None else Path(shared) / group
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)
    folder = tempfile.mkdtemp(prefix="ftkit-smoke-runs-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if group is None:
        return folder
    (Path(folder) / group).mkdir()
    return str(Path(folder) / group)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def open_run_dir(config, resume: bool) -> Path:
    """The run's folder: created fresh, or found again for `resume`; never silently reused."""
    runs_dir = Path(config.runs_dir)
    name = config.run_name
    if name is None and resume:
        existing = sorted(
            (p for p in runs_dir.glob("*/config.json")), key=lambda p: p.stat().st_mtime
        )
        if not existing:
            raise RunError(f"resume=True, but {runs_dir} holds no run to resume. Drop resume=True.")
        name = existing[-1].parent.name
    name = name or f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = runs_dir / name
    taken = (path / "config.json").is_file()
    if taken and not resume and _is_main_process():
        if not config.overwrite:
            done = "finished" if (path / "result.json").is_file() else "unfinished"
            raise RunError(
                f"A run named {name!r} already exists in {runs_dir} ({done}). Pass resume=True to "
                "continue it, overwrite=True to replace it, or choose another run_name."
            )
        shutil.rmtree(path)
    if resume and taken:
        check_resumable(config, path)
        _refuse_finished(path)
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


def check_resumable(config, path: Path) -> None:
    """Refuse to resume a run with settings that change what it computes."""
    changed = config_changes(json.loads((path / "config.json").read_text())["config"], config)
    if changed:
        diffs = ", ".join(changed)
        raise RunError(
            f"Cannot resume {path.name!r} with a different config ({diffs}): the result would "
            "match neither setting. Resume with the saved config (load_run(...).config), or "
            "start a new run_name."
        )


def config_changes(saved: dict, config) -> list[str]:
    """The settings of `config` that differ from a saved config.json's, as "field: old -> new"
    (names, folders and logging fields, `RESUMABLE_CHANGES`, do not count).
    """
    now = json.loads(json.dumps(asdict(config)))
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed]


def final_dir(run_dir: Path, method: str) -> Path:
    """Where a run keeps what it produced: model/ for full fine-tuning, else adapter/."""
    return Path(run_dir) / ("model" if method == "full" else "adapter")


def _refuse_finished(path: Path) -> None:
    """A run that ended on its own has nothing to resume (a stopped one does)."""
    result = path / "result.json"
    status = json.loads(result.read_text()).get("status", "") if result.is_file() else ""
    if status in FINISHED:
        raise RunError(
            f"Run {path.name!r} already ended ({status}); there is nothing to resume. Use it "
            "with load_run(...), or train longer as a new run_name."
        )


def last_checkpoint(run_dir: str | Path) -> str | None:
    """The newest complete checkpoint of a run (one killed mid-save is skipped), or None."""
    steps = {}
    for path in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        match = CHECKPOINT.match(path.name)
        if match and (path / "trainer_state.json").is_file():  # written last by the Trainer
            steps[int(match.group(1))] = path
    return str(steps[max(steps)]) if steps else None


def checkpoint_step(checkpoint: str | Path | None) -> int:
    """The optimizer step a checkpoint folder was saved at (0 for None)."""
    return int(CHECKPOINT.match(Path(checkpoint).name).group(1)) if checkpoint else 0


def checkpoint_epoch(checkpoint: str | Path | None) -> float:
    """The epoch (a fraction) a checkpoint folder was saved at (0.0 for None)."""
    if not checkpoint:
        return 0.0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return float(state.get("epoch") or 0.0)


def write_config(run_dir: Path, config, train_items, val_items, fingerprint: str = "",
                 weights_fingerprint: str = "") -> None:  # fmt: skip
    """Save config.json: the TrainConfig, what data it saw, ftkit's version, the fingerprints."""
    if not _is_main_process():
        return
    data = {"train": _data_summary(train_items), "validation": _data_summary(val_items)}
    info = {
        "config": asdict(config),
        "base_model": _base_model_id(config.model),
        "data": data,
        "ftkit_version": __version__,
        "torch_version": torch.__version__,
        "fingerprint": fingerprint,  # what decides the adapter, hashed: see ftkit.reuse
        "weights_fingerprint": weights_fingerprint,  # the same without what only records
    }
    (run_dir / "config.json").write_text(json.dumps(info, indent=2) + "\n")


def _base_model_id(name: str) -> str:
    """The id a model card names: the hub id (also for the embedded copy), or the directory."""
    kind, where = resolve_model(name)
    return get_model_info(where).hub_id if kind == "embedded" else where


def _data_summary(items) -> dict | None:
    if items is None:
        return None
    members = [len(getattr(item, "members", [0])) for item in items]
    sources = sorted({str(getattr(item, "source", "")).split(":")[0] for item in items} - {""})
    return {
        "examples": sum(members),
        "rows": len(items),
        "tokens": sum(len(item.input_ids) for item in items),
        "trained_tokens": sum(sum(label != -100 for label in item.labels) for item in items),
        "sources": sources[:5],
    }


def write_result(run_dir: Path, result, config, precision) -> None:
    """Save result.json and the model card README.md of a finished (or stopped) run."""
    keep = (
        *("status", "steps", "train_loss", "val_loss", "best_step", "seconds"),
        *("seconds_per_epoch", "tokens_per_second", "peak_memory_gb", "trainable_params"),
    )
    summary = {key: getattr(result, key) for key in keep}
    summary |= {"precision": precision.name, "optimizer": precision.optimizer,
                "device": precision.device, "adapter_dir": str(result.adapter_dir)}  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "README.md").write_text(model_card(run_dir, config, summary))


@dataclass
class Run:
    """One run folder, read back; `model` and `tokenizer` are set by `load_run`."""

    name: str  # the folder name
    path: Path  # the folder
    config: object  # its TrainConfig
    metrics: list[dict]  # metrics.jsonl records
    result: dict  # result.json ({} if the run never finished: killed, or still running)
    checkpoints: list[int]  # steps of its complete checkpoints
    model: object = field(default=None, repr=False)
    tokenizer: object = field(default=None, repr=False)

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def __str__(self) -> str:
        val = self.result.get("val_loss")
        val = f"{val:.3f}" if isinstance(val, float) else "n/a"
        status = self.result.get("status", "unfinished")
        return f"{self.name}: {self.config.method}, {status}, validation loss {val}"


def read_run(path: str | Path) -> Run:
    """Read a run folder's config, metrics and result, without loading any model."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is not a run folder (no config.json). See list_runs().")
    config = TrainConfig.from_dict(json.loads((path / "config.json").read_text())["config"])
    result_file = path / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    steps = sorted(
        int(CHECKPOINT.match(p.name).group(1))
        for p in (path / "checkpoints").glob("checkpoint-*")
        if CHECKPOINT.match(p.name) and (p / "trainer_state.json").is_file()
    )
    return Run(path.name, path, config, read_metrics(path / "metrics.jsonl"), result, steps)


def list_runs(runs_dir: str | Path = "runs") -> list[Run]:
    """Every run in `runs_dir`, oldest first (print one to see its status and loss)."""
    folders = [p.parent for p in Path(runs_dir).glob("*/config.json")]
    return [read_run(p) for p in sorted(folders, key=lambda p: p.stat().st_mtime)]


def load_run(
    name: str | Path, runs_dir: str | Path = "runs", checkpoint: int | None = None,
    quantization: str | None = "as_trained", dtype="auto",
) -> Run:  # fmt: skip
    """Load a run with its adapter (or an earlier checkpoint's) on its base model.

    `quantization="as_trained"` loads the base in 4 bits for QLoRA runs (what it trained on);
    None loads it unquantised, in `dtype`.
    """
    path = Path(name) if Path(name).is_dir() else Path(runs_dir) / str(name)
    run = read_run(path)
    where = adapter_source(run, checkpoint)
    if quantization == "as_trained":
        quantization = "nf4" if run.config.method == "qlora" else None
    if run.config.method == "full":
        run.model, run.tokenizer = load_model(str(where))
        return run
    base, run.tokenizer = load_model(run.config.model, quantization=quantization, dtype=dtype)
    run.model = PeftModel.from_pretrained(base, str(where))
    run.model.eval()
    return run


def adapter_source(run: Run, checkpoint: int | None = None) -> Path:
    """The folder of a run's final adapter, or of its checkpoint at step `checkpoint`."""
    if checkpoint is not None:
        if checkpoint not in run.checkpoints:
            raise RunError(
                f"Run {run.name!r} has no checkpoint {checkpoint}; it has {run.checkpoints}."
            )
        return run.path / "checkpoints" / f"checkpoint-{checkpoint}"
    final = final_dir(run.path, run.config.method)
    if final.is_dir():
        return final
    if run.checkpoints:
        raise RunError(
            f"Run {run.name!r} did not finish (no {final.name}/). Load a checkpoint with "
            f"checkpoint={run.checkpoints[-1]}, or resume it: train(config, ..., resume=True)."
        )
    raise RunError(f"Run {run.name!r} has neither a final adapter nor checkpoints.")


def merge_and_export(
    run: Run | str | Path, out_dir: str | Path, runs_dir="runs", dtype=None
) -> Path:
    """Merge a run's LoRA adapter into a fresh 16-bit copy of its base; save as safetensors.

    The base is loaded again in 16 bits (never the 4-bit weights QLoRA trained on, which
    would bake quantisation error into the export). In 16 bits W + BA is rounded, so the
    export is close to the adapter, not identical; `dtype=torch.float32` merges exactly.
    """
    run = (
        run
        if isinstance(run, Run)
        else read_run(Path(run) if Path(run).is_dir() else Path(runs_dir) / str(run))
    )
    if run.config.method == "full":
        raise RunError(f"{run.name} is a full fine-tune: {run.path / 'model'} is already whole.")
    base, tokenizer = load_model(run.config.model, quantization=None, dtype=dtype or half_dtype())
    merged = PeftModel.from_pretrained(base, str(adapter_source(run, None))).merge_and_unload()
    out_dir = Path(out_dir)
    with quiet_loading():  # no frozen "Writing model shards: 0/1" in the notebook
        merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
