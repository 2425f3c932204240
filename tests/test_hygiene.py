"""Notebook hygiene: every notebook follows the skeleton of shared/STYLE.md, is committed
without outputs, and holds no logic that belongs in ftkit.

The skeleton: a title and what you will learn; an environment cell; one cell tagged
`parameters` with the model knob and the smoke/full knob; numbered sections `## 1.`,
`## 2.`, ...; `## Summary`; `## Exercises` with `check` calls, and a solutions notebook.
Committed notebooks are output-free (no outputs, no execution counts): the executed
versions are build products (`make main` writes them to build/).
"""

from __future__ import annotations

import ast
import re

import nbformat
import pytest

from ftkit.runner import NOTEBOOK_DIR, series_notebooks

SERIES = series_notebooks()
SOLUTIONS = sorted((NOTEBOOK_DIR / "solutions").glob("*.ipynb"))
MAX_FUNCTION_LINES = 5  # a notebook may define a tiny helper; anything longer goes in ftkit


def _read(path):
    return nbformat.read(path, as_version=4)


def _code(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def _headings(notebook, level: str = "## ") -> list[str]:
    lines = [line for cell in notebook.cells if cell.cell_type == "markdown"
             for line in cell.source.splitlines()]  # fmt: skip
    return [line[len(level) :].strip() for line in lines if line.startswith(level)]


def test_there_is_a_series_with_solutions():
    assert [p.name[:2] for p in SERIES] == ["01", "02", "03", "04"]
    for path in SERIES:
        assert (NOTEBOOK_DIR / "solutions" / f"{path.stem}_solutions.ipynb").is_file(), path.name


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
    assert knobs == {"MODEL", "MODE"}
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
        tree = ast.parse(source)
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
