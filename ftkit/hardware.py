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

import functools
import os
import platform
import shutil
from dataclasses import asdict, dataclass

import torch

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: first NVIDIA generation with native bf16

# torch's bf16 matrix products on a CPU go through oneDNN, which keeps a compiled kernel
# (with its scratch memory) for every shape it meets, up to 1024 of them. Training batches
# change shape at every step, so over a 256-example QLoRA run the process grew ~30 MB per
# step and peaked at 1.78 GiB; with 64 kept it peaked at 1.50 GiB, as fast (same losses).
# oneDNN reads this when it builds its first kernel, so setting it on `import ftkit` is in
# time unless torch already multiplied bf16 matrices; a value you set yourself wins.
ONEDNN_KERNELS_KEPT = 64
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_KERNELS_KEPT))


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
    """True if this CPU computes bf16 natively (AVX512-BF16 or AMX).

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def cuda_has_bf16(capability: tuple[int, int]) -> bool:
    """True if a GPU of this compute capability has native bf16 (Ampere, 8.0, or newer).

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    return tuple(capability) >= BF16_MIN_CAPABILITY


def detect_hardware(cache_dir: str | os.PathLike | None = None) -> HardwareInfo:
    """Look at this machine: GPU (if any), bf16/fp16 support, cores, memory and disk.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    import psutil

    from ftkit.models import cache_root

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


def pick_dtype(hardware: HardwareInfo | None = None) -> torch.dtype:
    """The compute dtype for this machine: bf16 where native, else fp16 on CUDA, else fp32.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    hardware = hardware or detect_hardware()
    if hardware.bf16:
        return torch.bfloat16
    if hardware.device == "cuda":
        return torch.float16  # T4-class: fp16 with loss scaling, never emulated bf16
    return torch.float32


MMAP_THRESHOLD = 1 << 20  # bytes: allocations this large get their own pages from the OS
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


@functools.cache
def _glibc():
    """The C library when it is glibc on Linux (its malloc tuning applies), else None."""
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc give freed activation memory back to the OS at once (Linux, CPU training).

    A training step allocates and frees hundreds of activation tensors of 0.1-30 MB. glibc
    raises its mmap threshold as large blocks are freed, so after the first steps they come
    from its heap, which fragments and keeps the high-water mark: on this kit's QLoRA run
    the peak resident memory was 2.7 GiB. With a fixed 1 MiB threshold every such tensor is
    mapped and unmapped on its own: 2.1 GiB, same losses (benchmarks/RESULTS.md). A lower
    threshold saves more but maps so often that training gets half again slower. Returns
    False where it does not apply (not glibc). Taught in notebooks/03_qlora_training.ipynb.
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def release_heap() -> bool:
    """Hand the free pages inside glibc's heap back to the OS (`malloc_trim`); False where
    it does not apply (not glibc).

    Activations under the mmap threshold (most of a small model's: a batch of 8 x 94 tokens
    of 576 bf16 values is 0.85 MiB) come from the heap, and the holes they leave between
    steps stay resident. ftkit's trainer calls this after every backward pass on CPU: the
    peak of a 256-example QLoRA run fell from 2.20 to 1.95 GiB (138 s either way). It does
    cost a little time: 77 against 74 s on 128 examples, and 176 against 169 s for 40 steps
    of notebook 03's run (peak 2.07 against 2.28 GiB): about 4%, paid for a tenth less
    memory (benchmarks/RESULTS.md).
    Taught in notebooks/03_qlora_training.ipynb.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
