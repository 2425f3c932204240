"""Constrained decoding: answers in the task's format by construction, through xgrammar.

How much of a fine-tune's lead is format and how much is judgement? Constrain the prompted
base model so that every token it may pick keeps the answer valid: a JSON object with the
task's fields in order, each label field one of the values seen in training, each text field
a bounded plain string; or, for a label task, one of the labels. Validity is then 100% by
construction, and what remains of the gap is judgement.

xgrammar (a maintained grammar engine; a logits processor for transformers' `generate`)
compiles the task's JSON schema or label pattern against the tokenizer once, in a fraction
of a second, and costs well under a millisecond per generated token. It is optional: without
it `xgrammar_available()` is False and notebook 04 leaves the constrained approach out, saying why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from ftkit.task import Task, answer_of, parse_json

INSTALL = "pip install --no-deps xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2"
TEXT_CHARACTERS = r"A-Za-z0-9 .,:;!?()'/&%$#+-"  # what a constrained free-text field may hold
SEPARATORS = (", ", ": ")  # json.dumps' defaults: constrained answers read like the data's


def xgrammar_available() -> bool:
    """Whether xgrammar is installed (constrained decoding needs it)."""
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return False
    return True


def can_constrain(task: Task) -> bool:
    """Whether the task's answers have a format to constrain to (JSON, or a closed label set)."""
    return task.answer in ("json", "label")


def answer_schema(task: Task, examples: Sequence) -> dict:
    """The JSON schema of a json task's answers: its fields in order, label fields as the
    values seen in `examples`, text fields as plain strings at most 1.5x the longest seen."""
    answers = [parse_json(answer_of(e)) or {} for e in examples]
    properties = {}
    for name, kind in task.fields.items():
        values = sorted({str(a[name]) for a in answers if name in a})
        if kind == "label":
            properties[name] = {"enum": values}
        else:
            longest = max((len(v) for v in values), default=40)
            limit = max(8, int(1.5 * longest))
            properties[name] = {"type": "string", "pattern": f"^[{TEXT_CHARACTERS}]{{0,{limit}}}$"}
    return {"type": "object", "properties": properties, "required": list(task.fields),
            "additionalProperties": False}  # fmt: skip


def token_bound(task: Task, examples: Sequence) -> int:
    """Tokens that always suffice for a constrained answer to end: its longest possible text
    in characters (every token is at least one character here) plus the end-of-turn token."""
    if task.answer == "label":
        return max(len(label) for label in _labels(task, examples)) + 1
    schema = answer_schema(task, examples)["properties"]
    longest = {}
    for name, rule in schema.items():
        if "enum" in rule:
            longest[name] = max(rule["enum"], key=len)
        else:
            longest[name] = "x" * int(re.search(r"\{0,(\d+)\}", rule["pattern"]).group(1))
    return len(json.dumps(longest, separators=SEPARATORS)) + 1


def _labels(task: Task, examples: Sequence) -> list[str]:
    return list(task.labels) or sorted({answer_of(e).strip() for e in examples})


def compile_constraint(task: Task, examples: Sequence, tokenizer, stop_ids: list[int],
                       vocab_size: int):  # fmt: skip
    """The task's format compiled for `tokenizer` and a model with `vocab_size` logits
    (xgrammar's CompiledGrammar): reuse it for every batch; `processor_factory` makes the
    single-use processors `generate` needs."""
    if not xgrammar_available():
        raise ImportError(f"Constrained decoding needs xgrammar, not installed here: {INSTALL}")
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                              stop_token_ids=stop_ids)  # fmt: skip
    compiler = xgr.GrammarCompiler(info)
    if task.answer == "label":
        pattern = "|".join(re.escape(label) for label in _labels(task, examples))
        return compiler.compile_regex(f"({pattern})")
    schema = answer_schema(task, examples)
    return compiler.compile_json_schema(schema, any_whitespace=False, separators=SEPARATORS)


def processor_factory(compiled) -> Callable[[], object]:
    """A function that makes a fresh logits processor per batch (they are single-use: each
    keeps the state of the answers it is constraining): xgrammar's, which can also follow
    the rows still writing into a smaller `generate` call (`keep_rows`)."""
    import xgrammar as xgr

    class Processor(xgr.contrib.hf.LogitsProcessor):
        def keep_rows(self, rows: Sequence[int]) -> None:
            """Constrain only `rows` of the batch from now on: their answers so far, and
            each one's last token, which the next call hands over to be accepted. The
            batch's other rows have finished (or leave unfinished)."""
            self.matchers = [self.matchers[row] for row in rows]
            self.compiled_grammars = [self.compiled_grammars[row] for row in rows]
            self.batch_size = len(rows)
            self.token_bitmask = xgr.allocate_token_bitmask(len(rows), self.full_vocab_size)

    return lambda: Processor(compiled)
