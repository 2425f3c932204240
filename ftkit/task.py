"""What an answer is, for any dataset: the task description, shipped, inferred, or your own.

Evaluation needs to know what to measure, and nothing in ftkit's core may assume tickets. A
`Task` says it in a few typed fields, kept beside the data as `task.json`:

- `answer`: "json" (an object with named `fields`, each a "label" from a closed set or free
  "text"), "label" (one answer from a closed set of `labels`) or "text" (free text);
- `primary`: the metric the verdict is about (a default per kind when not given);
- `stratify`: what splits and few-shot examples are balanced on: a label field of a JSON
  answer, "answer" for a label task, or a field of the examples' records;
- `system_prompt`: the engineered prompt the prompting approaches get (optional).

A dataset without a task.json gets one by `infer_task`, which says what it chose and why;
`task.override(primary="chrf")` changes a choice in one line, checked.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ANSWERS = ("json", "label", "text")  # what an answer can be
FIELD_KINDS = ("label", "text")  # what a JSON answer's field can be
TASK_FILE = "task.json"  # beside the data
LABEL_WORDS = 5  # a label is at most this many words
LABEL_VALUES = 30  # and a closed set has at most this many (and half as many as examples)
STRATIFY_VALUES = 20  # a field stratifies splits only with 2 to this many values


class TaskError(ValueError):
    """A task description that cannot be right; the message says where and what to do."""


def parse_json(text: str) -> dict | None:
    """Parse a reply as one JSON object; None if it is not exactly that (no repair, no guessing)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def answer_of(example) -> str:
    """The expected answer of an example: its last message's text (the assistant's)."""
    return example.messages[-1]["content"]


@dataclass(frozen=True)
class Task:
    """What an answer is and how it is measured; saved as task.json beside the data."""

    answer: str  # "json", "label" or "text"
    name: str = ""  # the dataset's name
    description: str = ""  # one or two sentences for the learner
    fields: dict[str, str] = field(default_factory=dict)  # json: field -> "label" or "text"
    labels: tuple[str, ...] = ()  # label: the closed set of answers
    primary: str = ""  # the verdict's metric; "" for the kind's default (`primary_metric`)
    stratify: str | None = None  # label field (json), "answer" (label) or a record field
    system_prompt: str | None = None  # what the prompting approaches are told
    prompt_in_data: bool = False  # True: every example already carries `system_prompt`
    max_new_tokens: int | None = None  # tokens an answer may take; None: from the data
    reasons: tuple[str, ...] = ()  # how an inferred task was chosen (empty: written by hand)

    @property
    def label_fields(self) -> tuple[str, ...]:
        """The JSON fields scored as labels (exact, per field)."""
        return tuple(name for name, kind in self.fields.items() if kind == "label")

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The JSON fields scored as free text (ROUGE-L)."""
        return tuple(name for name, kind in self.fields.items() if kind == "text")

    @property
    def primary_metric(self) -> str:
        """The metric the verdict is about: `primary`, else the kind's default."""
        return self.primary or self.metrics()[0]

    def metrics(self) -> list[str]:
        """Every score the evaluation reports for this task, the default primary first."""
        if self.answer == "label":
            return ["accuracy", "macro_f1", "exact_match"]
        if self.answer == "text":
            return ["rouge_l", "chrf", "exact_match"]
        labels, texts = self.label_fields, self.text_fields
        found = ["labels_exact"] if labels else [f"{t}_rouge_l" for t in texts[:1]]
        found += [f"{f}_accuracy" for f in labels] + ["json_validity", "exact_match"]
        found += [f"{self.stratify}_macro_f1"] if self.stratify in labels else []
        return found + [f"{t}_rouge_l" for t in texts if f"{t}_rouge_l" not in found]

    def headline_metrics(self) -> list[str]:
        """The scores a comparison table shows: the primary first, then the telling ones."""
        if self.answer == "json" and self.label_fields:
            fields = [f"{name}_accuracy" for name in self.label_fields]
            texts = [f"{name}_rouge_l" for name in self.text_fields[:1]]
            chosen = ["labels_exact", "json_validity", *fields, *texts]
        else:
            chosen = self.metrics()
        return [self.primary_metric, *(m for m in chosen if m != self.primary_metric)]

    def value_of(self, example) -> str | None:
        """What `stratify` says about an example (its class), or None."""
        if self.stratify is None:
            return None
        if self.answer == "label" and self.stratify == "answer":
            return answer_of(example).strip()
        if self.answer == "json" and self.stratify in self.fields:
            value = (parse_json(answer_of(example)) or {}).get(self.stratify)
            return None if value is None else str(value)
        value = getattr(example, "meta", {}).get(self.stratify)
        return None if value is None else str(value)

    def check(self, where: str = "the task") -> Task:
        """Raise a `TaskError` naming the first thing wrong; return the task when sound."""
        problems = [
            (self.answer not in ANSWERS, f"'answer' must be one of {list(ANSWERS)}, not "
             f"{self.answer!r}"),
            (self.answer == "json" and not self.fields, "a json task lists its 'fields', e.g. "
             '{"category": "label", "summary": "text"}'),
            (self.answer != "json" and bool(self.fields), "'fields' belong to json tasks only"),
            (any(k not in FIELD_KINDS for k in self.fields.values()), "each field is "
             f"{list(FIELD_KINDS)}, got {sorted(set(self.fields.values()) - set(FIELD_KINDS))}"),
            (self.answer != "label" and bool(self.labels), "'labels' belong to label tasks only"),
            (bool(self.primary) and self.primary not in self.metrics(), f"'primary' must be one "
             f"of {self.metrics()}, not {self.primary!r}"),
            (self.max_new_tokens is not None and not 0 < self.max_new_tokens <= 4096,
             "'max_new_tokens' between 1 and 4096"),
        ]  # fmt: skip
        for bad, message in problems:
            if bad:
                raise TaskError(f"{where}: {message}.")
        return self

    def override(self, **changes) -> Task:
        """The same task with some fields changed (checked): `task.override(primary="chrf")`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TaskError(f"Task has no field(s) {unknown}; its fields: {sorted(known)}.")
        return replace(self, **changes, reasons=()).check("the override")

    def describe(self) -> str:
        """What the task is, in a few lines a learner can read (and why, when inferred)."""
        kinds = ", ".join(f"{name} ({kind})" for name, kind in self.fields.items())
        what = {
            "json": f"a JSON object with {kinds}",
            "label": f"one of {len(self.labels)} labels ({', '.join(self.labels[:8])}"
            + (", ..." if len(self.labels) > 8 else "")
            + ")",
            "text": "free text",
        }[self.answer]
        lines = [f"Task {self.name or '(unnamed)'}: the answer is {what}."]
        if self.description:
            lines.append(self.description)
        others = [m for m in self.metrics() if m != self.primary_metric]
        lines.append(f"Primary metric: {self.primary_metric}; also {', '.join(others)}.")
        lines.append(f"Splits and few-shot examples stratified on: {self.stratify or 'nothing'}.")
        if self.system_prompt:
            where = " (every example carries it)" if self.prompt_in_data else ""
            lines.append(f"System prompt: {len(self.system_prompt.split())} words{where}.")
        if self.reasons:
            lines += ["Inferred from the data:", *(f"  - {reason}" for reason in self.reasons)]
        return "\n".join(lines)

    __str__ = describe

    def to_dict(self) -> dict:
        """The task as task.json holds it (without the inference's reasons)."""
        data = asdict(self)
        data["labels"] = list(self.labels)
        data.pop("reasons")
        return {key: value for key, value in data.items() if value not in (None, "", [], {})}

    def save(self, path: str | Path) -> Path:
        """Write the task as JSON (a folder gets `task.json` inside it)."""
        path = Path(path)
        path = path / TASK_FILE if path.is_dir() else path
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path


def load_task(path: str | Path) -> Task:
    """Read and check a task.json; `system_prompt_file` is read relative to it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskError(f"No task file at {path}.") from None
    except json.JSONDecodeError as error:
        raise TaskError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: the file holds {type(data).__name__}, not an object {{...}}.")
    prompt_file = data.pop("system_prompt_file", None)
    if prompt_file:
        data["system_prompt"] = (path.parent / prompt_file).read_text(encoding="utf-8").strip()
    return task_from_dict(data, where=str(path))


def task_from_dict(data: dict, where: str = "the task") -> Task:
    """A checked `Task` from a dict (task.json's content), naming unknown keys."""
    known = {f.name for f in fields(Task)} - {"reasons"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TaskError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}.")
    if "answer" not in data:
        raise TaskError(f"{where}: say what an answer is: 'answer': one of {list(ANSWERS)}.")
    data = dict(data, labels=tuple(data.get("labels", ())))
    return Task(**data).check(where)


# ------------------------------------------------------------------------------- inference


def infer_task(examples: Sequence, name: str = "") -> Task:
    """A task description read off the examples' answers, with the reason for every choice.

    All answers JSON objects with the same keys -> json (each field a label when its values
    are few and short, else text); few distinct short answers -> label; otherwise text.
    """
    examples = list(examples)
    if not examples:
        raise TaskError("There are no examples to infer the task from.")
    answers = [answer_of(example).strip() for example in examples]
    kind, details, reasons = _answer_kind(examples, answers)
    task = Task(kind, name=name, **details)
    stratify, why = _stratify(task, examples)
    prompt, in_data, said = _system_prompt(examples)
    reasons += [why, said]
    return replace(task, stratify=stratify, system_prompt=prompt, prompt_in_data=in_data,
                   reasons=tuple(reasons)).check("the inferred task")  # fmt: skip


def _answer_kind(examples: list, answers: list[str]) -> tuple[str, dict, list[str]]:
    """("json" | "label" | "text", the Task fields that go with it, why)."""
    n = len(answers)
    parsed = [parse_json(answer) for answer in answers]
    objects = [p for p in parsed if p is not None]
    if len(objects) == n and len({tuple(sorted(p)) for p in objects}) == 1:
        kinds = {key: _field_kind([str(p[key]) for p in objects], n) for key in objects[0]}
        said = [f"all {n} answers are JSON objects with the keys {', '.join(objects[0])}"]
        said += [f"{key}: {why}" for key, (_, why) in kinds.items()]
        return "json", {"fields": {key: kind for key, (kind, _) in kinds.items()}}, said
    said = []
    if objects:
        first = next(e.source or f"example {i + 1}" for i, e in enumerate(examples)
                     if parsed[i] is None or set(parsed[i]) != set(objects[0]))  # fmt: skip
        said.append(f"{len(objects)} of {n} answers are JSON objects, but not all with the same "
                    f"keys (first that differs: {first}): not a json task")  # fmt: skip
    kind, why = _field_kind(answers, n)
    if kind == "label":
        return "label", {"labels": tuple(sorted(set(answers)))}, [*said, f"the answers: {why}"]
    return "text", {}, [*said, f"the answers: {why}"]


def _field_kind(values: list[str], n: int) -> tuple[str, str]:
    """("label" | "text", why) for a list of values: few distinct short ones make a label."""
    distinct = Counter(values)
    longest = max(len(value.split()) for value in distinct)
    words = f"{longest} word{'s' if longest != 1 else ''}"
    if len(distinct) <= min(LABEL_VALUES, max(2, n // 2)) and longest <= LABEL_WORDS:
        shown = ", ".join(repr(v) for v, _ in distinct.most_common(4))
        more = ", ..." if len(distinct) > 4 else ""
        return "label", (f"{len(distinct)} distinct values of at most {words} "
                         f"({shown}{more}): a label from a closed set")  # fmt: skip
    return "text", f"{len(distinct)} distinct values of up to {words}: free text"


def _stratify(task: Task, examples: list) -> tuple[str | None, str]:
    """What splits and shots are balanced on, and why."""
    if task.answer == "label":
        return "answer", "splits and few-shot examples are stratified on the answer (its label)"
    candidates = list(task.label_fields) if task.answer == "json" else []
    candidates += [key for key in getattr(examples[0], "meta", {}) if key not in candidates]
    for key in candidates:
        values = {task.override(stratify=key).value_of(e) for e in examples}
        if None not in values and 2 <= len(values) <= STRATIFY_VALUES:
            where = "the answers' label field" if key in task.fields else "the records' field"
            return key, f"stratified on {key} ({where}, {len(values)} values)"
    return None, "nothing to stratify on (no field with 2 to 20 values in every example)"


def _system_prompt(examples: list) -> tuple[str | None, bool, str]:
    """(the system prompt every example carries, whether they do, why)."""
    prompts = [e.messages[0]["content"] for e in examples if e.messages[0]["role"] == "system"]
    if not prompts:
        return None, False, "no system prompt in the data (the prompting approaches get none)"
    if len(prompts) == len(examples) and len(set(prompts)) == 1:
        words = len(prompts[0].split())
        return prompts[0], True, f"every example carries the same system prompt ({words} words)"
    return None, False, (f"{len(prompts)} of {len(examples)} examples carry a system prompt, "
                         f"{len(set(prompts))} different ones: each keeps its own")  # fmt: skip


def task_value(data: Any) -> Task:
    """A `Task` from a Task, a dict, or a path to a task.json (what `task=` arguments take)."""
    if isinstance(data, Task):
        return data.check()
    if isinstance(data, dict):
        return task_from_dict(data)
    return load_task(data)
