"""Every notebook (and its solutions) runs top to bottom in a real kernel, in smoke mode."""

from __future__ import annotations

import json
import re
import shutil

import nbformat
import pytest

from ftkit.course.notebooks import series_notebooks, solution_notebooks
from ftkit.course.runner import run_notebook
from ftkit.noise import BITSANDBYTES_NOISE
from ftkit.runs import SMOKE_RUNS_ENV

# Notebook 05's solutions train three exercise runs, two in processes of their own: 110 s on
# the AVX2-only kind, the longest of the six. The checks they call are tested on runs that
# tests/test_iterate.py trains, so that notebook runs in the slow tier, the other five by
# default.
SOLUTIONS = [
    pytest.param(path, marks=pytest.mark.slow) if path.stem.startswith("05_") else path
    for path in solution_notebooks()
]


def _outputs(notebook) -> str:
    """All text and HTML a notebook printed or displayed, as one string."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts += [f"{k}: {json.dumps(v)}" for k, v in output.get("data", {}).items()]
    return "\n".join(parts)


# What each executed notebook must show, measured in its own run (not just "no error").
EXPECTED = {
    "01_choosing_a_base_model": [
        "Paris",  # the probe's answers rendered
        "x smaller",  # 16-bit versus 4-bit footprint, from this run
        "application/vnd.jupyter.widget-view+json",  # the model picker
        "image/png",  # the memory breakdown plot
        "does not fit",  # check_fit verdicts for the cards
    ],
    "01_choosing_a_base_model_solutions": ["<b>Correct.</b>"] * 3,  # all three exercises
    "02_formatting_examples": [
        "detected as alpaca",  # every shape read back to the same messages
        "10 problem(s)",  # the strict load lists every mistake of the messy file
        "kept + dropped = 24",  # the lenient report accounts for every row
        "overlaps between the splits: none",
        "Primary metric: labels_exact",  # the task that came with the data
        "<|im_start|>assistant",  # the chat template, rendered
        "of them train",  # the trained-token count of the preview example, from this run
        "tokens/s",  # the throughput measured here
        "image/png",  # label distribution and token-length plots
    ],
    "02_formatting_examples_solutions": ["<b>Correct.</b>"] * 3,
    "03_qlora_training": [
        "x smaller",  # 16-bit versus NF4 footprint of this model, measured
        "trainable parameters",  # the LoRA parameter count, counted on this model
        "validation loss before training",
        "application/vnd.jupyter.widget-view+json",  # the training monitor
        "Validation loss fell from",  # the run's own before/after numbers
        "replies are valid JSON",  # the trained model asked about test tickets
        "result.json",  # the run folder, listed
        "Reloaded from disk",  # the run loaded again and scored
        "image/png",  # loss curves
    ],
    "03_qlora_training_solutions": ["<b>Correct.</b>"] * 3,
    "04_prompt_vs_finetune": [
        "160 test (as shipped",  # the splits and where they came from
        "[ftkit] reusing",  # notebook 03's fine-tune picked up, in smoke mode as in full
        "bootstrap 95% intervals",  # the comparison table, with intervals
        "The intervals",  # the verdict with this run's numbers
        "**Retrieval.**",  # retrieved shots against fixed ones, computed
        "**Constrained decoding.**",  # what is left of the lead when the format is certain
        "**The classical baseline**",  # TF-IDF + logistic regression against the fine-tune
        "n/a",  # the summary the classifier cannot write, said, not scored zero
        "on validation (",  # the fine-tune on validation and on test, side by side
        "Without the FAQ:",  # the knowledge demonstration, measured
        "tokens** per request",  # prompt cost, measured
        "Macro-F1 of the category",  # confusion matrices and macro-F1
        "application/vnd.jupyter.widget-view+json",  # error browser, comparator, controls
        "scores per size",  # the learning curve's points
        "What prompting did well",
        "image/png",  # the plots
    ],
    "04_prompt_vs_finetune_solutions": ["<b>Correct.</b>"] * 3,
    "05_iterate": [
        "lr 1e-05",  # three learning rates, each run read back from its folder
        "Validation loss at the end:",  # the learning rates compared, computed
        "Early stopping stopped at step",  # the loss's choice
        "the checkpoint chosen is step",  # checkpoints scored on validation, one chosen
        "unbalanced:",  # the skewed subset's class counts
        "rebalanced: recall",  # per-class recall and answer shares, both runs
        "of the test examples. Trained on the unbalanced",  # the drift, computed
        "adapter off (4-bit base)",  # the probe with the adapter switched off
        "The base model passes",  # forgetting, computed
        "estimate (GPU), GiB",  # full / LoRA / QLoRA beside the estimator
        "runtime alone",
        "more parameters than LoRA",
        "image/png",  # loss curves and confusion matrices
    ],
    "05_iterate_solutions": ["<b>Correct.</b>"] * 3,
    "06_use_and_ship": [
        "[ftkit] reusing",  # notebook 03's fine-tune picked up
        "application/vnd.jupyter.widget-view+json",  # the chat
        "fine-tuned ",  # the same question asked with the adapter on and off
        "exported adapter names it as:           HuggingFaceTB/SmolLM2-135M-Instruct",
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",  # the card's metadata header
        "as PeftModelForCausalLM in",  # loaded by a fresh process from the folder alone
        "greedy answers identical to the merged model's",  # each GGUF loaded back and checked
        'PARAMETER stop "<|im_end|>"',  # the Ollama Modelfile
        "The f16 file answered",  # the agreement, computed
        "nothing was uploaded",  # push_to_hub offline: fails at once, says so
        "SFTConfig: learning_rate=",  # the recipe in TRL's terms
    ],
    "06_use_and_ship_solutions": ["<b>Correct.</b>"] * 3,
}


# The same series on the shipped free-text task (DATASET = "brand_voice"): what it must show.
EXPECTED_VOICE = {
    "01_choosing_a_base_model": ["Paris", "task (text answers)", "replies are close"],
    "02_formatting_examples": [
        "Task brand_voice: the answer is free text",
        "overlaps between the splits: none",
        "detected as alpaca",
        "image/png",  # kinds per split, token lengths
    ],
    "03_qlora_training": ["Validation loss fell from", "replies are close to their reference"],
    "04_prompt_vs_finetune": [
        "Primary metric: rouge_l",
        "[ftkit] reusing",  # notebook 03's fine-tune of this dataset
        "The intervals",
        "Free text: no classes to confuse.",
        "No classical baseline",  # free text: said, not silently left out
        "**Retrieval.**",
        "scores per size",
        "What prompting did well",
    ],
    "05_iterate": [
        "Validation loss at the end:",
        "the checkpoint chosen is step",
        "answers in free text: there are no classes to unbalance",  # said, not crashed
        "The base model passes",
        "more parameters than LoRA",
    ],
    "06_use_and_ship": [
        "[ftkit] reusing",
        "Compare the two voices",  # free text: no JSON format to look for
        "as PeftModelForCausalLM in",
        "greedy answers identical to the merged model's",
        "rouge_l on",  # the exports scored with the task's own metric
    ],
}


def _check(name: str, executed, expected: dict = EXPECTED) -> None:
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = _outputs(executed)
    assert name in expected, f"say in EXPECTED what {name}.ipynb must show"
    for marker in expected[name]:
        assert marker in text, f"{name}.ipynb should show {marker!r}"
    for noise in (t for texts in BITSANDBYTES_NOISE.values() for t in texts):
        assert noise not in text, f"{name}.ipynb shows bitsandbytes' notice {noise!r}"
    # a library's tqdm bar (model loading, saving, GGUF reading) saved in the outputs reads
    # "Loading weights: 0%| 0/272" forever once the widget's state is gone: not in what
    # `make main` writes (a solutions notebook's own `save_pretrained` draws one, live)
    bars = re.findall(r"[^\"\n]{0,40}\d+%\|", text)
    if not name.endswith("_solutions"):
        assert not bars, f"{name}.ipynb keeps progress bars in its outputs: {bars[:3]}"
    if name.endswith("_solutions"):
        assert text.count("<b>Correct.</b>") == len(EXPECTED[name])
        assert "Not yet" not in text


@pytest.mark.notebook
@pytest.mark.parametrize("path", series_notebooks(), ids=lambda p: p.stem)
def test_series_notebook_runs_in_smoke_mode(path, smoke_series):
    """The series as the main job runs it (one `run_series` for all the notebooks)."""
    run = smoke_series.runs[path.name[:2]]
    _check(path.stem, nbformat.read(run.output, as_version=4))


@pytest.mark.notebook
@pytest.mark.slow  # the whole series again: 995 s on the AVX2-only kind (2026-12-04)
@pytest.mark.parametrize("path", series_notebooks(), ids=lambda p: p.stem)
def test_series_runs_on_the_free_text_dataset(path, voice_series):
    """DATASET = "brand_voice": every notebook runs on a task with free-text answers."""
    run = voice_series.runs[path.name[:2]]
    _check(path.stem, nbformat.read(run.output, as_version=4), EXPECTED_VOICE)


@pytest.mark.notebook
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_notebook_runs_in_smoke_mode(path, tmp_path, smoke_series, monkeypatch):
    """Each solutions notebook after the series, as a learner opens it after the notebook:
    it finds the series' runs (a copy: what its exercises retrain stays its own) and reuses
    those whose settings and data match, training only what its answers change."""
    runs = shutil.copytree(smoke_series.runs_dir, tmp_path / "runs")
    monkeypatch.setenv(SMOKE_RUNS_ENV, str(runs))
    run = run_notebook(path, tmp_path / path.name, mode="smoke", log=lambda _: None)
    _check(path.stem, nbformat.read(run.output, as_version=4))


def test_notebooks_04_and_06_write_notebook_03s_recipe():
    """04 and 06 pick up 03's fine-tune (`load_or_train`) and train it themselves when run
    alone: their recipe must be 03's, or a notebook run on its own scores another model."""
    paths = {path.name[:2]: path for path in series_notebooks()}

    def recipe(number: str) -> str:
        notebook = nbformat.read(paths[number], as_version=4)
        cells = [c.source for c in notebook.cells if 'run_name=f"{data.name}-qlora"' in c.source]
        assert len(cells) == 1, f"notebook {number}: one cell names the run {{data.name}}-qlora"
        call = re.search(r"TrainConfig\((.*?)\)  # fmt: skip", cells[0], re.S)
        assert call, f"notebook {number}: the recipe's TrainConfig(...) call"
        settings = " ".join(call.group(1).split()).replace(" overwrite=True,", "")
        assert "lr=" in settings and "num_epochs=" in settings
        return settings

    assert recipe("04") == recipe("03")
    assert recipe("06") == recipe("03")
