"""Retrieval: the most similar training examples as few-shot examples, and passages as facts.

Fixed few-shot examples show a model the format; retrieved ones also show it the cases most
like the question, which is what retrieval-augmented generation (RAG) does with documents.
`Retriever` ranks texts by BM25 (the `bm25s` library: word counts weighted by rarity, no
model, milliseconds per query), so it costs nothing to build and runs offline:

- `retrieve_shots` picks, for each question, the k training examples whose questions are
  closest (`ftkit.evaluation` uses it for the "retrieved k-shot" approach);
- `Retriever.top` over passages (a product FAQ) gives a question the fact it needs, the
  case where retrieval beats fine-tuning: knowledge the model cannot have.
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s

STOPWORDS = "english"  # bm25s' built-in list: "the", "a", "is" do not decide similarity


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=False,
                          show_progress=False)  # fmt: skip


class Retriever:
    """BM25 over a fixed list of texts; `top(queries, k)` gives each query's best indices.

    Words are compared lower-cased, without English stopwords and without stemming ("crash"
    and "crashes" are different words); a query sharing no word gets arbitrary texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)  # what was indexed, in order
        if not self.texts:
            raise ValueError("Retriever: there is nothing to retrieve from (no texts).")
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(self.texts, stopwords=STOPWORDS, show_progress=False),
                         show_progress=False)  # fmt: skip

    def top(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """For every query, the indices of the `k` most similar texts, best first."""
        k = min(k, len(self.texts))
        if k <= 0 or not queries:
            return [[] for _ in queries]
        found, _ = self.index.retrieve(_tokens(queries), k=k, show_progress=False, n_threads=1)
        return [[int(i) for i in row] for row in found]


def question_of(example) -> str:
    """An example's question: its user turns, joined (what retrieval compares)."""
    return "\n".join(m["content"] for m in example.messages if m["role"] == "user")


def retrieve_shots(pool: Sequence, questions: Sequence, k: int) -> list[list]:
    """For each example in `questions`, the `k` examples of `pool` with the closest question."""
    pool = list(pool)
    if k <= 0:
        return [[] for _ in questions]
    rows = Retriever([question_of(e) for e in pool]).top([question_of(q) for q in questions], k)
    return [[pool[i] for i in row] for row in rows]
