"""Notebook 04's rivals to the fine-tune: the classical baseline, retrieved shots, constrained
decoding, the knowledge demonstration, and the sentences written from their numbers.

Small hand-checked cases first (no model), then each rival on the embedded model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from ftkit.baseline import CLASSICAL, NAME, can_classify, classical_baseline
from ftkit.comparison import Comparison
from ftkit.config import TrainConfig
from ftkit.constrained import answer_schema, token_bound, xgrammar_available
from ftkit.curve import CurvePoint
from ftkit.data import Example
from ftkit.evaluation import Approach, ApproachResult, Prediction, evaluate_approach, shots_for
from ftkit.knowledge import FAQ, knowledge_check, read_faq, states
from ftkit.models import load_model
from ftkit.retrieval import Retriever, retrieve_shots
from ftkit.shipped import dataset_dir
from ftkit.splits import load_dataset_splits
from ftkit.task import Task, parse_json
from ftkit.task_data import load_task_data
from ftkit.training import add_adapters
from ftkit.verdict import (
    classical_verdict,
    curve_verdict,
    knowledge_verdict,
    prompting_verdict,
    split_verdict,
)

TICKETS = load_task_data("support_tickets").task
TRIAGE = Task(answer="json", fields={"team": "label", "urgent": "label", "note": "text"})
MOOD = Task(answer="label", labels=("happy", "angry"))


def _example(question: str, answer: str, **meta) -> Example:
    return Example([{"role": "user", "content": question},
                    {"role": "assistant", "content": answer}], meta=meta)  # fmt: skip


def _triage(question: str, team: str, urgent: str, note: str = "a note") -> Example:
    return _example(question, json.dumps({"team": team, "urgent": urgent, "note": note}))


# Words that decide each label, so the right answer is plain by reading: "refund", "payment"
# and "invoice" are billing, "error" and "crash" engineering; each urgent ticket is a calm one
# with "now" (and "down") added, so those words alone decide `urgent`.
TRAIN = [
    _triage("refund my payment", "billing", "no"),
    _triage("the invoice total is wrong", "billing", "no"),
    _triage("refund my payment now", "billing", "yes"),
    _triage("the invoice total is wrong, fix it now", "billing", "yes"),
    _triage("the app shows an error", "engineering", "no"),
    _triage("another crash when saving", "engineering", "no"),
    _triage("the app shows an error now, everything down", "engineering", "yes"),
    _triage("another crash when saving, down now", "engineering", "yes"),
]
TEST = [
    _triage("wrong payment on my invoice", "billing", "no", "wrong invoice"),
    _triage("a crash when I open the app", "engineering", "no", "crash on open"),
    _triage("error, everything down now", "engineering", "yes", "outage"),
]


def test_the_classical_baseline_on_a_hand_checked_case():
    result = classical_baseline(TRAIN, TEST, TRIAGE, n_resamples=50)
    answers = [parse_json(p.output) for p in result.predictions]
    assert answers == [
        {"team": "billing", "urgent": "no"},
        {"team": "engineering", "urgent": "no"},
        {"team": "engineering", "urgent": "yes"},
    ]
    assert result.scores["labels_exact"] == 1.0 and result.scores["team_accuracy"] == 1.0
    assert result.approach.model == CLASSICAL and result.name == NAME
    assert result.prompt_tokens == 0 and 0 < result.latency_s < 1 and result.fit_seconds > 0
    # It writes no note: that score is "cannot" (nan), not a silent zero, and has no interval.
    assert math.isnan(result.scores["note_rouge_l"]) and math.isnan(result.scores["exact_match"])
    assert "note_rouge_l" not in result.intervals
    # It answers a new question with the same fitted classifiers.
    asked = [_triage("refund my invoice now", "?", "?")]
    assert parse_json(result.respond(asked)[0]) == {"team": "billing", "urgent": "yes"}


def test_the_classical_baseline_on_labels_and_where_it_cannot():
    pairs = [("love it, great app", "happy"), ("great, thanks", "happy"),
             ("terrible, I hate it", "angry"), ("hate the update, terrible", "angry")]  # fmt: skip
    train = [_example(text, label) for text, label in pairs]
    test = [_example("great work, love it", "happy"), _example("I hate this", "angry")]
    result = classical_baseline(train, test, MOOD, n_resamples=20)
    assert [p.output for p in result.predictions] == ["happy", "angry"]
    assert result.scores["accuracy"] == 1.0
    text = Task(answer="text")
    assert not can_classify(text) and classical_baseline(train, test, text) is None
    # One value only for a label (a tiny training set): answered always, no crash.
    one = [_triage("refund", "billing", "no"), _triage("invoice", "billing", "no")]
    single = classical_baseline(one, TEST, TRIAGE, n_resamples=20)
    assert {parse_json(p.output)["urgent"] for p in single.predictions} == {"no"}


def test_the_table_says_n_a_and_the_verdict_says_why():
    classical = classical_baseline(TRAIN, TEST, TRIAGE, n_resamples=50)
    scores = dict.fromkeys(TRIAGE.metrics(), 0.5) | {"team_accuracy": 1.0}
    tuned = _result("fine-tuned", "finetuned", scores)
    comparison = Comparison({"fine-tuned": tuned}, TRIAGE).add(classical)
    assert comparison.classical is classical
    table = comparison.table_html(["labels_exact", "note_rouge_l"])
    assert "<td>n/a</td>" in table and "cannot write free text" in table
    text = classical_verdict(comparison)
    assert "**100.0**" in text  # the classifier's score, from the result
    assert "**50.0 points below** it" in text
    assert "no `exact_match` or `note_rouge_l` score" in text
    assert "the classifier ahead on `urgent_accuracy` (50 vs 100); level on `team_accuracy`" in text


def _result(name, model, scores, intervals=None, approach=None, tokens=50.0):
    """A result with given scores (the verdict functions read nothing else)."""
    intervals = intervals or {m: (v, v) for m, v in scores.items()}
    approach = approach or Approach(name, model=model)
    return ApproachResult(approach, [], scores, intervals, tokens, 10.0, 0.5, 0.1, TRIAGE)


def test_the_prompting_verdict_is_computed_from_the_numbers():
    fixed = _result("few", "base", {"labels_exact": 0.10, "json_validity": 0.6},
                    {"labels_exact": (0.05, 0.15), "json_validity": (0.5, 0.7)},
                    Approach("few", shots=3), tokens=700)  # fmt: skip
    retrieved = _result("near", "base", {"labels_exact": 0.30, "json_validity": 0.9},
                        {"labels_exact": (0.2, 0.4), "json_validity": (0.8, 1.0)},
                        Approach("near", shots=3, retrieve=True), tokens=720)  # fmt: skip
    constrained = _result("held", "base", {"labels_exact": 0.30, "json_validity": 1.0},
                          {"labels_exact": (0.2, 0.4), "json_validity": (1.0, 1.0)},
                          Approach("held", shots=3, constrained=True), tokens=700)  # fmt: skip
    tuned = _result("fine-tuned", "finetuned", {"labels_exact": 0.5, "json_validity": 1.0},
                    {"labels_exact": (0.45, 0.55), "json_validity": (1.0, 1.0)})  # fmt: skip
    results = {r.name: r for r in (fixed, retrieved, constrained, tuned)}
    text = prompting_verdict(Comparison(results, TRIAGE))
    assert "goes from 10.0 to **30.0** (+20.0 points, intervals apart), for 720" in text
    assert "valid JSON 60 -> 100 points" in text
    assert "closes 50% of the gap" in text  # (30 - 10) of (50 - 10)
    assert "stays **20.0 points** ahead, intervals apart" in text
    close = _result("fine-tuned", "finetuned", {"labels_exact": 0.32, "json_validity": 1.0},
                    {"labels_exact": (0.25, 0.4), "json_validity": (1.0, 1.0)})  # fmt: skip
    results["fine-tuned"] = close
    assert "within chance" in prompting_verdict(Comparison(results, TRIAGE))


def test_the_split_verdict_says_whether_validation_and_test_differ():
    def tuned(score, low, high):
        return _result("fine-tuned", "finetuned", {"labels_exact": score},
                       {"labels_exact": (low, high)})  # fmt: skip

    val, test, alike = tuned(0.9, 0.85, 0.95), tuned(0.5, 0.4, 0.6), tuned(0.88, 0.8, 0.9)
    text = split_verdict(val, test, "labels_exact")
    assert "**40.0 points lower on test**, intervals apart" in text
    assert "the intervals overlap" in split_verdict(val, alike, "labels_exact")


def test_the_curve_verdict_states_every_interval_and_what_fewer_examples_cost():
    answers = [Prediction(str(i), "a ticket", "{}", "{}", 100, 20) for i in range(80)]
    best = _result("near", "base", {"labels_exact": 0.25}, {"labels_exact": (0.16, 0.35)})
    best = dataclasses.replace(best, predictions=answers)  # scored on 80 test examples

    def curve(*points):
        return [CurvePoint(n, "labels_exact", s, (lo, hi), 1.0) for n, s, lo, hi in points]

    points = curve((100, 0.05, 0.0, 0.1), (200, 0.3, 0.2, 0.4), (640, 0.6, 0.5, 0.7))
    text = curve_verdict(points, best, "labels_exact", test_size=160)
    assert "scores 25.0 [16, 35] on `labels_exact`" in text
    assert "beats it from **640 training examples** on, intervals apart" in text
    assert "(from 200 it scores higher, but within the intervals)" in text
    assert "100: 5.0 [0, 10], 200: 30.0 [20, 40], 640: 60.0 [50, 70]" in text
    assert "of the 160 in the test split: scoring a point on them takes 50% of the time" in text
    assert "about 1.4x as wide" in text
    overlapping = curve_verdict(points[:2], best, "labels_exact")
    assert "scores higher from 200 training examples on, but within the intervals" in overlapping
    assert "test split" not in overlapping  # scored on all of it: nothing to say
    assert "does not beat it" in curve_verdict(points[:1], best, "labels_exact")


def test_retrieval_finds_the_closest_examples():
    index = Retriever(["refund my payment", "the app crashes", "reset my password"])
    assert index.top(["my app crashes", "payment refund please"], 1) == [[1], [0]]
    shots = retrieve_shots(TRAIN, TEST[1:2], 2)  # "crash after the update"
    assert all("crash" in s.messages[0]["content"] for s in shots[0])
    with pytest.raises(ValueError, match="nothing to retrieve"):
        Retriever([])
    # Retrieved shots differ per question; fixed ones are the same for all.
    retrieved = shots_for(Approach("r", shots=2, retrieve=True), TEST, TRAIN, TRIAGE)
    fixed = shots_for(Approach("f", shots=2), TEST, TRAIN, TRIAGE)
    assert retrieved[0] != retrieved[1] and fixed[0] == fixed[1] == fixed[2]


def test_the_answer_schema_and_its_token_bound():
    schema = answer_schema(TRIAGE, TRAIN)
    assert list(schema["properties"]) == ["team", "urgent", "note"]
    assert schema["properties"]["team"] == {"enum": ["billing", "engineering"]}
    assert schema["properties"]["note"]["pattern"].endswith("{0,9}$")  # 1.5 x "a note", 8 at least
    longest = '{"team": "engineering", "urgent": "yes", "note": "xxxxxxxx"}'
    assert len(longest) < token_bound(TRIAGE, TRAIN) <= len(longest) + 2


def test_the_faq_and_its_questions_agree():
    entries = read_faq()
    assert len(entries) == 24
    questions = [json.loads(line) for line in
                 (dataset_dir(FAQ) / "questions.jsonl").read_text().splitlines()]  # fmt: skip
    by_title = {e.title: e.text for e in entries}
    for question in questions:  # each fact is in its entry, and in the written answer
        assert states(by_title[question["entry"]], question["fact"]), question["id"]
        assert states(question["messages"][1]["content"], question["fact"]), question["id"]
    # The generator writes exactly the shipped file.
    script = dataset_dir(FAQ) / "make_questions.py"
    before = (dataset_dir(FAQ) / "questions.jsonl").read_bytes()
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    assert (dataset_dir(FAQ) / "questions.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    ("answer", "fact", "right"),
    [("It has 10GB.", "10 GB", True), ("15 GB", "5 GB", False), ("$8.99", "$8", False),
     ("$8 a month", "$8", True), ("1000 items", "1,000", True), ("up to 5 devices", "5", True),
     ("15 devices", "5", False), ("$49.99", "$4.99", False), ("costs $4.99.", "$4.99", True)],
)  # fmt: skip
def test_an_answer_states_a_fact_only_as_a_whole(answer, fact, right):
    assert states(answer, fact) is right


# On the embedded model: a fresh adapter (B = 0) stands in for the fine-tune.


@pytest.fixture(scope="module")
def peft_model():
    model, tokenizer = load_model(quantization="nf4")
    return add_adapters(model, TrainConfig(method="qlora")).eval(), tokenizer


@pytest.fixture(scope="module")
def splits():
    return load_dataset_splits("support_tickets")


@pytest.mark.skipif(not xgrammar_available(), reason="constrained decoding needs xgrammar")
def test_constrained_decoding_gives_valid_json_on_every_reply(peft_model, splits):
    model, tokenizer = peft_model
    test, train = list(splits["test"])[:6], list(splits["train"])
    approach = Approach("zero-shot, constrained", constrained=True)  # no prompt: the hardest
    result = evaluate_approach(model, tokenizer, test, approach, TICKETS, train,
                               latency_sample=1, n_resamples=50)  # fmt: skip
    schema = answer_schema(TICKETS, train)["properties"]
    for prediction in result.predictions:
        answer = parse_json(prediction.output)
        assert answer is not None, prediction.output
        assert list(answer) == list(TICKETS.fields)  # every field, in order
        for name in TICKETS.label_fields:
            assert answer[name] in schema[name]["enum"]
    assert result.scores["json_validity"] == 1.0
    free = evaluate_approach(model, tokenizer, test, Approach("zero-shot"), TICKETS, train,
                             max_new_tokens=24, latency_sample=0, n_resamples=50)  # fmt: skip
    assert free.scores["json_validity"] < 1.0  # without the constraint it does not manage


@pytest.mark.skipif(not xgrammar_available(), reason="constrained decoding needs xgrammar")
def test_constrained_decoding_answers_with_a_label(peft_model):
    model, tokenizer = peft_model
    train = [_example("love it", "happy"), _example("hate it", "angry")]
    test = [_example("What a great day, thank you!", "happy"),
            _example("This is the worst service ever.", "angry")]  # fmt: skip
    result = evaluate_approach(model, tokenizer, test, Approach("c", constrained=True), MOOD,
                               train, latency_sample=0, n_resamples=20)  # fmt: skip
    assert {p.output for p in result.predictions} <= {"happy", "angry"}


def test_retrieved_shots_on_the_embedded_model(peft_model, splits):
    model, tokenizer = peft_model
    test, train = list(splits["test"])[:3], list(splits["train"])
    approach = Approach("base + 2 retrieved", shots=2, retrieve=True)
    result = evaluate_approach(model, tokenizer, test, approach, TICKETS, train,
                               max_new_tokens=24, latency_sample=1, n_resamples=20)  # fmt: skip
    assert len(result.predictions) == 3 and result.latency_s > 0
    # Each question's prompt holds its own two closest training tickets.
    nearest = retrieve_shots(train, test, 2)
    assert nearest[0] != nearest[1]
    assert all(p.prompt_tokens > 100 for p in result.predictions)


def test_the_knowledge_check_on_the_embedded_model(peft_model):
    model, tokenizer = peft_model
    results, hit = knowledge_check(model, tokenizer, n_resamples=50, limit=3)
    assert list(results) == ["base, no FAQ", "base + retrieved FAQ entry", "fine-tuned, no FAQ",
                             "fine-tuned + retrieved FAQ entry"]  # fmt: skip
    assert 0 <= hit <= 1
    for result in results.values():
        assert len(result.answers) == len(result.right) == 3
        assert result.score == sum(result.right) / 3
        assert result.interval[0] <= result.score <= result.interval[1]
    # A fresh adapter answers like the base: the same answers with or without it.
    assert results["base, no FAQ"].answers == results["fine-tuned, no FAQ"].answers
    text = knowledge_verdict(results, hit)
    assert "Without the FAQ: base, no FAQ states the fact in" in text
