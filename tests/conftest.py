"""Shared fixtures: the embedded model, loaded once per test session.

The default tier is offline: it uses the embedded SmolLM2-135M-Instruct (converted
into ftkit's cache on first use, about 20 s) and the data shipped in ftkit/datasets/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from types import SimpleNamespace

import pytest

from ftkit.models import embedded_model_dir, load_model

# Tests never touch a model hub, and evaluate and datasets write their modules to a temp
# dir. Set here, at import, because evaluate reads HF_HOME once, when first imported (and
# the test modules import it before any fixture runs).
_PREVIOUS = {key: os.environ.get(key) for key in ("HF_HOME", "HF_HUB_DISABLE_TELEMETRY")}
_HF_HOME = tempfile.mkdtemp(prefix="ftkit-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def pytest_unconfigure(config):
    shutil.rmtree(_HF_HOME, ignore_errors=True)
    for key, value in _PREVIOUS.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def embedded_dir():
    """The converted, verified embedded model directory."""
    return embedded_model_dir()


@pytest.fixture(scope="module")
def lora_fp32(embedded_dir):
    """(model, tokenizer): the embedded model in fp32 with LoRA adapters and ftkit's training
    speed-ups, no dropout, B non-zero (seeded) so that A gets gradients too."""
    import torch  # imported here: this module sets HF_HOME before evaluate is first imported

    from ftkit.config import TrainConfig
    from ftkit.fast import speed_up_training
    from ftkit.training import add_adapters

    model, tokenizer = load_model(dtype="fp32")
    model = add_adapters(model, TrainConfig(method="lora", lora_dropout=0.0))
    speed_up_training(model)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model, tokenizer


@pytest.fixture(scope="session")
def model_and_tokenizer(embedded_dir):
    """The embedded model in the machine's compute dtype (bf16 where native, else fp32)."""
    return load_model()


@pytest.fixture(scope="session")
def smoke_series(tmp_path_factory):
    """The whole series run once in smoke mode by the main job's own code (`run_series`):
    executed notebooks, progress lines and the HTML report in one build folder.

    tests/test_notebooks.py checks what each notebook shows, tests/test_report.py the
    progress lines (the kernels' own every 2 s, not 30) and the report: one execution
    (several minutes) serves both. The runs the notebooks share (notebook 04 reuses notebook
    03's fine-tune) stay in `runs_dir`, where the browser test's notebook 04 and the
    solutions notebooks (each in a copy) find them too.
    """
    from ftkit.course.runner import run_series
    from ftkit.progress import SECONDS_ENV

    out = tmp_path_factory.mktemp("build")
    lines: list[str] = []
    runs_dir = out / "runs"
    with pytest.MonkeyPatch.context() as patch:  # the kernels' progress lines every 2 s
        patch.setenv(SECONDS_ENV, "2")
        runs = run_series(out, mode="smoke", log=lines.append, smoke_runs=runs_dir)
    return SimpleNamespace(out=out, runs={run.notebook[:2]: run for run in runs}, lines=lines,
                           runs_dir=runs_dir)  # fmt: skip


@pytest.fixture(scope="session")
def voice_series(tmp_path_factory):
    """The series run once in smoke mode on the shipped free-text task (DATASET =
    "brand_voice"), as `ftkit run --dataset brand_voice` runs it."""
    from ftkit.course.runner import run_series

    out = tmp_path_factory.mktemp("voice")
    lines: list[str] = []
    runs = run_series(out, mode="smoke", log=lines.append, smoke_runs=out / "runs",
                      parameters={"DATASET": "brand_voice"})  # fmt: skip
    return SimpleNamespace(out=out, runs={run.notebook[:2]: run for run in runs}, lines=lines)
