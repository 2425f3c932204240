"""One repository address decides the Colab badges and the first cell's install source."""

from __future__ import annotations

import json
from pathlib import Path

from ftkit.course import colab
from ftkit.course.notebooks import series_notebooks

ROOT = Path(__file__).resolve().parent.parent


def test_every_badge_and_install_source_agrees_with_the_setting():
    assert colab.stale(readme=ROOT / "README.md") == [], (
        "run `python -m ftkit.course.colab --readme README.md --write`"
    )


def test_a_badge_opens_the_notebook_from_the_repository():
    first = series_notebooks()[0]
    url = colab.colab_url(first, "https://github.com/someone/fork.git", "v2")
    assert url == (
        "https://colab.research.google.com/github/someone/fork/blob/v2/"
        "ftkit/notebooks/01_choosing_a_base_model.ipynb"
    )
    assert colab.install_source("https://github.com/someone/fork/", "v2") == (
        "git+https://github.com/someone/fork.git@v2"
    )


def test_a_fork_rewrites_badge_and_source_together():
    path = series_notebooks()[2]
    text = colab._updated_notebook(path, "https://github.com/someone/fork", "workshop")
    notebook = json.loads(text)
    title = "".join(notebook["cells"][0]["source"])
    assert "\n\n[![Open In Colab](" in title
    assert "github/someone/fork/blob/workshop/ftkit/notebooks/03_qlora_training.ipynb" in title
    assert title.count("Open In Colab") == 1 and title.startswith("# 03 · ")  # replaced
    cell = "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])
    assert 'default = "git+https://github.com/someone/fork.git@workshop"' in cell
    assert colab._updated_notebook(path, colab.REPOSITORY, colab.REF) == path.read_text()


def test_the_setting_matches_pyprojects_repository_url():
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Repository"] == colab.REPOSITORY
