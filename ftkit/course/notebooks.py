"""The notebook series as files: where the package keeps it, its sections, a copy to work in.

The notebooks ship inside the package (`ftkit/notebooks/`, read through
`importlib.resources`), so a wheel carries them as a clone does. `copy_notebooks` (the
command `ftkit notebooks DEST`) gives a learner their own copy to open and edit; the
headless runner (`ftkit.course.runner`) executes the package's own.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

SETUP = "Setup"  # the section of the cells above a notebook's first `## ` heading
GUIDES = ("INSTRUCTORS.md", "INDEX.md")  # copied out with the notebooks


def notebooks_dir() -> Path:
    """The folder of the notebook series inside the installed ftkit package."""
    return Path(str(importlib.resources.files("ftkit") / "notebooks"))


def series_notebooks(directory: Path | None = None) -> list[Path]:
    """The numbered notebooks of the series, in order (solutions excluded)."""
    return sorted((directory or notebooks_dir()).glob("[0-9][0-9]_*.ipynb"))


def solution_notebooks(directory: Path | None = None) -> list[Path]:
    """The solutions notebooks, in the order of the series."""
    return sorted(((directory or notebooks_dir()) / "solutions").glob("[0-9][0-9]_*.ipynb"))


def copy_notebooks(destination: str | Path, overwrite: bool = False) -> list[Path]:
    """Copy the series, its solutions and the guides into `destination`; returns the copies.

    A file already there is kept (it may hold a learner's work) unless `overwrite=True`;
    the error lists every such file before anything is copied.
    """
    source, destination = notebooks_dir(), Path(destination)
    files = [*series_notebooks(), *solution_notebooks(), *(source / g for g in GUIDES)]
    targets = [destination / path.relative_to(source) for path in files if path.is_file()]
    taken = [target for target in targets if target.exists()]
    if taken and not overwrite:
        names = ", ".join(str(path) for path in taken[:5]) + (" ..." if len(taken) > 5 else "")
        raise FileExistsError(
            f"{len(taken)} of the files are in {destination} already ({names}). Nothing was "
            "copied: they may hold your work. Choose another folder, or pass --force "
            "(overwrite=True) to replace them."
        )
    for path, target in zip((p for p in files if p.is_file()), targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return targets


def notebook_needs(path: str | Path) -> list[str]:
    """The notebooks (two-digit prefixes) whose results `path` reads, from its metadata's
    `ftkit.after` list: notebook 04 and 06 read notebook 03's fine-tune, so the runner starts
    them only once 03 is done (else each would train that run again itself, side by side)."""
    metadata = json.loads(Path(path).read_text(encoding="utf-8")).get("metadata", {})
    return [str(prefix) for prefix in metadata.get("ftkit", {}).get("after", [])]


def notebook_parameters(path: str | Path) -> dict:
    """The knobs a notebook's `parameters` cell sets (papermill's tag: `MODEL = "..."`),
    parsed, never executed: each assignment of a plain constant, as it would run when the
    runner injects nothing."""
    cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", []))
            return {
                target.id: node.value.value
                for node in ast.parse(source).body
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                for target in node.targets
                if isinstance(target, ast.Name)
            }
    return {}


def cell_sections(notebook) -> list[str]:
    """The section title of every cell: the last `## ` heading above it (or `SETUP`).

    The runner's progress lines and the report's captions both use it.
    """
    titles, current = [], SETUP
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.splitlines()
            headings = [line[3:].strip() for line in lines if line.startswith("## ")]
            current = headings[-1] if headings else current
        titles.append(current)
    return titles


@dataclass
class SectionRun:
    """One section of an executed notebook: a `## ` heading and the code cells under it."""

    title: str  # the heading without "## ", e.g. "2. Train, and watch it"
    cells: int = 0  # code cells executed in it
    seconds: float = 0.0  # their execution time, summed


@dataclass
class NotebookRun:
    """The outcome of executing one notebook."""

    notebook: str  # file name, e.g. "01_choosing_a_base_model.ipynb"
    output: Path  # where the executed copy was written
    mode: str  # "full" or "smoke"
    seconds: float  # wall time, kernel start included
    cells: int  # code cells executed
    sections: list[SectionRun] = field(default_factory=list)  # in notebook order
    threads: int | None = None  # CPU threads its kernel started on (None: the libraries' own)
    started: float = 0.0  # when it started and ended (time.time()), for the series' wall clock
    ended: float = 0.0
    threads_at_end: int | None = None  # more than `threads` if it was left running alone


def wall_clock(runs: Sequence[NotebookRun]) -> float | None:
    """Seconds from the first notebook's start to the last one's end, or None when no two
    runs overlapped (then the total of their times says it)."""
    spans = sorted((r.started, r.ended) for r in runs if r.ended)
    if len(spans) < 2 or all(end <= start for (_, end), (start, _) in pairwise(spans)):
        return None
    return max(end for _, end in spans) - spans[0][0]


def lanes_note(runs: Sequence[NotebookRun]) -> str:
    """`2 at a time, 1 CPU thread each; 04 alone at the end on 2`: how the runs shared the
    machine."""
    most = max(sum(o.started <= r.started < o.ended for o in runs) for r in runs)
    threads = sorted({r.threads for r in runs if r.threads})
    if not threads:
        return f"{most} at a time"
    note = f"{most} at a time, {'/'.join(map(str, threads))} CPU thread" + (
        " each" if threads == [1] else "s each"
    )
    for r in runs:
        if r.threads and r.threads_at_end and r.threads_at_end > r.threads:
            note += f"; {r.notebook[:2]} alone at the end on {r.threads_at_end}"
    return note
