"""ROUGE-L: word overlap for free text (summaries, explanations), with a bootstrap 95% interval.

Exact match gives no credit to "the cat sat on the mat" for "a cat sat on a mat". ROUGE-L finds
the longest common subsequence of words (in order, gaps allowed) and turns it into a precision, a
recall and their F-measure. The scoring is the `rouge_score` package's; the tokenizer is ours,
because rouge_score's default one deletes every non-ASCII letter ("café" would become "caf").
"""

import re

import evaluate
from rouge_score import rouge_scorer

from ftkit.metrics import check_compute_kwargs, mean_text_score, metric_info

# Chinese and Japanese are written without spaces: each ideograph or kana is a token of its own.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")

_DESCRIPTION = """
ROUGE-L F-measure, averaged over examples. For one example, LCS is the length of the longest
common subsequence of prediction and reference tokens; precision = LCS / prediction tokens,
recall = LCS / reference tokens, F = 2 P R / (P + R). Computed by
`rouge_score.rouge_scorer.RougeScorer(["rougeL"])`, without stemming.

Tokens: the text is lowercased and split on runs of non-word characters (`\\W+`, Unicode-aware),
so accented letters, Cyrillic or Greek stay in their words; punctuation and emoji are not tokens.
One addition to that rule: each Chinese or Japanese character (ideographs, hiragana, katakana) is
a token of its own, since those scripts put no spaces between words. An empty prediction, or one
with no tokens, scores 0. An empty reference also scores 0, even against an empty prediction (as
in rouge_score: there is nothing to recall).

With `field`, predictions and references are JSON-object texts and the text scored is the value
of that field; a prediction that is not a JSON object or lacks the field counts as empty (0).
The score comes with a percentile-bootstrap confidence interval over the examples.
"""

_CITATION = """
@inproceedings{lin-2004-rouge,
  title     = {{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author    = {Lin, Chin-Yew},
  booktitle = {Text Summarization Branches Out},
  year      = {2004},
  pages     = {74--81},
  url       = {https://aclanthology.org/W04-1013}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's replies, or JSON-object texts with `field`.
    references (list of str): the reference texts, or JSON-object texts with `field`.
    field (str, optional): the JSON field whose text is scored.
    n_resamples (int, default 1000): bootstrap resamples; 0 leaves the interval out.
    confidence_level (float, default 0.95): coverage of the interval.
    seed (int, default 0): seed of the resampling; same seed, same interval.
Returns:
    rouge_l (float): mean ROUGE-L F-measure, between 0 and 1.
    rouge_l_ci_low, rouge_l_ci_high (float): the bootstrap interval.
Examples:
    >>> import evaluate
    >>> from ftkit.metrics import metric_path
    >>> rouge_l = evaluate.load(metric_path("rouge_l"))
    >>> rouge_l.compute(
    ...     predictions=["the cat sat on the mat"],
    ...     references=["a cat sat on a mat"],
    ...     n_resamples=0,
    ... )
    {'rouge_l': 0.6666666666666666}
"""


class UnicodeTokenizer:
    """Lowercase, then words of Unicode letters and digits; one token per CJK character."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    """Mean ROUGE-L F-measure with a Unicode-aware tokenizer, with a bootstrap interval."""

    def _info(self):
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions,
        references,
        field=None,
        n_resamples=1000,
        confidence_level=0.95,
        seed=0,
        **other_kwargs,
    ):
        check_compute_kwargs("rouge_l", other_kwargs)
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer())

        def score(pred: str, ref: str) -> float:
            return scorer.score(target=ref, prediction=pred)["rougeL"].fmeasure

        bootstrap = (n_resamples, confidence_level, seed)
        return mean_text_score(predictions, references, score, "rouge_l", field, *bootstrap)
