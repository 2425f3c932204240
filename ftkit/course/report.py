"""The main job's report: one self-contained HTML page built from the executed notebooks.

`ftkit run` (the README's `make main`) executes the series into a build folder with
`ftkit.course.runner`; `write_report` then reads the executed copies there and writes
`report.html` beside them: when, on what machine and with which versions it ran, the
timings (the summary table, with the jobs that trained ahead and a link to each one's
output, and every notebook's sections), the prompt-versus-fine-tune table with its
intervals, a few test tickets answered side by side, and the plots.

Finding outputs. A notebook marks an output for the report with display metadata, which
the .ipynb keeps on the output wherever the cell moves:

    display(HTML(comparison.table_html()), metadata={"ftkit": "comparison-table"})

The markers read here are `MARKERS`' keys. Plots need no marker: every `image/png`
output is taken, captioned with the notebook section (`## ` heading) it came from.

Self-contained: the CSS is inline, images are base64 data URIs, and there is no script
and no external link (only links to files beside it in the build folder: a job's output,
notebook 06's exports), so the file can be mailed or opened offline. Marked outputs are
HTML that ftkit made (model output in them is already escaped, see
`Comparison.samples_html`); everything else is escaped here.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ftkit.course.doctor import package_versions
from ftkit.course.notebooks import NotebookRun, cell_sections, lanes_note, wall_clock
from ftkit.hardware import choose_precision, detect_hardware

if TYPE_CHECKING:  # the job's module imports training: only its type is needed here
    from ftkit.course.ahead import AheadJob

# Marker (the "ftkit" key of an output's metadata) -> heading of its part of the report.
MARKERS = {
    "comparison-table": "Prompt engineering versus fine-tuning",
    "verdict": "The verdict",
    "samples": "Sample answers side by side",
    "iterate": "Change one thing, retrain, measure",  # notebook 05: its tables and verdicts
    "exports": "Your model, exported and loaded back",  # notebook 06: links to the files
}

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.meta { color: #555; margin: 0.2em 0; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right;
         vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 90%; }
"""


def marked_outputs(notebook, marker: str) -> list[str]:
    """The HTML of every output a notebook displayed with metadata {"ftkit": marker}: its
    `text/html` as it is (ftkit made it, model output escaped), or its `text/markdown`
    escaped, with **bold** and `code` kept.

    Notebook 04 marks its comparison table, its verdict and its sample answers.
    """
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("metadata", {}).get("ftkit") != marker:
                continue
            data = output.get("data", {})
            if data.get("text/html"):
                found.append(_text(data["text/html"]))
            elif data.get("text/markdown"):
                found.append(f"<p>{_inline_markdown(_text(data['text/markdown']))}</p>")
    return found


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _inline_markdown(text: str) -> str:
    """Escaped text with Markdown's **bold** and `code` as HTML (nothing else is rendered)."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def notebook_plots(notebook) -> list[tuple[str, str]]:
    """(section title, base64 PNG) for every image/png output, in notebook order."""
    plots = []
    for cell, title in zip(notebook.cells, cell_sections(notebook), strict=True):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                plots.append((title, "".join(png.split())))
    return plots


def notebook_title(notebook, fallback: str) -> str:
    """The notebook's `# ` title line (e.g. "04 · Prompt engineering versus fine-tuning")."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def write_report(runs: Sequence[NotebookRun], out_dir: str | os.PathLike,
                 ahead: Sequence[AheadJob] = ()) -> Path:  # fmt: skip
    """Write `out_dir/report.html` from the executed notebooks of `runs` (and the jobs of
    `ahead` that ran, in the timings); return its path.

    `ftkit run` (the README's `make main`) calls it after the notebooks; the outputs it
    quotes are marked in notebooks/04_prompt_vs_finetune.ipynb.
    """
    import nbformat

    notebooks = [nbformat.read(run.output, as_version=4) for run in runs]
    parts = [_header(runs), "<h2>Timings</h2>", timings_html(runs, ahead, out_dir)]
    for marker, heading in MARKERS.items():
        found = [h for nb in notebooks for h in marked_outputs(nb, marker)]
        if found:
            parts += [f"<h2>{html.escape(heading)}</h2>", *found]
    parts += [_notebook_html(run, nb) for run, nb in zip(runs, notebooks, strict=True)]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>ftkit report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path = Path(out_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def timings_html(runs: Sequence[NotebookRun], ahead: Sequence[AheadJob] = (),
                 out_dir: str | os.PathLike | None = None) -> str:  # fmt: skip
    """The summary table of `ftkit.course.runner.summary_table` as an HTML table: a row per
    notebook, and per job of `ahead` that ran, with a link to its output (relative to
    `out_dir`, the report's folder, where it lies in it)."""
    rows = [
        f"<tr><td><a href='#{_anchor(r.notebook)}'>{html.escape(r.notebook)}</a></td>"
        f"<td>{html.escape(r.mode)}</td><td>{r.cells}</td><td>{r.seconds:.0f}</td></tr>"
        for r in runs
    ]
    jobs = [job for job in ahead if job.ended]
    for job in jobs:
        ended = "" if job.returncode == 0 else f"exit {job.returncode}"
        link = html.escape(_link(job.log_file, out_dir), quote=True)
        rows.append(
            f"<tr><td>{html.escape(job.title)} (<a href='{link}'>its output</a>)</td>"
            f"<td>{ended}</td><td></td><td>{job.seconds:.0f}</td></tr>"
        )
    seconds = sum(r.seconds for r in runs) + sum(job.seconds for job in jobs)
    total = (
        f"<tr><th>total</th><th></th><th>{sum(r.cells for r in runs)}</th>"
        f"<th>{seconds:.0f}</th></tr>"
    )
    if wall := wall_clock(runs):
        total += f"<tr><th colspan='3'>wall clock ({html.escape(lanes_note(runs))})</th>"
        total += f"<th>{wall:.0f}</th></tr>"
    head = "<tr><th>notebook</th><th>mode</th><th>cells</th><th>seconds</th></tr>"
    return f"<table>{head}{''.join(rows)}{total}</table>"


def _link(path: Path, folder: str | os.PathLike | None) -> str:
    """`path` as a link from a page in `folder`: relative where it lies in it, else a
    file:// address."""
    path = Path(path).resolve()
    if folder is not None and path.is_relative_to(Path(folder).resolve()):
        return path.relative_to(Path(folder).resolve()).as_posix()
    return path.as_uri()


def _header(runs: Sequence[NotebookRun]) -> str:
    """Title, date, mode, machine and package versions."""
    hardware = detect_hardware()
    modes = ", ".join(sorted({r.mode for r in runs}))
    versions = " · ".join(f"{name} {version}" for name, version in package_versions().items())
    machine = (
        f"{hardware.device}: {hardware.device_name}, {hardware.cpu_cores} CPU cores, "
        f"{hardware.ram_gb:.0f} GiB RAM"
    )
    if hardware.gpu_memory_gb:
        machine += f", {hardware.gpu_memory_gb:.0f} GiB GPU memory"
    # the precision ftkit chose here, named as the doctor names it: fp32 where bf16 is not
    # native takes about twice as long
    machine += f", computing in {choose_precision(hardware).name}"
    shared = ""
    if wall_clock(runs):
        shared = (
            f"<p class='meta'>Notebooks side by side ({html.escape(lanes_note(runs))}): each "
            "notebook's seconds, and the speeds and latencies it measured, are on its share "
            "of the cores, not on the whole machine.</p>"
        )
    return (
        "<h1>ftkit: the notebook series, run headless</h1>"
        f"<p class='meta'>{time.strftime('%Y-%m-%d %H:%M')} · mode <b>{html.escape(modes)}</b>"
        f" · {len(runs)} notebook{'' if len(runs) == 1 else 's'}</p>"
        f"<p class='meta'>Machine: {html.escape(machine)}</p>"
        f"{shared}<p class='meta'>Versions: {html.escape(versions)}</p>"
    )


def _notebook_html(run: NotebookRun, notebook) -> str:
    """One notebook: its time, its sections' times, and its plots with their sections."""
    title = html.escape(notebook_title(notebook, run.notebook))
    sections = "".join(
        f"<tr><td>{html.escape(s.title)}</td><td>{s.cells}</td><td>{s.seconds:.0f}</td></tr>"
        for s in run.sections
    )
    figures = "".join(
        f"<figure><img alt='plot from {html.escape(section)}' "
        f"src='data:image/png;base64,{png}'><figcaption>{html.escape(section)}</figcaption>"
        "</figure>"
        for section, png in notebook_plots(notebook)
    )
    return (
        f"<h2 id='{_anchor(run.notebook)}'>{title}</h2>"
        f"<p class='meta'>{html.escape(run.notebook)}: {run.cells} code cells in "
        f"{run.seconds:.0f} s ({html.escape(run.mode)} mode); executed copy: "
        f"{html.escape(Path(run.output).name)}</p>"
        "<table><tr><th>section</th><th>cells</th><th>seconds</th></tr>"
        f"{sections}</table>{figures}"
    )


def _anchor(notebook: str) -> str:
    return "nb-" + Path(notebook).stem
