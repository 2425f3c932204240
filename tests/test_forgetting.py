"""The general-ability probe of notebook 05: its file, its checks, and a real model asked."""

from __future__ import annotations

import json
import re

import pytest

from ftkit.forgetting import (
    CHECKS,
    KINDS,
    ProbeError,
    ProbeItem,
    is_prose,
    load_probe,
    passes,
    probe_table_html,
    run_probe,
)
from ftkit.models import load_model
from ftkit.task_data import load_task_data


def test_the_shipped_probe_has_every_kind_and_valid_checks():
    items = load_probe()
    assert len(items) == 40 and len({i.id for i in items}) == 40
    assert {i.kind for i in items} == set(KINDS)
    assert all(next(iter(i.check)) in CHECKS for i in items)
    assert all(passes(i, i.reference) for i in items)  # every reference answer passes its check
    assert load_task_data("general_probe").task.answer == "text"  # a chat dataset as well
    smoke = load_probe(per_kind=2)
    assert len(smoke) == 2 * len(KINDS) and all(i in items for i in smoke)


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("{not json", "not JSON"),
        ('{"id": "a", "kind": "capital", "messages": []}', "missing ['check']"),
        (
            '{"id": "a", "kind": "poetry", "messages": [], "check": {"prose": true}}',
            "kind 'poetry'",
        ),
        ('{"id": "a", "kind": "capital", "messages": [], "check": {"eval": "1+1"}}', "check must"),
        (
            '{"id": "a", "kind": "capital", "messages": [], "check": {"prose": true}}',
            "messages must",
        ),
    ],
)
def test_a_malformed_probe_names_the_file_and_line(tmp_path, line, said):
    chat = [
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Lima"},
    ]
    good = {"id": "ok", "kind": "capital", "messages": chat, "check": {"contains": ["Lima"]}}
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(ProbeError, match=rf"probe.jsonl:2: .*{re.escape(said)}"):
        load_probe(path)


def _item(check: dict) -> ProbeItem:
    return ProbeItem("x", "arithmetic", "?", check)


def test_checks_read_answers_as_a_person_would():
    five = _item({"number": 5})
    assert passes(five, "2 + 3 = 5") and passes(five, "The answer is five.")
    assert not passes(five, "10 - 4 = 4") and not passes(five, '{"category": "bug"}')
    paris = _item({"contains": ["Paris"]})
    assert passes(paris, "The capital is paris.") and not passes(paris, "Comparison")
    assert passes(_item({"starts_with": ["yes"]}), "  Yes, of course.")
    assert not passes(_item({"starts_with": ["yes"]}), "Yesterday it rained.")
    assert passes(_item({"contains_exact": ["APPLE"]}), "APPLE")
    assert not passes(_item({"contains_exact": ["APPLE"]}), "apple")
    assert is_prose("The sea is wide and deep, and it moves all day.")
    assert not is_prose('{"category": "bug", "priority": "low", "summary": "the app crashes"}')
    assert not is_prose("Yes.")


def test_the_embedded_model_answers_the_probe():
    model, tokenizer = load_model()
    items = [i for i in load_probe() if i.kind == "capital"][:4]  # France, Japan, Italy, Germany
    result = run_probe(model, tokenizer, items, "base <model>", max_new_tokens=16)
    assert len(result.replies) == 4 and result.share >= 0.75  # measured: all four right
    assert result.by_kind() == {"capital": result.share}
    low, high = result.interval
    assert low <= result.share <= high
    assert "Paris" in result.reply_to(items[0].id)
    table = probe_table_html([result])
    assert "base &lt;model&gt;" in table and "4 questions" in table
