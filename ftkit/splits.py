"""Splits: make them (seeded, stratified), check them for leaks, load the shipped ones.

A test score means something only if the model never saw those inputs in training.
`split_examples` keeps identical inputs in one split and every label in proportion;
`find_overlap` and `check_splits` catch the same input in two splits (ignoring case
and spacing); `load_dataset_splits` loads a dataset ftkit ships and runs that check.

Sizes are round(n * fraction); each label gets its share rounded down or up (largest
remainder), so every class is within one example of its proportion. Small classes:
every label value keeps at least one example in train (a label never seen in training
cannot be learned), so a class of one goes to train; a class too small for its share
of validation or test gets what it can spare, and the rest of that share goes to the
other classes so the sizes stay as asked. Identical inputs move as one group: a group
bigger than the room left in validation or test goes to train.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ftkit.data import DATA_SUFFIXES, Example, Examples, load_examples
from ftkit.shipped import dataset_dir, shipped_datasets
from ftkit.validation import Problem, place

SPLITS = ("train", "validation", "test")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test",)}  # file names (stems) each split may have  # fmt: skip


def input_key(example: Any) -> str:
    """The user input of an example, lower-cased with whitespace collapsed, for matching."""
    text = "\n".join(m["content"] for m in example.messages if m["role"] == "user")
    return re.sub(r"\s+", " ", text).strip().lower()


def find_overlap(a: Iterable[Example], b: Iterable[Example]) -> list[tuple[Example, Example]]:
    """Pairs (example in a, example in b) with the same user input (ignoring case, spacing)."""
    seen: dict[str, list[Example]] = {}
    for example in a:
        seen.setdefault(input_key(example), []).append(example)
    return [(first, second) for second in b for first in seen.get(input_key(second), [])]


def check_splits(
    train: Iterable[Example], validation: Iterable[Example] = (), test: Iterable[Example] = ()
) -> list[Problem]:
    """A problem for every input found in two splits (placed on the later split's copy)."""
    splits = {"train": list(train), "validation": list(validation), "test": list(test)}
    problems = []
    for one, other in (("train", "validation"), ("train", "test"), ("validation", "test")):
        for first, second in find_overlap(splits[one], splits[other]):
            message = f"same user input as {first.source} (in {one})"
            fix = f"remove it from {other} or {one}: a trained-on input flatters the {other} score"
            problems.append(Problem(*place(second.source), "messages", message, fix))
    return problems


def split_examples(
    examples: Iterable[Example],
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    stratify: str | Callable[[Example], Any] | None = None,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split into (train, validation, test): seeded, stratified, leak-free.

    `stratify` is a field of the examples' records (`meta`), or a function giving an
    example's class (`task.value_of`), or None.

    Identical inputs (ignoring case and spacing) always land in the same split. Each
    split keeps the original order.
    """
    examples = list(examples)
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(f"validation={validation} and test={test} must be fractions < 1 in all.")
    groups = _groups_by_label(examples, stratify)
    sizes = {label: sum(map(len, label_groups)) for label, label_groups in groups.items()}
    room = {label: size - 1 for label, size in sizes.items()}  # one stays in train
    test_quota = _allocate(sizes, _round(len(examples) * test), room)
    room = {label: room[label] - test_quota[label] for label in sizes}
    validation_quota = _allocate(sizes, _round(len(examples) * validation), room)
    chosen = _assign(groups, test_quota, validation_quota, random.Random(seed))
    return tuple([examples[i] for i in sorted(chosen[name])] for name in SPLITS)


def _assign(groups: dict, test_quota: dict, validation_quota: dict, rng: random.Random):
    """Deal each label's shuffled groups: test until full, then validation, then train."""
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in sorted(groups, key=str):
        label_groups = list(groups[label])
        rng.shuffle(label_groups)
        room = {"test": test_quota[label], "validation": validation_quota[label]}
        for group in label_groups:
            name = next((n for n in room if len(group) <= room[n]), "train")
            if name != "train":
                room[name] -= len(group)
            chosen[name] += group
    return chosen


def _round(value: float) -> int:
    """Round half up (Python's round() sends 0.5 to 0)."""
    return int(value + 0.5)


def _groups_by_label(
    examples: list[Example], stratify: str | Callable[[Example], Any] | None
) -> dict[Any, list[list[int]]]:
    """Indices of examples with the same input, grouped by the label of the first one."""
    by_input: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_input.setdefault(input_key(example), []).append(index)
    groups: dict[Any, list[list[int]]] = {}
    for indices in by_input.values():
        first = examples[indices[0]]
        if isinstance(stratify, str) and stratify not in first.meta:
            raise ValueError(
                f"stratify={stratify!r}, but {first.source or 'an example'} has no such field "
                f"(its fields: {sorted(first.meta)}). Pass a field every example has, or None."
            )
        label = first.meta[stratify] if isinstance(stratify, str) else (
            stratify(first) if stratify is not None else None)  # fmt: skip
        hashable = label if isinstance(label, str | int | float | None) else str(label)
        groups.setdefault(hashable, []).append(indices)
    return groups


def _allocate(sizes: dict[Any, int], total: int, room: dict[Any, int]) -> dict[Any, int]:
    """Share `total` between labels in proportion to `sizes` (largest remainder), capped by
    `room`; what a capped label cannot take goes to the others, most under-served first."""
    count = sum(sizes.values()) or 1
    shares = {label: total * size / count for label, size in sizes.items()}
    quota = {label: max(0, min(int(share), room[label])) for label, share in shares.items()}
    order = sorted(sizes, key=lambda label: (quota[label] - shares[label], str(label)))
    while sum(quota.values()) < total and any(quota[label] < room[label] for label in order):
        for label in order:
            if sum(quota.values()) < total and quota[label] < room[label]:
                quota[label] += 1
    return quota


def split_files(folder: Path) -> dict[str, Path]:
    """A folder's train, validation and test files (by name; each at most once)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = next((s for s, names in SPLIT_NAMES.items() if path.stem.lower() in names), None)
        if split is None or path.suffix.lower() not in DATA_SUFFIXES:
            continue
        if split in found:
            raise ValueError(f"{folder} holds two {split} files, {found[split].name} and "
                             f"{path.name}: keep one.")  # fmt: skip
        found[split] = path
    if "train" not in found or "test" not in found:
        data = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
        raise FileNotFoundError(
            f"{folder} needs a train and a test file (train.jsonl, test.jsonl, ...; also .json, "
            f".csv or .parquet); it has {data or 'no data files'}. Or pass one file: ftkit "
            "splits it."
        )
    return found


def load_dataset_splits(
    name: str = "support_tickets", strict: bool = True, tokenizer=None, max_length=None
) -> dict[str, Examples]:
    """Load the train, validation and test files of a shipped dataset (or of a folder, by
    path); an input found in two splits is a warning."""
    folder = Path(name) if name not in shipped_datasets() and Path(name).is_dir() else None
    files = split_files(folder or dataset_dir(name))
    splits = {split: load_examples(path, "auto", strict, tokenizer, max_length)
              for split, path in files.items()}  # fmt: skip
    for problem in check_splits(*(splits.get(s, []) for s in SPLITS)):
        split = next(s for s, path in files.items() if problem.file == str(path))
        splits[split].report.warnings.append(problem)
    return splits
