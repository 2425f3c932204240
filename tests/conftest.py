"""Shared fixtures: the embedded model, loaded once per test session.

The default tier is offline: it uses the embedded SmolLM2-135M-Instruct (converted
into ftkit's cache on first use, about 20 s) and the data committed in data/.
"""

from __future__ import annotations

import os

import pytest

from ftkit.models import embedded_model_dir, load_model


@pytest.fixture(autouse=True, scope="session")
def _offline_hub(tmp_path_factory):
    """Tests never touch a model hub; evaluate and datasets write their modules to a temp dir."""
    previous = {key: os.environ.get(key) for key in ("HF_HOME", "HF_HUB_DISABLE_TELEMETRY")}
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf_home"))
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def embedded_dir():
    """The converted, verified embedded model directory."""
    return embedded_model_dir()


@pytest.fixture(scope="session")
def model_and_tokenizer(embedded_dir):
    """The embedded model in the machine's compute dtype (bf16 on this CPU), eval mode."""
    return load_model()
