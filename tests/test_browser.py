"""Notebooks 04 and 06 in a real browser, as a learner meets them.

JupyterLab runs on 127.0.0.1 and headless Chromium opens notebooks/04 (a copy in smoke
mode, up to its comparator and controls: section 8), runs every cell from the Run menu, then
uses the comparator: types a ticket into its text box, clicks Compare and waits for every
approach's answer in the rendered page. The sections after it (the learning curve, the FAQ)
run headless with the rest of the series (tests/test_notebooks.py).
A screenshot of the comparator goes to build/browser/notebook04_comparator.png. Notebook
06's chat the same way: Run All up to the chat, then a typed question answered with the
adapter on, then off (build/browser/notebook06_chat.png).

The test installs what it needs: Debian's `chromium` (apt-get, as root) and Playwright for
Python (pip). It never runs `playwright install`, which downloads a browser of its own.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from ftkit.course.notebooks import notebooks_dir
from ftkit.runs import SMOKE_RUNS_ENV

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = notebooks_dir() / "04_prompt_vs_finetune.ipynb"
CHAT_NOTEBOOK = notebooks_dir() / "06_use_and_ship.ipynb"
SCREENSHOT = ROOT / "build" / "browser" / "notebook04_comparator.png"
CHAT_SCREENSHOT = SCREENSHOT.with_name("notebook06_chat.png")
FAILURE_SCREENSHOT = SCREENSHOT.with_name("notebook04_failure.png")  # the whole page
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PLAYWRIGHT_SPEC = "playwright>=1.45,<2"
TICKET = "My invoice was charged twice this month, please refund one payment."
CHAT_QUESTION = "My calendar app won't sync with my phone <since Monday>."  # shown as typed
APPROACHES = [
    "base, zero-shot",
    "base + system prompt",
    "base + prompt + 3-shot",
    "base + prompt + 3 retrieved",
    "base + prompt + 3-shot, constrained",
    "fine-tuned",
    "fine-tuned + prompt",
    "classical: TF-IDF + logistic regression",
]
# Per cell, as ftkit.runner gives papermill. The smoke run trains three small adapters; with
# other jobs on the same 2 cores its training cell alone took 8 minutes.
CELL_TIMEOUT_S = 1800
COMPARE_TIMEOUT_S = 600  # every approach answers one ticket

pytestmark = pytest.mark.browser


# --- installing what the test needs -------------------------------------------------------


def _apt_install(package: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", package]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (needs root)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and apt-get as root is not available to install it")
    result = _apt_install("chromium")
    if result.returncode != 0:  # a fresh machine may have no package index yet
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=600)
        result = _apt_install("chromium")
    if result.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"`apt-get install chromium` failed:\n{result.stderr[-3000:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def sync_playwright() -> Any:
    """playwright.sync_api.sync_playwright, pip-installed into this interpreter if missing."""
    try:
        return importlib.import_module("playwright.sync_api").sync_playwright
    except ImportError:
        pass
    command = [sys.executable, "-m", "pip", "install", "--quiet", PLAYWRIGHT_SPEC]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"`pip install {PLAYWRIGHT_SPEC}` failed:\n{result.stderr[-3000:]}")
    importlib.invalidate_caches()
    return importlib.import_module("playwright.sync_api").sync_playwright


# --- JupyterLab on 127.0.0.1, with its own settings -----------------------------------------


@dataclass
class Lab:
    """A running JupyterLab server and the notebook it serves."""

    url: str  # http://127.0.0.1:PORT
    token: str
    notebook: str  # file name under the server's root
    log: Path  # the server's output


def smoke_copy(source: Path, directory: Path) -> Path:
    """A copy of a notebook with MODE = "smoke" in its parameters cell and no outputs."""
    notebook = nbformat.read(source, as_version=4)
    [cell] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    source_text, count = re.subn(r'(?m)^MODE = "full"', 'MODE = "smoke"', cell.source)
    assert count == 1, f'{source.name}: the parameters cell should set MODE = "full"'
    cell.source = source_text
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    target = directory / source.name
    nbformat.write(notebook, target)
    return target


def cut_before(notebook_path: Path, section: str) -> None:
    """Keep `notebook_path`'s cells before its markdown heading `## {section}.`."""
    notebook = nbformat.read(notebook_path, as_version=4)
    end = next(i for i, c in enumerate(notebook.cells)
               if c.cell_type == "markdown" and c.source.startswith(f"## {section}."))  # fmt: skip
    notebook.cells = notebook.cells[:end]
    nbformat.write(notebook, notebook_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lab_settings(home: Path) -> dict[str, str]:
    """Temporary Jupyter dirs, so the user's settings stay untouched; no news popup."""
    dirs = {name: home / name for name in ("config", "data", "runtime", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True)
    labconfig = dirs["config"] / "labconfig"
    labconfig.mkdir()
    disabled = {"@jupyterlab/apputils-extension:announcements": True}
    (labconfig / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled}))
    # Render every cell (no virtual scrolling), so each output is in the page.
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    return {
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
    }


def _wait_until_ready(url: str, token: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within 90 s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen, url: str, token: str) -> list[psutil.Process]:
    """Shut the server down (kernels first), kill what is left; return survivors."""
    try:
        server = psutil.Process(process.pid)
        family = [server, *server.children(recursive=True)]  # the kernel among them
    except psutil.NoSuchProcess:
        family = []
    request = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10).close()
        process.wait(timeout=20)
    except (urllib.error.URLError, ConnectionError, subprocess.TimeoutExpired):
        pass
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    for survivor in family:  # kernels run in sessions of their own, outside the group
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    _, alive = psutil.wait_procs(family, timeout=10)
    return alive


@contextlib.contextmanager
def serve(notebook: Path, tmp_path: Path, runs_dir: Path) -> Iterator[Lab]:
    """JupyterLab serving `notebook` (already in its root folder) on 127.0.0.1.

    Its kernel shares the smoke series' runs (`FTKIT_SMOKE_RUNS`), as the notebooks in the
    series share notebook 03's: the fine-tune (and notebook 04's learning curve) are reused,
    so the browser run spends its time on what the page shows, not on training again.
    """
    root = notebook.parent
    env = {**os.environ, **_lab_settings(tmp_path / "jupyter"),
           SMOKE_RUNS_ENV: str(runs_dir)}  # fmt: skip
    port, token = _free_port(), secrets.token_hex(16)
    url, log = f"http://127.0.0.1:{port}", tmp_path / "jupyter.log"
    command = [
        sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
        "--ip", "127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={tmp_path / 'jupyter' / 'settings'}",
        f"--LabApp.workspaces_dir={tmp_path / 'jupyter' / 'workspaces'}",
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_until_ready(url, token, process, log)
        yield Lab(url, token, notebook.name, log)
    finally:
        alive = _stop(process, url, token)
        assert not alive, f"processes left after shutting JupyterLab down: {alive}"


@pytest.fixture
def lab(tmp_path: Path, smoke_series: Any) -> Iterator[Lab]:
    """JupyterLab serving notebook 04 in smoke mode, up to its comparator and controls
    (section 8): the learning curve and the FAQ after them are tested headless."""
    root = tmp_path / "root"
    root.mkdir()
    copy = smoke_copy(NOTEBOOK, root)
    cut_before(copy, "9")
    with serve(copy, tmp_path, smoke_series.runs_dir) as served:
        yield served


@pytest.fixture
def chat_lab(tmp_path: Path, smoke_series: Any) -> Iterator[Lab]:
    """JupyterLab serving notebook 06 in smoke mode, up to the end of its chat (section 2):
    the exports after it are tested headless (tests/test_notebooks.py, tests/test_ship.py)."""
    root = tmp_path / "root"
    root.mkdir()
    copy = smoke_copy(CHAT_NOTEBOOK, root)
    cut_before(copy, "3")
    with serve(copy, tmp_path, smoke_series.runs_dir) as served:
        yield served


# --- the learner's side: a headless Chromium driving JupyterLab ----------------------------

PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'),
                                 e => e.textContent.trim())"""
KERNEL_JS = """() => document.querySelector('.jp-Notebook-ExecutionIndicator')
                       ?.getAttribute('data-status')"""
# The indicator reads "idle" before any kernel is attached too; the toolbar says which.
KERNEL_READY_JS = f"""() => document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName')
    ?.textContent.includes('Python') && ({KERNEL_JS})() === 'idle'"""
# JupyterLab renders an error output as stderr text; a traceback tells it from a warning.
ERRORS_JS = """() => Array.from(document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
    e => e.textContent).filter(t => t.includes('Traceback (most recent call last)'))"""


def _chromium_family() -> list[psutil.Process]:
    """The Chromium processes this test process started (through Playwright's driver)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "chrom" in child.name().lower():
                found.append(child)
    return found


def run_all_cells(page: Any, cell_timeout_s: float) -> list[str]:
    """Run > Run All Cells, then wait until every code cell has its [n]; return the prompts.

    Fails at once with the traceback when a cell raises (JupyterLab stops there), and when
    one cell runs longer than `cell_timeout_s`.
    """
    page.wait_for_function(KERNEL_READY_JS, timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    clicked = progressed = time.monotonic()
    running, finished = False, 0
    while True:
        errors = page.evaluate(ERRORS_JS)
        assert not errors, f"a cell raised in the browser run:\n{errors[0][-3000:]}"
        prompts = page.evaluate(PROMPTS_JS)
        done = sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in prompts)
        if prompts and done == len(prompts):
            return prompts
        if done > finished:
            finished, progressed = done, time.monotonic()
        running = running or any(p != "[ ]:" for p in prompts)
        assert running or time.monotonic() < clicked + 60, "Run All Cells started no cell"
        stopped = running and "[*]:" not in prompts and page.evaluate(KERNEL_JS) == "idle"
        assert not stopped, f"the run stopped before the last cell: {prompts}"
        assert time.monotonic() < progressed + cell_timeout_s, (
            f"code cell {finished + 1} still running after {cell_timeout_s:.0f} s: {prompts}"
        )
        time.sleep(2)


def compare_typed_ticket(page: Any, ticket: str, timeout_s: float) -> list[list[str]]:
    """Type a ticket into the comparator, click Compare; return the answer table's rows."""
    comparator = page.locator(".ftkit-comparator")
    comparator.scroll_into_view_if_needed()
    assert page.locator(".ftkit-comparator-answers").inner_text().strip() == "", (
        "the comparator should show no answers before Compare is clicked"
    )
    box = page.locator(".ftkit-comparator-input textarea")
    box.click()
    box.fill("")
    box.press_sequentially(ticket)
    page.locator("button.ftkit-comparator-button").click()
    # Only the callback run on a typed question writes this (a test example has a reference).
    page.locator(
        ".ftkit-comparator-answers", has_text="a typed question has no reference"
    ).wait_for(timeout=timeout_s * 1000)
    comparator.scroll_into_view_if_needed()
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.ftkit-comparator-answers tr'))
                      .slice(1).map(r => Array.from(r.cells, c => c.textContent.trim()))"""
    )


@contextlib.contextmanager
def notebook_page(
    sync_playwright: Any, chromium: Path, lab: Lab, failure_png: Path, family: list
) -> Iterator[Any]:
    """Headless Chromium with `lab`'s notebook open; the whole page goes to `failure_png`
    if the block fails. `family` receives the browser's processes (to check none is left)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        family.extend(_chromium_family())
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{lab.url}/lab/tree/{lab.notebook}?token={lab.token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=120_000)
            yield page
        except BaseException:  # pytest.fail too: keep the page for the log
            page.screenshot(path=str(failure_png))
            print(f"JupyterLab's log: {lab.log}; the page at failure: {failure_png}")
            raise
        finally:
            browser.close()


def test_notebook04_comparator_in_a_browser(
    chromium: Path, sync_playwright: Any, lab: Lab, capsys: pytest.CaptureFixture
) -> None:
    """Run All in JupyterLab, then a learner's typed ticket through the comparator."""
    started, family = time.monotonic(), []
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with notebook_page(sync_playwright, chromium, lab, FAILURE_SCREENSHOT, family) as page:
        prompts = run_all_cells(page, CELL_TIMEOUT_S)
        ran = time.monotonic() - started

        figures = page.locator(".jp-OutputArea-output[data-mime-type='image/png'] img")
        assert figures.count() >= 3, "the score, cost and confusion plots should render"
        assert page.locator(".ftkit-comparator").count() == 1, "the comparator should render"
        reused = page.locator(".jp-OutputArea-output", has_text="[ftkit] reusing").count()
        assert reused >= 1, "notebook 04 should pick up the smoke series' fine-tune"
        # The picker filled the box with test ticket 1; the learner types over it.
        box = page.locator(".ftkit-comparator-input textarea")
        assert box.input_value() not in ("", TICKET)
        rows = compare_typed_ticket(page, TICKET, COMPARE_TIMEOUT_S)
        status = page.locator(".ftkit-comparator-status").inner_text()
        page.locator(".ftkit-comparator").screenshot(path=str(SCREENSHOT))
    assert [row[0] for row in rows] == APPROACHES, f"one row per approach, got {rows}"
    for name, answer, latency in rows:
        assert answer and re.fullmatch(r"\d+ ms", latency), f"{name}: {answer!r}, {latency!r}"
    assert status == f"{len(APPROACHES)} answers", status
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"Chromium processes left after closing the browser: {alive}"
    with capsys.disabled():
        print(
            f"\n[browser] {len(prompts)} code cells ran in {ran:.0f} s, the comparator answered; "
            f"{time.monotonic() - started:.0f} s in the browser; screenshot: {SCREENSHOT}"
        )


# The chat has `count` finished replies: none being written, and the status says done.
REPLIED_JS = """count => {
    const replies = document.querySelectorAll('.ftkit-chat-transcript .ftkit-chat-reply');
    const status = document.querySelector('.ftkit-chat-status')?.textContent ?? '';
    return replies.length === count && status.includes('done')
        && !Array.from(replies).some(r => r.textContent.includes('writing'));
}"""


def test_notebook06_chat_in_a_browser(
    chromium: Path, sync_playwright: Any, chat_lab: Lab, capsys: pytest.CaptureFixture
) -> None:
    """Run All up to the chat, then a learner types a question, presses Enter, reads the
    reply as it is written; switches the adapter off and asks again."""
    started, family = time.monotonic(), []
    CHAT_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    failure = FAILURE_SCREENSHOT.with_name("notebook06_failure.png")
    with notebook_page(sync_playwright, chromium, chat_lab, failure, family) as page:
        run_all_cells(page, CELL_TIMEOUT_S)
        chat = page.locator(".ftkit-chat")
        assert chat.count() == 1, "the chat should render"
        chat.scroll_into_view_if_needed()
        bubbles = page.locator(".ftkit-chat-transcript .ftkit-chat-reply")
        assert bubbles.count() == 0, "a new chat shows no reply before a question"
        box = page.locator(".ftkit-chat-input input")
        turns = ((CHAT_QUESTION, None), (CHAT_QUESTION, "base (adapter off)"))
        for turn, (question, side) in enumerate(turns):
            if side:
                page.locator(".ftkit-chat .widget-toggle-button", has_text=side).click()
            box.click()
            box.fill(question)
            box.press("Enter")
            page.wait_for_function(REPLIED_JS, arg=turn + 1, timeout=COMPARE_TIMEOUT_S * 1000)
        replies = [bubbles.nth(i).inner_text() for i in range(bubbles.count())]
        transcript = page.locator(".ftkit-chat-transcript").inner_text()
        chat.screenshot(path=str(CHAT_SCREENSHOT))
    assert transcript.count(CHAT_QUESTION) == 2, transcript  # both questions shown, as typed
    assert "adapter on" in replies[0] and "adapter off" in replies[1], replies
    assert all(re.search(r"tokens/s", reply) for reply in replies), replies
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"Chromium processes left after closing the browser: {alive}"
    with capsys.disabled():
        print(
            f"\n[browser] notebook 06's chat answered twice; {time.monotonic() - started:.0f} s "
            f"in the browser; screenshot: {CHAT_SCREENSHOT}"
        )
