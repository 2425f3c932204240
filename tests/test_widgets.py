"""The model picker, driven from Python the way a learner drives it with the mouse."""

from __future__ import annotations

import pytest

from ftkit.course.widgets import ModelPicker, model_picker


@pytest.fixture
def picker() -> ModelPicker:
    """A picker with no GPU of its own and 8 GiB of RAM, whatever machine runs the tests."""
    return model_picker(ram_gb=8.0, detect=False)


def test_smaller_card_drops_7b_qlora(picker: ModelPicker) -> None:
    with picker.hold():
        picker.batch_size.value, picker.max_length.value, picker.gpu.value = 2, 1024, "t4-16gb"
    assert "qwen2.5-7b-instruct" in picker.fitting_models()
    assert "qwen2.5-7b-instruct" in picker.table.value
    on_t4 = len(picker.fitting_models())
    picker.gpu.value = "laptop-8gb"
    assert "qwen2.5-7b-instruct" not in picker.fitting_models()
    assert "qwen2.5-7b-instruct" not in picker.table.value
    assert len(picker.fitting_models()) < on_t4
    assert f"<b>{len(picker.fitting_models())} of {len(picker.models)}</b>" in picker.summary.value


def test_cheaper_methods_fit_more_models(picker: ModelPicker) -> None:
    picker.gpu.value = "rtx3060-12gb"
    counts = {}
    for method in ("full", "lora", "qlora"):
        picker.method.value = method
        counts[method] = len(picker.fitting_models())
    assert counts["full"] < counts["lora"] < counts["qlora"]


def test_unchecking_the_filter_shows_every_model_and_its_verdict(picker: ModelPicker) -> None:
    with picker.hold():
        picker.gpu.value, picker.method.value = "laptop-8gb", "full"
    assert "llama-3.1-8b-instruct" not in picker.table.value
    picker.only_fitting.value = False
    assert all(model.name in picker.table.value for model in picker.models)
    assert picker.table.value.count("does not fit") == len(picker.models) - len(
        picker.fitting_models()
    )
    assert "#fde7e9" in picker.table.value  # the red of "does not fit"


def test_turning_checkpointing_off_costs_memory(picker: ModelPicker) -> None:
    with picker.hold():
        picker.batch_size.value, picker.max_length.value = 4, 2048
    before = picker.estimates["llama-3.2-1b-instruct"].activations
    picker.checkpointing.value = False
    assert picker.estimates["llama-3.2-1b-instruct"].activations > 5 * before


def test_nothing_fits_gives_advice(picker: ModelPicker) -> None:
    with picker.hold():
        picker.gpu.value, picker.method.value = "laptop-8gb", "full"
        picker.batch_size.value, picker.max_length.value = 16, 8192
    assert picker.fitting_models() == []
    assert "try QLoRA" in picker.table.value


def test_your_gpu_comes_first_and_cpu_uses_ram_in_fp32() -> None:
    picker = model_picker(6.0, ram_gb=32.0, detect=False)
    assert picker.gpu.value == "yours" and picker.card.memory_gib == 6.0
    assert picker.gpu.options[0][0] == "your GPU: 6.0 GiB"
    picker.gpu.value = "cpu"
    assert picker.precision == "fp32" and picker.card.memory_gib == 32.0
    assert picker.estimates["smollm2-135m-instruct"].precision == "fp32"
    picker.gpu.value = "t4-16gb"
    assert picker.precision == "fp16"  # a T4 only emulates bf16


def test_plot_follows_the_selected_model_and_card(picker: ModelPicker) -> None:
    assert picker.plot_output.outputs[0]["data"]["image/png"]
    with picker.hold():
        picker.gpu.value, picker.model.value = "a100-40gb", "mistral-7b-instruct-v0.3"
    axes = picker.figure.axes[0]
    assert axes.get_title().startswith("mistral-7b-instruct-v0.3")
    assert [label.get_text() for label in axes.get_yticklabels()] == ["Full", "LoRA", "QLoRA"]
    assert any(line.get_xdata()[0] == pytest.approx(39.39) for line in axes.get_lines())
    assert "<b>mistral-7b-instruct-v0.3" in picker.table.value
