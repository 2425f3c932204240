"""accelerate configurations for training on several GPUs of one machine, shipped with ftkit.

    accelerate launch --config_file "$(python -m ftkit.launch ddp)" \\
        -m ftkit.training --config cfg.json --dataset support_tickets

`ddp.yaml`: data parallel, any method (QLoRA included), one process per GPU.
`fsdp.yaml`: fully sharded (FSDP2), for LoRA and full fine-tuning of models too big for one GPU.
Both say `num_processes: 2`; set it to your number of GPUs (or pass `--num_processes N`).
The DDP file is tested on two CPU processes (tests/test_launch.py); FSDP needs GPUs and was
not run here.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = ("ddp", "fsdp")


def config_path(name: str) -> Path:
    """The path of a shipped accelerate config: "ddp" or "fsdp"."""
    if name not in CONFIGS:
        raise ValueError(f"No accelerate config {name!r}; ftkit ships {list(CONFIGS)}.")
    return Path(__file__).resolve().parent / f"{name}.yaml"
