"""The main job: progress per section, failures named, and the self-contained HTML report.

Real kernels throughout: a tiny notebook in a temporary folder (seconds) for progress,
parameters and failures, and the series executed once in smoke mode (conftest's
`smoke_series`, shared with tests/test_notebooks.py) for the report, whose comparison table
and sample answers come from that run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from pathlib import Path

import nbformat
import pytest

from ftkit.comparison import Comparison
from ftkit.course.cli import main
from ftkit.course.report import marked_outputs, notebook_plots, write_report
from ftkit.course.runner import NotebookFailed, kernel_config, prepare_dataset, run_notebook
from ftkit.evaluation import Approach, ApproachResult, Prediction
from ftkit.hardware import choose_precision
from ftkit.scoring import score_predictions
from ftkit.shipped import dataset_dir
from ftkit.splits import load_dataset_splits
from ftkit.task import parse_json
from ftkit.task_data import load_task_data

TICKETS = load_task_data("support_tickets").task  # the shipped ticket task

TINY = [
    ("markdown", "# 99 · A tiny notebook"),
    ("code", 'MODE = "full"\nFAIL = ""', ["parameters"]),
    ("markdown", "## 1. Where am I"),
    ("code", "import os\n\nprint('cwd', os.getcwd())\nprint('mode', MODE)"),
    ("markdown", "## 2. Maybe fail"),
    ("code", "x = 1"),
    (
        "code",
        "import time\n\nif FAIL == 'raise':\n    raise ValueError('boom in section two')\n"
        "time.sleep(60 if FAIL == 'hang' else 0)\nprint('passed')",
    ),
    ("markdown", "## Summary\n\nNothing to run.\n\n## Exercises"),
    ("code", "print('exercises ran')"),
]


@pytest.fixture
def tiny(tmp_path):
    """A small notebook with sections, a parameters cell and a cell that fails on request."""
    cells = []
    for kind, source, *tags in TINY:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else (
            nbformat.v4.new_code_cell(source))  # fmt: skip
        cell.metadata["tags"] = tags[0] if tags else []
        cells.append(cell)
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}  # fmt: skip
    path = tmp_path / "notebooks" / "99_tiny.ipynb"
    path.parent.mkdir()
    nbformat.write(notebook, path)
    return path


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_progress_line_per_section_with_parameters_injected(tiny, tmp_path):
    lines = []
    run = run_notebook(tiny, tmp_path / "out" / tiny.name, mode="smoke", log=lines.append)
    assert [s.title for s in run.sections] == ["Setup", "1. Where am I", "2. Maybe fail",
                                               "Exercises"]  # fmt: skip
    assert [s.cells for s in run.sections] == [2, 1, 2, 1]  # Setup: parameters + injected
    assert run.cells == 6 and 0 < sum(s.seconds for s in run.sections) <= run.seconds
    progress = [line for line in lines if " · " in line]
    assert len(progress) == 4
    assert re.match(r"\[ftkit\] 99 · 2\. Maybe fail \.+ +2 cells +\d+ s$", progress[2])
    executed = nbformat.read(run.output, as_version=4)
    injected = executed.cells[2]
    assert injected.metadata.tags == ["injected-parameters"]
    assert 'MODE = "smoke"' in injected.source and "parameters" in executed.cells[1].metadata.tags
    out = _text(executed.cells[4])
    # run in the executed copy's folder, so runs/ never lands beside the (installed) notebook
    assert f"cwd {run.output.parent}" in out and "mode smoke" in out
    assert "exercises ran" in _text(executed.cells[-1])


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets: Linux and macOS")
def test_the_kernel_talks_over_private_sockets_not_tcp(tiny, tmp_path, capfd):
    run = run_notebook(tiny, tmp_path / "out" / tiny.name, mode="smoke", log=lambda _: None)
    assert "passed" in _text(nbformat.read(run.output, as_version=4).cells[7])
    # the kernel inherits this process's stderr: ipykernel 7 warns there on TCP
    assert "without encryption" not in capfd.readouterr().err
    settings = kernel_config(tmp_path).KernelManager
    assert settings.transport == "ipc" and settings.ip == str(tmp_path.resolve() / "kernel")


def test_the_kernels_connection_file_stays_in_its_private_folder(tmp_path):
    """jupyter_client writes a kernel's connection file (sockets and key) with mkstemp in the
    system's temporary folder unless told where: a kernel stopped abruptly left it there.
    With the runner's settings it lies in the run's private folder and goes with it."""
    from jupyter_client import KernelManager

    before = set(Path(tempfile.gettempdir()).glob("tmp*.json"))
    manager = KernelManager(kernel_name="python3", config=kernel_config(tmp_path))
    manager.start_kernel()
    try:
        written = Path(manager.connection_file)
        assert written == tmp_path.resolve() / "kernel.json" and written.is_file()
        assert json.loads(written.read_text())["key"]  # the kernel's real connection info
    finally:
        manager.shutdown_kernel(now=True)
    assert set(Path(tempfile.gettempdir()).glob("tmp*.json")) <= before


def test_a_failing_cell_is_named_and_the_partial_notebook_saved(tiny, tmp_path):
    output = tmp_path / "out" / tiny.name
    with pytest.raises(NotebookFailed) as failed:
        run_notebook(tiny, output, parameters={"FAIL": "raise"}, log=lambda _: None)
    message = str(failed.value)
    for part in ("99_tiny.ipynb", "cell 8", "'2. Maybe fail'", "import time", "ValueError",
                 "boom in section two", str(output)):  # fmt: skip
        assert part in message, part
    executed = nbformat.read(output, as_version=4)
    assert "mode smoke" in _text(executed.cells[4])  # the cells before it ran and were saved
    errors = [o for o in executed.cells[7].outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "ValueError"
    assert not executed.cells[-1].outputs  # nothing ran after it


def test_a_cell_past_its_timeout_is_named_too(tiny, tmp_path):
    output = tmp_path / "out" / tiny.name
    with pytest.raises(NotebookFailed, match=r"cell 8 \(section '2\. Maybe fail'.*Timeout"):
        run_notebook(tiny, output, parameters={"FAIL": "hang"}, timeout=3, log=lambda _: None)
    assert "mode smoke" in _text(nbformat.read(output, as_version=4).cells[4])


def test_cli_says_what_is_wrong_instead_of_a_traceback(tmp_path, capsys):
    assert main(["run", "--mode", "smoke", "--out", str(tmp_path), "99"]) == 1
    assert "No notebooks matching ['99']" in capsys.readouterr().err


def _prediction(example, output: str) -> Prediction:
    reference = example.messages[-1]["content"]
    return Prediction(str(example.meta.get("id") or example.source), example.messages[0]["content"],
                      reference, output, 10, 5, parse_json(output))  # fmt: skip


def test_samples_show_model_output_as_text_never_as_html():
    test = list(load_dataset_splits("support_tickets")["test"])[:3]
    hostile = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    outputs = {"base, zero-shot": [hostile] * 3,
               "fine-tuned": [e.messages[-1]["content"] for e in test]}  # fmt: skip
    results = {}
    for name, answers in outputs.items():
        predictions = [_prediction(e, a) for e, a in zip(test, answers, strict=True)]
        scores, intervals = score_predictions(answers, [p.reference for p in predictions],
                                              TICKETS, n_resamples=10)  # fmt: skip
        approach = Approach(name, model="finetuned" if "fine" in name else "base")
        results[name] = ApproachResult(approach, predictions, scores, intervals, 10, 5, 0.1, 0.1,
                                       TICKETS)  # fmt: skip
    page = Comparison(results, TICKETS).samples_html(n=2)
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    assert page.count("3/3 labels right") == 2 and page.count("0/3 labels right") == 2
    assert page.count("<tr>") == 1 + 2 * 2  # head, then per ticket: the ticket and answers
    assert test[2].meta["id"] not in page  # only n tickets


@pytest.fixture(scope="module")
def series(smoke_series):
    """The series executed in smoke mode by the main job's own function (see conftest)."""
    return smoke_series.out, smoke_series.runs, smoke_series.lines


@pytest.mark.notebook
def test_main_job_prints_progress_summary_and_report(series):
    out, runs, lines = series
    assert list(runs) == ["01", "02", "03", "04", "05", "06"]
    run = runs["04"]
    titles = [s.title for s in run.sections]
    assert titles[:3] == ["Setup", "1. A fair test", "2. The fine-tune"]
    assert titles[-1] == "Exercises"  # Summary shares its cell with Exercises: no code of its own
    for section in run.sections:
        assert any(line.startswith(f"[ftkit] 04 · {section.title[:20]}") for line in lines)
    assert any(line.startswith("notebook") and "total" in line for line in lines)  # the table
    assert lines[-1] == f"[ftkit] report: {out / 'report.html'}"


@pytest.mark.notebook
def test_long_cells_report_training_steps_and_replies_in_the_terminal(series):
    """`ftkit.progress` through the runner: the kernels' lines reach the log as they come
    (notebook 03's training, notebook 04's approaches), and none lands in a notebook."""
    _, runs, lines = series
    step = r"\[ftkit\] 03 · training support_tickets-qlora: \d+/(\d+) steps \(\d+%\), loss \d"
    training = [line for line in lines if re.match(step, line)]
    assert training, [line for line in lines if line.startswith("[ftkit] 03")]
    assert any(re.search(r", (\d+ min )?\d+ s left$", line) for line in training)
    total = re.match(step, training[-1]).group(1)
    assert re.search(rf": {total}/{total} steps \(100%\), loss [\d.]+, done in ", training[-1])
    replies = [line for line in lines if re.match(r"\[ftkit\] 04 · .+: \d+/\d+ replies", line)]
    assert replies
    # as they come: while notebook 03 runs, not after it
    done = next(i for i, line in enumerate(lines) if line.startswith("[ftkit] 03_qlora") and
                ": done," in line)  # fmt: skip
    assert lines.index(training[0]) < lines.index(training[-1]) < done
    for notebook in ("03", "04"):
        assert " steps (" not in runs[notebook].output.read_text()
        assert " replies (" not in runs[notebook].output.read_text()


@pytest.mark.notebook
def test_report_is_one_self_contained_file(series):
    out, runs, _ = series
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "url(" not in page and "@import" not in page
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    links = [h for h in re.findall(r"href=['\"]([^'\"]*)", page) if not h.startswith("#")]
    assert any(link.startswith("exports/") for link in links)  # notebook 06's exports
    assert all((out / link).exists() for link in links)  # relative to the report: they open
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    plots = [notebook_plots(nbformat.read(run.output, as_version=4)) for run in runs.values()]
    assert len(sources) == sum(len(p) for p in plots) and all(len(p) >= 1 for p in plots)


@pytest.mark.notebook
def test_report_holds_timings_sections_comparison_and_samples(series):
    out, runs, _ = series
    page = (out / "report.html").read_text(encoding="utf-8")
    run = runs["04"]
    assert "04 · Prompt engineering versus fine-tuning" in page and "mode <b>smoke</b>" in page
    assert "cpu cores" in page.lower() and "transformers" in page  # machine and versions
    assert f"computing in {choose_precision().name}</p>" in page  # as `ftkit doctor` says
    assert f"<td>{run.cells}</td><td>{run.seconds:.0f}</td>" in page  # the summary table
    for section in run.sections:  # every section with its own time
        assert f"<td>{section.title}</td><td>{section.cells}</td>" in page
    assert "<figcaption>3. Every approach, one test split</figcaption>" in page
    assert "<h2>The verdict</h2>" in page and "points" in page  # computed from the run
    executed = nbformat.read(run.output, as_version=4)
    (table,) = marked_outputs(executed, "comparison-table")
    (samples,) = marked_outputs(executed, "samples")
    assert "bootstrap 95% intervals" in table and "fine-tuned + prompt" in table
    assert "labels right" in samples and table in page and samples in page
    first = next(iter(load_dataset_splits("support_tickets")["test"]))
    assert first.meta["id"] in samples  # the first test ticket, with its reference
    assert page.index("Prompt engineering versus fine-tuning</h2>") < page.index("id='nb-04")


@pytest.mark.notebook
def test_report_can_be_rebuilt_from_the_build_folder(series, tmp_path):
    _, runs, _ = series
    path = write_report(list(runs.values()), tmp_path / "again")
    assert path.name == "report.html" and "bootstrap 95% intervals" in path.read_text()


def test_run_with_bad_data_stops_before_anything_runs(tmp_path, capsys):
    messy = dataset_dir("messy_tickets") / "tickets.jsonl"
    out = tmp_path / "build"
    assert main(["run", "--mode", "smoke", "--out", str(out), "--data", str(messy)]) == 2
    said = capsys.readouterr().err
    assert "nothing was run or trained" in said and "10 problem(s)" in said
    assert f"{messy}:17: messages: exact duplicate of {messy}:1" in said  # file:line, every one
    assert "strict=False" in said and not out.exists()  # no notebook ran, no run, no report


def test_lenient_data_is_checked_split_and_handed_to_every_notebook(tmp_path):
    messy = dataset_dir("messy_tickets") / "tickets.jsonl"
    lines: list[str] = []
    folder = prepare_dataset(str(messy), tmp_path, strict=False, log=lines.append)
    assert folder == str((tmp_path / "data" / "tickets").resolve())
    again = load_task_data(folder)  # what every notebook's DATASET now loads
    assert len(again.train) + len(again.validation) + len(again.test) == 14  # 24 rows - 10
    assert any("dropped" in line and "10 dropped" in line for line in lines)
    assert prepare_dataset("support_tickets", tmp_path, log=lines.append) == "support_tickets"
