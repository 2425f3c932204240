"""The bridge to TRL: `TrainConfig.to_trl` maps every setting onto `SFTTrainer`'s arguments
(the same as ftkit's own `TrainingArguments`), a real `SFTTrainer` built from it trains the
embedded model on the tokens ftkit trains, and `report_to` is checked, passed on, and left
out of run fingerprints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch

from ftkit.catalog import EMBEDDED_MODEL, get_model_info
from ftkit.config import TRACKERS, TrainConfig, TrainingError
from ftkit.shipped import dataset_dir

# Every setting to_trl maps, away from its default (saves fall on evaluations, as they must).
CUSTOM = TrainConfig(
    method="lora", lora_r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
    num_epochs=3.0, max_steps=3, lr=1e-4, lr_scheduler="linear", warmup_ratio=0.1,
    weight_decay=0.01, max_grad_norm=0.5, batch_size=2, gradient_accumulation_steps=2,
    max_length=128, packing=True, group_by_length=True, gradient_checkpointing=True,
    logging_steps=1, eval_steps=2, early_stopping_patience=2, save_steps=4, keep_checkpoints=1,
    seed=7, precision="fp32", optimizer="adamw_torch", run_name="custom",
)  # fmt: skip


def shipped_rows(count: int = 4) -> list[dict]:
    """The first rows of the shipped support-ticket training data (one reply each)."""
    with open(dataset_dir("support_tickets") / "train.jsonl", encoding="utf-8") as file:
        return [json.loads(line) for line, _ in zip(file, range(count), strict=False)]


def prompt_completion(rows: list[dict]) -> list[dict]:
    """TRL's conversational prompt/completion form of chat rows: everything before the reply."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def test_importing_the_config_imports_no_torch_trl_or_peft():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, ftkit.config; "
         "print(sorted(m for m in ('torch', 'trl', 'peft', 'transformers') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_to_trl_maps_every_setting(tmp_path):
    setup = CUSTOM.to_trl(str(tmp_path / "out"))
    args = setup.args
    assert args.output_dir == str(tmp_path / "out")
    assert (args.learning_rate, args.lr_scheduler_type.value) == (1e-4, "linear")
    assert args.warmup_steps == 0.1 and args.get_warmup_steps(30) == 3  # a share of the steps
    assert (args.num_train_epochs, args.max_steps) == (3.0, 3)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (2, 4)
    assert args.gradient_accumulation_steps == 2
    assert (args.weight_decay, args.max_grad_norm, args.optim.value) == (0.01, 0.5, "adamw_torch")
    assert (args.seed, args.data_seed) == (7, 7)
    assert (args.max_length, args.packing) == (128, True)
    assert args.train_sampling_strategy == "group_by_length"
    assert args.activation_checkpointing and args.gradient_checkpointing
    assert (args.logging_steps, args.eval_strategy.value, args.eval_steps) == (1, "steps", 2)
    assert (args.save_strategy.value, args.save_steps, args.save_total_limit) == ("steps", 4, 1)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False
    assert (args.bf16, args.fp16) == (False, False)
    assert args.completion_only_loss is True and args.assistant_only_loss is False
    assert args.model_init_kwargs == {"dtype": "float32"}  # the precision's dtype
    assert args.report_to == []
    [early] = setup.callbacks
    assert early.early_stopping_patience == 2
    lora = setup.peft_config
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16, 0.1)
    assert set(lora.target_modules) == {"q_proj", "v_proj"}
    assert lora.task_type == "CAUSAL_LM"
    assert setup.quantization_config is None
    assert set(setup.trainer_kwargs()) == {"args", "peft_config", "callbacks"}
    # the defaults: a folder beside ftkit's runs, no evaluation without a validation set
    bare = replace(CUSTOM, early_stopping_patience=None).to_trl(evaluating=False).args
    assert bare.output_dir.endswith("custom-trl") and bare.eval_strategy.value == "no"
    assert TrainConfig(max_steps=None).to_trl().args.max_steps == -1  # epochs decide


def test_to_trl_says_what_ftkits_own_trainer_says(tmp_path):
    """Every argument both set is the same as in ftkit's `TrainingArguments`."""
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.trainer import training_arguments

    precision = choose_precision(detect_hardware(), "fp32", CUSTOM.optimizer)
    ours = training_arguments(CUSTOM, tmp_path, precision, evaluating=True).to_dict()
    theirs = CUSTOM.to_trl(str(tmp_path / "checkpoints")).args.to_dict()
    shared = [
        "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size",
        "gradient_accumulation_steps", "num_train_epochs", "max_steps", "learning_rate",
        "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "bf16",
        "fp16", "use_cpu", "activation_checkpointing", "activation_checkpointing_kwargs",
        "logging_steps", "logging_first_step", "logging_nan_inf_filter", "eval_strategy",
        "eval_steps", "save_strategy", "save_steps", "save_total_limit",
        "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
        "prediction_loss_only", "restore_callback_states_from_checkpoint",
        "ddp_find_unused_parameters", "report_to", "seed", "data_seed",
    ]  # fmt: skip
    assert {k: theirs[k] for k in shared} == {k: ours[k] for k in shared}
    # group_by_length: ftkit uses its own seeded sampler, TRL transformers' one
    assert theirs["train_sampling_strategy"] == "group_by_length"


def test_precision_and_the_methods_loading():
    bf16 = replace(CUSTOM, precision="bf16").to_trl().args
    assert (bf16.bf16, bf16.fp16, bf16.model_init_kwargs) == (True, False, {"dtype": "bfloat16"})
    auto = TrainConfig(method="lora").to_trl()
    assert auto.args.bf16 is True  # "auto" is left to TRL, whose default is bf16
    assert auto.args.model_init_kwargs is None  # and the base model's dtype to TRL (fp32)
    assert auto.args.activation_checkpointing is False  # TRL's default is on; ftkit's is off
    full = TrainConfig(method="full").to_trl()
    assert full.peft_config is None and full.quantization_config is None
    assert full.args.model_init_kwargs == {"dtype": "float32"}  # full: fp32 weights, as ftkit
    qlora = TrainConfig(method="qlora", lora_r=4).to_trl()
    quant = qlora.quantization_config
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_use_double_quant and quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert qlora.peft_config.r == 4
    assert qlora.trainer_kwargs()["quantization_config"] is quant
    from ftkit.models import quantization_config

    assert quant.to_dict() == quantization_config("nf4", torch.bfloat16).to_dict()  # ftkit's own
    fp32 = TrainConfig(method="qlora", precision="fp32").to_trl().quantization_config
    assert fp32.bnb_4bit_compute_dtype == torch.float32


@pytest.fixture(scope="module")
def tokenizer():
    from ftkit.models import load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


def test_sft_trainer_trains_the_embedded_model_with_lora(tmp_path, tokenizer):
    from datasets import Dataset
    from peft import PeftModel
    from trl import SFTTrainer

    from ftkit.formatting import tokenize_example
    from ftkit.models import load_model

    rows = shipped_rows(4)
    config = TrainConfig(method="lora", lora_r=8, lora_alpha=16, max_steps=2, batch_size=2,
                         max_length=128, lr=1e-4, precision="fp32", logging_steps=1,
                         eval_steps=None)  # fmt: skip
    setup = config.to_trl(str(tmp_path / "trl"), evaluating=False)
    model, _ = load_model(EMBEDDED_MODEL, dtype="fp32")
    data = Dataset.from_list(prompt_completion(rows))
    trainer = SFTTrainer(model=model, train_dataset=data, processing_class=tokenizer,
                         **setup.trainer_kwargs())  # fmt: skip
    assert trainer.args is setup.args
    assert (trainer.args.learning_rate, trainer.args.max_steps) == (1e-4, 2)
    assert trainer.args.per_device_train_batch_size == 2
    # the tokens and labels TRL trains are ftkit's, token for token
    for row, prepared in zip(rows, trainer.train_dataset, strict=True):
        mine = tokenize_example(row, tokenizer, config.max_length)
        assert prepared["input_ids"] == mine.input_ids
        assert prepared["labels"] == mine.labels
    # LoRA of rank 8 on every linear layer of every decoder layer, and nothing else trains
    assert isinstance(trainer.model, PeftModel)
    info = get_model_info(EMBEDDED_MODEL)
    layers = [m for m in trainer.model.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert len(layers) == info.num_layers * 7  # q, k, v, o, gate, up, down
    assert {m.r["default"] for m in layers} == {8}
    assert {m.scaling["default"] for m in layers} == {2.0}  # lora_alpha / r
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainable == info.lora_params(8) == 2_442_240
    output = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(output.training_loss) and output.training_loss > 0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_what_does_not_work_with_a_messages_dataset(tmp_path, tokenizer):
    """The two traps `to_trl`'s docstring names: a "messages" column trains on every token
    (no completion to mask), and assistant_only_loss needs {% generation %} markers."""
    from datasets import Dataset
    from trl import SFTTrainer

    from ftkit.models import load_model

    rows = shipped_rows(2)
    data = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    args = TrainConfig(method="full", max_length=128, precision="fp32").to_trl(
        str(tmp_path), evaluating=False
    ).args  # fmt: skip
    model, _ = load_model(EMBEDDED_MODEL, dtype="fp32")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    assert all(row["labels"] == row["input_ids"] for row in trainer.train_dataset)
    marked = replace(args, assistant_only_loss=True, completion_only_loss=None)
    with pytest.raises(ValueError, match="generation"):
        SFTTrainer(model=model, args=marked, train_dataset=data, processing_class=tokenizer)


@pytest.mark.parametrize(
    "bad",
    ["wandbb", "all", ["none", "wandb"], ["tensorboard", 3], [["wandb"]], ("wandb",), 42, None],
)
def test_report_to_refuses_what_it_does_not_know(bad):
    with pytest.raises(TrainingError, match='report_to must be "none", one of'):
        TrainConfig(report_to=bad).check()


@pytest.mark.parametrize("tracker", sorted(TRACKERS))
def test_report_to_names_the_package_to_install(tracker, monkeypatch):
    monkeypatch.setattr("ftkit.config._tracker_installed", lambda name: False)
    with pytest.raises(TrainingError, match=f"pip install {TRACKERS[tracker]}"):
        TrainConfig(report_to=[tracker]).check()
    TrainConfig(report_to="none").check()
    TrainConfig(report_to=["none"]).check()
    TrainConfig(report_to=[]).check()


def test_report_to_reaches_the_training_arguments(tmp_path, monkeypatch):
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.trainer import training_arguments

    precision = choose_precision(detect_hardware(), "fp32")
    default = training_arguments(TrainConfig(), tmp_path, precision, evaluating=False)
    assert default.report_to == []
    monkeypatch.setattr("ftkit.config._tracker_installed", lambda name: True)
    config = TrainConfig(report_to=["tensorboard", "wandb"])
    config.check()
    args = training_arguments(config, tmp_path, precision, evaluating=False)
    assert args.report_to == ["tensorboard", "wandb"]
    assert config.to_trl().args.report_to == ["tensorboard", "wandb"]


def test_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.trainer import training_arguments

    config = TrainConfig(report_to="tensorboard")
    config.check()
    precision = choose_precision(detect_hardware(), "fp32")
    assert training_arguments(config, tmp_path, precision, False).report_to == ["tensorboard"]
    assert config.to_trl().args.report_to == ["tensorboard"]


def test_report_to_changes_no_fingerprint_and_a_run_resumes_with_another(tokenizer):
    from ftkit.formatting import tokenize_examples
    from ftkit.hardware import choose_precision, detect_hardware
    from ftkit.reuse import fingerprint
    from ftkit.runs import config_changes

    config = TrainConfig(max_length=128)
    precision = choose_precision(detect_hardware(), "fp32")
    items = tokenize_examples(shipped_rows(2), tokenizer, config.max_length)
    key = fingerprint(config, precision, items)
    logged = replace(config, report_to=["tensorboard", "mlflow"])
    assert fingerprint(logged, precision, items) == key
    assert fingerprint(replace(config, lr=1e-4), precision, items) != key  # it can differ
    saved = json.loads(json.dumps(asdict(config)))
    assert config_changes(saved, logged) == []  # resuming with another tracker is allowed
    del saved["report_to"]  # a config.json written before report_to existed
    assert config_changes(saved, config) == []
