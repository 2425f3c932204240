"""Checks of the shipped house-style dataset in ftkit/datasets/brand_voice.

The committed splits must be exactly what make_dataset.py writes; every reply follows the
house style of its README; kinds are balanced in every split; no case repeats across splits
and no test note near-duplicates a train or validation note. Standard library plus pytest.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from types import ModuleType

import pytest

from ftkit.shipped import dataset_dir
from ftkit.task_data import load_task_data

DATA = dataset_dir("brand_voice")
SPLITS = {"train": 480, "validation": 80, "test": 120}
STYLE = re.compile(
    r"^Hi [^\s,]+,\n\nThanks for letting us know that [^\n]+\.\n\n"
    r"If anything else comes up, just reply to this email and we'll pick it up\.\n\n"
    r"Warm regards,\n\S+ at Quillo Support$"
)


def load_generator() -> ModuleType:
    """Import make_dataset.py from its path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("voice_generator", DATA / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    read = lambda name: [json.loads(line) for line in (DATA / f"{name}.jsonl").open()]  # noqa: E731
    return {name: read(name) for name in SPLITS}


def test_regenerating_gives_the_committed_files_byte_for_byte(generator, tmp_path):
    generator.main(["--out", str(tmp_path)])
    for name in SPLITS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (DATA / f"{name}.jsonl").read_bytes(), (
            f"{name}.jsonl differs from what make_dataset.py writes: run "
            "`python ftkit/datasets/brand_voice/make_dataset.py` and commit the result"
        )


def test_sizes_kinds_and_note_styles(splits, generator):
    for name, records in splits.items():
        assert len(records) == SPLITS[name]
        kinds = Counter(r["kind"] for r in records)
        assert set(kinds) == set(generator.KINDS) and len(set(kinds.values())) == 1  # balanced
        assert {r["note_style"] for r in records} == ({"B"} if name == "test" else {"A"})


def test_every_reply_follows_the_house_style(splits):
    for records in splits.values():
        for record in records:
            reply = record["messages"][1]["content"]
            assert STYLE.match(reply), record["id"]
            assert "!" not in reply and "Dear" not in reply


def test_the_reply_names_the_customer_and_the_agent_of_the_note(splits, generator):
    rng = __import__("random").Random(0)
    for kind in generator.KINDS:
        case = generator.draw_case(rng, kind)
        for family in ("A", "B"):
            note = generator.note(rng, case, family)
            assert case["customer"] in note and case["agent"].lower() in note.lower()
        reply = generator.reply(case)
        assert reply.startswith(f"Hi {case['customer']},")
        assert reply.endswith(f"{case['agent']} at Quillo Support")
        assert f"Quillo {case['app']}" in reply


def test_no_case_in_two_splits_and_no_test_note_near_a_training_note(splits, generator):
    notes = {name: [r["messages"][0]["content"] for r in records]
             for name, records in splits.items()}  # fmt: skip
    seen = [generator.char_ngrams(text) for text in notes["train"] + notes["validation"]]
    worst = max(generator.jaccard(generator.char_ngrams(text), other)
                for text in notes["test"] for other in seen)  # fmt: skip
    assert worst <= generator.NEAR_DUPLICATE_THRESHOLD
    replies = [r["messages"][1]["content"] for records in splits.values() for r in records]
    assert len(set(replies)) == len(replies)  # every case once (the reply spells the case out)


def test_the_task_description_loads_and_is_free_text():
    data = load_task_data("brand_voice")
    assert data.task.answer == "text" and data.task.primary_metric == "rouge_l"
    assert data.task.stratify == "kind" and "Warm regards" in data.task.system_prompt
    assert data.split_how == "as shipped"
