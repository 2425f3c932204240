"""The shipped evaluate metrics (ftkit/metrics): hand-computed scores, edge cases, the bootstrap.

Every expected value is worked out by hand in a comment next to it. The modules are loaded the way
a learner loads them, through `evaluate.load`, which copies them into evaluate's module cache.
"""

from __future__ import annotations

import importlib.resources
import inspect
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from ftkit.metrics import (
    BOOTSTRAP_KWARGS,
    COMPUTE_KWARGS,
    METRICS,
    UnknownMetricError,
    bootstrap_ci,
    combine,
    load_metric,
    mean_with_ci,
    metric_path,
)

ROOT = Path(__file__).resolve().parents[1]
NO_CI = {"n_resamples": 0}


@pytest.fixture(scope="module")
def metric():
    """Load each shipped metric once: metric("exact_match")."""
    loaded = {}

    def get(name):
        if name not in loaded:
            loaded[name] = load_metric(name)
        return loaded[name]

    return get


# --- exact_match ---------------------------------------------------------------------------

EM_PREDICTIONS = ["Paris", " Paris\n", "paris", "New  York", "", "café", "東京", "🙂", "x"]
EM_REFERENCES = ["Paris", "Paris", "Paris", "New York", "", "cafe", "東京", "🙂", ""]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # right: Paris, " Paris\n" (stripped), "" == "", 東京, 🙂 -> 5 of 9
        ({}, 5 / 9),
        # + "paris" -> 6 of 9
        ({"ignore_case": True}, 6 / 9),
        # + "New  York" -> 6 of 9
        ({"normalize_whitespace": True}, 6 / 9),
        # both -> 7 of 9 ("café" != "cafe" and "x" != "" stay wrong)
        ({"ignore_case": True, "normalize_whitespace": True}, 7 / 9),
    ],
)
def test_exact_match_hand_computed(metric, kwargs, expected):
    result = metric("exact_match").compute(
        predictions=EM_PREDICTIONS, references=EM_REFERENCES, **kwargs, **NO_CI
    )
    assert result == {"exact_match": pytest.approx(expected)}


def test_exact_match_unicode_whitespace_and_case_folding(metric):
    # A non-breaking space and an ideographic space are whitespace too; casefold maps ß to ss.
    result = metric("exact_match").compute(
        predictions=["\u00a0Zoë\u3000", "STRASSE", "ÉCOLE"],
        references=["Zoë", "straße", "école"],
        ignore_case=True,
        **NO_CI,
    )
    assert result == {"exact_match": 1.0}


def test_every_metric_returns_a_ci_by_default(metric):
    result = metric("exact_match").compute(predictions=["a", "b"], references=["a", "c"])
    assert set(result) == {"exact_match", "exact_match_ci_low", "exact_match_ci_high"}
    assert result["exact_match_ci_low"] <= 0.5 <= result["exact_match_ci_high"]


def test_empty_input_is_a_clear_error(metric):
    with pytest.raises(ValueError, match="no examples"):
        metric("exact_match").compute(predictions=[], references=[])


# --- json_validity -------------------------------------------------------------------------

JSON_CASES = [
    ('{"a": 1}', True),
    ('  {"a": 1}\n', True),  # surrounding whitespace is fine
    ('{"name": "Zoë 東京 🙂"}', True),  # unicode inside strings
    ("{}", True),  # an empty object is an object
    ("[1, 2]", False),  # valid JSON, but a list
    ('"text"', False),  # valid JSON, but a string
    ("null", False),
    ("", False),  # empty output
    ("not json", False),
    ('{"a": 1} trailing', False),  # extra text after the object
    ('```json\n{"a": 1}\n```', False),  # a code fence is not repaired
    ("{'a': 1}", False),  # single quotes are not JSON
]


def test_json_validity_hand_computed(metric):
    predictions = [text for text, _ in JSON_CASES]
    result = metric("json_validity").compute(predictions=predictions, **NO_CI)
    # 4 valid of 12 -> 1/3
    assert result == {"json_validity": pytest.approx(4 / 12)}


def test_json_validity_follows_parse_json(metric):
    from ftkit.task import parse_json

    for text, valid in JSON_CASES:
        assert (parse_json(text.strip()) is not None) is valid, text


def test_json_validity_ignores_references(metric):
    result = metric("json_validity").compute(predictions=["{}", "[]"], references=["x", "y"])
    assert result["json_validity"] == 0.5


# --- field_accuracy ------------------------------------------------------------------------

FA_REFERENCES = ['{"city": "Paris", "year": 2024}'] * 4 + ['{"city": "Zürich", "year": 2024}']
FA_PREDICTIONS = [
    '{"city": "Paris", "year": 2024}',  # city right, year right
    '{"city": "paris", "year": "2024"}',  # city wrong (case), year right (str(2024) == "2024")
    '["Paris", 2024]',  # a list, not an object: both wrong
    "",  # empty output: both wrong
    '{"city": "Zürich", "year": 2024.0}',  # city right, year wrong ("2024.0" != "2024")
]


def test_field_accuracy_hand_computed(metric):
    result = metric("field_accuracy").compute(
        predictions=FA_PREDICTIONS, references=FA_REFERENCES, **NO_CI
    )
    # city: 1,0,0,0,1 -> 2/5; year: 1,1,0,0,0 -> 2/5; all fields: 1,0,0,0,0 -> 1/5
    assert result == {"city_accuracy": 0.4, "year_accuracy": 0.4, "all_fields": 0.2}


def test_field_accuracy_chosen_fields(metric):
    result = metric("field_accuracy").compute(
        predictions=FA_PREDICTIONS, references=FA_REFERENCES, fields=["city"], **NO_CI
    )
    # only city is scored, so all_fields is city's 2/5
    assert result == {"city_accuracy": 0.4, "all_fields": 0.4}


def test_field_accuracy_default_fields_are_each_references_own(metric):
    result = metric("field_accuracy").compute(
        predictions=['{"a": 1, "b": 3}', '{"a": 1}', "oops"],
        references=['{"a": 1, "b": 2}', '{"a": 1}', '{"a": "1"}'],
        **NO_CI,
    )
    # a: right, right, wrong (invalid) -> 2/3; b only in the first reference: wrong -> 0/1;
    # all fields: (a ok, b wrong), (a ok), (a wrong) -> 1/3
    assert result == {
        "a_accuracy": pytest.approx(2 / 3),
        "b_accuracy": 0.0,
        "all_fields": pytest.approx(1 / 3),
    }
    assert list(result) == ["a_accuracy", "b_accuracy", "all_fields"]


def test_field_accuracy_has_a_ci_per_key(metric):
    result = metric("field_accuracy").compute(predictions=FA_PREDICTIONS, references=FA_REFERENCES)
    for key in ("city_accuracy", "year_accuracy", "all_fields"):
        assert result[f"{key}_ci_low"] <= result[key] <= result[f"{key}_ci_high"]


def test_field_accuracy_names_a_misspelt_field_and_a_bad_reference(metric):
    with pytest.raises(ValueError, match=r"Reference 0 has no field 'citty'.*city, year"):
        metric("field_accuracy").compute(
            predictions=FA_PREDICTIONS, references=FA_REFERENCES, fields=["citty"]
        )
    with pytest.raises(ValueError, match="Reference 1 is not a JSON object"):
        metric("field_accuracy").compute(predictions=["{}", "{}"], references=["{}", "[1]"])


# --- macro_f1 ------------------------------------------------------------------------------

F1_REFERENCES = ["cat", "cat", "cat", "dog", "dog", "bird"]
F1_PREDICTIONS = ["cat", "cat", "dog", "dog", "bird", "bird"]
# cat:  TP 2, predicted 2, actual 3 -> F1 = 2*2 / (2+3) = 4/5
# dog:  TP 1, predicted 2, actual 2 -> F1 = 2*1 / (2+2) = 1/2
# bird: TP 1, predicted 2, actual 1 -> F1 = 2*1 / (2+1) = 2/3
# macro = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 30 / 3 = 59/90
F1_EXPECTED = {"cat": 4 / 5, "dog": 1 / 2, "bird": 2 / 3}


def test_macro_f1_three_classes_by_hand(metric):
    result = metric("macro_f1").compute(
        predictions=F1_PREDICTIONS, references=F1_REFERENCES, **NO_CI
    )
    assert result["macro_f1"] == pytest.approx(59 / 90)
    assert result["per_label"] == pytest.approx(F1_EXPECTED)


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [
        # "zzz" is in no reference: not averaged, but costs a's recall.
        # a: TP 1, predicted 2, actual 2 -> 2/4; b: TP 1, predicted 1, actual 2 -> 2/3
        (["a", "zzz", "b", "a"], ["a", "a", "b", "b"], (1 / 2 + 2 / 3) / 2),
        # b and c never predicted -> F1 0 each; a: TP 1, predicted 3, actual 1 -> 2/4
        (["a", "a", "a"], ["a", "b", "c"], (1 / 2 + 0 + 0) / 3),
        # all right
        (["été", "冬"], ["été", "冬"], 1.0),
    ],
)
def test_macro_f1_edge_cases(metric, predictions, references, expected):
    result = metric("macro_f1").compute(predictions=predictions, references=references, **NO_CI)
    assert result["macro_f1"] == pytest.approx(expected)
    assert set(result["per_label"]) == set(references)


def test_macro_f1_reads_a_json_field(metric):
    result = metric("macro_f1").compute(
        predictions=['{"label": "x"}', "oops", '{"other": "y"}', '["y"]'],
        references=['{"label": "x"}', '{"label": "y"}', '{"label": "x"}', '{"label": "y"}'],
        field="label",
        **NO_CI,
    )
    # predicted labels: x, <invalid>, <invalid>, <invalid>
    # x: TP 1, predicted 1, actual 2 -> 2/3; y: never predicted -> 0; macro 1/3
    assert result["macro_f1"] == pytest.approx(1 / 3)
    assert result["per_label"] == pytest.approx({"x": 2 / 3, "y": 0.0})


def test_macro_f1_reference_must_have_the_field(metric):
    with pytest.raises(ValueError, match="Reference 1 has no field 'label'"):
        metric("macro_f1").compute(
            predictions=["{}", "{}"], references=['{"label": 1}', "{}"], field="label"
        )


def test_macro_f1_agrees_with_scikit_learn(metric):
    metrics = pytest.importorskip("sklearn.metrics")
    predictions = [*F1_PREDICTIONS, "<invalid>", "fish"]
    references = [*F1_REFERENCES, "dog", "cat"]
    ours = metric("macro_f1").compute(predictions=predictions, references=references, **NO_CI)
    theirs = metrics.f1_score(
        references, predictions, average="macro", labels=sorted(set(references)), zero_division=0
    )
    assert ours["macro_f1"] == pytest.approx(theirs)


def test_macro_f1_bootstrap(metric):
    predictions, references = F1_PREDICTIONS * 10, F1_REFERENCES * 10
    first = metric("macro_f1").compute(predictions=predictions, references=references)
    again = metric("macro_f1").compute(predictions=predictions, references=references)
    assert first == again
    assert first["macro_f1_ci_low"] < first["macro_f1"] < first["macro_f1_ci_high"]


# --- rouge_l -------------------------------------------------------------------------------

ROUGE_CASES = [
    # 6 tokens each, LCS "cat sat on mat" = 4 -> P = R = 4/6 -> F = 2/3
    ("the cat sat on the mat", "a cat sat on a mat", 2 / 3),
    # Cyrillic stays in words (rouge_score's own tokenizer would see no tokens and give 0)
    ("Привет мир", "привет мир", 1.0),
    # one token per CJK character: 我 爱 北 京 vs 我 爱 上 海 -> LCS 2 -> P = R = 1/2
    ("我爱北京", "我爱上海", 1 / 2),
    # punctuation and emoji are not tokens; case is ignored
    ("Hello, world! 🙂", "hello world", 1.0),
    # accents matter: café != cafe -> LCS "au lait" = 2 of 3 -> 2/3
    ("café au lait", "cafe au lait", 2 / 3),
    ("", "a cat", 0.0),  # empty prediction
    ("", "", 0.0),  # empty vs empty: nothing to recall, 0 as in rouge_score
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), ROUGE_CASES)
def test_rouge_l_one_example(metric, prediction, reference, expected):
    result = metric("rouge_l").compute(predictions=[prediction], references=[reference], **NO_CI)
    assert result["rouge_l"] == pytest.approx(expected)


def test_rouge_l_averages_over_examples(metric):
    result = metric("rouge_l").compute(
        predictions=[p for p, _, _ in ROUGE_CASES], references=[r for _, r, _ in ROUGE_CASES]
    )
    # (2/3 + 1 + 1/2 + 1 + 2/3 + 0 + 0) / 7 = (23/6) / 7 = 23/42
    assert result["rouge_l"] == pytest.approx(23 / 42)
    assert result["rouge_l_ci_low"] <= result["rouge_l"] <= result["rouge_l_ci_high"]


def test_rouge_l_tokenizer_keeps_unicode_words(metric):
    module = sys.modules[type(metric("rouge_l")).__module__]
    tokens = module.UnicodeTokenizer().tokenize("Zoë's CAFÉ, 東京 🙂 naïve!")
    assert tokens == ["zoë", "s", "café", "東", "京", "naïve"]


def test_rouge_l_reads_a_json_field(metric):
    result = metric("rouge_l").compute(
        predictions=['{"summary": "the cat sat"}', "oops"],
        references=['{"summary": "a cat sat"}', '{"summary": "a dog ran"}'],
        field="summary",
        **NO_CI,
    )
    # [the cat sat] vs [a cat sat] -> LCS 2 of 3 -> 2/3; invalid JSON -> empty -> 0; mean 1/3
    assert result["rouge_l"] == pytest.approx(1 / 3)


# --- the bootstrap -------------------------------------------------------------------------


def test_bootstrap_contains_the_estimate_and_is_deterministic():
    scores = [1.0] * 30 + [0.0] * 20
    result = mean_with_ci(scores, "acc")
    assert result["acc_ci_low"] < result["acc"] == 0.6 < result["acc_ci_high"]
    assert mean_with_ci(scores, "acc") == result
    # another seed, another interval (continuous scores, so the quantiles do not coincide)
    graded = [i / 49 for i in range(50)]
    assert mean_with_ci(graded, "acc", seed=1) != mean_with_ci(graded, "acc", seed=0)


def test_bootstrap_width_matches_the_normal_approximation():
    # p = 0.6, n = 5000: standard error sqrt(0.6 * 0.4 / 5000) = 0.00693;
    # a normal 95% interval is 2 * 1.96 * 0.00693 = 0.0272 wide
    result = mean_with_ci([1.0] * 3000 + [0.0] * 2000, "acc")
    assert result["acc_ci_high"] - result["acc_ci_low"] == pytest.approx(0.0272, rel=0.15)


def test_bootstrap_narrows_with_more_data_and_widens_with_confidence():
    def width(n, confidence_level=0.95):
        result = mean_with_ci([1.0, 1.0, 1.0, 0.0, 0.0] * n, "acc", 500, confidence_level)
        return result["acc_ci_high"] - result["acc_ci_low"]

    assert width(100) < width(10) < width(2)
    assert width(10, 0.8) < width(10, 0.95) < width(10, 0.99)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 1 / 3])
def test_bootstrap_of_equal_scores_is_a_point(value):
    result = mean_with_ci([value] * 7, "acc")
    assert result["acc_ci_low"] == result["acc"] == result["acc_ci_high"] == value


def test_bootstrap_ci_takes_any_score_function():
    import numpy as np

    values = np.arange(11.0)
    low, high = bootstrap_ci(lambda idx: float(np.median(values[idx])), len(values), seed=3)
    assert low <= 5.0 <= high
    assert (low, high) == bootstrap_ci(lambda idx: float(np.median(values[idx])), 11, seed=3)


def test_bootstrap_refuses_bad_arguments():
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_ci(lambda idx: 0.0, 0)
    with pytest.raises(ValueError, match="confidence_level"):
        bootstrap_ci(lambda idx: 0.0, 3, confidence_level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(lambda idx: 0.0, 3, n_resamples=0)


def test_n_resamples_zero_turns_the_ci_off(metric):
    for name in ("exact_match", "rouge_l"):
        result = metric(name).compute(predictions=["a"], references=["a"], n_resamples=0)
        assert result == {name: 1.0}


# --- loading, combining, packaging ----------------------------------------------------------


def test_combine_two_shipped_metrics(metric):
    both = combine(["exact_match", "json_validity"])
    result = both.compute(
        predictions=['{"a": 1}', "Yes", "[]"],
        references=['{"a": 1}', "yes", "{}"],
        ignore_case=True,  # exact_match's kwarg; json_validity ignores it
        n_resamples=0,
    )
    # exact match: right, right (case ignored), wrong -> 2/3; valid: object, text, list -> 1/3
    assert result == {"exact_match": pytest.approx(2 / 3), "json_validity": pytest.approx(1 / 3)}


def test_evaluate_combine_passes_every_kwarg_to_every_module(metric):
    import evaluate

    both = evaluate.combine([metric_path("field_accuracy"), metric_path("macro_f1")])
    result = both.compute(
        predictions=['{"kind": "a", "n": 1}', '{"kind": "b", "n": 2}'],
        references=['{"kind": "a", "n": 1}', '{"kind": "a", "n": 2}'],
        fields=["kind"],  # for field_accuracy
        field="kind",  # for macro_f1
        seed=7,  # for both
    )
    assert result["kind_accuracy"] == 0.5
    assert "n_accuracy" not in result
    # labels a, b; reference labels {a}: a has TP 1, predicted 1, actual 2 -> F1 2/3
    assert result["macro_f1"] == pytest.approx(2 / 3)
    with pytest.raises(TypeError, match=r"unknown keyword argument.*fieldz"):
        both.compute(predictions=["{}"], references=["{}"], fieldz=["kind"])


def test_compute_kwargs_table_matches_the_modules(metric):
    for name in METRICS:
        parameters = inspect.signature(type(metric(name))._compute).parameters
        named = [
            p
            for p in parameters
            if parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            and p not in ("self", "predictions", "references")
        ]
        assert named == [*COMPUTE_KWARGS[name], *BOOTSTRAP_KWARGS], name


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(UnknownMetricError, match=r"'rouge'.*exact_match, json_validity"):
        load_metric("rouge")
    assert issubclass(UnknownMetricError, ValueError)


def test_metric_files_ship_as_package_data():
    package = importlib.resources.files("ftkit")
    with open(ROOT / "pyproject.toml", "rb") as file:
        patterns = tomllib.load(file)["tool"]["setuptools"]["package-data"]["ftkit"]
    for name in METRICS:
        relative = f"metrics/{name}/{name}.py"
        assert package.joinpath(relative).is_file(), relative
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
        assert Path(metric_path(name), f"{name}.py").is_file()
