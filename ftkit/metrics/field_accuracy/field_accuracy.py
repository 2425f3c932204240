"""Field accuracy: for JSON replies, how often each field is right, with bootstrap 95% intervals.

Exact match of a whole JSON reply hides where a model goes wrong. Field accuracy splits the score
per field ("the city is right 95% of the time, the date 60%"), and `all_fields` says how often a
reply gets every field right at once. A reply that is not a JSON object gets every field wrong,
so the validity problem still shows, in every column.
"""

import evaluate

from ftkit.metrics import check_compute_kwargs, mean_with_ci, metric_info
from ftkit.task import parse_json

_DESCRIPTION = """
Predictions and references are texts of JSON objects. For each field, the accuracy is the share of
examples where the prediction parses as a JSON object (the rule of `ftkit.task.parse_json`),
has the field, and its value equals the reference's. Values are compared as strings after `str()`,
case-sensitively: 1 and "1" agree, 1 and 1.0 do not, "Paris" and "paris" do not.

`fields` lists the fields to score. By default each example is scored on every field of its own
reference, and a field's accuracy is taken over the examples whose reference has it. A listed field
missing from a reference is an error (it is usually a typo). `all_fields` is the share of examples
whose every scored field is right. Each score comes with a percentile-bootstrap confidence
interval over the examples that score it.
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
    predictions (list of str): the model's replies, JSON-object texts.
    references (list of str): the expected JSON objects, as texts.
    fields (list of str, optional): the fields to score; default: every field of each reference.
    n_resamples (int, default 1000): bootstrap resamples; 0 leaves the intervals out.
    confidence_level (float, default 0.95): coverage of the intervals.
    seed (int, default 0): seed of the resampling; same seed, same intervals.
Returns:
    <field>_accuracy (float): per field, share of examples with that field right.
    all_fields (float): share of examples with every scored field right.
    <key>_ci_low, <key>_ci_high (float): the bootstrap interval of each of those keys.
Examples:
    >>> import evaluate
    >>> from ftkit.metrics import metric_path
    >>> field_accuracy = evaluate.load(metric_path("field_accuracy"))
    >>> field_accuracy.compute(
    ...     predictions=['{"city": "Paris", "year": 2024}', '{"city": "Lyon", "year": 2024}'],
    ...     references=['{"city": "Paris", "year": 2024}', '{"city": "Nice", "year": 2024}'],
    ...     n_resamples=0,
    ... )
    {'city_accuracy': 0.5, 'year_accuracy': 1.0, 'all_fields': 0.5}
"""


def reference_object(text: str, index: int) -> dict:
    """A reference as a dict, or an error that names it."""
    parsed = parse_json(text.strip())
    if parsed is None:
        raise ValueError(f"Reference {index} is not a JSON object: {text[:80]!r}.")
    return parsed


def scored_fields(reference: dict, fields, index: int) -> list[str]:
    """The fields one example is scored on; a listed field the reference lacks is an error."""
    if fields is None:
        return list(reference)
    missing = [field for field in fields if field not in reference]
    if missing:
        raise ValueError(
            f"Reference {index} has no field {missing[0]!r} (it has: {', '.join(reference)}). "
            "Check the names in `fields`."
        )
    return list(fields)


def field_hits(prediction: dict | None, reference: dict, fields: list[str]) -> dict[str, bool]:
    """Which of the fields the prediction gets right."""
    return {
        field: prediction is not None
        and field in prediction
        and str(prediction[field]) == str(reference[field])
        for field in fields
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FieldAccuracy(evaluate.Metric):
    """Per-field accuracy of JSON replies, and the share with every field right."""

    def _info(self):
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(
        self,
        predictions,
        references,
        fields=None,
        n_resamples=1000,
        confidence_level=0.95,
        seed=0,
        **other_kwargs,
    ):
        check_compute_kwargs("field_accuracy", other_kwargs)
        fields = [fields] if isinstance(fields, str) else fields
        hits = []
        for index, (text, ref_text) in enumerate(zip(predictions, references, strict=True)):
            reference = reference_object(ref_text, index)
            scored = scored_fields(reference, fields, index)
            hits.append(field_hits(parse_json(text.strip()), reference, scored))
        bootstrap = (n_resamples, confidence_level, seed)
        result = {}
        for field in dict.fromkeys(field for hit in hits for field in hit):
            per_example = [hit[field] for hit in hits if field in hit]
            result.update(mean_with_ci(per_example, f"{field}_accuracy", *bootstrap))
        result.update(mean_with_ci([all(hit.values()) for hit in hits], "all_fields", *bootstrap))
        return result
