"""JSON validity: the share of replies that are one JSON object, with a bootstrap 95% interval.

The first thing to measure on a structured-output task: before asking whether the fields are
right, ask whether the reply can be read at all. The rule is `ftkit.task.parse_json`'s, the
same one the harness uses to read replies, so "valid" here means "the harness could parse it".
This metric reads predictions only; references, if given (evaluate.combine always passes them),
are ignored.
"""

import evaluate

from ftkit.metrics import check_compute_kwargs, mean_with_ci, metric_info
from ftkit.task import parse_json

_DESCRIPTION = """
JSON validity is the share of predictions whose whole text, stripped of surrounding whitespace,
parses with Python's `json.loads` as a JSON object (a dict). No repair and no guessing: a reply
with text before or after the object, a code fence, a trailing comma, single quotes, or a JSON
value that is not an object (a list, a string, a number) is invalid. The rule is the one of
`ftkit.task.parse_json`. The score comes with a percentile-bootstrap confidence interval.
"""

_CITATION = """
@misc{rfc8259,
  title  = {The JavaScript Object Notation (JSON) Data Interchange Format},
  author = {Bray, Tim},
  series = {RFC 8259},
  year   = {2017},
  url    = {https://www.rfc-editor.org/rfc/rfc8259}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's replies.
    n_resamples (int, default 1000): bootstrap resamples; 0 leaves the interval out.
    confidence_level (float, default 0.95): coverage of the interval.
    seed (int, default 0): seed of the resampling; same seed, same interval.
Returns:
    json_validity (float): share of replies that are one JSON object, between 0 and 1.
    json_validity_ci_low, json_validity_ci_high (float): the bootstrap interval.
Examples:
    >>> import evaluate
    >>> from ftkit.metrics import metric_path
    >>> json_validity = evaluate.load(metric_path("json_validity"))
    >>> json_validity.compute(
    ...     predictions=['{"city": "Paris"}', '["Paris"]', 'Sure! {"city": "Paris"}', ""],
    ...     n_resamples=0,
    ... )
    {'json_validity': 0.25}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class JsonValidity(evaluate.Metric):
    """Share of predictions that parse as one JSON object, with a bootstrap interval."""

    def _info(self):
        return metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, ("predictions",))

    def _compute(self, predictions, n_resamples=1000, confidence_level=0.95, seed=0, **other):
        check_compute_kwargs("json_validity", other)
        valid = [parse_json(text.strip()) is not None for text in predictions]
        return mean_with_ci(valid, "json_validity", n_resamples, confidence_level, seed)
