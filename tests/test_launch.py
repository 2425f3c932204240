"""The accelerate configs ftkit ships (ftkit/launch): both parse as accelerate reads them, and
the data-parallel one trains the same run as `torchrun` on two CPU processes (the slow tier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from ftkit.config import TrainConfig
from ftkit.launch import CONFIGS, config_path

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_configs_parse_as_accelerate_reads_them():
    ddp, fsdp = (load_config_from_file(str(config_path(name))) for name in CONFIGS)
    assert str(ddp.distributed_type).endswith("MULTI_GPU") and ddp.num_processes == 2
    assert str(fsdp.distributed_type).endswith("FSDP") and fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    for config in (ddp, fsdp):
        assert config.mixed_precision == "no" and config.num_machines == 1  # ftkit picks dtype
    with pytest.raises(ValueError, match="ftkit ships"):
        config_path("deepspeed")


def test_the_config_path_command_prints_a_file_the_wheel_carries():
    done = subprocess.run([sys.executable, "-m", "ftkit.launch", "fsdp"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert Path(done.stdout.strip()).is_file()
    assert '"launch/*.yaml"' in (ROOT / "pyproject.toml").read_text()  # package data


def _train(launcher: list[str], folder: Path) -> list[dict]:
    """The training records of one 3-step QLoRA run started by `launcher` with 2 processes."""
    config = TrainConfig(method="qlora", max_steps=3, batch_size=2, eval_steps=None, lr=1e-3,
                         warmup_ratio=0.0, logging_steps=1, micro_batch_tokens=128,
                         runs_dir=str(folder / "runs"), run_name="t", max_length=256)  # fmt: skip
    path = folder / "cfg.json"
    path.write_text(json.dumps(config.__dict__))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "ftkit.training", "--config", str(path), "--dataset",
               "support_tickets", "--limit", "16"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (folder / "runs/t/metrics.jsonl").open()]
    return [r for r in records if r["event"] == "train"]


@pytest.mark.slow
def test_accelerate_launch_with_the_ddp_config_trains_as_torchrun_does(tmp_path):
    """Two ranks (gloo on CPU) from the shipped ddp.yaml, as a learner with two GPUs runs it:
    the same steps, epochs and losses as `torchrun --nproc_per_node 2` on the same config."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(config_path("ddp"))]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    (tmp_path / "a").mkdir()
    (tmp_path / "t").mkdir()
    launched = _train(accelerate, tmp_path / "a")
    reference = _train(torchrun, tmp_path / "t")
    assert [r["step"] for r in launched] == [1, 2, 3]
    assert launched[-1]["epoch"] == pytest.approx(0.75)  # 3 steps x 2 ranks x 2 of 16
    assert [r["loss"] for r in launched] == pytest.approx([r["loss"] for r in reference], rel=1e-4)
