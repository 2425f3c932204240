"""Validating training data: every problem in a file, each with its place and a fix.

`ftkit.data` reads files and `ftkit.shapes` turns records into messages; this module
holds the checks and the vocabulary they report in. What it adds over
`json.loads` or `datasets.load_dataset`, which stop at the first bad row (or let it
through to fail later, deep inside a trainer):

- a `Problem` per mistake, naming the file, the line (the row, for CSV), the field,
  what is wrong and how to fix it; every mistake in a file, not just the first;
- checks of the conversation itself: roles (with "did you mean"), order, empty replies;
- `DataReport`: rows read, kept and dropped with the reasons, so nothing is dropped
  silently (kept + dropped == rows read, always);
- checks across examples: exact duplicates, and length in tokens after the chat template.
"""

from __future__ import annotations

import difflib
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
Issue = tuple[str, str, str]  # (field, what is wrong, how to fix it), before it has a place


@dataclass
class Problem:
    """One thing wrong with the data, where it is, and what to do about it."""

    file: str  # the file as you named it
    line: int | None  # 1-based line (row for CSV, header = row 1); None for the whole file
    field: str  # where in the record, e.g. "messages[1].role"; "" for the whole row
    message: str  # what is wrong
    fix: str  # how to fix it

    @property
    def location(self) -> str:
        return location(self.file, self.line)

    def __str__(self) -> str:
        where = f"{self.location}: {self.field}" if self.field else self.location
        return f"{where}: {self.message} -> {self.fix}"


class DataError(ValueError):
    """A data file has problems; `.problems` lists every one, the message shows them all."""

    def __init__(self, problems: list[Problem], report: DataReport | None = None):
        self.problems = list(problems)
        self.report = report
        rows = len({(p.file, p.line) for p in self.problems})
        head = f"{len(self.problems)} problem(s)"
        if report is not None:
            head = f"{report.file}: {head} in {rows} of {report.rows_read} rows"
        lines = [head + "; nothing was loaded:", *(f"  {p}" for p in self.problems)]
        if report is not None:
            lines.append("Fix these, or pass strict=False to drop these rows and keep the rest.")
        super().__init__("\n".join(lines))


@dataclass
class DataReport:
    """What loading a file did: rows read, kept, dropped (with reasons) and warnings."""

    file: str  # the file that was read
    format: str = "unknown"  # the shape: chat, prompt_completion, alpaca or sharegpt
    rows_read: int = 0  # records found in the file (blank lines are not records)
    kept: int = 0  # rows that became examples
    dropped: list[tuple[int, list[Problem]]] = field(default_factory=list)  # (line, why)
    warnings: list[Problem] = field(default_factory=list)  # worth fixing, nothing dropped

    @property
    def problems(self) -> list[Problem]:
        """Every problem of every dropped row, in file order."""
        return [problem for _, problems in self.dropped for problem in problems]

    def summary(self) -> str:
        """Counts on one line, then every dropped row and warning on its own line."""
        lines = [
            f"{self.file} ({self.format}): {self.rows_read} rows read, {self.kept} kept, "
            f"{len(self.dropped)} dropped, {len(self.warnings)} warning(s)."
        ]
        if self.dropped:
            lines += ["Dropped:", *(f"  {p}" for p in self.problems)]
        if self.warnings:
            lines += ["Warnings:", *(f"  {p}" for p in self.warnings)]
        return "\n".join(lines)

    __str__ = summary

    def _repr_html_(self) -> str:
        head, *rest = self.summary().splitlines()
        colour = "#fff4e5" if self.dropped or self.warnings else "#e6f4ea"
        items = "".join(
            f"<li>{html.escape(line.strip())}</li>" if line.startswith("  ") else ""
            for line in rest
        )
        body = f"<ul style='margin:4px 0'>{items}</ul>" if items else ""
        return (
            f'<div style="background:{colour};padding:8px 12px;border-radius:6px">'
            f"<b>{html.escape(head)}</b>{body}</div>"
        )


def suggest(word: str, choices: Iterable[str]) -> str:
    """ "; did you mean 'assistant'?" for a close match among `choices`, else ""."""
    match = difflib.get_close_matches(str(word).lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def describe(value: Any) -> str:
    """A learner's name for the JSON type of `value`: 'a number (3)', 'null', 'a list'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"a number ({value})"
    names = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def check_text(value: Any, name: str, missing: bool = False) -> Issue | None:
    """The issue with a text field (absent, not a string, empty, only whitespace), if any."""
    short = name.rsplit(".", 1)[-1]  # "content", not "messages[1].content": the field says where
    if missing:
        return (name, f"missing field {short!r}", f"add {short!r} with its text")
    if not isinstance(value, str):
        return (name, f"{short} is {describe(value)}, expected a string", "put the text in quotes")
    if not value:
        return (name, f"{short} is empty", "write the text, or remove this example")
    if not value.strip():
        return (name, f"{short} is only whitespace", "write the text, or remove this example")
    return None


def check_turns(turns: Any, name: str, roles: dict[str, str] = CHAT_ROLES, order: bool = True):
    """Check a list of turns; return (messages in chat form or None, issues).

    `roles` maps the shape's role names to chat roles (ShareGPT: "human" -> "user");
    ShareGPT turns use "from"/"value" instead of "role"/"content".
    """
    keys = ("from", "value") if roles is SHAREGPT_ROLES else ("role", "content")
    if not isinstance(turns, list):
        wrong = f"{name} is {describe(turns)}, expected a list of messages"
        return None, [(name, wrong, f'write [{{"{keys[0]}": ..., "{keys[1]}": ...}}, ...]')]
    if not turns:
        return None, [(name, f"{name} is an empty list", "add a user message and the reply")]
    messages, issues = [], []
    for index, turn in enumerate(turns):
        message, problems = _check_turn(turn, f"{name}[{index}]", roles, keys)
        messages.append(message)
        issues += problems
    if order and all(message["role"] for message in messages):
        issues += check_order(messages, name)
    return (None if issues else messages), issues


def _check_turn(turn: Any, where: str, roles: dict[str, str], keys: tuple[str, str]):
    """One turn as a chat message (role None when unknown), and its issues."""
    role_key, content_key = keys
    if not isinstance(turn, dict):
        fix = f'write {{"{role_key}": ..., "{content_key}": ...}}'
        return {"role": None, "content": None}, [(where, f"{where} is {describe(turn)}", fix)]
    issues = []
    role = turn.get(role_key)
    if role_key not in turn:
        fix = f"add {role_key!r}: one of {', '.join(roles)}"
        issues.append((f"{where}.{role_key}", f"missing field {role_key!r}", fix))
    elif not isinstance(role, str) or role not in roles:
        fix = "use a known role" + (suggest(role, roles) or f"; allowed: {', '.join(roles)}")
        issues.append((f"{where}.{role_key}", f"unknown role {role!r}", fix))
    content = turn.get(content_key)
    if issue := check_text(content, f"{where}.{content_key}", content_key not in turn):
        issues.append(issue)
    return {"role": roles.get(role) if isinstance(role, str) else None, "content": content}, issues


ORDER_FIXES = {
    "system": "move it to the start: one system message, before the others",
    "repeat": "merge them into one message, or add the missing turn between them",
    "reply": "add the assistant's reply as the last message",
    "end": "end with the assistant's reply, or remove the last message",
}


def check_order(messages: list[dict[str, str]], name: str = "messages") -> list[Issue]:
    """Issues with the order of roles: system not first, repeats, no final assistant reply."""
    issues = []
    roles = [message["role"] for message in messages]
    for index, role in enumerate(roles):
        where = f"{name}[{index}]"
        if role == "system" and index > 0:
            issues.append((where, "system message is not first", ORDER_FIXES["system"]))
        if index and role == roles[index - 1]:
            issues.append((where, f"two {role!r} messages in a row", ORDER_FIXES["repeat"]))
    if "assistant" not in roles:
        issues.append((name, "missing assistant reply: nothing to learn", ORDER_FIXES["reply"]))
    elif roles[-1] != "assistant":
        message = f"the conversation ends with a {roles[-1]!r} message, not the assistant"
        issues.append((f"{name}[{len(roles) - 1}]", message, ORDER_FIXES["end"]))
    return issues


ROW_NUMBERED = (".csv", ".parquet")  # sources whose records are rows, not lines


def location(file: str, line: int | None) -> str:
    """ "file.jsonl:12", "file.csv:row 7" (the header is row 1), "file.parquet:row 3" or
    "<records>:row 3" (in-memory records, from 1), or the file alone."""
    if line is None:
        return file
    rows = file.lower().endswith(ROW_NUMBERED) or file.startswith("<")
    return f"{file}:row {line}" if rows else f"{file}:{line}"


_JSON_HINTS = {
    "Expecting property name": "JSON needs double quotes around names, and no comma before }",
    "Extra data": "one JSON object per line: split the line, or remove what follows the }",
    "Unterminated string": 'close the string with "; write a line break inside text as \\n',
    "Expecting ',' delimiter": "a comma or closing bracket is missing here or at the end of "
    'the line before; a " inside text is written \\"',
    "Invalid control character": "write a line break or tab inside text as \\n or \\t",
    "Expecting value": "a value is missing: no trailing commas; true/false/null are lower case",
}


def json_problem(file: str, line: int, error: json.JSONDecodeError) -> Problem:
    """The problem for a JSON syntax error, with a hint for the usual causes."""
    fix = next((h for start, h in _JSON_HINTS.items() if error.msg.startswith(start)), None)
    message = f"not valid JSON at column {error.colno}: {error.msg}"
    return Problem(file, line, "", message, fix or "check quotes, commas and brackets there")


def place(source: str) -> tuple[str, int | None]:
    """Split an Example's source ("file.jsonl:12" or "file.csv:row 7") into (file, line)."""
    file, _, tail = source.rpartition(":")
    number = tail.removeprefix("row ")
    return (file, int(number)) if file and number.isdigit() else (source, None)


def find_duplicates(examples: Iterable[Any]) -> list[Problem]:
    """A problem for every later copy of an example whose messages appeared before."""
    first: dict[str, str] = {}
    problems = []
    for example in examples:
        key = json.dumps(example.messages, sort_keys=True)
        if key in first:
            fix = "delete one copy: a duplicate counts twice and can leak into another split"
            message = f"exact duplicate of {first[key]}"
            problems.append(Problem(*place(example.source), "messages", message, fix))
        first.setdefault(key, example.source)
    return problems


def check_lengths(examples: Iterable[Any], tokenizer, max_length: int) -> list[Problem]:
    """A problem for every example longer than `max_length` tokens with the chat template."""
    examples = list(examples)
    if not examples:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "This tokenizer has no chat template, so chat examples have no length yet. "
            "Use the tokenizer of an instruct (chat) model, e.g. the embedded one."
        )
    encoded = tokenizer.apply_chat_template([e.messages for e in examples], tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    problems = []
    for example, tokens in zip(examples, ids, strict=True):
        if len(tokens) > max_length:
            message = f"{len(tokens)} tokens with the chat template, over max_length={max_length}"
            fix = "shorten it, or raise max_length (training would cut off the end: the reply)"
            problems.append(Problem(*place(example.source), "messages", message, fix))
    return problems
