"""Metrics for the evaluation harness, shipped inside ftkit as `evaluate` modules.

Why our own? `evaluate.load("exact_match")` downloads the metric's script from the Hugging Face
hub, so offline (a workshop room, a train) it fails. ftkit ships the metrics the notebooks need as
ordinary `evaluate.Metric` scripts, one folder each (`ftkit/metrics/<name>/<name>.py`). They load
with `evaluate.load(path)` exactly like hub metrics, so what a learner practises here carries
over: `load_metric("exact_match")` is `evaluate.load(metric_path("exact_match"))`.

    exact_match     the reply equals the reference (after stripping surrounding whitespace)
    json_validity   the reply is one JSON object (predictions only)
    field_accuracy  per JSON field: the reply's value equals the reference's
    macro_f1        classification: F1 per reference label, averaged
    rouge_l         overlap of the longest common word subsequence, for free text
    chrf            character n-gram F-score (sacreBLEU's), for free text

**Every score comes with a 95% confidence interval.** Twenty test examples cannot tell 80% from
90%; the interval says so. `bootstrap_ci` resamples the examples with replacement (same size as
the test set), recomputes the score on each resample and reports the middle 95% of those scores
(the percentile bootstrap). Each module returns `<key>`, `<key>_ci_low` and `<key>_ci_high` and
takes `n_resamples=1000`, `confidence_level=0.95` and `seed=0`; `n_resamples=0` leaves the
interval out. Same seed, same interval.

**Combining metrics.** `evaluate.combine([...]).compute(predictions=p, references=r, **kwargs)`
(and `combine` below) calls every module's `compute` with the same predictions, references and
*all* the kwargs, then merges the result dicts. What follows from that:

- Each ftkit metric accepts the kwargs of its siblings and ignores them (`ignore_case` means
  nothing to rouge_l), so `combine(["exact_match", "field_accuracy"]).compute(...,
  ignore_case=True, fields=["city"])` works. A kwarg that no ftkit metric knows is a TypeError:
  a typo such as `ignorecase=True` is caught instead of silently ignored.
- Shared kwargs reach every module that knows them: `n_resamples`, `confidence_level` and `seed`
  all of them, `field` both macro_f1 and rouge_l. To score two different fields, call the two
  metrics separately.
- json_validity reads only predictions; the references that combine hands it are ignored.
- The result keys of ftkit's metrics never collide, so the merged dict keeps them unprefixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ftkit.task import parse_json

if TYPE_CHECKING:
    import evaluate

METRICS: tuple[str, ...] = (
    "exact_match", "json_validity", "field_accuracy", "macro_f1", "rouge_l", "chrf",
)  # fmt: skip

BOOTSTRAP_KWARGS: tuple[str, ...] = ("n_resamples", "confidence_level", "seed")

# The compute kwargs of each metric besides BOOTSTRAP_KWARGS (tests check these against the code).
COMPUTE_KWARGS: dict[str, tuple[str, ...]] = {
    "exact_match": ("ignore_case", "normalize_whitespace"),
    "json_validity": (),
    "field_accuracy": ("fields",),
    "macro_f1": ("field",),
    "rouge_l": ("field",),
    "chrf": ("field",),
}


class UnknownMetricError(ValueError):
    """A metric name that ftkit does not ship."""


def metric_path(name: str) -> str:
    """The folder of a shipped metric module, ready for `evaluate.load`."""
    if name not in METRICS:
        raise UnknownMetricError(
            f"ftkit ships no metric called {name!r}. Known metrics: {', '.join(METRICS)}. "
            "Hub metrics such as 'rouge' or 'accuracy' need the network; "
            "use the ftkit metric closest to what you want (e.g. 'rouge_l')."
        )
    return str(Path(__file__).with_name(name))


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load a shipped metric with `evaluate.load`, offline; kwargs go to `evaluate.load`.

    Kept in memory unless `keep_in_memory=False` (needed only for multi-process evaluation):
    no cache files, and no one-second lock wait after a compute call that raised.
    """
    import evaluate  # imported here: it takes seconds, and bootstrap_ci does not need it

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), **kwargs)


def combine(names: Sequence[str], force_prefix: bool = False) -> evaluate.CombinedEvaluations:
    """Several shipped metrics as one `evaluate.combine`: one compute call, one merged dict."""
    import evaluate

    return evaluate.combine([load_metric(name) for name in names], force_prefix=force_prefix)


def metric_info(
    description: str,
    citation: str,
    inputs: str,
    columns: Sequence[str] = ("predictions", "references"),
) -> evaluate.MetricInfo:
    """The `evaluate.MetricInfo` of an ftkit metric: its texts, and string-valued `columns`."""
    import datasets
    import evaluate

    features = datasets.Features({column: datasets.Value("string") for column in columns})
    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs, features=features
    )


def check_compute_kwargs(metric: str, kwargs: Mapping[str, object]) -> None:
    """Accept the kwargs of sibling metrics (evaluate.combine passes all to all); refuse the rest.

    Used by the metric modules in ftkit/metrics/*/.
    """
    known = set(BOOTSTRAP_KWARGS).union(*COMPUTE_KWARGS.values())
    unknown = sorted(set(kwargs) - known)
    if unknown:
        accepted = ", ".join((*COMPUTE_KWARGS[metric], *BOOTSTRAP_KWARGS))
        raise TypeError(
            f"{metric} got unknown keyword argument(s) {', '.join(unknown)}. "
            f"It accepts: {accepted} (kwargs of other ftkit metrics are ignored)."
        )


def bootstrap_ci(
    score_fn: Callable[[np.ndarray], float],
    n_items: int,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a score: resample example indices, rescore, take quantiles.

    `score_fn(indices)` must return the score of the examples at those indices (an array of
    `n_items` ints drawn with replacement). Deterministic for a given seed.
    """
    if n_items < 1:
        raise ValueError("Nothing to resample: there are no examples to score.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be between 0 and 1, got {confidence_level}.")
    rng = np.random.default_rng(seed)
    scores = [score_fn(rng.integers(0, n_items, size=n_items)) for _ in range(n_resamples)]
    tail = (1 - confidence_level) / 2
    low, high = np.quantile(scores, [tail, 1 - tail])
    return float(low), float(high)


def score_with_ci(
    score_fn: Callable[[np.ndarray], float],
    n_items: int,
    key: str,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """`{key: score}` on all examples, plus `key_ci_low`/`key_ci_high` unless n_resamples is 0."""
    if n_items < 1:
        raise ValueError(f"Cannot compute {key}: there are no examples to score.")
    result = {key: float(score_fn(np.arange(n_items)))}
    if n_resamples:
        low, high = bootstrap_ci(score_fn, n_items, n_resamples, confidence_level, seed)
        result[f"{key}_ci_low"], result[f"{key}_ci_high"] = low, high
    return result


def mean_with_ci(
    per_example: Iterable[float],
    key: str,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """The common case: the score is the mean of per-example scores (1.0 right, 0.0 wrong...)."""
    values = np.asarray(list(per_example), dtype=float)
    return score_with_ci(
        lambda idx: values[idx].mean(), len(values), key, n_resamples, confidence_level, seed
    )


def mean_text_score(
    predictions: Sequence[str],
    references: Sequence[str],
    score: Callable[[str, str], float],
    key: str,
    field: str | None = None,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """The mean of `score(prediction, reference)` over examples, with its interval: free-text
    metrics (rouge_l, chrf). With `field`, each text is that field of a JSON object; a
    prediction that is not one, or lacks the field, counts as empty.

    Used by the metric modules in ftkit/metrics/*/.
    """
    if field is not None:
        predictions = field_values(predictions, field, missing="")
        references = field_values(references, field)
    scores = [score(p, r) for p, r in zip(predictions, references, strict=True)]
    return mean_with_ci(scores, key, n_resamples, confidence_level, seed)


def field_values(texts: Sequence[str], field: str, missing: str | None = None) -> list[str]:
    """The value of `field` in each JSON-object text, as a string.

    A text that is not a JSON object, or has no such field, gives `missing`; with `missing=None`
    it is an error instead (use that for references, which must be right).
    Used by the metric modules in ftkit/metrics/*/.
    """
    values = []
    for index, text in enumerate(texts):
        parsed = parse_json(text.strip())
        if parsed is not None and field in parsed:
            values.append(str(parsed[field]))
        elif missing is not None:
            values.append(missing)
        else:
            raise ValueError(
                f"Reference {index} has no field {field!r}: it must be a JSON object with that "
                f"field, got {text[:80]!r}. Check the field name and the reference data."
            )
    return values
