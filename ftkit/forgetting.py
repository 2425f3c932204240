"""General ability before and after fine-tuning: a shipped probe of questions with checkable
answers, asked of any model and scored without a judge.

Fine-tuning teaches a behaviour, and can cost the base model some of what it could do: a
ticket classifier may start answering "What is 2 + 3?" with a ticket. Notebook 05 asks the
probe of the base model, of the fine-tune with its adapter on and switched off, and of a
fully fine-tuned model, and shows how much each keeps::

    items = load_probe()
    base = run_probe(model, tokenizer, items, "base")
    print(base.share, base.by_kind())

The probe (`datasets/general_probe/probe.jsonl`, its README says how it was written) has
four kinds of question: arithmetic, capitals, short instructions, and open questions that
want a few sentences of plain prose. Each item carries its check as data: parsed, never
executed (`CHECKS` lists what a check may say). Each line is also a chat example (the
question and a reference answer), so the file loads as a dataset like the others.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ftkit.evaluation import eval_batch_size
from ftkit.generation import generate_replies
from ftkit.metrics import mean_with_ci

PROBE = Path(__file__).parent / "datasets" / "general_probe" / "probe.jsonl"
KINDS = ("arithmetic", "capital", "instruction", "prose")
CHECKS = {
    "number": "this number appears in the reply (in digits, or as a word up to twenty)",
    "contains": "one of these words appears in the reply, any case",
    "contains_exact": "one of these strings appears in the reply exactly as written",
    "starts_with": "the reply starts with one of these words, any case",
    "prose": "plain prose: no JSON or code, at least six words, mostly letters",
}
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS = {word: value for value, word in enumerate(_WORDS.split())}


class ProbeError(ValueError):
    """The probe file is malformed; the message names the line and what to fix."""


@dataclass(frozen=True)
class ProbeItem:
    """One question of the probe and how its answer is checked."""

    id: str
    kind: str  # one of KINDS
    prompt: str  # asked as the only user message, no system prompt
    check: dict  # one key of CHECKS and its value
    reference: str = ""  # a right answer (the file is a chat dataset too), passing `check`


def load_probe(path: str | Path = PROBE, per_kind: int | None = None) -> list[ProbeItem]:
    """The probe's items, in file order; `per_kind` keeps the first N of each kind (smoke runs).

    Raises `ProbeError` naming the file and line of anything malformed.
    """
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ProbeError(f"{where}: not JSON ({error.msg}). One object per line.") from None
        missing = [key for key in ("id", "kind", "messages", "check") if key not in row]
        if missing:
            raise ProbeError(
                f"{where}: missing {missing}; an item needs id, kind, messages, check."
            )
        check, messages = row["check"], row["messages"]
        if row["kind"] not in KINDS:
            raise ProbeError(f"{where}: kind {row['kind']!r} is not one of {KINDS}.")
        if not isinstance(check, dict) or len(check) != 1 or next(iter(check)) not in CHECKS:
            raise ProbeError(
                f"{where}: check must be one of {sorted(CHECKS)} with its value, "
                f'e.g. {{"contains": ["Paris"]}}; got {check!r}.'
            )
        roles = [m.get("role") for m in messages] if isinstance(messages, list) else None
        if roles != ["user", "assistant"] or not all(
            isinstance(m.get("content"), str) for m in messages
        ):
            raise ProbeError(f"{where}: messages must be a user question and an assistant "
                             "answer (the reference), as in a chat dataset.")  # fmt: skip
        items.append(ProbeItem(row["id"], row["kind"], messages[0]["content"], check,
                               messages[1]["content"]))  # fmt: skip
    if per_kind is not None:
        kept = {kind: [i for i in items if i.kind == kind][:per_kind] for kind in KINDS}
        items = [i for i in items if i in kept[i.kind]]
    return items


def passes(item: ProbeItem, reply: str) -> bool:
    """Whether `reply` passes `item`'s check (see `CHECKS`)."""
    (how, want), text = next(iter(item.check.items())), reply.strip()
    if how == "number":
        tokens = re.findall(r"-?\d+(?:\.\d+)?|[a-z]+", text.lower().replace(",", ""))
        numbers = [NUMBER_WORDS[t] if t in NUMBER_WORDS else float(t) for t in tokens
                   if t in NUMBER_WORDS or not t.isalpha()]  # fmt: skip
        return float(want) in numbers
    if how == "contains":
        return any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in want)
    if how == "contains_exact":
        return any(w in text for w in want)
    if how == "starts_with":
        start = re.sub(r"^[^\w]+", "", text).lower()
        return any(re.match(rf"{re.escape(w.lower())}\b", start) for w in want)
    return is_prose(text)


def is_prose(text: str) -> bool:
    """Plain prose: not a JSON object or code, at least six words, mostly letters and spaces."""
    stripped = text.strip()
    if not stripped or stripped[0] in "{[<`":
        return False
    words = re.findall(r"[A-Za-z']+", stripped)
    letters = sum(c.isalpha() or c.isspace() for c in stripped)
    return len(words) >= 6 and letters / len(stripped) >= 0.8


@dataclass
class ProbeResult:
    """A model's replies to the probe and what passed."""

    name: str  # the model, as tables show it
    items: list[ProbeItem] = field(repr=False)
    replies: list[str] = field(repr=False)
    passed: list[bool] = field(repr=False)

    @property
    def share(self) -> float:
        """Share of the probe passed, in [0, 1]."""
        return sum(self.passed) / len(self.passed)

    @property
    def interval(self) -> tuple[float, float]:
        """Bootstrap 95% interval of `share` (items resampled)."""
        scores = mean_with_ci([float(p) for p in self.passed], "probe")
        return scores["probe_ci_low"], scores["probe_ci_high"]

    def by_kind(self) -> dict[str, float]:
        """Share passed per kind of question."""
        shares = {}
        for kind in KINDS:
            kept = [p for i, p in zip(self.items, self.passed, strict=True) if i.kind == kind]
            if kept:
                shares[kind] = sum(kept) / len(kept)
        return shares

    def reply_to(self, item_id: str) -> str:
        """The reply to the item with this id."""
        return next(r for i, r in zip(self.items, self.replies, strict=True) if i.id == item_id)


def run_probe(
    model, tokenizer, items: Sequence[ProbeItem], name: str, max_new_tokens: int = 48,
    batch_size: int | None = None,
) -> ProbeResult:  # fmt: skip
    """Ask every item of the probe (greedy, one user message each) and check the replies.

    `model` may be a PeftModel: run it inside `model.disable_adapter()` to probe the base
    model under the adapter. `batch_size` defaults to `ftkit.evaluation.eval_batch_size`: on a
    CPU the 40 shipped questions in one batch (9 s, not 13 in batches of 16, on the 2-core
    AVX512-BF16 CPU).
    """
    items = list(items)
    if not items:
        raise ValueError("run_probe: no probe items (see load_probe).")
    prompts = [[{"role": "user", "content": item.prompt}] for item in items]
    batch_size = batch_size or eval_batch_size(model)
    replies = [r.text for r in generate_replies(model, tokenizer, prompts,
                                                max_new_tokens=max_new_tokens,
                                                batch_size=batch_size,
                                                share_prefix=True)]  # fmt: skip
    passed = [passes(item, reply) for item, reply in zip(items, replies, strict=True)]
    return ProbeResult(name, items, replies, passed)


def probe_table_html(results: Sequence[ProbeResult]) -> str:
    """One row per model: share of the probe passed (with its interval) and per kind."""
    kinds = [k for k in KINDS if any(k in r.by_kind() for r in results)]
    head = "".join(f"<th>{k}</th>" for k in kinds)
    rows = []
    for result in results:
        low, high = result.interval
        per_kind = result.by_kind()
        cells = "".join(
            f"<td>{100 * per_kind[k]:.0f}%</td>" if k in per_kind else "<td>n/a</td>" for k in kinds
        )
        rows.append(
            f"<tr><td>{html.escape(result.name)}</td><td><b>{100 * result.share:.0f}%</b> "
            f"[{100 * low:.0f}, {100 * high:.0f}]</td>{cells}</tr>"
        )
    n = len(results[0].items) if results else 0
    return (
        f"<table><tr><th>model</th><th>passed (95% interval), {n} questions</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )
