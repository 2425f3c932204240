"""What machine is this? Device, real bf16/fp16 support, memory, and the dtype to use.

The rest of ftkit asks this module instead of guessing: `load_model` picks its
dtype here, the memory estimator compares against the memory found here, and
notebook 01 opens by printing it.

Why not just ask `torch.cuda.is_bf16_supported()`? On T4-class GPUs (compute
capability 7.5) torch reports bf16 as supported because it can emulate it, but
emulated bf16 is many times slower than fp16 there. We decide from the compute
capability instead: bf16 needs Ampere (8.0) or newer.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass

import psutil
import torch

from ftkit.cache import cache_root
from ftkit.config import TrainingError

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: first NVIDIA generation with native bf16


@dataclass(frozen=True)
class HardwareInfo:
    """A snapshot of the learner's machine, as ftkit sees it."""

    device: str  # "cuda" or "cpu" (the device ftkit will train and generate on)
    device_name: str  # e.g. "NVIDIA T4" or the CPU model
    compute_capability: tuple[int, int] | None  # CUDA only, e.g. (7, 5) for a T4
    gpu_memory_gb: float | None  # total memory of GPU 0 in GiB, CUDA only
    bf16: bool  # native (not emulated) bf16 compute on this device
    fp16: bool  # fast fp16 compute on this device (CUDA only)
    cpu_cores: int  # logical cores visible to this process
    ram_gb: float  # total system memory in GiB
    ram_free_gb: float  # available system memory in GiB
    disk_free_gb: float  # free disk space where ftkit caches models, in GiB

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype ftkit uses on this machine (see `pick_dtype`)."""
        return pick_dtype(self)

    @property
    def track(self) -> str:
        """Which track of the course fits: "GPU" or "CPU"."""
        return "GPU" if self.device == "cuda" else "CPU"

    def as_dict(self) -> dict:
        """The snapshot as a plain dict (for printing, JSON and tests)."""
        return asdict(self) | {"dtype": str(self.dtype), "track": self.track}

    def __str__(self) -> str:
        device = f"{self.device}: {self.device_name}"
        if self.compute_capability:
            device += " (compute capability {}.{})".format(*self.compute_capability)
        lines = [
            f"device        {device}",
            f"gpu memory    {self.gpu_memory_gb:.1f} GiB" if self.gpu_memory_gb else "",
            f"bf16 / fp16   {'yes' if self.bf16 else 'no'} / {'yes' if self.fp16 else 'no'}"
            f"  -> ftkit computes in {str(self.dtype).removeprefix('torch.')}",
            f"cpu cores     {self.cpu_cores}",
            f"ram           {self.ram_free_gb:.1f} GiB free of {self.ram_gb:.1f} GiB",
            f"disk free     {self.disk_free_gb:.1f} GiB",
            f"track         {self.track}",
        ]
        return "\n".join(line for line in lines if line)


def cpu_name() -> str:
    """The processor's marketing name where the OS tells it, else its architecture."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def cuda_has_bf16(capability: tuple[int, int]) -> bool:
    """True if a GPU of this compute capability has native bf16 (Ampere, 8.0, or newer)."""
    return tuple(capability) >= BF16_MIN_CAPABILITY


def detect_hardware(cache_dir: str | os.PathLike | None = None) -> HardwareInfo:
    """Look at this machine: GPU (if any), bf16/fp16 support, cores, memory and disk."""
    memory = psutil.virtual_memory()
    disk_path = cache_dir or cache_root()
    while not os.path.exists(disk_path):
        disk_path = os.path.dirname(os.path.abspath(disk_path))
    common = {
        "cpu_cores": os.cpu_count() or 1,
        "ram_gb": memory.total / 2**30,
        "ram_free_gb": memory.available / 2**30,
        "disk_free_gb": shutil.disk_usage(disk_path).free / 2**30,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        capability = (props.major, props.minor)
        return HardwareInfo(
            device="cuda",
            device_name=props.name,
            compute_capability=capability,
            gpu_memory_gb=props.total_memory / 2**30,
            bf16=cuda_has_bf16(capability),
            fp16=True,
            **common,
        )
    return HardwareInfo(
        device="cpu",
        device_name=cpu_name(),
        compute_capability=None,
        gpu_memory_gb=None,
        bf16=cpu_has_bf16(),
        fp16=False,
        **common,
    )


@dataclass
class Precision:
    """How training computes on this machine."""

    dtype: torch.dtype  # the compute dtype (autocast), and the frozen base's dtype for LoRA
    name: str  # "bf16", "fp16" or "fp32"
    optimizer: str  # a TrainingArguments `optim` name
    device: str  # "cuda" or "cpu" (or "mps")
    reason: str  # one line a learner can read


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_REASONS = {
    "bf16": "bf16 autocast: native on this hardware, no loss scaling needed",
    "fp16": "fp16 autocast with loss scaling: this GPU has no native bf16",
    "fp32": "fp32: this CPU has no native bf16 (fp16 would be slower than fp32 here)",
}


def choose_precision(
    hardware: HardwareInfo | None = None, requested: str = "auto", optimizer: str = "auto"
) -> Precision:
    """Pick compute dtype and optimizer: bf16 where native, fp16 + loss scaling on T4s, else fp32.

    The one precision rule of ftkit: loading, training, evaluation and the doctor all ask it.
    """
    hardware = hardware or detect_hardware()
    cuda = hardware.device == "cuda"
    if requested == "auto":
        requested = "bf16" if hardware.bf16 else "fp16" if cuda else "fp32"
    if requested == "bf16" and not hardware.bf16:
        raise TrainingError(
            f"precision='bf16', but {hardware.device_name} has no native bf16 (a T4 only "
            "emulates it, many times slower). Use precision='auto'."
        )
    if requested == "fp16" and not cuda:
        raise TrainingError("precision='fp16' needs a CUDA GPU (loss scaling); use 'auto'.")
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda else "adamw_torch"
    return Precision(_DTYPES[requested], requested, optimizer, hardware.device, _REASONS[requested])


def pick_dtype(hardware: HardwareInfo | None = None) -> torch.dtype:
    """The compute dtype for this machine: bf16 where native, else fp16 on CUDA, else fp32."""
    return choose_precision(hardware).dtype


def half_dtype(hardware: HardwareInfo | None = None) -> torch.dtype:
    """The 16-bit dtype to save weights in: fp16 on a GPU without bf16 (a T4), else bf16.

    Files keep 16 bits whatever the machine computes in (a CPU without native bf16 computes
    in fp32, yet its exports load anywhere in bf16); `choose_precision` decides the compute.
    """
    hardware = hardware or detect_hardware()
    return torch.float16 if hardware.device == "cuda" and not hardware.bf16 else torch.bfloat16
