"""Run folders: what a run leaves behind, reloading it (in a fresh process, or an earlier
checkpoint), merging and exporting it, and resuming after a SIGKILL to the same adapter."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from _callbacks import AtStep
from safetensors.torch import load_file

import ftkit
from ftkit import progress
from ftkit.config import TrainConfig
from ftkit.course.plots import plot_losses, plot_runs
from ftkit.data import save_examples
from ftkit.generation import generate_replies
from ftkit.hardware import pick_dtype
from ftkit.models import load_model
from ftkit.reuse import training_code_id
from ftkit.runs import (
    SMOKE_RUNS_ENV,
    RunError,
    last_checkpoint,
    list_runs,
    load_run,
    merge_and_export,
    open_run_dir,
    runs_folder,
)
from ftkit.splits import load_dataset_splits
from ftkit.trainer import loss_on
from ftkit.training import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits():
    return load_dataset_splits("support_tickets")


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """A small QLoRA run with validation and checkpoints at steps 3 and 6."""
    runs_dir = tmp_path_factory.mktemp("runs")
    config = TrainConfig(
        batch_size=4, max_steps=6, lr=1e-3, warmup_ratio=0.0, logging_steps=1, eval_steps=3,
        save_steps=3, runs_dir=str(runs_dir), run_name="v1",
    )  # fmt: skip
    result = train(config, list(splits["train"])[:12], list(splits["validation"])[:4])
    return config, result


def test_run_folder_holds_config_metrics_adapter_and_card(trained):
    config, result = trained
    folder = result.run_dir
    saved = json.loads((folder / "config.json").read_text())
    assert saved["config"] == asdict(config)
    assert saved["data"]["train"]["examples"] == 12 and saved["data"]["validation"]["rows"] == 4
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    assert lines == result.history
    assert [r["step"] for r in lines if r["event"] == "eval"] == [3, 6]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (folder / "adapter").iterdir()
    }
    card = (folder / "README.md").read_text()
    for needle in ("HuggingFaceTB/SmolLM2-135M-Instruct", "12 examples", "| `lora_r` | `16` |",
                   "val loss", "load_run(\"v1\"", "PeftModel.from_pretrained"):  # fmt: skip
        assert needle in card, needle
    assert json.loads((folder / "result.json").read_text())["status"] == "finished"


def test_list_and_plot_runs(trained):
    config, result = trained
    [run] = list_runs(config.runs_dir)
    assert run.name == "v1" and run.checkpoints == [3, 6] and "finished" in str(run)
    figure = plot_runs([run, result])
    assert len(figure.axes[0].get_lines()) >= 6  # train, validation and best, per run
    best = min((r for r in result.history if r["event"] == "eval"), key=lambda r: r["val_loss"])
    labels = [text.get_text() for text in plot_losses(result).axes[0].get_legend().get_texts()]
    assert f"best: {best['val_loss']:.3f} at step {best['step']}" in labels


def test_load_run_in_a_fresh_process_gives_the_same_model(trained, splits):
    config, result = trained
    examples = list(splits["train"])[:4]
    here = loss_on(result.model, result.tokenizer, examples)
    script = (
        "import json, sys; from ftkit.runs import load_run; from ftkit.trainer import loss_on;"
        "from ftkit.splits import load_dataset_splits;"
        f"run = load_run('v1', runs_dir={config.runs_dir!r});"
        "examples = list(load_dataset_splits()['train'])[:4];"
        "print(json.dumps({'loss': loss_on(run.model, run.tokenizer, examples),"
        " 'method': run.config.method}))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["method"] == "qlora"
    assert there["loss"] == pytest.approx(here, rel=0.01)


def test_an_earlier_checkpoint_can_be_loaded(trained, splits):
    config, result = trained
    earlier = load_run("v1", runs_dir=config.runs_dir, checkpoint=3)
    examples = list(splits["train"])[:4]
    final = loss_on(result.model, result.tokenizer, examples)
    assert loss_on(earlier.model, earlier.tokenizer, examples) > final  # 3 steps less trained
    with pytest.raises(RunError, match=r"no checkpoint 4; it has \[3, 6\]"):
        load_run("v1", runs_dir=config.runs_dir, checkpoint=4)


def test_merged_export_matches_the_adapter(trained, splits, tmp_path):
    """Merged into a 16-bit base, W + BA is rounded to bf16, so the export is close to, not
    identical with, the adapter on a 16-bit base (greedy tokens of a lightly trained adapter
    can flip). Merged in fp32, greedy generations are identical."""
    config, _ = trained
    out = merge_and_export("v1", tmp_path / "merged", runs_dir=config.runs_dir)
    [weights] = out.glob("*.safetensors")
    assert (out / "tokenizer.json").is_file()
    assert {t.dtype for t in load_file(weights).values()} == {torch.bfloat16}  # 16-bit export
    merged, tokenizer = load_model(str(out))
    adapter = load_run("v1", runs_dir=config.runs_dir, quantization=None)  # unquantised base
    assert merged.dtype == adapter.model.dtype == pick_dtype()  # loaded in the machine's dtype
    examples = list(splits["validation"])[:8]
    base = loss_on(load_model()[0], tokenizer, examples)
    exported, unmerged = (loss_on(m, tokenizer, examples) for m in (merged, adapter.model))
    assert abs(exported - unmerged) < 0.1 * abs(base - unmerged)
    out32 = merge_and_export("v1", tmp_path / "merged32", runs_dir=config.runs_dir,
                             dtype=torch.float32)  # fmt: skip
    merged32, _ = load_model(str(out32), dtype="fp32")
    adapter32 = load_run("v1", runs_dir=config.runs_dir, quantization=None, dtype="fp32")
    prompts = [example.messages[:-1] for example in list(splits["test"])[:3]]
    ours = generate_replies(merged32, tokenizer, prompts, max_new_tokens=24)
    theirs = generate_replies(adapter32.model, tokenizer, prompts, max_new_tokens=24)
    assert [r.text for r in ours] == [r.text for r in theirs]


def test_a_taken_run_name_is_refused_unless_resuming_or_overwriting(trained):
    config, _ = trained
    with pytest.raises(RunError, match=r"already exists.*resume=True.*overwrite=True"):
        open_run_dir(config, resume=False)
    with pytest.raises(RunError, match=r"different config \(lr: 0.001 -> 0.01\)"):
        open_run_dir(replace(config, lr=0.01), resume=True)
    with pytest.raises(RunError, match=r"already ended \(finished\); there is nothing to resume"):
        open_run_dir(config, resume=True)


def test_last_checkpoint_skips_one_killed_mid_save(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path).endswith("checkpoint-4")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    started = time.monotonic()
    while not path.is_file():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() - started < timeout, f"no {path} after {timeout} s"
        time.sleep(0.2)


def test_sigkill_then_resume_ends_with_the_same_adapter(splits, tmp_path):
    """Kill a real training process after its step-4 checkpoint; resume; compare with a run
    that was never interrupted: same per-step losses after the resume (so the data position
    was restored, not just the weights) and the same final adapter."""
    data = save_examples(list(splits["train"])[:40], tmp_path / "train.jsonl")
    settings = {"batch_size": 2, "max_steps": 8, "save_steps": 2, "logging_steps": 1,
                "eval_steps": None, "lr": 1e-3, "runs_dir": str(tmp_path / "runs")}  # fmt: skip
    killed = TrainConfig(**settings, run_name="killed")
    (tmp_path / "cfg.json").write_text(json.dumps(asdict(killed)))
    command = [sys.executable, "-m", "ftkit.training", "--config", str(tmp_path / "cfg.json"),
               "--train", str(data)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(tmp_path / "runs/killed/checkpoints/checkpoint-4/trainer_state.json", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (tmp_path / "runs/killed/adapter").exists()  # it really died mid-run
    examples = list(splits["train"])[:40]
    resumed = train(killed, examples, resume=True)
    straight = train(TrainConfig(**settings, run_name="straight"), examples)
    assert resumed.steps == straight.steps == 8
    losses = {r["step"]: r["loss"] for r in resumed.history if r["event"] == "train"}
    reference = {r["step"]: r["loss"] for r in straight.history if r["event"] == "train"}
    assert sorted(losses) == list(range(1, 9))  # nothing logged twice, nothing missing
    for step in range(5, 9):
        assert losses[step] == pytest.approx(reference[step], rel=1e-3), step
    _same_adapter(resumed, load_file(straight.adapter_dir / "adapter_model.safetensors"))


SIX_STEPS = {"method": "qlora", "batch_size": 2, "max_steps": 6, "save_steps": 100,
             "logging_steps": 1, "eval_steps": None, "lr": 1e-3}  # fmt: skip


@pytest.fixture(scope="module")
def never_stopped(splits, tmp_path_factory):
    """24 tickets and the adapter of a six-step run of them that nothing stopped."""
    examples = list(splits["train"])[:24]
    runs = tmp_path_factory.mktemp("straight")
    straight = train(TrainConfig(**SIX_STEPS, runs_dir=str(runs), run_name="straight"), examples)
    return examples, load_file(straight.adapter_dir / "adapter_model.safetensors")


def _same_adapter(result, reference: dict) -> None:
    ours = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert sorted(ours) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.allclose(ours[name], tensor, rtol=1e-3, atol=1e-5), name


def test_a_run_stopped_by_ctrl_c_continues_where_it_stopped(never_stopped, tmp_path, monkeypatch,
                                                            capsys):  # fmt: skip
    """`make main` interrupted during training: the runner's stop file ends the run after its
    step in progress with a checkpoint there; no training starts while it exists; the next
    run of the notebook (`train(reuse=True)`) continues from that checkpoint and ends with the
    adapter of a run never interrupted."""
    examples, reference = never_stopped
    stop = tmp_path / ".ftkit-stop"
    monkeypatch.setenv(progress.STOP_ENV, str(stop))
    config = TrainConfig(**SIX_STEPS, runs_dir=str(tmp_path / "runs"), run_name="interrupted",
                         overwrite=True)  # fmt: skip
    ctrl_c = AtStep(2, stop.touch)  # what run_series does on Ctrl-C
    first = train(config, examples, reuse=True, callbacks=[ctrl_c])
    assert first.status == "stopped: interrupted (Ctrl-C during a notebook run)"
    assert first.steps in (2, 3)  # after the step in progress, whichever callback ran first
    assert (first.run_dir / "checkpoints" / f"checkpoint-{first.steps}").is_dir()
    with pytest.raises(KeyboardInterrupt, match="training interrupted not started"):
        train(config, examples, reuse=True)
    stop.unlink()  # the next `make main`
    capsys.readouterr()
    resumed = train(config, examples, reuse=True)
    said = capsys.readouterr().out
    assert f"interrupted run at {first.run_dir} from its checkpoint at step {first.steps}" in said
    assert (resumed.status, resumed.steps) == ("finished", 6)
    _same_adapter(resumed, reference)
    # finished now: the next run reuses it
    assert train(config, examples, reuse=True).reused


@pytest.mark.parametrize("given", ["peft model", "base model"])
def test_the_training_cell_run_again_on_the_same_model(given, never_stopped, tmp_path, capsys):
    """Notebook 03 hands `train` the model it gave adapters (`add_adapters`); run the cell
    again after Stop and the run continues from its checkpoint to the adapter of a run never
    stopped; run it again with another setting and that run starts from fresh adapters, not
    the trained ones, as a run on a freshly loaded model does. Given the base model instead,
    peft wraps nothing twice."""
    from ftkit.callbacks import StopControl
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.training import add_adapters, load_for_training

    examples, reference = never_stopped
    config = TrainConfig(**SIX_STEPS, runs_dir=str(tmp_path / "runs"), run_name="cell",
                         overwrite=True)  # fmt: skip
    model, tokenizer = load_for_training(config, choose_precision(detect_hardware()))
    model = add_adapters(model, config) if given == "peft model" else model
    stop = StopControl()  # the monitor's Stop button
    clicked = AtStep(2, lambda: stop.request_stop("Stop button"))
    first = train(config, examples, model=model, tokenizer=tokenizer, reuse=True, monitor=stop,
                  callbacks=[clicked])  # fmt: skip
    assert first.status == "stopped: Stop button"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = train(config, examples, model=model, tokenizer=tokenizer, reuse=True)
    assert not [w for w in caught if "peft_config" in str(w.message) or "PEFT" in str(w.message)]
    assert (again.status, again.steps) == ("finished", 6)
    _same_adapter(again, reference)
    if given == "base model":
        return  # what follows is the same for both
    capsys.readouterr()
    changed = replace(config, lr=3e-3, run_name="changed")
    rerun = train(changed, examples, model=model, tokenizer=tokenizer, reuse=True)
    assert "this run starts from fresh ones" in capsys.readouterr().out
    fresh = train(replace(changed, run_name="fresh"), examples)
    _same_adapter(rerun, load_file(fresh.adapter_dir / "adapter_model.safetensors"))


def _lora_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_reuse_returns_the_finished_run_instead_of_training(trained, splits, capsys):
    config, first = trained
    folder = first.run_dir / "config.json"
    written = folder.stat().st_mtime_ns
    again = replace(config, logging_steps=2, keep_checkpoints=1, overwrite=True)  # bookkeeping
    result = train(again, list(splits["train"])[:12], list(splits["validation"])[:4], reuse=True)
    assert "Reusing the finished run" in capsys.readouterr().out
    assert result.reused and "reused" in result.summary()
    assert folder.stat().st_mtime_ns == written  # overwrite=True did not delete it
    assert (result.status, result.steps, result.val_loss) == (first.status, 6, first.val_loss)
    assert result.history == first.history and result.seconds == first.seconds
    examples = list(splits["validation"])[4:8]
    assert loss_on(result.model, result.tokenizer, examples) == pytest.approx(
        loss_on(first.model, first.tokenizer, examples), abs=1e-6
    )


def test_reuse_loads_the_adapter_into_a_model_the_caller_prepared(trained, splits):
    """Notebook 03's path: the model was loaded, given adapters and used before train()."""
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.training import add_adapters, load_for_training

    config, first = trained
    model, tokenizer = load_for_training(config, choose_precision(detect_hardware()))
    model = add_adapters(model, config)
    fresh = _lora_weights(model)
    result = train(config, list(splits["train"])[:12], list(splits["validation"])[:4],
                   model=model, tokenizer=tokenizer, reuse=True)  # fmt: skip
    assert result.reused and result.model is model
    saved = load_file(str(first.adapter_dir / "adapter_model.safetensors"))
    now = _lora_weights(model)
    assert not all(torch.equal(fresh[k], now[k]) for k in now)  # B started at zero
    for key, value in saved.items():
        match = [k for k in now if k.replace(".default", "") == key]
        assert len(match) == 1 and torch.equal(now[match[0]], value.to(now[match[0]].dtype))


def test_reuse_refuses_a_run_whose_settings_or_data_differ(trained, splits, capsys):
    from ftkit.formatting import tokenize_examples
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.reuse import fingerprint, reusable_run

    config, first = trained
    precision = choose_precision(detect_hardware())
    items = tokenize_examples(list(splits["train"])[:12], first.tokenizer, config.max_length)
    val = sorted(tokenize_examples(list(splits["validation"])[:4], first.tokenizer),
                 key=lambda i: len(i.input_ids))  # fmt: skip
    key = fingerprint(config, precision, items, val)
    saved = json.loads((first.run_dir / "config.json").read_text())["fingerprint"]
    assert key == saved  # what train() wrote is what the same inputs give
    assert fingerprint(replace(config, run_name="x", logging_steps=9), precision, items, val) == key
    assert fingerprint(config, precision, items, None) != key
    assert fingerprint(replace(config, seed=1), precision, items, val) != key
    labels = list(items[0].labels)
    labels[next(i for i, label in enumerate(labels) if label != -100)] = -100  # one token less
    fewer = [replace(items[0], labels=labels), *items[1:]]
    assert fingerprint(config, precision, fewer, val) != key
    assert fingerprint(config, precision, items[:-1], val) != key
    assert reusable_run(config, key) == first.run_dir
    faster = replace(config, lr=2e-3)
    assert reusable_run(faster, fingerprint(faster, precision, items, val)) is None
    assert "settings changed: lr: 0.001 -> 0.002" in capsys.readouterr().out
    assert reusable_run(config, fingerprint(config, precision, items[:-1], val)) is None
    assert "the data, the base model's weights" in capsys.readouterr().out


def test_a_run_without_validation_reuses_any_run_that_trained_its_adapter(
    trained, splits, tmp_path, capsys
):
    """Notebook 04's learning curve (no validation) and notebook 05's run of the same recipe
    (validated every few steps, in runs/iterate): one training serves both, because
    evaluating and saving checkpoints change no weight."""
    from ftkit.formatting import tokenize_examples
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.reuse import fingerprint, weights_fingerprint

    config, first = trained  # validated at steps 3 and 6, checkpoints at 3 and 6
    examples = list(splits["train"])[:12]
    runs = tmp_path / "runs"
    shutil.copytree(first.run_dir, runs / "iterate" / "v1")  # notebook 05's folder
    curve = replace(config, runs_dir=str(runs), run_name="curve-12", eval_steps=None,
                    save_steps=10_000)  # fmt: skip
    capsys.readouterr()
    result = train(curve, examples, reuse=True)
    assert f"Reusing the finished run at {runs / 'iterate' / 'v1'}" in capsys.readouterr().out
    assert result.reused and result.run_dir == runs / "iterate" / "v1"
    assert (result.steps, result.val_loss) == (6, first.val_loss)
    assert not (runs / "curve-12").exists()
    # the premise, measured: trained without validation, the very same adapter
    fresh = train(replace(curve, run_name="fresh"), examples)
    assert not fresh.reused and fresh.val_loss is None
    ours = load_file(fresh.adapter_dir / "adapter_model.safetensors")
    theirs = load_file(first.adapter_dir / "adapter_model.safetensors")
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    # what the key leaves out, and what it keeps
    precision = choose_precision(detect_hardware())
    items = tokenize_examples(examples, first.tokenizer, config.max_length)
    val = sorted(tokenize_examples(list(splits["validation"])[:4], first.tokenizer),
                 key=lambda i: len(i.input_ids))  # fmt: skip
    key = weights_fingerprint(curve, precision, items)
    assert json.loads((first.run_dir / "config.json").read_text())["weights_fingerprint"] == key
    assert weights_fingerprint(config, precision, items, val) == key
    assert weights_fingerprint(replace(curve, lr=2e-3), precision, items) != key
    assert weights_fingerprint(curve, precision, items[:-1]) != key
    early = replace(config, early_stopping_patience=2)  # the validation loss steers it
    steered = weights_fingerprint(early, precision, items, val)
    assert steered == fingerprint(early, precision, items, val)


def test_reuse_trains_again_when_the_data_changed(trained, splits, tmp_path, capsys):
    import shutil

    config, first = trained
    shutil.copytree(first.run_dir, tmp_path / "v1")
    moved = replace(config, runs_dir=str(tmp_path), max_steps=2, eval_steps=None, overwrite=True)
    result = train(moved, list(splits["train"])[1:13], reuse=True)
    out = capsys.readouterr().out
    assert "cannot be reused (settings changed: eval_steps: 3 -> None, max_steps: 6 -> 2)" in out
    assert not result.reused and result.steps == 2
    again = train(moved, list(splits["train"])[1:13], reuse=True)
    assert again.reused and again.steps == 2
    assert train(moved, list(splits["train"])[2:14], reuse=True).reused is False
    assert "the data, the base model's weights" in capsys.readouterr().out


def test_runs_folder_keeps_smoke_runs_apart(tmp_path, monkeypatch):
    """Full mode: runs/. Smoke mode: the series' shared scratch folder, else a fresh one."""
    monkeypatch.delenv(SMOKE_RUNS_ENV, raising=False)
    assert runs_folder("full") == "runs"
    first, second = Path(runs_folder("smoke")), Path(runs_folder("smoke"))
    try:
        assert first != second and first.is_dir() and not any(first.iterdir())
        assert Path(tempfile.gettempdir()) in first.parents
    finally:
        shutil.rmtree(first), shutil.rmtree(second)
    shared = tmp_path / "series" / "runs"
    monkeypatch.setenv(SMOKE_RUNS_ENV, str(shared))
    assert runs_folder("smoke") == str(shared) and shared.is_dir()
    assert runs_folder("full") == "runs"  # the learner's runs, whatever the environment says
    with pytest.raises(ValueError, match='"full" or "smoke"'):
        runs_folder("quick")


def test_a_lone_smoke_runs_folder_goes_when_the_kernel_ends(monkeypatch):
    """A notebook run in smoke mode outside a series leaves nothing in the temporary folder."""
    monkeypatch.delenv(SMOKE_RUNS_ENV, raising=False)
    code = (
        "from pathlib import Path; from ftkit.runs import runs_folder\n"
        "folder = Path(runs_folder('smoke')); (folder / 'run' / 'adapter').mkdir(parents=True)\n"
        "(folder / 'run' / 'adapter' / 'weights').write_bytes(bytes(1000)); print(folder)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("ftkit-smoke-runs-") and not folder.exists()


def test_the_training_code_id_covers_every_module_outside_the_course(tmp_path):
    """Found by package, so a moved or added module counts; the course zone does not."""
    package = tmp_path / "ftkit"
    junk = shutil.ignore_patterns("__pycache__", "notebooks", "datasets")
    shutil.copytree(Path(ftkit.__file__).parent, package, ignore=junk)
    before = training_code_id(package)
    assert before == training_code_id(Path(ftkit.__file__).parent)  # same code, same id
    (package / "course" / "plots.py").write_text("# a plot changes no weight\n")
    assert training_code_id(package) == before
    (package / "fast" / "common.py").write_text("# an edited speed-up\n")
    edited = training_code_id(package)
    assert edited != before
    (package / "fast" / "newly_added.py").write_text("X = 1\n")
    assert training_code_id(package) != edited
