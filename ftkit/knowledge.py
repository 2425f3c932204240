"""What retrieval is for: facts a model cannot have, looked up when the question comes.

Fine-tuning teaches a behaviour (a format, labels, a voice); it does not give a model facts
it never saw, such as this year's prices. The shipped `quillo_faq` holds a one-page product
FAQ (`faq.md`, one entry per `## ` heading) and questions about it, each with the fact its
answer must state. `knowledge_check` asks every question four ways, the base model and the
fine-tune, each with and without the FAQ entry BM25 retrieves for it (`ftkit.retrieval`), and
scores the share of answers that state the fact, with a bootstrap 95% interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ftkit.data import load_examples
from ftkit.evaluation import Approach, adapter_for
from ftkit.fast import fast_generation
from ftkit.generation import generate_replies
from ftkit.metrics import mean_with_ci
from ftkit.retrieval import Retriever
from ftkit.shipped import dataset_dir

FAQ = "quillo_faq"  # the shipped FAQ and its questions
ASK = "Answer the question in one sentence, from this entry of Quillo's FAQ:\n\n{entry}"
MAX_NEW_TOKENS = 40  # one sentence; the facts come early
BATCH = 32  # every question in one batch: the prompts are of similar length
WAYS = {  # name -> (model, with the retrieved entry)
    "base, no FAQ": ("base", False),
    "base + retrieved FAQ entry": ("base", True),
    "fine-tuned, no FAQ": ("finetuned", False),
    "fine-tuned + retrieved FAQ entry": ("finetuned", True),
}


@dataclass
class Entry:
    """One FAQ entry: its heading and its text."""

    title: str
    text: str

    def __str__(self) -> str:
        return f"{self.title}: {self.text}"


@dataclass
class KnowledgeResult:
    """One way of answering the FAQ questions, and how often the answer stated the fact."""

    name: str  # e.g. "base + retrieved FAQ entry"
    questions: list[str]  # what was asked
    answers: list[str]  # one per question
    right: list[bool]  # whether each answer states its fact
    score: float  # share of answers stating the fact
    interval: tuple[float, float]  # bootstrap 95% interval


def read_faq(path: str | Path | None = None) -> list[Entry]:
    """The entries of a FAQ in Markdown: a `## ` heading and its text, each."""
    text = Path(path or dataset_dir(FAQ) / "faq.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    return [Entry(*(part.strip() for part in section.split("\n", 1))) for section in sections]


def _normal(text: str) -> str:
    """Casefolded, without thousands separators ("1,000" -> "1000")."""
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.casefold())


def states(answer: str, fact: str) -> bool:
    """Whether an answer states a fact, as a whole: "10 GB" matches "10GB" and "10 gb";
    "1,000" matches "1000"; "5 GB" does not match "15 GB", nor "$8" "$8.99"."""
    fact = _normal(fact).strip()
    pattern = r"\s*".join(re.escape(part) for part in fact.split())
    pattern = re.sub(r"(?<=\d)(?=[a-z])", r"\\s*", pattern)  # "10gb" also as "10 gb"
    return re.search(rf"(?<![\w.]){pattern}(?!\w|\.\d)", _normal(answer)) is not None


def knowledge_check(
    model, tokenizer, n_resamples: int = 1000, limit: int | None = None
) -> tuple[dict[str, KnowledgeResult], float]:
    """Ask the shipped FAQ questions four ways (`WAYS`); return (results by way, the share of
    questions whose retrieved entry is the right one)."""
    questions = list(load_examples(dataset_dir(FAQ) / "questions.jsonl"))[:limit]
    entries = read_faq()
    asked = [e.messages[0]["content"] for e in questions]
    found = [entries[row[0]] for row in Retriever([str(e) for e in entries]).top(asked, 1)]
    hit = sum(f.title == q.meta["entry"] for f, q in zip(found, questions, strict=True))
    results = {}
    with fast_generation(model):  # the 4-bit weights prepared once for all four ways
        for name, (kind, with_entry) in WAYS.items():
            results[name] = _ask(model, tokenizer, name, kind, found if with_entry else None,
                                 asked, questions, n_resamples)  # fmt: skip
    return results, hit / len(questions)


def _ask(model, tokenizer, name, kind, entries, asked, questions, n_resamples):
    """One way's answers to every question, with its FAQ entry (or none), scored."""
    prompts = [
        [*([{"role": "system", "content": ASK.format(entry=entries[i])}] if entries else []),
         {"role": "user", "content": question}]
        for i, question in enumerate(asked)
    ]  # fmt: skip
    with adapter_for(model, Approach(name, model=kind)):  # inside knowledge_check's fast block
        replies = generate_replies(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS,
                                   batch_size=BATCH, share_prefix=True)  # fmt: skip
    right = [states(r.text, q.meta["fact"]) for r, q in zip(replies, questions, strict=True)]
    scored = mean_with_ci(right, "fact", n_resamples)
    low, high = (scored.get(f"fact_ci_{end}", scored["fact"]) for end in ("low", "high"))
    return KnowledgeResult(name, asked, [r.text for r in replies], right, scored["fact"],
                           (low, high))  # fmt: skip
