"""Which torch `make setup` installs: the local CPU wheel here, the CPU build on a Linux laptop
without an NVIDIA GPU, PyPI's CUDA build with one (ftkit/torch_install.py), tested offline by
letting make print its commands for each kind of machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftkit.torch_install import (
    CPU_INDEX,
    TORCH_VERSION,
    find_links,
    has_nvidia_gpu,
    local_torch,
    torch_spec,
)

ROOT = Path(__file__).resolve().parent.parent


def _wheel(folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"")


def test_a_local_wheel_for_this_python_wins(tmp_path):
    _wheel(tmp_path, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    _wheel(tmp_path, "torch-2.14.0-cp312-cp312-manylinux_2_28_x86_64.whl")  # another Python
    _wheel(tmp_path, "torchvision-0.29.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert local_torch([tmp_path], "cp311") == "2.13.0"
    assert local_torch([tmp_path], "cp312") == "2.14.0"
    assert local_torch([tmp_path], "cp313") is None
    assert torch_spec("Linux", nvidia=True, local="2.13.0")[0] == "torch==2.13.0"


def test_find_links_read_from_pip_and_the_environment(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    pip = [sys.executable, "-c", f"print(\"global.find-links='{first}'\")"]
    assert find_links({"PIP_FIND_LINKS": f"{second} https://example.org/x"}, pip) == [
        second,
        first,
    ]
    assert find_links({}, [sys.executable, "-c", "raise SystemExit(1)"]) == []  # pip broken


@pytest.mark.parametrize(
    "system, nvidia, expected",
    [
        ("Linux", False, f"torch=={TORCH_VERSION} --index-url {CPU_INDEX}"),
        ("Linux", True, f"torch=={TORCH_VERSION}"),
        ("Darwin", False, f"torch=={TORCH_VERSION}"),
        ("Windows", False, f"torch=={TORCH_VERSION}"),
    ],
)
def test_the_build_follows_the_machine(system, nvidia, expected):
    spec, why = torch_spec(system, nvidia, local=None)
    assert spec == expected and why


def test_nvidia_smi_on_the_path_means_a_gpu(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert has_nvidia_gpu(str(tmp_path))
    if not Path("/proc/driver/nvidia/version").exists():
        assert not has_nvidia_gpu(str(tmp_path / "empty"))


def _make_setup_torch(env: dict, *settings: str) -> str:
    """The torch install line `make setup` would run (make -n prints, -B ignores the stamp)."""
    done = subprocess.run(
        ["make", "-n", "-B", "setup", "VENV=/tmp/no-such-venv", *settings],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if "pip install --quiet torch" in line]
    assert len(lines) == 1, done.stdout
    return lines[0].split("--quiet ", 1)[1]


def _laptop(tmp_path: Path, nvidia: bool) -> dict:
    """This machine's environment without its pip configuration (no local wheels), and with
    or without an `nvidia-smi` on the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MAKE"))}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PATH": f"{bin_dir}:{env['PATH']}"}


def test_make_setup_here_takes_the_local_cpu_wheel():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    assert _make_setup_torch(env) == f"torch=={TORCH_VERSION}"


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="a real NVIDIA driver")
def test_make_setup_on_a_linux_laptop_takes_the_cpu_build(tmp_path):
    assert _make_setup_torch(_laptop(tmp_path, nvidia=False)) == (
        f"torch=={TORCH_VERSION} --index-url {CPU_INDEX}"
    )


def test_make_setup_with_an_nvidia_gpu_takes_pypis_cuda_build(tmp_path):
    assert _make_setup_torch(_laptop(tmp_path, nvidia=True)) == f"torch=={TORCH_VERSION}"


def test_the_choice_can_be_overridden():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    assert _make_setup_torch(env, "TORCH_SPEC=torch==2.9.1") == "torch==2.9.1"
