"""Shipping a run (ftkit.ship): a portable adapter that a fresh process loads with peft's
AutoPeftModelForCausalLM from its folder alone, a merged model, model cards with a metadata
header, and pushing to the hub, which fails at once offline (the hub is never called)."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
import torch
import yaml

from ftkit.catalog import EMBEDDED_MODEL, get_model_info
from ftkit.config import TrainConfig
from ftkit.export import greedy_answers
from ftkit.models import embedded_model_dir
from ftkit.runs import load_run
from ftkit.ship import (
    ShipError,
    export_adapter,
    export_merged,
    load_in_fresh_process,
    push_to_hub,
    shipped_files,
    stage_in_hub_cache,
)
from ftkit.splits import load_dataset_splits
from ftkit.training import train

HUB_ID = get_model_info(EMBEDDED_MODEL).hub_id
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def splits():
    return load_dataset_splits("support_tickets")


@pytest.fixture(scope="module")
def run(splits, tmp_path_factory):
    """A small QLoRA run on the embedded model, and three test prompts."""
    runs_dir = tmp_path_factory.mktemp("runs")
    config = TrainConfig(batch_size=4, max_steps=4, lr=2e-3, warmup_ratio=0.0, eval_steps=None,
                         save_steps=4, runs_dir=str(runs_dir), run_name="ship")  # fmt: skip
    train(config, list(splits["train"])[:16])
    prompts = [example.messages[:-1] for example in list(splits["test"])[:3]]
    return load_run("ship", runs_dir=runs_dir, quantization=None, dtype="fp32"), prompts


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A hub cache holding the base under its hub id, as on a machine that downloaded it."""
    cache = tmp_path_factory.mktemp("hub-cache")
    stage_in_hub_cache(embedded_model_dir(), HUB_ID, cache)
    return cache


def _answers(model, tokenizer, prompts) -> list[str]:
    """One prompt at a time, no padding: as the fresh process answers."""
    return greedy_answers(model, tokenizer, prompts, NEW_TOKENS)


def test_the_adapter_loads_in_a_fresh_process_from_its_folder_alone(run, hub_cache, tmp_path):
    loaded, prompts = run
    exported = export_adapter(loaded, tmp_path / "export", metrics={"test labels_exact": 42.5})
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID  # not the local conversion cache
    source = json.loads((exported / "ftkit_source.json").read_text())
    assert source["trained_on"] == str(embedded_model_dir())  # the local source, kept
    assert not list(exported.glob("*.bin"))  # no pickle (training_args.bin) leaves
    assert (exported / "chat_template.jinja").is_file()
    elsewhere = shutil.copytree(exported, tmp_path / "another-machine" / "adapter")
    shutil.rmtree(exported)  # nothing may point back at the export or the run
    fresh = load_in_fresh_process(elsewhere, prompts, hub_cache, NEW_TOKENS)
    assert fresh["class"] == "PeftModelForCausalLM"
    assert fresh["answers"] == _answers(loaded.model, loaded.tokenizer, prompts)


def test_without_the_base_anywhere_the_fresh_load_says_so(run, tmp_path):
    loaded, prompts = run
    exported = export_adapter(loaded, tmp_path / "export")
    with pytest.raises(ShipError, match="could not load") as error:
        load_in_fresh_process(exported, prompts[:1], tmp_path / "empty-cache", NEW_TOKENS)
    assert HUB_ID in str(error.value)  # the process's own error names what it looked for


def test_the_cards_carry_a_metadata_header_and_an_honest_note(run, tmp_path):
    loaded, _ = run
    exported = export_adapter(loaded, tmp_path / "export", metrics={"test labels_exact": 42.5})
    text = (exported / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["base_model"] == HUB_ID and header["library_name"] == "peft"
    assert {"ftkit", "qlora", f"base_model:adapter:{HUB_ID}"} <= set(header["tags"])
    assert header["datasets"] == ["support_tickets"]
    results = header["model-index"][0]["results"]
    metrics = {m["name"]: (m["value"], r["dataset"]["split"])
               for r in results for m in r["metrics"]}  # fmt: skip
    assert metrics["test labels_exact"] == (42.5, "test")
    assert metrics["train loss"] == (round(loaded.result["train_loss"], 4), "train")
    assert "dequantised" in text and "AutoPeftModelForCausalLM" in text
    run_card = (loaded.path / "README.md").read_text()  # the run folder's own card too
    assert yaml.safe_load(run_card.split("---\n")[1])["base_model"] == HUB_ID


def test_the_merged_model_loads_in_a_fresh_process_and_answers_as_the_adapter(run, tmp_path):
    loaded, prompts = run
    merged = export_merged(loaded, tmp_path / "merged", dtype=torch.float32)  # merged exactly
    assert (merged / "chat_template.jinja").is_file() and list(merged.glob("*.safetensors"))
    header = yaml.safe_load((merged / "README.md").read_text().split("---\n")[1])
    assert header["library_name"] == "transformers" and header["base_model"] == HUB_ID
    fresh = load_in_fresh_process(merged, prompts, None, NEW_TOKENS)
    assert fresh["class"] == "LlamaForCausalLM"
    assert fresh["answers"] == _answers(loaded.model, loaded.tokenizer, prompts)


def test_a_full_fine_tune_has_no_adapter_to_export(run, tmp_path):
    loaded, _ = run
    full = load_run("ship", runs_dir=loaded.path.parent, quantization=None)
    full.config.method = "full"
    with pytest.raises(ShipError, match="full fine-tune"):
        export_adapter(full, tmp_path / "x")


def test_push_fails_within_a_second_offline(run, tmp_path, monkeypatch):
    loaded, _ = run
    exported = export_adapter(loaded, tmp_path / "export")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ShipError, match="nothing was uploaded") as error:
        push_to_hub(exported, "learner/support-tickets")
    assert time.perf_counter() - started < 1.0
    assert "hf upload learner/support-tickets" in str(error.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(ShipError, match="Cannot reach the Hugging Face hub"):
        push_to_hub(exported, "learner/support-tickets")
    assert time.perf_counter() - started < 1.0


def test_push_without_a_token_says_how_to_log_in(run, tmp_path, monkeypatch):
    loaded, _ = run
    exported = export_adapter(loaded, tmp_path / "export")
    with socket.socket() as listening:  # a local endpoint that answers: "online"
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token
        with pytest.raises(ShipError, match="hf auth login"):
            push_to_hub(exported, "learner/support-tickets")


def test_push_refuses_a_run_folder_and_a_bad_repo_id(run):
    loaded, _ = run
    with pytest.raises(ShipError, match="is a run folder"):
        push_to_hub(loaded.path, "learner/run")
    with pytest.raises(ShipError, match="your-name/model-name"):
        push_to_hub(loaded.adapter_dir, "no-owner")


def test_what_would_be_uploaded_leaves_pickles_out(run):
    loaded, _ = run
    assert (loaded.adapter_dir / "training_args.bin").is_file()  # the trainer's pickle
    names = [name for name, _ in shipped_files(loaded.adapter_dir)]
    assert "adapter_model.safetensors" in names and "training_args.bin" not in names


def test_the_exports_table_escapes_names_and_links_relative(tmp_path, monkeypatch):
    """Notebook 06's tables (and the report section made of them) show file names as text."""
    from ftkit.course.shipping import exports_html, files_html

    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "exports" / "<b>odd'name.gguf"
    odd.parent.mkdir()
    odd.write_bytes(b"x" * 2_000_000)
    rows = [{"form": "<script>x</script>", "path": odd, "score": 50.0, "same": 7, "seconds": 3}]
    table = exports_html(rows, "labels_exact", 8)
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "href='exports/&lt;b&gt;odd&#x27;name.gguf'" in table  # relative, quoted, escaped
    assert "2 MB" in table and "7 of 8" in table and "3 s" in table
    listing = files_html([(odd.name, 2_000_000)], odd.parent)
    assert "&lt;b&gt;odd" in listing and "1 file," in listing  # not "1 files"
