"""Which torch `make setup` installs on this machine: the pip arguments, printed.

    python -m ftkit.torch_install          # e.g. "torch==2.13.0 --index-url .../whl/cpu"
    python -m ftkit.torch_install --why    # the same, with the reason on stderr

torch is the one package whose right build depends on the machine, and pip's default
choice is wrong for many learners: on Linux, PyPI's torch is the CUDA build, several
gigabytes of NVIDIA libraries a laptop without an NVIDIA GPU never uses. So, in order:

1. a torch wheel pip can install from a local folder (`find-links` in pip's configuration or
   `PIP_FIND_LINKS`): that one, pinned, since it is what the machine was set up with (the
   course machines carry a CPU wheel there);
2. an NVIDIA GPU (`nvidia-smi` on the PATH, or the driver in /proc): PyPI's torch, which on
   Linux is the CUDA build with its CUDA libraries as pip packages (no toolkit to install);
3. Linux without one: the CPU build from PyTorch's own index (about 200 MB instead of GBs);
4. macOS and Windows: PyPI's torch, which is CPU-only there (Apple GPUs: MPS, built in).

Standard library only: the Makefile runs it before anything is installed.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

TORCH_VERSION = "2.13.0"  # what CI tests (constraints.txt pins the rest)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's CPU-only builds
_WHEEL = re.compile(r"^torch-(?P<version>[^-]+)-(?P<python>cp\d+)-")


def find_links(environ: dict | None = None, pip: list[str] | None = None) -> list[Path]:
    """The local folders pip installs from: PIP_FIND_LINKS and pip's configuration."""
    environ = os.environ if environ is None else environ
    values = environ.get("PIP_FIND_LINKS", "").split()
    command = pip or [sys.executable, "-m", "pip", "config", "list"]
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            values += value.strip().strip("'\"").split()
    folders = [
        Path(v.removeprefix("file://")) for v in values if "://" not in v or v.startswith("file://")
    ]
    return [folder for folder in folders if folder.is_dir()]


def local_torch(folders: list[Path], python_tag: str | None = None) -> str | None:
    """The newest torch version a local folder holds a wheel of for this Python, or None."""
    python_tag = python_tag or f"cp{sys.version_info.major}{sys.version_info.minor}"
    versions = []
    for folder in folders:
        for wheel in folder.glob("torch-*.whl"):
            match = _WHEEL.match(wheel.name)
            if match and match["python"] == python_tag:
                versions.append(match["version"].split("+")[0])
    return max(versions, key=_version_key) if versions else None


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def has_nvidia_gpu(path: str | None = None) -> bool:
    """An NVIDIA driver is installed: `nvidia-smi` on the PATH, or its /proc entry."""
    return (
        bool(shutil.which("nvidia-smi", path=path)) or Path("/proc/driver/nvidia/version").exists()
    )


def torch_spec(system: str, nvidia: bool, local: str | None) -> tuple[str, str]:
    """(pip arguments, why) for a machine: its OS, an NVIDIA GPU or not, a local torch wheel."""
    if local:
        return f"torch=={local}", f"a local torch {local} wheel is what this machine installs"
    if nvidia:
        return (
            f"torch=={TORCH_VERSION}",
            "an NVIDIA GPU: PyPI's torch (on Linux the CUDA build, its libraries as pip packages)",
        )
    if system == "Linux":
        return (
            f"torch=={TORCH_VERSION} --index-url {CPU_INDEX}",
            "Linux without an NVIDIA GPU: the CPU build, not PyPI's CUDA one (GBs unused)",
        )
    return f"torch=={TORCH_VERSION}", f"{system}: PyPI's torch is CPU-only here (MPS on Apple)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec, why = torch_spec(platform.system(), has_nvidia_gpu(), local_torch(find_links()))
    print(spec)
    if "--why" in argv:
        print(f"[ftkit] torch: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
