"""Where each ftkit name is used in the series: an index generated from the notebooks' code.

Docstrings do not say which notebook teaches a function (such a pointer drifts as notebooks
change); `ftkit/notebooks/INDEX.md` does, generated from the code cells themselves:
`python -m ftkit.course.index` writes it, and tests/test_structure.py fails when it is stale.
A name counts as used when a notebook imports it from ftkit (`from ftkit.models import
load_model`) or reaches it through an imported ftkit module or package (`check.t4_dtype`,
`ftkit.doctor()`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
from IPython.core.inputtransformer2 import TransformerManager

from ftkit.course.notebooks import notebooks_dir, series_notebooks

INDEX = "INDEX.md"


def _code(path: Path) -> str:
    """A notebook's code cells as the Python IPython runs (`%pip` lines become calls)."""
    notebook = nbformat.read(path, as_version=4)
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    return "\n".join(TransformerManager().transform_cell(source) for source in cells)


def used_names(path: Path) -> set[str]:
    """The ftkit names a notebook uses, as the dotted paths it reaches them by."""
    tree = ast.parse(_code(path))
    modules: dict[str, str] = {}  # local name -> the ftkit module or package it is bound to
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ftkit":
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ftkit":
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if _is_module(dotted):
                    modules[alias.asname or alias.name] = dotted
                else:
                    used.add(dotted)
    for node in ast.walk(tree):
        bound = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if bound and node.value.id in modules and not node.attr.startswith("_"):
            used.add(f"{modules[node.value.id]}.{node.attr}")
    return used


def _is_module(dotted: str) -> bool:
    """Whether `ftkit.a.b` names a module or package of ftkit's source (not a function)."""
    path = notebooks_dir().parent.joinpath(*dotted.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def taught_in(notebooks: list[Path] | None = None) -> dict[str, list[str]]:
    """Each ftkit name the series uses -> the notebooks (their two-digit numbers) using it."""
    index: dict[str, list[str]] = {}
    for path in notebooks or series_notebooks():
        for name in used_names(path):
            index.setdefault(name, []).append(path.name[:2])
    return dict(sorted(index.items()))


def index_markdown(notebooks: list[Path] | None = None) -> str:
    """The index as Markdown: one row per name, the notebooks that use it."""
    notebooks = notebooks or series_notebooks()
    rows = [f"| `{name}` | {', '.join(used)} |" for name, used in taught_in(notebooks).items()]
    return "\n".join([
        "# Where each ftkit name is used",
        "",
        "Generated from the notebooks' code by `python -m ftkit.course.index`; do not edit by",
        "hand (tests/test_structure.py checks that it is current). The notebooks:",
        "",
        *(f"- {path.name[:2]}: `{path.name}`" for path in notebooks),
        "",
        "| name | notebooks |",
        "|---|---|",
        *rows,
        "",
    ])  # fmt: skip


def write_index(path: Path | None = None) -> Path:
    """Write the index beside the notebooks (or to `path`); returns where it went."""
    path = path or notebooks_dir() / INDEX
    path.write_text(index_markdown(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_index(Path(sys.argv[1]) if len(sys.argv) > 1 else None)}")
