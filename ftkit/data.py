"""Loading training data: any common file and shape in, canonical chat examples out.

What this adds over `datasets.load_dataset` (which reads the same files but stops at the
first bad row, with no line number) is the teaching part:

- JSONL, JSON, CSV and Parquet files, a `datasets.Dataset` or a list of dicts, in the four
  shapes found in the wild (chat messages, prompt/completion, Alpaca, ShareGPT), detected
  per source or forced, all turned into one `Example` form: a list of chat messages plus
  where it came from;
- every problem in the file reported with file:line and a fix (`ftkit.validation`),
  raised together in strict mode, or dropped and accounted for in lenient mode;
- `save_examples`, and converters back to each shape (`ftkit.shapes.to_format`).

Blank lines are skipped with a warning (never a drop); exact duplicates are dropped,
the later copy naming the line of the first; a file with no rows at all is an error
even in lenient mode.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftkit.shapes import (
    FORMATS,
    SHAPE_HELP,
    SHAPE_KEYS,
    detect_shape,
    parse_record,
    to_format,
    unknown_shape_issue,
)
from ftkit.validation import (
    DataError,
    DataReport,
    Problem,
    check_lengths,
    describe,
    find_duplicates,
    json_problem,
    location,
    suggest,
)

UTF8_FIX = "save the file as UTF-8 (in an editor: Save As, encoding UTF-8)"


@dataclass
class Example:
    """One training conversation in the canonical chat form."""

    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}]
    source: str = ""  # where it came from: "path/file.jsonl:12" or "file.csv:row 7"
    meta: dict = field(default_factory=dict)  # the record's other fields (labels, id, ...)

    def __str__(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in self.meta.items() if isinstance(v, str | int))
        lines = [f"Example from {self.source or '?'}" + (f" ({labels})" if labels else "")]
        for message in self.messages:
            text = message["content"].replace("\n", "\n" + " " * (len(message["role"]) + 4))
            lines.append(f"  {message['role']}: {text}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The example as a chat-shape record: {"messages": [...], **meta}."""
        return to_format(self, "chat")


@dataclass(repr=False)
class Examples(Sequence):
    """The examples loaded from one file, and the report of what loading did."""

    examples: list[Example]  # what was kept, in file order
    report: DataReport  # rows read, kept, dropped (with reasons), warnings

    @property
    def format(self) -> str:
        """The shape the file was read as: chat, prompt_completion, alpaca or sharegpt."""
        return self.report.format

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __repr__(self) -> str:
        report = self.report
        return (
            f"<Examples: {len(self)} {self.format} examples from {report.file}; "
            f"{len(report.dropped)} dropped, {len(report.warnings)} warning(s)>"
        )

    def _repr_html_(self) -> str:
        return self.report._repr_html_()


@dataclass
class _Row:
    """One record of a file on its way to becoming an Example."""

    line: int  # first line of the record (row for CSV)
    record: Any = None  # the parsed record; None when it could not be parsed
    problems: list[Problem] = field(default_factory=list)
    example: Example | None = None


def _decode(data: bytes, file: str) -> tuple[str, dict[int, list[Problem]]]:
    """Decode UTF-8, replacing bad bytes so the rest is read; problems by physical line."""
    parts, bad, start = [], {}, 0
    while True:
        try:
            parts.append(data[start:].decode("utf-8"))
            break
        except UnicodeDecodeError as error:
            at = start + error.start
            parts += [data[start:at].decode("utf-8"), "\ufffd"]
            line_start = data.rfind(b"\n", 0, at) + 1
            line = data.count(b"\n", 0, at) + 1
            message = (
                f"not valid UTF-8: byte 0x{data[at]:02x} at byte offset {at - line_start} "
                f"of the line ({at} in the file)"
            )
            bad.setdefault(line, []).append(Problem(file, line, "", message, UTF8_FIX))
            start = start + error.end
    return "".join(parts).removeprefix("\ufeff"), bad


def _read_jsonl(text: str, file: str, bad: dict) -> tuple[list[_Row], list[Problem]]:
    rows, warned = [], []
    lines = text.split("\n")  # not splitlines(): U+2028 and friends may sit inside strings
    for number, line in enumerate(lines, 1):
        problems = bad.pop(number, [])
        if not line.strip() and not problems:
            if number < len(lines):  # the empty string after the last newline is no line
                fix = "delete it (blank lines are skipped, not read as rows)"
                warned.append(Problem(file, number, "", "blank line", fix))
            continue
        row = _Row(number, problems=problems)
        if not problems:
            try:
                row.record = json.loads(line)
            except json.JSONDecodeError as error:
                row.problems.append(json_problem(file, number, error))
        rows.append(row)
    return rows, warned


def _read_json(text: str, file: str, bad: dict) -> tuple[list[_Row], list[Problem]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON Lines in a .json
            rows, warned = _read_jsonl(text, file, bad)
            fix = "rename the file to .jsonl"
            return rows, [Problem(file, None, "", "the file holds JSON Lines", fix), *warned]
        raise DataError([json_problem(file, error.lineno, error)]) from None
    key = "data" if isinstance(data, dict) and isinstance(data.get("data"), list) else None
    if not isinstance(data, list) and key is None:
        message = f"the file holds {describe(data)}, not a list of records"
        fix = 'write [{...}, {...}] or {"data": [{...}, {...}]}'
        raise DataError([Problem(file, 1, "", message, fix)])
    rows, records = [], data[key] if key else data
    for record, (first, last) in zip(records, _element_lines(text, key), strict=True):
        problems = [p for n in range(first, last + 1) for p in bad.pop(n, [])]
        rows.append(_Row(first, None if problems else record, problems))
    return rows, []


def _element_lines(text: str, key: str | None) -> list[tuple[int, int]]:
    """(first line, last line) of each element of the top-level list (or of text[key])."""
    decoder, space = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    newlines = [i for i, char in enumerate(text) if char == "\n"]
    pos = space.match(text).end() + 1  # just after the opening [ or {
    while key is not None:  # walk the object's members up to "key": [
        name, pos = decoder.raw_decode(text, space.match(text, pos).end())
        pos = space.match(text, space.match(text, pos).end() + 1).end()  # past the colon
        if name == key:
            pos += 1
            break
        pos = space.match(text, decoder.raw_decode(text, pos)[1]).end() + 1  # past the comma
    spans = []
    while text[pos := space.match(text, pos).end()] not in "]":
        _, end = decoder.raw_decode(text, pos)
        spans.append((bisect.bisect(newlines, pos) + 1, bisect.bisect(newlines, end - 1) + 1))
        pos = space.match(text, end).end()
        pos += text[pos] == ","
    return spans


def _read_csv(text: str, file: str, bad: dict) -> tuple[list[_Row], list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader)]
    if twice := sorted({name for name in header if header.count(name) > 1}):
        fix = "give every column its own name"
        raise DataError([Problem(file, 1, "", f"the header repeats {twice}", fix)])
    rows, warned, end = [], [], reader.line_num
    try:
        for number, values in enumerate(reader, 2):
            first, end = end + 1, reader.line_num
            problems = [
                replace(p, line=number) for n in range(first, end + 1) for p in bad.pop(n, [])
            ]
            if not "".join(values).strip() and not problems:
                warned.append(Problem(file, number, "", "blank row", "delete it (it is skipped)"))
                continue
            record = _csv_record(header, values, problems, Problem(file, number, "", "", ""))
            rows.append(_Row(number, None if problems else record, problems))
    except csv.Error as error:  # a broken file the csv module cannot read past
        problem = Problem(file, reader.line_num, "", f"unreadable CSV: {error}", "check quotes")
        raise DataError([problem]) from None
    return rows, warned


def _csv_record(header: list[str], values: list[str], problems: list, here: Problem) -> dict:
    """The row as a record; chat and ShareGPT turns are parsed from their JSON text."""
    if len(values) != len(header):
        message = f"{len(values)} values, but the header has {len(header)} columns"
        fix = 'put a value with a comma, quote or line break in "double quotes", and close them'
        problems.append(replace(here, message=message, fix=fix))
    record = dict(zip(header, values, strict=False))
    for column in ("messages", "conversations"):
        if record.get(column, "").strip():
            try:
                record[column] = json.loads(record[column])
            except json.JSONDecodeError as error:
                message = f"not valid JSON at character {error.pos + 1}: {error.msg}"
                fix = 'the column holds the turns as JSON: [{"role": "user", ...}, ...]'
                problems.append(replace(here, field=column, message=message, fix=fix))
    return record


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
DATA_SUFFIXES = (*_READERS, ".parquet")  # the files load_examples reads


def _record_rows(records: Iterable, file: str) -> list[_Row]:
    """Rows of in-memory records (Parquet rows, a `datasets.Dataset`, a list of dicts),
    numbered from 1; a value that is None (an empty Parquet cell) counts as absent."""
    rows = [
        _Row(number, {k: v for k, v in record.items() if v is not None}
             if isinstance(record, dict) else record)
        for number, record in enumerate(records, 1)
    ]  # fmt: skip
    if not rows:
        raise DataError([Problem(file, None, "", "no records in it", "add examples")])
    return rows


def _read_parquet(path: Path) -> list[_Row]:
    """A Parquet file's rows, through pyarrow (which `datasets` brings along)."""
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as error:
        fix = "check that it is a Parquet file (a .parquet written by pandas, pyarrow or datasets)"
        problem = Problem(str(path), None, "", f"unreadable Parquet: {error}", fix)
        raise DataError([problem]) from None
    return _record_rows(table.to_pylist(), str(path))


def _read_rows(path: Path) -> tuple[list[_Row], list[Problem]]:
    """The file's records as rows (with any problems reading them), and warnings."""
    file = str(path)
    data = path.read_bytes()
    if not data.strip():
        fix = "check that it was saved, and that it is the file you meant"
        raise DataError([Problem(file, None, "", "the file is empty", fix)])
    text, bad = _decode(data, file)
    rows, warned = _READERS[path.suffix.lower()](text, file, bad)
    leftover = [problem for problems in bad.values() for problem in problems]
    if leftover:  # a bad byte outside any record (a CSV header, say): nothing is ignored
        raise DataError(leftover)
    if not rows:
        raise DataError([Problem(file, None, "", "no records in the file", "add examples")])
    return rows, warned


def _choose_shape(rows: list[_Row], format: str, file: str) -> str:
    """The file's shape: `format` when forced, else the shape of most records."""
    records = [row for row in rows if isinstance(row.record, dict)]
    counts = Counter(detect_shape(row.record) for row in records)
    counts.pop(None, None)
    shape = format if format != "auto" else max(counts, key=counts.get, default="unknown")
    for row in rows:
        if row.problems:
            continue
        if not isinstance(row.record, dict):
            message = f"the row is {describe(row.record)}, expected an object {{...}}"
            row.problems.append(Problem(file, row.line, "", message, f"use {SHAPE_HELP}"))
        elif format == "auto" and (found := detect_shape(row.record)) != shape:
            field_, message, fix = unknown_shape_issue(row.record)
            if found is not None:
                message = f"the row is in the {found} shape, but the file is {shape} "
                message += f"({counts[shape]} of {len(rows)} rows)"
                fix = f"use one shape per file: convert this row to {shape}, or move it"
            row.problems.append(Problem(file, row.line, field_, message, fix))
    return shape


def _make_examples(rows: list[_Row], shape: str, file: str) -> None:
    """Give each clean row its Example, or the problems that stop it from having one."""
    for row in rows:
        if row.problems:
            continue
        messages, issues = parse_record(row.record, shape)
        row.problems += [Problem(file, row.line, *issue) for issue in issues]
        if messages is not None:
            meta = {k: v for k, v in row.record.items() if k not in SHAPE_KEYS[shape]}
            row.example = Example(messages, location(file, row.line), meta)


def _check_examples(rows: list[_Row], tokenizer, max_length: int | None) -> None:
    """Checks across examples (duplicates, then length); problems go to their rows."""
    by_line = {row.line: row for row in rows if row.example is not None}
    for problem in find_duplicates(row.example for row in by_line.values()):
        by_line[problem.line].problems.append(problem)
    if max_length is not None:
        clean = [row.example for row in by_line.values() if not row.problems]
        for problem in check_lengths(clean, tokenizer, max_length):
            by_line[problem.line].problems.append(problem)


def _check_arguments(format: str, tokenizer, max_length: int | None) -> None:
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}{suggest(format, FORMATS)}")
    if max_length is not None and tokenizer is None:
        raise ValueError("max_length counts tokens: pass the tokenizer too (tokenizer=...).")


def _check_path(path: Path) -> None:
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*") if p.suffix in DATA_SUFFIXES)
        hint = f" Data files there: {', '.join(near)}." if near else ""
        raise FileNotFoundError(f"No data file at {path}.{hint}")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(
            f"ftkit reads .jsonl, .json, .csv and .parquet files, not {path.name!r}. For a "
            "datasets.Dataset or a list of dicts, pass the object itself."
        )


def _rows_of(source) -> tuple[str, list[_Row], list[Problem]]:
    """(what to call the source in messages, its rows, warnings) for a file or records."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        _check_path(path)
        if path.suffix.lower() == ".parquet":
            return str(path), _read_parquet(path), []
        return str(path), *_read_rows(path)
    if isinstance(source, dict) or not isinstance(source, Iterable):
        raise TypeError(
            f"load_examples takes a file path, a datasets.Dataset or a list of dicts, not "
            f"{type(source).__name__}."
        )
    name = f"<{type(source).__name__}>" if type(source).__name__ == "Dataset" else "<records>"
    return name, _record_rows(source, name), []


def load_examples(
    source,
    format: str = "auto",
    strict: bool = True,
    tokenizer=None,
    max_length: int | None = None,
) -> Examples:
    """Load data in any of the four shapes as checked chat examples: a JSONL, JSON, CSV or
    Parquet file, a `datasets.Dataset`, or a list of dicts.

    Strict (the default) raises one `DataError` listing every problem (file:line, or row N);
    strict=False drops the bad rows and says why in `.report`.
    """
    _check_arguments(format, tokenizer, max_length)
    file, rows, warned = _rows_of(source)
    shape = _choose_shape(rows, format, file)
    _make_examples(rows, shape, file)
    _check_examples(rows, tokenizer, max_length)
    kept = [row.example for row in rows if not row.problems]
    dropped = [(row.line, row.problems) for row in rows if row.problems]
    report = DataReport(file, shape, len(rows), len(kept), dropped, warned)
    if strict and dropped:
        raise DataError(report.problems, report)
    if warned:
        warnings.warn(f"{file}: {len(warned)} warning(s), first: {warned[0]}", stacklevel=2)
    return Examples(kept, report)


def save_examples(examples: Iterable[Example], path: str | Path, format: str = "chat") -> Path:
    """Write examples as JSONL (one record per line, UTF-8), in the chat shape by default."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise ValueError(f"save_examples writes JSON Lines: name the file .jsonl, not {path.name}")
    lines = [json.dumps(to_format(example, format), ensure_ascii=False) for example in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def round_trip(examples: Sequence[Example], folder: str | Path) -> dict[str, str]:
    """Write `examples` in every shape into `folder` and read each file back; per shape, what
    came back (the shape detected, whether the messages are the same, the first line), or
    why the shape cannot hold them (Alpaca holds one turn, for instance)."""
    examples, found = list(examples), {}
    for shape in FORMATS:
        try:
            path = save_examples(examples, Path(folder) / f"{shape}.jsonl", format=shape)
        except ValueError as error:
            found[shape] = f"cannot hold these examples: {error}"
            continue
        loaded = load_examples(path)
        same = [e.messages for e in loaded] == [e.messages for e in examples]
        first = path.read_text(encoding="utf-8").splitlines()[0]
        found[shape] = f"detected as {loaded.format}, same messages: {same}; {first[:90]} ..."
    return found
