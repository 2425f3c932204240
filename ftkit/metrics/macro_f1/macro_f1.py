"""Macro-F1: classification quality that a large class cannot hide, with a bootstrap 95% interval.

Accuracy on a set that is 80% "billing" rewards a model that always says "billing". Macro-F1
computes the F1 of each class (the harmonic mean of its precision and recall) and averages them
with equal weight, so a neglected small class pulls the score down. Labels are plain strings, or
are read from one field of JSON replies (`field="category"`).
"""

import evaluate
import numpy as np

from ftkit.metrics import check_compute_kwargs, field_values, metric_info, score_with_ci

INVALID = "<invalid>"  # the label of a reply that is not a JSON object or lacks the field

_DESCRIPTION = """
Macro-F1 is the unweighted mean of the per-class F1 scores. For a class c: precision is the share
of predictions "c" that are right, recall the share of references "c" that were predicted "c",
and F1 = 2 * precision * recall / (precision + recall) = 2 TP / (2 TP + FP + FN).

Which classes are averaged: exactly the labels that occur in the references. A class that is never
predicted has precision 0 and F1 0 (no error about dividing by zero). A predicted label that no
reference has (a made-up class, or "<invalid>") is not averaged as a class of its own: it still
costs the recall of the true class of that example, but is a false positive of no averaged class.
This is scikit-learn's `f1_score(references, predictions, average="macro",
labels=sorted(set(references)), zero_division=0)`.

With `field`, predictions and references are JSON-object texts and the label is the value of that
field (as a string). A prediction that does not parse as a JSON object, or lacks the field, gets
the label "<invalid>", which is always wrong; a reference must have the field.

The bootstrap resamples examples and recomputes macro-F1 on each resample, over the labels that
occur in that resample's references. Also returned: `per_label`, the F1 of each reference label.
"""

_CITATION = """
@article{opitz2019macro,
  title   = {Macro F1 and Macro F1},
  author  = {Opitz, Juri and Burst, Sebastian},
  journal = {arXiv preprint arXiv:1911.03347},
  year    = {2019}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted labels, or JSON-object texts with `field`.
    references (list of str): true labels, or JSON-object texts with `field`.
    field (str, optional): the JSON field that holds the label.
    n_resamples (int, default 1000): bootstrap resamples; 0 leaves the interval out.
    confidence_level (float, default 0.95): coverage of the interval.
    seed (int, default 0): seed of the resampling; same seed, same interval.
Returns:
    macro_f1 (float): mean F1 over the reference labels, between 0 and 1.
    macro_f1_ci_low, macro_f1_ci_high (float): the bootstrap interval.
    per_label (dict of str to float): F1 of each reference label.
Examples:
    >>> import evaluate
    >>> from ftkit.metrics import metric_path
    >>> macro_f1 = evaluate.load(metric_path("macro_f1"))
    >>> macro_f1.compute(
    ...     predictions=["spam", "spam", "ham", "ham"],
    ...     references=["spam", "ham", "ham", "ham"],
    ...     n_resamples=0,
    ... )
    {'macro_f1': 0.7333333333333334, 'per_label': {'ham': 0.8, 'spam': 0.6666666666666666}}
"""


def f1_per_class(predicted: np.ndarray, actual: np.ndarray, n_labels: int) -> np.ndarray:
    """F1 of every label id; NaN for labels absent from `actual` (not averaged)."""
    true_positives = np.bincount(actual[predicted == actual], minlength=n_labels)
    n_predicted = np.bincount(predicted, minlength=n_labels)
    n_actual = np.bincount(actual, minlength=n_labels)
    f1 = 2 * true_positives / np.maximum(n_predicted + n_actual, 1)
    return np.where(n_actual > 0, f1, np.nan)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    """Unweighted mean of per-class F1 over the reference labels, with a bootstrap interval."""

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
        check_compute_kwargs("macro_f1", other_kwargs)
        if len(predictions) != len(references):
            raise ValueError("predictions and references must have the same length.")
        if field is not None:
            predictions = field_values(predictions, field, missing=INVALID)
            references = field_values(references, field)
        labels = sorted(set(references) | set(predictions))
        ids = {label: i for i, label in enumerate(labels)}
        predicted = np.array([ids[p] for p in predictions], dtype=int)
        actual = np.array([ids[r] for r in references], dtype=int)

        def macro_f1(idx: np.ndarray) -> float:
            return float(np.nanmean(f1_per_class(predicted[idx], actual[idx], len(labels))))

        result = score_with_ci(
            macro_f1, len(actual), "macro_f1", n_resamples, confidence_level, seed
        )
        f1 = f1_per_class(predicted, actual, len(labels))
        result["per_label"] = {label: float(f1[ids[label]]) for label in sorted(set(references))}
        return result
