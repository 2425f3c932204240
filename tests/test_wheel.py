"""ftkit as a wheel, outside the repository: it carries its datasets and notebooks.

The wheel is built from this checkout and installed into a fresh virtual environment with
no network: the new environment reuses this one's installed packages (a .pth file points
at them) but gets ftkit only from the wheel. Everything then runs from a temporary folder
outside the repository, as for someone who ran `pip install ftkit-*.whl`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*command, cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, ftkit command, a work folder outside the repository, environment)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy: setuptools builds in place and keeps a build/ folder
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "runs", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "ftkit", source / "ftkit", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", base / "dist", source, cwd=base)  # fmt: skip
    wheels = list((base / "dist").glob("ftkit-*.whl"))
    assert len(wheels) == 1
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                     cwd=base).strip())  # fmt: skip
    (site / "reuse_test_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheels[0], cwd=base)
    work = base / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env |= {"JUPYTER_DATA_DIR": str(base / "jupyter"), "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    return python, venv / "bin" / "ftkit", work, env


def test_the_wheel_carries_every_shipped_dataset(installed):
    python, _, work, env = installed
    out = _run(python, "-c", textwrap.dedent("""
        import json
        import ftkit
        from ftkit.shipped import dataset_dir, shipped_datasets
        from ftkit.task_data import load_task_data
        sizes, tasks = {}, {}
        for name in shipped_datasets():
            data = load_task_data(name, strict=False)
            sizes[name] = {k: len(v) for k, v in data.splits().items()}
            tasks[name] = [data.task.answer, len(data.task.system_prompt or "")]
        print(json.dumps({"package": ftkit.__file__, "sizes": sizes, "tasks": tasks,
                          "from": str(dataset_dir("brand_voice"))}))
        """), cwd=work, env=env)  # fmt: skip
    found = json.loads(out.strip().splitlines()[-1])
    assert str(ROOT) not in found["package"] and "site-packages" in found["package"]
    assert found["sizes"]["support_tickets"] == {"train": 640, "validation": 120, "test": 160}
    assert found["sizes"]["brand_voice"] == {"train": 480, "validation": 80, "test": 120}
    assert sum(found["sizes"]["messy_tickets"].values()) == 14  # the rows a lenient load keeps
    assert sum(found["sizes"]["general_probe"].values()) == 40  # notebook 05's probe
    assert (
        found["tasks"]["support_tickets"][0] == "json"
        and found["tasks"]["brand_voice"][0] == "text"
    )
    assert (
        min(prompt for _, prompt in (found["tasks"][n] for n in ("support_tickets", "brand_voice")))
        > 500
    )
    assert "site-packages" in found["from"]


def test_a_pip_user_gets_the_notebooks_and_runs_one(installed):
    _, command, work, env = installed
    _run(command, "notebooks", work / "course", cwd=work, env=env)
    copied = sorted(p.relative_to(work / "course").as_posix() for p in (work / "course").rglob("*"))
    assert "02_formatting_examples.ipynb" in copied and "INSTRUCTORS.md" in copied
    assert "solutions/04_prompt_vs_finetune_solutions.ipynb" in copied
    again = subprocess.run([command, "notebooks", work / "course"], cwd=work, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 1 and "Nothing was copied" in again.stderr  # a learner's work kept
    _run(command, "run", "--mode", "smoke", "--out", work / "build", "02", cwd=work, env=env)
    executed = json.loads((work / "build" / "02_formatting_examples.ipynb").read_text())
    text = json.dumps([cell.get("outputs", []) for cell in executed["cells"]])
    assert "site-packages/ftkit/datasets/messy_tickets/tickets.jsonl" in text  # the wheel's data
    assert "kept + dropped = 24" in text and '"output_type": "error"' not in text
    assert (work / "build" / "report.html").is_file()
