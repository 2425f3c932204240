"""The four shapes of fine-tuning data, both ways: detect, read as chat, write back.

Datasets in the wild come as chat messages (`{"messages": [...]}`), prompt/completion
(strings, or TRL's conversational lists of messages), Alpaca (`instruction`, optional
`input`, `output`) or ShareGPT (`{"conversations": [{"from": "human", "value": ...}]}`).
`ftkit.data` reads files; this module says which shape a record is in, turns it into
chat messages (reporting every problem through `ftkit.validation`), and converts an
example back into any shape that can hold it.
"""

from __future__ import annotations

from typing import Protocol

from ftkit.validation import (
    CHAT_ROLES,
    SHAREGPT_ROLES,
    Issue,
    check_order,
    check_text,
    check_turns,
    describe,
    suggest,
)


class ChatExample(Protocol):
    """What `to_format` reads of an example (`ftkit.data.Example` is one)."""

    messages: list[dict[str, str]]
    source: str
    meta: dict


FORMATS = ("chat", "prompt_completion", "alpaca", "sharegpt")
SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}
SHAPE_KEYS = {  # the top-level fields each shape uses; every other field goes to Example.meta
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output", "system"),
    "sharegpt": ("conversations",),
}
REQUIRED_KEYS = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
}
SHAPE_HELP = (
    "'messages' (chat), 'prompt' + 'completion', 'instruction' + 'output' (Alpaca) "
    "or 'conversations' (ShareGPT)"
)


def detect_shape(record: dict) -> str | None:
    """The shape a record's keys say it is in, or None when no known key is there."""
    for shape, keys in REQUIRED_KEYS.items():
        if any(key in record for key in keys):
            return shape
    return None


def unknown_shape_issue(record: dict) -> Issue:
    """The issue for a record whose keys match no shape, with a close key suggested."""
    known = [key for keys in SHAPE_KEYS.values() for key in keys]
    hints = "".join(suggest(key, known) for key in record)[:80]
    keys = ", ".join(map(repr, record)) or "none"
    return ("", f"no known shape: the fields are {keys}{hints}", f"use {SHAPE_HELP}")


def parse_record(record: dict, shape: str) -> tuple[list[dict] | None, list[Issue]]:
    """Turn one record of `shape` into chat messages; (None, issues) when it has problems."""
    if shape == "alpaca":
        return _parse_alpaca(record)
    if shape == "prompt_completion":
        return _parse_prompt_completion(record)
    key, roles = ("messages", CHAT_ROLES) if shape == "chat" else ("conversations", SHAREGPT_ROLES)
    if key not in record:
        return None, [(key, f"missing field {key!r}", f"add {key!r}: the list of turns")]
    return check_turns(record[key], key, roles)


def _parse_alpaca(record: dict) -> tuple[list[dict] | None, list[Issue]]:
    issues = [
        issue
        for key in ("instruction", "output")
        if (issue := check_text(record.get(key), key, key not in record))
    ]
    extra = record.get("input") or ""
    system = record.get("system") or ""
    for key, value in (("input", extra), ("system", system)):
        if not isinstance(value, str):
            issues.append((key, f"{key} is {describe(value)}, expected a string", "quote it"))
    if issues:
        return None, issues
    user = record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": user}]
    return [*messages, {"role": "assistant", "content": record["output"]}], []


def _parse_prompt_completion(record: dict) -> tuple[list[dict] | None, list[Issue]]:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational form
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            fix = "make both lists of messages, or both strings"
            return None, [("prompt", "prompt and completion mix a list and a non-list", fix)]
        first, issues = check_turns(prompt, "prompt", order=False)
        second, more = check_turns(completion, "completion", order=False)
        issues += more
        if not issues:
            issues = check_order(first + second, "prompt+completion")
        return (None, issues) if issues else (first + second, [])
    issues = [
        issue
        for key, value in (("prompt", prompt), ("completion", completion))
        if (issue := check_text(value, key, key not in record))
    ]
    if issues:
        return None, issues
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], []


def to_format(example: ChatExample, format: str = "chat") -> dict:
    """The example as a record in `format` (chat, prompt_completion, alpaca, sharegpt)."""
    messages = [dict(message) for message in example.messages]
    if format == "chat":
        return {"messages": messages, **example.meta}
    clash = [key for key in example.meta if any(key in keys for keys in SHAPE_KEYS.values())]
    if clash:
        raise ValueError(f"meta field(s) {clash} of {example.source} would be read as {format}.")
    if format == "sharegpt":
        turns = [{"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]} for m in messages]
        return {"conversations": turns, **example.meta}
    if format == "prompt_completion":
        if [message["role"] for message in messages] == ["user", "assistant"]:
            record = {"prompt": messages[0]["content"], "completion": messages[1]["content"]}
        else:  # TRL's conversational prompt/completion holds any conversation
            record = {"prompt": messages[:-1], "completion": messages[-1:]}
        return {**record, **example.meta}
    if format != "alpaca":
        raise ValueError(f"format must be one of {FORMATS}{suggest(format, FORMATS)}")
    return {**_to_alpaca(messages, example.source), **example.meta}


def _to_alpaca(messages: list[dict[str, str]], source: str) -> dict:
    roles = [message["role"] for message in messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise ValueError(
            f"Alpaca holds one instruction and one reply; {source or 'this example'} "
            f"has the turns {roles}. Save it as 'chat' or 'sharegpt' instead."
        )
    system = {"system": messages[0]["content"]} if roles[0] == "system" else {}
    record = {"instruction": messages[-2]["content"], "input": "", **system}
    return {**record, "output": messages[-1]["content"]}
