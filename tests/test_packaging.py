"""The install story: pyproject is the one source; environment.yml must not drift from it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import ftkit

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(requirement: str) -> tuple[str, str]:
    """("name", "specifier") with names normalised as PyPI does and spaces removed."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return CONDA_NAMES.get(name, name), match.group(2).replace(" ", "")


def drift(pyproject_text: str, environment_text: str) -> set[tuple[str, str]]:
    """Requirements in one file but not, with the same specifier, in the other."""
    project = tomllib.loads(pyproject_text)["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    env = yaml.safe_load(environment_text)["dependencies"]
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    listed = [d for d in env if isinstance(d, str)] + pip
    listed = [r for r in listed if not r.startswith(("python", "pip"))]
    return {_split(r) for r in wanted} ^ {_split(r) for r in listed}


PYPROJECT = (ROOT / "pyproject.toml").read_text()
ENVIRONMENT = (ROOT / "environment.yml").read_text()


def test_environment_yml_matches_pyproject():
    assert drift(PYPROJECT, ENVIRONMENT) == set()


def test_drift_is_caught():
    """The comparison really fails when a version moves or a package goes missing."""
    moved = ENVIRONMENT.replace("peft>=0.21,<0.22", "peft>=0.20")
    assert drift(PYPROJECT, moved) == {("peft", ">=0.20"), ("peft", ">=0.21,<0.22")}
    dropped = ENVIRONMENT.replace("  - tqdm>=4.66\n", "")
    assert drift(PYPROJECT, dropped) == {("tqdm", ">=4.66")}


def test_version_has_one_source():
    metadata = subprocess.run(
        [sys.executable, "-m", "pip", "show", "ftkit"], capture_output=True, text=True, check=True
    ).stdout
    assert f"Version: {ftkit.__version__}" in metadata


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make main" in readme
    commands = [line for line in ci.splitlines() if not line.startswith(("#", "set ", "cd "))]
    assert [line for line in commands if line.strip()] == ["make test"]


def test_torch_pinned_for_these_machines():
    assert "TORCH_SPEC ?= torch==2.13.0" in (ROOT / "Makefile").read_text()
