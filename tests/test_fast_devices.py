"""ftkit's speed-ups run only where they were measured (CPUs): on another device (a GPU;
here the meta device stands in for one) both entry points leave the model alone."""

from __future__ import annotations

import torch

from ftkit.config import TrainConfig
from ftkit.fast import fast_generation, measured_on, speed_up_training
from ftkit.models import load_model
from ftkit.training import add_adapters


def _shape(model) -> list:
    """Every module's class and instance attributes: what a speed-up would change."""
    return [(name, type(m).__name__, sorted(vars(m))) for name, m in model.named_modules()]


def _lora_model():
    model, _ = load_model()
    return add_adapters(model, TrainConfig(method="lora"))


def test_on_a_device_they_were_not_measured_on_nothing_changes():
    model = _lora_model().to("meta")
    assert not measured_on(model)
    before = _shape(model)
    found = speed_up_training(model, lean_layers=True)
    assert found.changed == [] and found.callbacks == []
    with fast_generation(model, torch.ones((2, 4), dtype=torch.long), prefix=3) as extra:
        assert extra == {}  # no shared-prefix cache: plain generate
        assert _shape(model) == before
    assert _shape(model) == before


def test_on_a_cpu_the_same_calls_switch_them_on():
    """The contrast: the same model on the CPU gets its speed-ups (so the test above can fail)."""
    model = _lora_model()
    assert measured_on(model)
    before = _shape(model)
    found = speed_up_training(model, lean_layers=True)
    assert any("LoRA dropouts fused" in line for line in found.changed), found.changed
    assert _shape(model) != before
