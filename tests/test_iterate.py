"""Notebook 05's data changes and measurements, on the shipped data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ftkit.baseline import classical_baseline
from ftkit.config import TrainConfig, TrainingError
from ftkit.course import check
from ftkit.course.iterating import bias_table_html
from ftkit.evaluation import Approach, evaluate_approach
from ftkit.iterate import (
    answer_shares,
    checkpoint_losses,
    choose_checkpoint,
    class_counts,
    class_recall,
    rebalanced,
    score_checkpoints,
    skewed,
    train_apart,
)
from ftkit.runs import load_run, read_run
from ftkit.task_data import load_task_data
from ftkit.trainer import loss_on
from ftkit.training import train


@pytest.fixture(scope="module")
def tickets():
    return load_task_data("support_tickets")


def test_a_skewed_subset_has_the_shares_asked_for(tickets):
    subset = skewed(tickets.train, "category", 96, "bug", 0.6, "cancellation", 2, seed=0)
    counts = class_counts(subset, "category")
    assert len(subset) == 96 and counts["bug"] == 58 and counts["cancellation"] == 2
    assert sorted(counts.values()) == [2, 9, 9, 9, 9, 58]  # the other four share the rest
    assert len({id(e) for e in subset}) == 96  # drawn without repeats
    assert skewed(tickets.train, "category", 96, "bug", 0.6, "cancellation", 2, seed=0) == subset


def test_skewed_names_what_it_cannot_do(tickets):
    with pytest.raises(ValueError, match="no class 'refund'"):
        skewed(tickets.train, "category", 96, "refund")
    with pytest.raises(ValueError, match="600 examples of 'bug' wanted, 167 exist"):
        skewed(tickets.train, "category", 1000, "bug", 0.6)


def test_rebalancing_keeps_the_budget_and_evens_the_classes(tickets):
    subset = skewed(tickets.train, "category", 96, "bug", 0.6, "cancellation", 2)
    balanced = rebalanced(subset, "category")
    assert len(balanced) == 96
    assert set(class_counts(balanced, "category").values()) == {16}
    rare = [e for e in balanced if e.meta["category"] == "cancellation"]
    assert len({id(e) for e in rare}) == 2  # the two rare examples, repeated 8 times each


def test_recall_and_answer_shares_match_the_predictions(tickets):
    result = classical_baseline(tickets.train, tickets.test, tickets.task)
    recall = class_recall(result, "category")
    shares = answer_shares(result, "category")
    assert set(recall) == set(class_counts(tickets.test, "category"))
    assert sum(n for _, n in recall.values()) == len(tickets.test)
    assert sum(shares.values()) == pytest.approx(1.0)
    right = sum(share * n for share, n in recall.values())
    assert right / len(tickets.test) == pytest.approx(result.scores["category_accuracy"])


def _tiny(tmp_path, **changes) -> TrainConfig:
    settings = {"max_steps": 1, "batch_size": 2, "eval_steps": 1, "save_steps": 1,
                "logging_steps": 1, "runs_dir": str(tmp_path), "lr": 3e-2}  # fmt: skip
    return TrainConfig(**(settings | changes))


def test_train_apart_trains_in_a_fresh_process_and_reuses_the_run(tmp_path, tickets):
    config = _tiny(tmp_path, run_name="apart")
    run = train_apart(config, tickets.train[:4], tickets.validation[:2])
    assert run.result["status"] == "finished" and run.result["steps"] == 1
    assert 0.2 < run.result["peak_memory_gb"] < 4  # that process's own peak, not pytest's
    written = (run.path / "result.json").stat().st_mtime_ns
    again = train_apart(config, tickets.train[:4], tickets.validation[:2])  # same fingerprint
    assert again.result == run.result
    assert (run.path / "result.json").stat().st_mtime_ns == written  # read back, not retrained
    with pytest.raises(TrainingError, match=r"in a fresh process failed \(exit 1\)"):
        train_apart(replace(config, run_name="broken", max_length=8), tickets.train[:4])


def test_exercise_checks_read_the_run_the_learner_trained(tmp_path, tickets):
    data, validation = tickets.train[:4], tickets.validation[:2]
    runs = {
        "too-high": _tiny(tmp_path, run_name="too-high"),
        "good": _tiny(tmp_path, run_name="good", lr=3e-3),
        "one": _tiny(tmp_path, run_name="one", warmup_ratio=0.5),
        "two": _tiny(tmp_path, run_name="two", warmup_ratio=0.5, lr=1e-2),
    }
    for config in runs.values():
        train(config, data, validation)
    train(_tiny(tmp_path, run_name="other-data", warmup_ratio=0.5), tickets.train[4:8], validation)
    assert not check.warmup_rescue(None, tmp_path, "too-high", "good")
    assert (
        "No run 'missing'" in check.warmup_rescue("missing", tmp_path, "too-high", "good").message
    )
    two = check.warmup_rescue("two", tmp_path, "too-high", "good")
    assert not two and "also changed lr: 0.03 -> 0.01" in two.message
    other = check.warmup_rescue("other-data", tmp_path, "too-high", "good")
    assert not other and "other data" in other.message
    same = check.warmup_rescue("too-high", tmp_path, "too-high", "good")
    assert not same and "same settings" in same.message
    one = check.warmup_rescue("one", tmp_path, "too-high", "good")
    assert one and "changed warmup_ratio only, to 0.5" in one.message
    loss = json.loads((tmp_path / "one" / "result.json").read_text())["val_loss"]
    assert f"{loss:.3f}" in one.message  # the run's own number
    rank = check.lora_rank("one", tmp_path, "too-high")
    assert not rank and "warmup_ratio" in rank.message


def test_checkpoints_are_scored_as_if_each_were_loaded_alone(tmp_path, tickets):
    """The adapter swapped in per checkpoint answers exactly as that checkpoint loaded afresh;
    the choice is the highest score, the earliest of equals."""
    config = _tiny(tmp_path, run_name="kept", method="lora", max_steps=2, keep_checkpoints=None)
    train(config, tickets.train[:4], tickets.validation[:2])
    run = read_run(tmp_path / "kept")
    assert run.checkpoints == [1, 2]
    examples, task = tickets.validation[:3], tickets.task
    scores = score_checkpoints(run, examples, task, max_new_tokens=12)
    assert sorted(scores) == [1, 2]
    alone = load_run(run.path, checkpoint=1)  # scored second there: after step 2's weights
    fresh = evaluate_approach(alone.model, alone.tokenizer, examples,
                              Approach("step 1", model="finetuned"), task, max_new_tokens=12,
                              latency_sample=0)  # fmt: skip
    assert [p.output for p in scores[1].predictions] == [p.output for p in fresh.predictions]
    # and the two checkpoints do answer differently (else a swap that failed would pass)
    assert [p.output for p in scores[1].predictions] != [p.output for p in scores[2].predictions]
    assert score_checkpoints(run, examples, task, [2, 1], max_new_tokens=12)[1].scores == (
        fresh.scores
    )
    metric = task.primary
    best = max(s.scores[metric] for s in scores.values())
    assert choose_checkpoint(scores, metric) == min(
        k for k in scores if scores[k].scores[metric] == best
    )
    tie = {2: scores[1], 1: scores[1]}
    assert choose_checkpoint(tie, metric) == 1
    with pytest.raises(ValueError, match=r"no checkpoint at step\(s\) \[3\].*kept \[1, 2\]"):
        score_checkpoints(run, examples, task, [2, 3])
    # the loss of each checkpoint, swapped in: as loss_on gives for that checkpoint alone
    losses = checkpoint_losses(run, examples, [2, 1])
    assert losses[1] == pytest.approx(loss_on(alone.model, alone.tokenizer, examples), abs=1e-5)
    assert abs(losses[1] - losses[2]) > 1e-4
    with pytest.raises(ValueError, match=r"checkpoint_losses: run 'kept' has no checkpoint"):
        checkpoint_losses(run, examples, [3])


def test_the_bias_table_counts_every_test_example_and_escapes_names(tickets):
    result = classical_baseline(tickets.train, tickets.test, tickets.task)
    table = bias_table_html({"<skewed>": result}, "category", tickets.test, "bug", "cancellation")
    assert "&lt;skewed&gt;: recall" in table and "<skewed>" not in table
    assert "bug (majority)" in table and "cancellation (rare)" in table
    assert table.count("<tr>") == 1 + len(class_counts(tickets.test, "category"))
    recall = class_recall(result, "category")["bug"][0]
    assert f"<td>bug (majority)</td><td>46</td><td>{100 * recall:.0f}%</td>" in table
