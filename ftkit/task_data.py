"""Any dataset, ready for the series: a task and three splits, from a name, a file or a folder.

Every notebook's `DATASET` knob goes through `load_task_data`:

- a shipped name (`support_tickets`, ...): its splits and its task.json, as shipped;
- a folder: its train, validation and test files (.jsonl, .json, .csv or .parquet) used as
  given, and its task.json; without a validation file, one is carved out of train;
- one file, a `datasets.Dataset` or a list of dicts: split here, seeded and stratified on the
  task's `stratify`, identical inputs kept in one split;
- the task: `task=` (a Task, a dict or a task.json path), else the dataset's own task.json
  (`<file stem>.task.json` beside a single file), else inferred from the answers.

The result, a `TaskData`, says where every example came from, how the splits were made and
what loading dropped; `save` writes it as a folder that loads back to the same thing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftkit.data import DATA_SUFFIXES, Example, load_examples, save_examples
from ftkit.shipped import dataset_dir, shipped_datasets
from ftkit.splits import SPLIT_NAMES, check_splits, split_examples, split_files
from ftkit.task import TASK_FILE, Task, infer_task, load_task, task_value
from ftkit.validation import DataReport

SHARES = {"validation": 0.1, "test": 0.1}  # what a single file gives to each split
PROVENANCE = "provenance.json"  # written by `TaskData.save`: where the data came from


@dataclass
class TaskData:
    """A dataset ready for the series: its task, three splits, and how they were made."""

    name: str  # the dataset's name (shipped name, folder or file stem)
    task: Task  # what an answer is and how it is scored
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    source: str  # what was loaded: a shipped name, a folder or a file
    split_how: str  # "as shipped", "the folder's files", or how this call split it
    reports: list[DataReport] = field(default_factory=list)  # one per file read

    @property
    def dropped(self) -> int:
        """Rows loading dropped (lenient loading only; strict loading drops none)."""
        return sum(len(report.dropped) for report in self.reports)

    def splits(self) -> dict[str, list[Example]]:
        """{"train": [...], "validation": [...], "test": [...]}."""
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def summary(self) -> str:
        """Sizes, where they came from, what was dropped, then the task."""
        sizes = ", ".join(f"{len(v)} {k}" for k, v in self.splits().items())
        lines = [f"{self.name}: {sizes} ({self.split_how}; from {self.source})"]
        if self.dropped:
            lines.append(f"Loading dropped {self.dropped} row(s); see .reports for each reason.")
        return "\n".join([*lines, self.task.describe()])

    __str__ = summary

    def save(self, folder: str | Path) -> Path:
        """Write the splits (JSONL, chat shape), task.json and provenance.json into `folder`."""
        folder = Path(folder)
        for split, examples in self.splits().items():
            save_examples(examples, folder / f"{split}.jsonl")
        self.task.save(folder / TASK_FILE)
        provenance = {"name": self.name, "source": self.source, "split_how": self.split_how,
                      "dropped": [r.summary() for r in self.reports if r.dropped]}  # fmt: skip
        (folder / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        return folder


def load_task_data(dataset, strict: bool = True, task=None, seed: int = 0) -> TaskData:
    """Load a shipped name, a folder, a file, a `datasets.Dataset` or a list of dicts as a
    task and three splits (see the module docstring); `strict=False` drops bad rows."""
    given = task_value(task) if task is not None else None
    if not isinstance(dataset, str | os.PathLike):
        loaded = load_examples(dataset, strict=strict)
        return _split_one("data", loaded, given, seed)
    path = _path_of(dataset)
    if path.is_dir() and (single := _only_file(path)):
        path = single  # a folder holding one data file: that file, split here
    elif path.is_dir():
        return _from_folder(path, strict, given, seed, str(dataset))
    own = path.with_name(f"{path.stem}.{TASK_FILE}")  # my.jsonl -> my.task.json
    given = given or (load_task(own) if own.is_file() else None)
    return _split_one(path.stem, load_examples(path, strict=strict), given, seed)


def _path_of(dataset: str | os.PathLike) -> Path:
    """The folder or file a DATASET value names: a shipped name, or a path that exists."""
    text = str(dataset)
    if text in shipped_datasets():
        return dataset_dir(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"DATASET {text!r} is neither a shipped dataset ({', '.join(shipped_datasets())}) "
            "nor a file or folder that exists. Give a path to your .jsonl, .json, .csv or "
            ".parquet file (or a folder with train/validation/test files)."
        )
    return path


def _only_file(folder: Path) -> Path | None:
    """The folder's one data file, when it holds exactly one and it is not a split's."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES]
    names = {name for names in SPLIT_NAMES.values() for name in names}
    return files[0] if len(files) == 1 and files[0].stem.lower() not in names else None


def _split_one(name: str, loaded, given: Task | None, seed: int) -> TaskData:
    """One source's examples, split here, seeded and stratified as the task says."""
    examples = list(loaded)
    task = given or infer_task(examples, name)
    task = task if task.name else task.override(name=name)
    train, validation, test = split_examples(examples, SHARES["validation"], SHARES["test"],
                                             seed, stratify=task.value_of)  # fmt: skip
    how = (f"split {len(train)}/{len(validation)}/{len(test)} here, seed {seed}, "
           f"stratified on {task.stratify or 'nothing'}")  # fmt: skip
    return TaskData(name, task, train, validation, test, loaded.report.file, how,
                    [loaded.report])  # fmt: skip


def _from_folder(folder: Path, strict: bool, given: Task | None, seed: int, source: str):
    """A folder's splits as given (validation carved from train when missing)."""
    files = split_files(folder)
    loaded = {split: load_examples(path, strict=strict) for split, path in files.items()}
    own = folder / TASK_FILE
    task = given or (load_task(own) if own.is_file() else infer_task(loaded["train"],
                                                                      folder.name))  # fmt: skip
    task = task if task.name else task.override(name=folder.name)
    train, test = list(loaded["train"]), list(loaded["test"])
    if "validation" in loaded:
        validation, how = list(loaded["validation"]), "the folder's train, validation and test"
    else:
        train, validation, _ = split_examples(train, SHARES["validation"], 0.0, seed,
                                              stratify=task.value_of)  # fmt: skip
        how = f"the folder's train and test; validation carved from train (seed {seed})"
    how = "as shipped" if source in shipped_datasets() else how
    for problem in check_splits(train, validation, test):  # the same input in two splits
        report = next(r.report for r in loaded.values() if r.report.file == problem.file)
        report.warnings.append(problem)
    return TaskData(task.name, task, train, validation, test, source, how,
                    [r.report for r in loaded.values()])  # fmt: skip
