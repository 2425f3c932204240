"""Checks of the shipped support-ticket dataset in ftkit/datasets/support_tickets.

The committed splits must be exactly what make_dataset.py writes, well-formed chat examples
whose replies are the four-key JSON the notebooks score, stratified so that every label value
appears in every split, and free of test tickets that near-duplicate training tickets.
Fast and offline: standard library plus pytest, no model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ftkit.shipped import dataset_dir

DATA = dataset_dir("support_tickets")
SPLITS = ("train", "validation", "test")
MIN_SIZES = {"train": 600, "validation": 100, "test": 150}
LABEL_FIELDS = ("category", "priority", "product")
REPLY_KEYS = ["category", "priority", "product", "summary"]


def load_generator() -> ModuleType:
    """Import ftkit/datasets/support_tickets/make_dataset.py from its path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("make_dataset", DATA / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One dict per line of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def allowed() -> dict[str, Any]:
    return json.loads((DATA / "labels.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict[str, Any]]]:
    return {split: read_jsonl(DATA / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def regenerated(generator, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("support_tickets")
    generator.main(["--out", str(out)])
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_regenerating_gives_the_committed_file_byte_for_byte(regenerated, split):
    fresh = (regenerated / f"{split}.jsonl").read_bytes()
    assert fresh == (DATA / f"{split}.jsonl").read_bytes(), (
        f"{split}.jsonl differs from what make_dataset.py writes: "
        "run `python ftkit/datasets/support_tickets/make_dataset.py` and commit the result"
    )


@pytest.mark.parametrize("split", SPLITS)
def test_split_has_at_least_the_minimum_size(splits, split):
    assert len(splits[split]) >= MIN_SIZES[split]


@pytest.mark.parametrize("split", SPLITS)
def test_every_example_is_a_user_turn_and_a_four_key_json_reply(splits, allowed, split):
    for record in splits[split]:
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"], record["id"]
        ticket, content = (m["content"] for m in record["messages"])
        reply = json.loads(content)
        assert list(reply) == REPLY_KEYS, record["id"]
        assert content == json.dumps(reply, ensure_ascii=False), record["id"]
        for field in LABEL_FIELDS:
            assert reply[field] in allowed[field], record["id"]
            assert record[field] == reply[field], record["id"]
        assert 0 < len(reply["summary"].split()) <= allowed["summary_max_words"], record["id"]
        assert "\n" not in reply["summary"] and not reply["summary"].endswith("."), record["id"]
        assert 0 < len(ticket.split()) <= 70, record["id"]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("field", LABEL_FIELDS)
def test_every_label_value_appears_in_every_split(splits, allowed, split, field):
    assert {record[field] for record in splits[split]} == set(allowed[field])


def test_ids_are_unique_and_no_ticket_text_appears_twice(generator, splits):
    records = [record for split in SPLITS for record in splits[split]]
    assert len({record["id"] for record in records}) == len(records)
    texts = [generator.normalize(text) for text in generator.user_texts(records)]
    assert len(set(texts)) == len(texts)


def test_no_test_ticket_near_duplicates_a_training_ticket(generator, splits):
    reference = generator.user_texts(splits["train"] + splits["validation"])
    nearest = generator.nearest_similarities(generator.user_texts(splits["test"]), reference)
    assert max(score for score, _ in nearest) < generator.NEAR_DUPLICATE_THRESHOLD


def test_near_duplicate_check_catches_a_lightly_edited_copy(generator, splits):
    original = splits["train"][0]
    text = original["messages"][0]["content"].lower().replace(".", "!")
    copy = {**original, "messages": [{"role": "user", "content": text}]}
    leaky = {"train": splits["train"][:50], "validation": [], "test": [copy]}
    with pytest.raises(ValueError, match="near-duplicates"):
        generator.check_near_duplicates(leaky)


def test_handwritten_tickets_are_all_in_the_test_split(splits):
    handwritten = read_jsonl(DATA / "handwritten_test.jsonl")
    test_by_id = {record["id"]: record for record in splits["test"]}
    assert len(handwritten) >= 40
    for row in handwritten:
        record = test_by_id[row["id"]]
        assert record["source"] == "handwritten"
        assert record["messages"][0]["content"] == row["ticket"]
        assert json.loads(record["messages"][1]["content"]) == {k: row[k] for k in REPLY_KEYS}


def test_train_and_validation_are_generated_only(splits):
    for split in ("train", "validation"):
        assert {record["source"] for record in splits[split]} == {"generated"}


@pytest.mark.parametrize("field", ("category", "priority"))
def test_first_25_training_examples_cover_every_value(splits, allowed, field):
    """Learning curves take train[:n]; even the smallest prefix must see every label value."""
    assert {record[field] for record in splits["train"][:25]} == set(allowed[field])


def test_system_prompt_names_every_label_value(allowed):
    prompt = (DATA / "system_prompt.txt").read_text(encoding="utf-8")
    for field in LABEL_FIELDS:
        for value in allowed[field]:
            assert value in prompt, f"{value!r} is missing from system_prompt.txt"


GOOD_ROW = {
    "id": "hw-x",
    "ticket": "Quillo Drive is down for all of us.",
    "category": "bug",
    "priority": "urgent",
    "product": "drive",
    "summary": "Drive is down for the whole team",
    "traits": [],
}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not a JSON object"),
        (json.dumps({k: v for k, v in GOOD_ROW.items() if k != "summary"}), "missing keys"),
        (json.dumps({**GOOD_ROW, "priority": "critical"}), "priority='critical' is not one of"),
        (json.dumps({**GOOD_ROW, "summary": "word " * 13}), "summary must have 1 to 12 words"),
    ],
)
def test_a_bad_handwritten_line_is_reported_with_file_and_line(generator, allowed, line, message):
    with pytest.raises(ValueError, match=f"handwritten_test.jsonl:7: {message}"):
        generator.parse_handwritten(line, allowed, "handwritten_test.jsonl:7")


def test_a_good_handwritten_line_becomes_a_ticket(generator, allowed):
    ticket = generator.parse_handwritten(json.dumps(GOOD_ROW), allowed, "here:1")
    assert ticket["text"] == GOOD_ROW["ticket"]
    assert list(ticket["labels"]) == REPLY_KEYS
