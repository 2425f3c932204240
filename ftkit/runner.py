"""Running the notebook series headless: the main job, and the notebook tests.

Each notebook has one cell tagged `parameters` (papermill's convention) with a
`MODEL` knob and a `MODE` knob ("full" or "smoke"). This module executes
notebooks in a real Jupyter kernel with those knobs set, saves the executed
copies, and reports progress and timings. The README's main job and the test
suite both call it, so the notebooks a learner opens are the ones CI ran.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MODES = ("full", "smoke")
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass
class NotebookRun:
    """The outcome of executing one notebook."""

    notebook: str  # file name, e.g. "01_choosing_a_base_model.ipynb"
    output: Path  # where the executed copy was written
    mode: str  # "full" or "smoke"
    seconds: float  # wall time, kernel start included
    cells: int  # code cells executed


def series_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks of the series, in order (solutions excluded).

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(
    path: str | os.PathLike,
    output: str | os.PathLike,
    mode: str = "smoke",
    parameters: dict | None = None,
    timeout: int = 1800,
    log: Callable[[str], None] = print,
) -> NotebookRun:
    """Execute a notebook top to bottom in a fresh kernel with MODE (and more) injected.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    import nbformat
    import papermill

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}.")
    path, output = Path(path), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    log(f"[ftkit] {path.name}: running in {mode} mode ...")
    started = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(output),
        parameters={"MODE": mode, **(parameters or {})},
        cwd=str(path.parent),
        execution_timeout=timeout,
        progress_bar=False,
        kernel_name="python3",
        language="python",
    )
    seconds = time.perf_counter() - started
    executed = nbformat.read(output, as_version=4)
    cells = sum(1 for cell in executed.cells if cell.cell_type == "code")
    log(f"[ftkit] {path.name}: done, {cells} code cells in {seconds:.0f} s -> {output}")
    return NotebookRun(path.name, output, mode, seconds, cells)


def run_series(
    out_dir: str | os.PathLike = "build",
    mode: str = "full",
    only: Sequence[str] = (),
    parameters: dict | None = None,
) -> list[NotebookRun]:
    """Run the whole series (or the notebooks whose names start with `only`) into `out_dir`.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
    out_dir = Path(out_dir)
    notebooks = [p for p in series_notebooks() if not only or p.name.startswith(tuple(only))]
    if not notebooks:
        raise FileNotFoundError(f"No notebooks matching {list(only)} in {NOTEBOOK_DIR}.")
    runs = [run_notebook(nb, out_dir / nb.name, mode, parameters) for nb in notebooks]
    print(summary_table(runs))
    return runs


def summary_table(runs: Sequence[NotebookRun]) -> str:
    """A plain-text table of notebook, mode, cells and time, for the end of the main job."""
    rows = [f"{'notebook':<40} {'mode':<6} {'cells':>5} {'seconds':>8}"]
    rows += [f"{r.notebook:<40} {r.mode:<6} {r.cells:>5} {r.seconds:>8.0f}" for r in runs]
    rows.append(
        f"{'total':<40} {'':<6} {sum(r.cells for r in runs):>5} "
        f"{sum(r.seconds for r in runs):>8.0f}"
    )
    return "\n".join(rows)


def python_kernel_ok() -> bool:
    """True when the `python3` kernel runs this interpreter (so the kernel sees ftkit)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    return spec.argv[0] in ("python", "python3", sys.executable)
