"""Exact match: the share of replies that equal their reference, with a bootstrap 95% interval.

The strictest metric and the easiest to trust: no partial credit, no tokenizer. Only the
whitespace around a reply is forgiven (models love a trailing newline); `ignore_case` and
`normalize_whitespace` forgive a little more, and say so in the call.
"""

import evaluate

from ftkit.metrics import check_compute_kwargs, mean_with_ci, metric_info

_DESCRIPTION = """
Exact match is the share of predictions that equal their reference, character for character,
after stripping whitespace at both ends of each (Unicode whitespace included, e.g. a non-breaking
space). With `ignore_case=True` both sides are case-folded (`str.casefold`, so "STRASSE" matches
"straße"); with `normalize_whitespace=True` every run of whitespace inside the text becomes one
space. The score comes with a percentile-bootstrap confidence interval over the examples.
"""

_CITATION = """
@book{efron1993bootstrap,
  title     = {An Introduction to the Bootstrap},
  author    = {Efron, Bradley and Tibshirani, Robert J.},
  publisher = {Chapman and Hall/CRC},
  year      = {1993}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's replies.
    references (list of str): the expected answers, one per prediction.
    ignore_case (bool, default False): compare case-folded texts.
    normalize_whitespace (bool, default False): collapse inner whitespace runs to one space.
    n_resamples (int, default 1000): bootstrap resamples; 0 leaves the interval out.
    confidence_level (float, default 0.95): coverage of the interval.
    seed (int, default 0): seed of the resampling; same seed, same interval.
Returns:
    exact_match (float): share of exact matches, between 0 and 1.
    exact_match_ci_low, exact_match_ci_high (float): the bootstrap interval.
Examples:
    >>> import evaluate
    >>> from ftkit.metrics import metric_path
    >>> exact_match = evaluate.load(metric_path("exact_match"))
    >>> exact_match.compute(
    ...     predictions=["Paris\\n", "paris", "Rome"],
    ...     references=["Paris", "Paris", "Madrid"],
    ...     n_resamples=0,
    ... )
    {'exact_match': 0.3333333333333333}
"""


def normalize(text: str, ignore_case: bool = False, normalize_whitespace: bool = False) -> str:
    """The form of a text that exact match compares."""
    text = " ".join(text.split()) if normalize_whitespace else text.strip()
    return text.casefold() if ignore_case else text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Share of predictions equal to their reference, with a bootstrap interval."""

    def _info(self):
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions,
        references,
        ignore_case=False,
        normalize_whitespace=False,
        n_resamples=1000,
        confidence_level=0.95,
        seed=0,
        **other_kwargs,
    ):
        check_compute_kwargs("exact_match", other_kwargs)
        matches = [
            normalize(p, ignore_case, normalize_whitespace)
            == normalize(r, ignore_case, normalize_whitespace)
            for p, r in zip(predictions, references, strict=True)
        ]
        return mean_with_ci(matches, "exact_match", n_resamples, confidence_level, seed)
