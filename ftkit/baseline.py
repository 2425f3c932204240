"""A classical baseline: TF-IDF features and a logistic regression per label, trained in seconds.

Before crediting a fine-tuned language model with a score, ask what a one-second classical
model gets on the same split. For a task with classes (a label task, or the label fields of
a JSON answer) `classical_baseline` trains one scikit-learn pipeline per label, word 1- and
2-grams weighted by TF-IDF into a logistic regression, on the training split, and answers the
test questions with its predictions, scored by the same metrics and intervals as every other
approach. It cannot write free text (a JSON answer's text fields, or a free-text task): those
scores are not a zero but "cannot" (`nan`), and the table says so.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from ftkit.evaluation import Approach, ApproachResult, Prediction
from ftkit.scoring import score_predictions
from ftkit.task import Task, answer_of, parse_json

CLASSICAL = "classical"  # the `model` of the baseline's Approach (neither base nor fine-tuned)
NAME = "classical: TF-IDF + logistic regression"
LATENCY_SAMPLE = 8  # requests timed one at a time


def can_classify(task: Task) -> bool:
    """Whether the task has classes a classifier can learn (a label, or JSON label fields)."""
    return task.answer == "label" or (task.answer == "json" and bool(task.label_fields))


def question_text(example) -> str:
    """What the classifier reads: the example's user turns, joined."""
    return "\n".join(m["content"] for m in example.messages[:-1] if m["role"] == "user")


def targets(examples: Sequence, task: Task) -> dict[str, list[str]]:
    """Per label (each JSON label field, or the answer), its value in every example."""
    if task.answer == "label":
        return {"answer": [answer_of(e).strip() for e in examples]}
    answers = [parse_json(answer_of(e)) or {} for e in examples]
    return {name: [str(a.get(name)) for a in answers] for name in task.label_fields}


def fit_classifier(texts: list[str], labels: list[str], seed: int = 0) -> Pipeline:
    """TF-IDF over word 1- and 2-grams, then a logistic regression: fitted on `texts`.

    A label with one value only in `texts` (a tiny training set) gets that value always:
    a logistic regression needs two classes to learn from."""
    learner = (LogisticRegression(max_iter=2000, random_state=seed) if len(set(labels)) > 1
               else DummyClassifier(strategy="most_frequent"))  # fmt: skip
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True), learner
    )
    return pipeline.fit(texts, labels)


def classical_baseline(
    train: Sequence, examples: Sequence, task: Task, n_resamples: int = 1000, seed: int = 0
) -> ApproachResult | None:
    """Train on `train`, answer `examples`, score as `task` says; None when the task has no
    classes. Scores the baseline cannot earn (free-text fields, and the whole answer's exact
    match when it has free text) are `nan`; the fit's time is `fit_seconds`, the time to
    answer one request alone `latency_s`."""
    if not can_classify(task):
        return None
    texts = [question_text(e) for e in train]
    started = time.perf_counter()
    models = {name: fit_classifier(texts, values, seed)
              for name, values in targets(train, task).items()}  # fmt: skip
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    outputs = _respond(models, task, examples)
    batched = (time.perf_counter() - started) / len(outputs)
    timed = []
    for example in list(examples)[:LATENCY_SAMPLE]:  # one request at a time, as for the LLMs
        started = time.perf_counter()
        _respond(models, task, [example])
        timed.append(time.perf_counter() - started)
    result = _result(examples, outputs, task, sum(timed) / len(timed), batched, fit_seconds,
                     n_resamples, seed)  # fmt: skip
    result.respond = lambda asked: _respond(models, task, asked)
    return result


def _respond(models: dict[str, Pipeline], task: Task, examples: Sequence) -> list[str]:
    """The fitted classifiers' answers to `examples`, written as the task's answers."""
    asked = [question_text(e) for e in examples]
    predicted = {name: model.predict(asked) for name, model in models.items()}
    return [_answer(task, {name: str(values[i]) for name, values in predicted.items()})
            for i in range(len(asked))]  # fmt: skip


def _answer(task: Task, values: dict[str, str]) -> str:
    """The baseline's answer as the task writes it: the label, or a JSON object of the label
    fields in the task's order (its text fields are missing: it cannot write them)."""
    if task.answer == "label":
        return values["answer"]
    return json.dumps({name: values[name] for name in task.label_fields}, ensure_ascii=False)


def cannot(task: Task) -> list[str]:
    """The metrics a classifier cannot earn on this task (free text is not a class)."""
    if task.answer != "json" or not task.text_fields:
        return []
    return [m for m in task.metrics() if m.endswith("_rouge_l") or m == "exact_match"]


def _result(examples, outputs, task, latency, batched, fit_seconds, n_resamples, seed):
    references = [answer_of(e) for e in examples]
    scores, intervals = score_predictions(outputs, references, task, n_resamples, seed)
    for metric in cannot(task):
        scores[metric] = math.nan
        intervals.pop(metric, None)
    predictions = [
        Prediction(str(e.meta.get("id") or e.source), question_text(e), reference, output, 0,
                   0, parse_json(output))
        for e, reference, output in zip(examples, references, outputs, strict=True)
    ]  # fmt: skip
    approach = Approach(NAME, model=CLASSICAL)
    return ApproachResult(approach, predictions, scores, intervals, 0.0, 0.0, latency, batched,
                          task, fit_seconds)  # fmt: skip
