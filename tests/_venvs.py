"""Environments that hold only some of this one's packages, without a network: a folder of
links to the installed files of chosen distributions, which a fresh venv reads through a .pth
file. tests/test_wheel.py builds `pip install ftkit` from it, tests/test_gpu_check.py the GPU
test machine's image."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions `requirements` pull in, following each one's metadata
    (markers evaluated here, extras followed), as pip would resolve them on this machine."""
    found: set[str] = set()
    todo = [(Requirement(r), ("",)) for r in requirements]
    seen: set[tuple[str, tuple]] = set()
    while todo:
        requirement, _ = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = tuple(sorted(requirement.extras)) or ("",)
        if (name, extras) in seen or name == "ftkit":
            continue
        seen.add((name, extras))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise AssertionError(f"{name} is required but not installed here") from None
        found.add(name)
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append((child, extras))
    return found


def only(names: set[str], folder: Path) -> Path:
    """A folder of links to the installed files of the distributions `names`: a site-packages
    that holds those and nothing else. Its name ends in site-packages, as installed packages'
    folders do: dill (under datasets' fingerprints) pickles modules from anywhere else by
    value, and fails on pyarrow's types."""
    folder = folder / "site-packages"
    folder.mkdir(parents=True)
    for name in sorted(names):
        dist = distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            target = Path(str(dist.locate_file(top)))
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)
    return folder


def venv_seeing(base: Path, packages: Path) -> tuple[Path, dict]:
    """A fresh venv `base/venv` (no pip of its own) whose Python sees `packages` through a
    .pth file, and an environment to run it in: its bin first on PATH, no VIRTUAL_ENV or
    PYTHON* variables of this one, Jupyter's data in `base/jupyter`."""
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(site) / "reuse_test_environment.pth").write_text(f"{packages}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env |= {"JUPYTER_DATA_DIR": str(base / "jupyter"), "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    return python, env
