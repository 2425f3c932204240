"""The doctor's rows, fixes and track for machines we do not have (T4, A100, P100, a laptop
whose torch cannot see its GPU, too little memory), and the real report on this machine.

The GPU machines are described as plain `HardwareInfo` and `TorchBuild` values, with the
numbers those machines report (a Colab T4: compute capability 7.5, 14.7 GiB).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftkit.course.doctor import (
    DoctorReport,
    TorchBuild,
    cuda_wheel_command,
    detect_torch_build,
    doctor,
    first_gpu,
    machine_checks,
    track_check,
)
from ftkit.hardware import HardwareInfo

CACHE = Path("/home/learner/.cache/ftkit")
T4 = HardwareInfo("cuda", "Tesla T4", (7, 5), 14.7, bf16=False, fp16=True, cpu_cores=2,
                  ram_gb=12.7, ram_free_gb=11.2, disk_free_gb=70.0)  # fmt: skip
A100 = HardwareInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.4, bf16=True, fp16=True,
                    cpu_cores=12, ram_gb=83.5, ram_free_gb=80.1, disk_free_gb=150.0)  # fmt: skip
P100 = HardwareInfo("cuda", "Tesla P100-PCIE-16GB", (6, 0), 15.9, bf16=False, fp16=True,
                    cpu_cores=4, ram_gb=25.5, ram_free_gb=24.0, disk_free_gb=60.0)  # fmt: skip
LAPTOP = HardwareInfo("cpu", "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz", None, None, bf16=False,
                      fp16=False, cpu_cores=8, ram_gb=15.5, ram_free_gb=9.8,
                      disk_free_gb=120.0)  # fmt: skip
CUDA_BUILD = TorchBuild("2.5.1+cu124", "CUDA 12.4")
CPU_BUILD = TorchBuild("2.13.0+cpu", None)


def _rows(hardware: HardwareInfo, build: TorchBuild) -> dict:
    checks = [*machine_checks(hardware, build, CACHE), track_check(hardware, build)]
    return {check.name: check for check in checks}


def _fixes(rows: dict) -> dict:
    return {name: check.fix for name, check in rows.items() if not check.ok}


def test_t4_trains_in_fp16_on_the_gpu_track():
    rows = _rows(T4, CUDA_BUILD)
    assert _fixes(rows) == {}
    assert rows["cuda"].value == "available (CUDA 12.4): Tesla T4, 14.7 GiB"
    assert rows["compute capability"].value == "7.5"
    assert rows["precision"].value == (
        "bf16 emulated only (needs 8.0+), fp16 yes -> training computes in fp16 with loss scaling"
    )
    assert rows["track"].value.startswith("GPU: torch uses the Tesla T4;")
    assert "fits in 15 GiB" in rows["track"].value and "16-bit" not in rows["track"].value


def test_a100_trains_in_bf16():
    rows = _rows(A100, CUDA_BUILD)
    assert _fixes(rows) == {}
    assert rows["precision"].value == "bf16 native, fp16 yes -> training computes in bf16"
    assert rows["track"].value.startswith("GPU: torch uses the NVIDIA A100-SXM4-40GB;")


def test_a_gpu_older_than_volta_gets_16_bit_advice():
    rows = _rows(P100, CUDA_BUILD)
    assert list(_fixes(rows)) == ["compute capability"]
    assert rows["compute capability"].value == "6.0"
    assert rows["compute capability"].fix.startswith("bitsandbytes 4-bit needs 7.0+")
    assert "method='lora'" in rows["compute capability"].fix
    assert "in 16-bit (no 4-bit below compute capability 7.0)" in rows["track"].value


@pytest.mark.parametrize(
    "build, cuda_row",
    [
        (CPU_BUILD, "not available: no NVIDIA GPU on this machine (a CPU-only torch)"),
        (CUDA_BUILD, "not available: no NVIDIA GPU on this machine (a CUDA 12.4 build of torch)"),
        (TorchBuild("2.5.1+cu124", "CUDA 12.4", "NVIDIA GeForce RTX 3060", visible_devices=""),
         "NVIDIA GeForce RTX 3060 hidden by CUDA_VISIBLE_DEVICES: the CPU track, on purpose"),
    ],
    ids=["cpu-wheel", "cuda-wheel-no-gpu", "gpu-hidden"],
)  # fmt: skip
def test_a_laptop_without_a_usable_gpu_follows_the_cpu_track(build, cuda_row):
    rows = _rows(LAPTOP, build)
    assert _fixes(rows) == {}
    assert rows["cuda"].value == cuda_row
    assert "compute capability" not in rows
    assert rows["device"].value == "cpu: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz"
    assert rows["precision"].value == "bf16 no, fp16 no -> training computes in fp32"
    assert rows["track"].value == (
        "CPU: no GPU that torch can use; the embedded SmolLM2-135M, everything offline"
    )


def test_a_gpu_behind_a_cpu_only_torch_gets_the_cuda_wheel_command():
    build = TorchBuild("2.13.0+cpu", None, driver_gpu="NVIDIA GeForce RTX 3060")
    rows = _rows(LAPTOP, build)
    assert list(_fixes(rows)) == ["cuda"]
    assert rows["cuda"].value == (
        "not available: the driver sees NVIDIA GeForce RTX 3060, but this torch is a CPU-only build"
    )
    assert rows["cuda"].fix.endswith(cuda_wheel_command())
    assert cuda_wheel_command() == (
        f"{sys.executable} -m pip install --force-reinstall torch "
        "--index-url https://download.pytorch.org/whl/cu130"
    )
    assert rows["track"].value.startswith("CPU: torch cannot use the NVIDIA GeForce RTX 3060 yet")


def test_a_cuda_torch_newer_than_the_driver_says_update_the_driver():
    build = TorchBuild("2.5.1+cu124", "CUDA 12.4", driver_gpu="Tesla V100-SXM2-16GB")
    rows = _rows(LAPTOP, build)
    assert rows["cuda"].value == (
        "not available: torch (CUDA 12.4) cannot reach the Tesla V100-SXM2-16GB"
    )
    assert rows["cuda"].fix.startswith("update the NVIDIA driver")
    assert "https://download.pytorch.org/whl" in rows["cuda"].fix


@pytest.mark.parametrize(
    "ram_gb, ram_free_gb, fix",
    [
        (7.6, 3.9, "close other programs (browser tabs, other notebooks' kernels), then restart"),
        (3.8, 2.1, "3.8 GiB in all is too little for the course: use Colab"),
    ],
    ids=["busy-laptop", "tiny-laptop"],
)
def test_too_little_memory_says_what_to_do(ram_gb, ram_free_gb, fix):
    hardware = dataclasses.replace(LAPTOP, ram_gb=ram_gb, ram_free_gb=ram_free_gb)
    rows = _rows(hardware, CPU_BUILD)
    assert _fixes(rows) == {"memory": fix}
    assert rows["memory"].value == f"{ram_free_gb:.1f} GiB free of {ram_gb:.1f} GiB"
    assert rows["track"].value.startswith("CPU:")


def test_a_full_disk_points_at_the_model_cache():
    rows = _rows(dataclasses.replace(LAPTOP, disk_free_gb=0.4), CPU_BUILD)
    assert rows["disk"].value == f"0.4 GiB free at {CACHE} (the model cache)"
    assert _fixes(rows) == {
        "disk": "free disk space, or set FTKIT_CACHE to a folder on a larger disk"
    }


@pytest.mark.parametrize(
    "listing, gpu",
    [
        ("GPU 0: Tesla T4 (UUID: GPU-5b2f8c8e-3a2c-8e43-b2c3-6a5d0e1f9b2a)\n", "Tesla T4"),
        ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1)\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-2)\n",
         "NVIDIA A100-SXM4-40GB"),
        ("No devices were found\n", None),
        ("", None),
    ],
    ids=["t4", "two-a100", "no-devices", "empty"],
)  # fmt: skip
def test_first_gpu_reads_nvidia_smi_listing(listing, gpu):
    assert first_gpu(listing) == gpu


def test_report_marks_what_to_fix():
    rows = _rows(P100, CUDA_BUILD)
    report = DoctorReport(P100, list(rows.values()))
    text = str(report)
    assert not report.ok
    assert "[FIX] compute capability  6.0" in text
    assert "-> bitsandbytes 4-bit needs 7.0+" in text
    assert "[ok ] track" in text


def test_doctor_on_this_machine():
    report = doctor()
    rows = {check.name: check for check in report.checks}
    names = [check.name for check in report.checks]
    assert names[0] == "python" and names[-1] == "track"
    for name in ("torch", "cuda", "device", "precision", "bitsandbytes 4-bit", "memory", "disk",
                 "embedded model"):  # fmt: skip
        assert name in rows, name
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    assert rows["torch"].value == f"{torch.__version__}, {built}"
    assert rows["bitsandbytes 4-bit"].ok, rows["bitsandbytes 4-bit"].value
    assert rows["track"].value.startswith(f"{report.hardware.track}: ")
    assert detect_torch_build(report.hardware).version == torch.__version__


def test_import_ftkit_drops_bitsandbytes_notices_and_nothing_else():
    """The hub-kernels notice bitsandbytes logs while being imported on AVX512-BF16 CPUs
    (before any ftkit function runs) is dropped from `import ftkit` on; other messages of the
    same logger still show."""
    code = (
        "import logging, ftkit\n"
        "import bitsandbytes\n"  # on an AVX512-BF16 CPU this logs the notice itself
        "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
        "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: no kernels')\n"
        "log.warning('a message that matters')\n"
        "logging.getLogger('bitsandbytes.autograd._functions').warning(\n"
        "    'MatMul8bitLt: inputs will be cast from torch.float32 to float16')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "a message that matters" in result.stderr
    assert "kernels-community" not in result.stderr
    assert "inputs will be cast from" not in result.stderr
