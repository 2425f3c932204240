"""Hardware detection, the dtype choice (bf16 only where it is native), and handing freed
heap memory back to the OS."""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import pytest
import torch

from ftkit.fast.cpu_memory import release_heap
from ftkit.hardware import cuda_has_bf16, detect_hardware, pick_dtype


@pytest.mark.parametrize(
    "capability, native",
    [
        ((7, 5), False),
        ((7, 0), False),
        ((6, 1), False),
        ((8, 0), True),
        ((8, 9), True),
        ((9, 0), True),
    ],
    ids=["T4", "V100", "P100", "A100", "RTX4090", "H100"],
)
def test_bf16_needs_ampere(capability, native):
    assert cuda_has_bf16(capability) is native


def test_this_machine():
    hardware = detect_hardware()
    assert hardware.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert hardware.cpu_cores >= 1 and hardware.ram_gb > 1
    assert "track" in str(hardware) and hardware.as_dict()["track"] in ("CPU", "GPU")


@pytest.mark.parametrize(
    "device, bf16, expected",
    [
        ("cuda", False, torch.float16),
        ("cuda", True, torch.bfloat16),
        ("cpu", True, torch.bfloat16),
        ("cpu", False, torch.float32),
    ],
    ids=["T4-fp16", "ampere-bf16", "cpu-bf16", "old-cpu-fp32"],
)
def test_pick_dtype(device, bf16, expected):
    hardware = dataclasses.replace(detect_hardware(), device=device, bf16=bf16)
    assert pick_dtype(hardware) == expected


def _resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_heap_returns_freed_small_tensors_to_the_os():
    # 300 MB of 100 kB tensors (under the mmap threshold: heap memory), then one more that
    # pins the heap's top, so glibc's own trimming at the top cannot give the rest back
    freed = [torch.ones(100_000, dtype=torch.uint8) for _ in range(3000)]
    pin = torch.ones(100_000, dtype=torch.uint8)
    del freed
    before = _resident_mib()
    assert release_heap()
    assert before - _resident_mib() > 200, "the freed 300 MB stayed resident"
    assert pin.sum() == 100_000


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="AVX2 and its stand-in exist on x86 CPUs only")  # fmt: skip
def test_the_avx2_stand_in_makes_ftkit_compute_in_fp32():
    """`benchmarks/as_avx2.py` (the AVX2-only kind's stand-in on an AVX512-BF16 CPU): the
    command it starts, and Python processes that one starts, see no native bf16 and AVX2
    kernels, so ftkit picks fp32; without it, this machine's own answer."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "as_avx2.py"
    probe = (
        "import subprocess, sys, torch; from ftkit.hardware import detect_hardware; "
        "print(torch.backends.cpu.get_cpu_capability(), detect_hardware().dtype, flush=True); "
        "subprocess.run([sys.executable, '-c', 'import torch; print(torch.cpu."
        "_is_avx512_bf16_supported())'], check=True)"
    )
    inside = subprocess.run([sys.executable, str(script), sys.executable, "-c", probe],
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert inside == ["AVX2", "torch.float32", "False"]
    outside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    assert outside[1] == str(detect_hardware().dtype)
