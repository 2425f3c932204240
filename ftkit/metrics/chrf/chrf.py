"""chrF: character n-gram F-score for free text, with a bootstrap 95% interval.

ROUGE-L counts whole words, so "refunded" and "refund" share nothing. chrF compares the
character n-grams (1 to 6) of reply and reference and weights recall twice as much as
precision (beta = 2): robust to inflections and small spelling differences, the usual
second opinion beside a word-level metric. The scoring is sacreBLEU's `CHRF`, per reply.
"""

import evaluate
from sacrebleu.metrics import CHRF

from ftkit.metrics import check_compute_kwargs, mean_text_score, metric_info

_DESCRIPTION = """
chrF (Popovic, 2015) as sacreBLEU computes it with its defaults (character n-grams of orders 1
to 6, no word n-grams, beta = 2, whitespace not part of the n-grams, case-sensitive): for each
example `sacrebleu.metrics.CHRF().sentence_score(prediction, [reference]).score / 100`, then the
mean over examples. This is the mean of per-reply scores, not sacreBLEU's corpus-level chrF
(which pools the n-gram counts of all replies first), so that every reply weighs the same and
the bootstrap can resample replies. An empty prediction scores 0.

With `field`, predictions and references are JSON-object texts and the text scored is the value
of that field; a prediction that is not a JSON object or lacks the field counts as empty (0).
"""

_CITATION = """
@inproceedings{popovic-2015-chrf,
  title     = {chr{F}: character n-gram {F}-score for automatic {MT} evaluation},
  author    = {Popovi{\\'c}, Maja},
  booktitle = {Proceedings of the Tenth Workshop on Statistical Machine Translation},
  year      = {2015},
  pages     = {392--395},
  url       = {https://aclanthology.org/W15-3049}
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
    chrf (float): mean per-reply chrF, between 0 and 1.
    chrf_ci_low, chrf_ci_high (float): the bootstrap interval.
Examples:
    >>> import evaluate
    >>> from ftkit.metrics import metric_path
    >>> chrf = evaluate.load(metric_path("chrf"))
    >>> round(chrf.compute(predictions=["the cat sat"], references=["the cat sat"],
    ...                    n_resamples=0)["chrf"], 3)
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    """Mean per-reply chrF (sacreBLEU's defaults), with a bootstrap interval."""

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
        check_compute_kwargs("chrf", other_kwargs)
        chrf = CHRF()

        def score(pred: str, ref: str) -> float:
            return chrf.sentence_score(pred, [ref]).score / 100 if pred.strip() else 0.0

        bootstrap = (n_resamples, confidence_level, seed)
        return mean_text_score(predictions, references, score, "chrf", field, *bootstrap)
