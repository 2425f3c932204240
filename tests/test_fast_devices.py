"""ftkit's speed-ups run only where they were measured (CPUs): on another device (a GPU;
here the meta device stands in for one) both entry points leave the model alone."""

from __future__ import annotations

import pytest
import torch

from ftkit.config import TrainConfig
from ftkit.fast import fast_generation, measured_on, speed_up_training
from ftkit.fast.cpu_memory import HeapRelease, _glibc
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


def test_the_heap_release_only_where_training_computes_below_fp32():
    """glibc's fixed mmap threshold and heap trim after each backward pass: in bf16 a tenth
    less memory at the same speed; in fp32 a 1.27x slower step (benchmarks/RESULTS.md), so
    not there. The dtype passed wins over the model's own."""
    if _glibc() is None:
        pytest.skip("glibc's allocator settings apply on Linux with glibc only")
    model = _lora_model()
    fp32 = speed_up_training(model, dtype=torch.float32)
    assert not any(isinstance(callback, HeapRelease) for callback in fp32.callbacks)
    assert not any("glibc" in line for line in fp32.changed)
    bf16 = speed_up_training(model, dtype=torch.bfloat16)
    assert [type(callback) for callback in bf16.callbacks] == [HeapRelease]
    assert any("glibc" in line for line in bf16.changed)
