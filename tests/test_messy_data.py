"""The shipped messy_tickets: notebook 02's raw file reports exactly its ten mistakes."""

from __future__ import annotations

import pytest

from ftkit.data import load_examples
from ftkit.shipped import dataset_dir
from ftkit.splits import find_overlap, load_dataset_splits
from ftkit.validation import DataError

MESSY = dataset_dir("messy_tickets") / "tickets.jsonl"
MISTAKES = {
    2: "not valid JSON",
    4: "unknown role 'asistant'",
    6: "expected a string",
    8: "missing assistant reply",
    10: "system message is not first",
    13: "content is empty",
    15: "ends with a 'user' message",
    17: "exact duplicate",
    19: "not valid UTF-8",
    21: "alpaca shape",
}


def test_strict_load_lists_all_ten_mistakes_in_one_error():
    with pytest.raises(DataError) as error:
        load_examples(MESSY)
    assert sorted(p.line for p in error.value.problems) == sorted(MISTAKES)
    for line, words in MISTAKES.items():
        assert f"tickets.jsonl:{line}: " in str(error.value) and words in str(error.value)


def test_lenient_load_accounts_for_every_row():
    with pytest.warns(UserWarning, match="blank line"):
        loaded = load_examples(MESSY, strict=False)
    report = loaded.report
    assert (report.rows_read, report.kept, len(report.dropped)) == (24, 14, 10)
    assert report.kept + len(report.dropped) == report.rows_read == len(loaded) + 10
    assert [w.line for w in report.warnings] == [11]


def test_no_messy_input_is_in_the_shipped_dataset():
    with pytest.warns(UserWarning):
        messy = load_examples(MESSY, strict=False)
    for split in load_dataset_splits("support_tickets").values():
        assert find_overlap(list(messy), list(split)) == []
