"""The datasets ftkit ships, found inside the installed package: a clone and a wheel alike.

Each shipped dataset is a folder in `ftkit/datasets/` with its files (train, validation and
test splits, or one raw file), a datasheet (README.md) and anything its task needs (a
system prompt). They are read through `importlib.resources`, so nothing depends on where
the repository or the current directory is.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def datasets_dir() -> Path:
    """The folder of the shipped datasets, inside the installed ftkit package."""
    return Path(str(importlib.resources.files("ftkit") / "datasets"))


def shipped_datasets() -> list[str]:
    """The names of the datasets ftkit ships, sorted."""
    return sorted(p.name for p in datasets_dir().iterdir() if (p / "README.md").is_file())


def dataset_dir(name: str) -> Path:
    """The folder of the shipped dataset `name`; a clear error naming the shipped ones."""
    folder = datasets_dir() / name
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(
            f"ftkit ships no dataset {name!r}. Shipped: {', '.join(shipped_datasets())}. "
            "For your own data, pass its file to ftkit.data.load_examples."
        )
    return folder
