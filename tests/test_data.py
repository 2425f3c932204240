"""Loading, validating, converting and splitting data (ftkit.data, shapes, validation, splits).

Offline and fast: committed fixtures in tests/fixtures/data, small files written to a
temporary folder, and the embedded model's tokenizer for the length check.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftkit.data import Example, Examples, load_examples, save_examples
from ftkit.shapes import FORMATS, to_format
from ftkit.splits import check_splits, find_overlap, load_dataset_splits, split_examples
from ftkit.validation import DataError, DataReport, Problem, check_lengths

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHAPES = FIXTURES / "shapes"


def chat(*turns: tuple[str, object], **meta) -> str:
    """One JSONL line in the chat shape from (role, content) pairs."""
    messages = [{"role": role, "content": content} for role, content in turns]
    return json.dumps({"messages": messages, **meta}, ensure_ascii=False)


GOOD = chat(("user", "Hi"), ("assistant", "Hello"))
OTHER = chat(("user", "Bye"), ("assistant", "See you"))
ALPACA = json.dumps({"instruction": "Say hi", "input": "", "output": "Hi"})

# (file name, content, where the problem is, what the message says)
# fmt: off
MALFORMED = [
    ("bad.jsonl", [GOOD, GOOD[:-1]], "bad.jsonl:2", "not valid JSON at column"),
    ("bad.jsonl", ["{'messages': []}"], "bad.jsonl:1", "double quotes"),
    ("bad.jsonl", [GOOD, OTHER, '{"messages": [],}'], "bad.jsonl:3", "not valid JSON"),
    ("bad.jsonl", [GOOD, OTHER, chat(("user", "Hi"), ("asistant", "Yo"))], "bad.jsonl:3",
     "unknown role 'asistant' -> use a known role; did you mean 'assistant'?"),
    ("bad.jsonl", [chat(("user", "Hi"), ("robot", "Yo"))], "bad.jsonl:1",
     "allowed: system, user, assistant"),
    ("bad.jsonl", [chat(("user", "Hi"), ("assistant", 42))], "bad.jsonl:1",
     "messages[1].content: content is a number (42), expected a string"),
    ("bad.jsonl", [chat(("user", None), ("assistant", "Yo"))], "bad.jsonl:1", "is null"),
    ("bad.jsonl", ['{"messages": "hi"}'], "bad.jsonl:1", "messages is a string, expected a list"),
    ("bad.jsonl", ['{"messages": []}'], "bad.jsonl:1", "messages is an empty list"),
    ("bad.jsonl", ['{"messages": ["hi"]}'], "bad.jsonl:1", "messages[0] is a string"),
    ("bad.jsonl", ['{"messages": [{"content": "hi"}]}'], "bad.jsonl:1", "missing field 'role'"),
    ("bad.jsonl", ['{"messages": [{"role": "user"}]}'], "bad.jsonl:1", "missing field 'content'"),
    ("bad.jsonl", [GOOD, chat(("user", "Hi"))], "bad.jsonl:2", "missing assistant reply"),
    ("bad.jsonl", [chat(("user", "Hi"), ("assistant", ""))], "bad.jsonl:1", "content is empty"),
    ("bad.jsonl", [chat(("user", "Hi"), ("assistant", " \n"))], "bad.jsonl:1", "only whitespace"),
    ("bad.jsonl", [chat(("user", "Hi"), ("system", "Be nice"), ("assistant", "Yo"))],
     "bad.jsonl:1", "system message is not first"),
    ("bad.jsonl", [chat(("user", "Hi"), ("assistant", "Yo"), ("user", "Ok"))], "bad.jsonl:1",
     "ends with a 'user' message"),
    ("bad.jsonl", [chat(("user", "Hi"), ("user", "Hey"), ("assistant", "Yo"))], "bad.jsonl:1",
     "two 'user' messages in a row"),
    ("bad.jsonl", [GOOD, "[1, 2]"], "bad.jsonl:2", "the row is a list, expected an object"),
    ("bad.jsonl", ['{"mesages": []}'], "bad.jsonl:1", "did you mean 'messages'?"),
    ("bad.jsonl", [GOOD, OTHER, GOOD], "bad.jsonl:3", "exact duplicate of "),
    ("bad.jsonl", [GOOD, OTHER, ALPACA], "bad.jsonl:3", "alpaca shape, but the file is chat"),
    ("bad.jsonl", ['{"instruction": "Say hi"}'], "bad.jsonl:1", "missing field 'output'"),
    ("bad.jsonl", ['{"instruction": "Hi", "output": ["Yo"]}'], "bad.jsonl:1", "output is a list"),
    ("bad.jsonl", ['{"prompt": "Hi", "completion": ""}'], "bad.jsonl:1", "completion is empty"),
    ("bad.jsonl", ['{"prompt": [{"role": "user", "content": "Hi"}], "completion": "Yo"}'],
     "bad.jsonl:1", "mix a list and a non-list"),
    ("bad.jsonl", ['{"prompt": [{"role": "user", "content": "Hi"}], '
                   '"completion": [{"role": "user", "content": "Yo"}]}'],
     "bad.jsonl:1", "two 'user' messages in a row"),
    ("bad.jsonl", ['{"conversations": [{"from": "humna", "value": "Hi"}]}'], "bad.jsonl:1",
     "unknown role 'humna' -> use a known role; did you mean 'human'?"),
    ("bad.jsonl", ['{"conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", '
                   '"value": "Yo"}]}'], "bad.jsonl:1", "ends with a 'user' message"),
    ("bad.jsonl", [GOOD, GOOD[:30].encode() + b"\xe9" + GOOD[30:].encode()], "bad.jsonl:2",
     "not valid UTF-8: byte 0xe9 at byte offset 30 of the line"),
    ("bad.json", ["[", f"  {GOOD},", f"  {GOOD[:-1]}", "]"], "bad.json:4",
     "not valid JSON at column 1:"),
    ("bad.json", ['{"rows": []}'], "bad.json:1", "not a list of records"),
    ("bad.json", ['{"data": [', f"  {GOOD},", "  ", f"  {chat(('user', 'Yo'))}", "]}"],
     "bad.json:4", "missing assistant reply"),
    ("bad.csv", ["prompt,completion", "Hi,Hello", "Hi, there,Hello"], "bad.csv:row 3",
     "3 values, but the header has 2 columns"),
    ("bad.csv", ["messages", '"[{""role"": ""user"""'], "bad.csv:row 2", "not valid JSON at"),
    ("bad.csv", ["instruction,input,output", "Say hi,,"], "bad.csv:row 2", "output is empty"),
    ("bad.csv", ["prompt,completion", "Hi,Hello", b"Caf\xe9,Tea"], "bad.csv:row 3",
     "not valid UTF-8: byte 0xe9"),
    ("bad.jsonl", [], "bad.jsonl", "the file is empty"),
    ("bad.jsonl", ["   ", ""], "bad.jsonl", "the file is empty"),
]
# fmt: on


def write(folder: Path, name: str, lines: list[str | bytes]) -> Path:
    """Write lines (text or raw bytes) joined by newlines, as a data file would be."""
    path = folder / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


@pytest.mark.parametrize(
    "name, lines, where, text", MALFORMED, ids=[f"{i}-{c[0]}" for i, c in enumerate(MALFORMED)]
)
def test_every_malformed_input_names_file_line_and_problem(tmp_path, name, lines, where, text):
    path = write(tmp_path, name, lines)
    with pytest.raises(DataError) as caught:
        load_examples(path)
    message = str(caught.value)
    assert any(where in str(p) and text in str(p) for p in caught.value.problems), message
    assert f"{tmp_path / where}" in message and text in message


FILE_LEVEL = ("the file is empty", "not a list of records", "not valid JSON at column 1:")
ROW_LEVEL = [case for case in MALFORMED if case[3] not in FILE_LEVEL]  # the rest can be read


@pytest.mark.parametrize("name, lines, where, text", ROW_LEVEL)
def test_lenient_mode_drops_the_bad_row_and_says_why(tmp_path, name, lines, where, text):
    path = write(tmp_path, name, lines)
    loaded = load_examples(path, strict=False)
    report = loaded.report
    assert report.kept + len(report.dropped) == report.rows_read
    assert any(where in str(p) and text in str(p) for p in report.problems)
    assert len(loaded) == report.kept


def test_ten_mistakes_are_all_reported_in_one_error():
    with pytest.raises(DataError) as caught:
        load_examples(FIXTURES / "ten_mistakes.jsonl")
    message = str(caught.value)
    lines = sorted({p.line for p in caught.value.problems})
    assert lines == [2, 3, 4, 5, 6, 7, 8, 9, 11, 13]
    for line in lines:
        assert f"ten_mistakes.jsonl:{line}:" in message
    assert "ten_mistakes.jsonl:11: messages: exact duplicate of " in message
    assert message.count("ten_mistakes.jsonl:1 ") == 1  # the duplicate names the first copy
    assert isinstance(caught.value, ValueError)


def test_ten_mistakes_leniently_accounts_for_every_row():
    with pytest.warns(UserWarning, match="blank line"):
        loaded = load_examples(FIXTURES / "ten_mistakes.jsonl", strict=False)
    report = loaded.report
    assert (report.rows_read, report.kept, len(report.dropped)) == (12, 2, 10)
    assert [w.line for w in report.warnings] == [10]
    assert [e.source.rsplit(":", 1)[1] for e in loaded] == ["1", "12"]
    summary = report.summary()
    assert "12 rows read, 2 kept, 10 dropped, 1 warning(s)" in summary
    assert summary.count("ten_mistakes.jsonl:") == 11 + 1  # and once in the first line
    assert "<li>" in report._repr_html_()


@pytest.mark.parametrize(
    "name, lines, text",
    [
        ("empty.csv", [], "the file is empty"),
        ("no_rows.json", ["[]"], "no records in the file"),
        ("header.csv", ["prompt,prompt", "a,b"], "header.csv:row 1: the header repeats ['prompt']"),
        ("broken.json", ['[{"messages": []}', "{}]"], "broken.json:2: not valid JSON"),
    ],
)
def test_a_file_with_nothing_to_keep_raises_even_in_lenient_mode(tmp_path, name, lines, text):
    with pytest.raises(DataError, match=re.escape(text)):
        load_examples(write(tmp_path, name, lines), strict=False)


def test_blank_lines_warn_but_do_not_count_as_rows(tmp_path):
    path = write(tmp_path, "gaps.jsonl", [GOOD, "", "  ", OTHER])
    with pytest.warns(UserWarning, match=r"gaps.jsonl:2: blank line"):
        loaded = load_examples(path)  # strict mode too: a blank line loses nothing
    assert (loaded.report.rows_read, loaded.report.kept) == (2, 2)
    assert [w.location.rsplit(":", 1)[1] for w in loaded.report.warnings] == ["2", "3"]


# fmt: off
EXPECTED = [  # the three examples in tests/fixtures/data/shapes, canonical form
    ("t1", "billing", "Where is my invoice for March, 2024?",
     'Open Billing > Invoices, then pick "March".'),
    ("t2", "bug",
     'Summarise this ticket\n\nThe app crashes when I press "Save".\nIt started today.',
     "Crash on save, since today"),
    ("t3", "other", "Ça ne marche pas 😞 — aidez-moi", "Désolé ! Quel produit ?\n\tMerci."),
]
# fmt: on


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv"])
@pytest.mark.parametrize("shape", FORMATS)
def test_every_shape_and_file_type_loads_to_the_same_examples(shape, suffix):
    loaded = load_examples(SHAPES / f"{shape}.{suffix}")
    assert loaded.format == shape
    assert len(loaded) == 3 and loaded.report.dropped == [] and loaded.report.warnings == []
    for example, (id_, category, user, reply) in zip(loaded, EXPECTED, strict=True):
        assert example.messages == [
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ]
        assert example.meta == {"id": id_, "category": category}
    path = SHAPES / f"{shape}.{suffix}"
    starts = [n for n, line in enumerate(path.read_text().split("\n"), 1) if line == "  {"]
    row = {"csv": "row 3", "jsonl": "2"}.get(suffix) or str(starts[1])  # JSON: where it opens
    assert loaded[1].source == f"{path}:{row}"


@pytest.mark.parametrize("shape", FORMATS)
def test_forcing_the_right_format_works_and_the_wrong_one_explains(shape):
    assert load_examples(SHAPES / f"{shape}.jsonl", format=shape).format == shape
    wrong = "alpaca" if shape != "alpaca" else "chat"
    with pytest.raises(DataError, match=r"\.jsonl:1: .*missing field"):
        load_examples(SHAPES / f"{shape}.jsonl", format=wrong)


def test_bad_arguments_fail_early(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'sharegpt'"):
        load_examples(SHAPES / "chat.jsonl", format="sharegtp")
    with pytest.raises(ValueError, match="pass the tokenizer"):
        load_examples(SHAPES / "chat.jsonl", max_length=10)
    with pytest.raises(FileNotFoundError, match=r"chats\.jsonl"):
        load_examples(SHAPES / "chats.jsonl")
    with pytest.raises(ValueError, match=r"\.jsonl, \.json, \.csv and \.parquet"):
        load_examples(write(tmp_path, "data.txt", [GOOD]))
    with pytest.raises(TypeError, match=r"a file path, a datasets\.Dataset or a list of dicts"):
        load_examples({"messages": []})


def test_json_lines_in_a_json_file_load_with_a_warning(tmp_path):
    path = write(tmp_path, "lines.json", [GOOD, OTHER])
    with pytest.warns(UserWarning, match="rename the file to .jsonl"):
        assert len(load_examples(path)) == 2


def test_trl_conversational_prompt_completion_and_alpaca_system(tmp_path):
    system, user, reply = (
        {"role": r, "content": c} for r, c in [("system", "S"), ("user", "U"), ("assistant", "A")]
    )
    trl = json.dumps({"prompt": [system, user], "completion": [reply]})
    assert load_examples(write(tmp_path, "trl.jsonl", [trl]))[0].messages == [system, user, reply]
    alpaca = json.dumps({"instruction": "U", "input": " ", "output": "A", "system": "S"})
    assert load_examples(write(tmp_path, "a.jsonl", [alpaca]))[0].messages == [system, user, reply]


def test_example_prints_and_converts():
    example = load_examples(SHAPES / "alpaca.jsonl")[1]
    text = str(example)
    assert text.startswith(f"Example from {SHAPES / 'alpaca.jsonl'}:2 (id=t2, category=bug)")
    assert "  user: Summarise this ticket\n" in text and "  assistant: Crash on save" in text
    assert example.to_dict() == {"messages": example.messages, "id": "t2", "category": "bug"}
    assert to_format(example, "alpaca")["instruction"].startswith("Summarise")
    multi = Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2)
    with pytest.raises(ValueError, match="Save it as 'chat' or 'sharegpt'"):
        to_format(multi, "alpaca")


def test_examples_container_and_report_invariant():
    loaded = load_examples(SHAPES / "chat.jsonl")
    assert isinstance(loaded, Examples) and isinstance(loaded.report, DataReport)
    assert len(loaded[:2]) == 2 and list(loaded) == loaded.examples
    assert "3 chat examples" in repr(loaded) and "0 dropped" in loaded._repr_html_()
    problem = Problem("f.csv", 7, "output", "output is empty", "write it")
    assert str(problem) == "f.csv:row 7: output: output is empty -> write it"


# --- round trips ---------------------------------------------------------------------

SPECIAL = st.sampled_from(
    ['"', "\\", "\n", "\r\n", "\t", "{}", "[", ",", "\u2028", "é", "😀", "\x00"]
)
TEXT = st.lists(st.one_of(st.text(min_size=1), SPECIAL), min_size=1, max_size=4).map("".join)
CONTENT = TEXT.filter(str.strip)  # st.text() never draws surrogates, which UTF-8 cannot hold


def conversations(max_turns: int):
    """Valid chat conversations: optional system, then user/assistant pairs."""
    pair = st.tuples(CONTENT, CONTENT)
    return st.tuples(
        st.one_of(st.none(), CONTENT), st.lists(pair, min_size=1, max_size=max_turns)
    ).map(
        lambda parts: (
            ([{"role": "system", "content": parts[0]}] if parts[0] else [])
            + [
                {"role": role, "content": text}
                for user, reply in parts[1]
                for role, text in (("user", user), ("assistant", reply))
            ]
        )
    )


def round_trip(messages: list[dict], shape: str) -> list[dict]:
    example = Example(messages, meta={"id": "x1", "category": "bug"})
    with tempfile.TemporaryDirectory() as folder:
        path = save_examples([example], Path(folder) / f"{shape}.jsonl", format=shape)
        loaded = load_examples(path)
    assert loaded.format == shape and loaded[0].meta == {"id": "x1", "category": "bug"}
    return loaded[0].messages


@settings(max_examples=60, deadline=None)
@given(conversations(max_turns=4), st.sampled_from(["chat", "sharegpt", "prompt_completion"]))
def test_multi_turn_round_trips(messages, shape):
    assert round_trip(messages, shape) == messages


@settings(max_examples=60, deadline=None)
@given(conversations(max_turns=1), st.sampled_from(FORMATS))
def test_single_turn_round_trips_through_every_shape(messages, shape):
    assert round_trip(messages, shape) == messages


# --- splits --------------------------------------------------------------------------

SIZES = {"a": 50, "b": 30, "c": 15, "d": 4, "e": 1}


def labelled(sizes: dict[str, int] = SIZES) -> list[Example]:
    return [
        Example(
            [
                {"role": "user", "content": f"ticket {label} {i}"},
                {"role": "assistant", "content": "ok"},
            ],
            f"t.jsonl:{n}",
            {"category": label},
        )
        for n, (label, i) in enumerate(((lb, i) for lb, k in sizes.items() for i in range(k)), 1)
    ]


def test_split_is_deterministic_and_seed_dependent():
    examples = labelled()
    first = split_examples(examples, seed=0, stratify="category")
    assert first == split_examples(examples, seed=0, stratify="category")
    assert first[1] != split_examples(examples, seed=1, stratify="category")[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_sizes_and_stratified_proportions(seed):
    train, validation, test = split_examples(labelled(), 0.1, 0.2, seed, stratify="category")
    assert (len(train), len(validation), len(test)) == (70, 10, 20)
    for part, fraction in ((validation, 0.1), (test, 0.2)):
        counts = Counter(e.meta["category"] for e in part)
        for label, size in SIZES.items():
            assert abs(counts[label] - size * fraction) <= 1, (label, counts)
    assert Counter(e.meta["category"] for e in train)["e"] == 1  # a class of one trains


def test_identical_inputs_stay_in_one_split():
    examples = labelled({"a": 40, "b": 20})
    copies = [
        Example(
            [{"role": "user", "content": f"  TICKET a {i}"}, {"role": "assistant", "content": "x"}]
        )
        for i in range(0, 40, 3)
    ]
    for seed in range(5):
        train, validation, test = split_examples(examples + copies, seed=seed, stratify="category")
        assert check_splits(train, validation, test) == []
        assert len(train) + len(validation) + len(test) == len(examples + copies)


def test_split_errors_name_the_missing_label():
    with pytest.raises(ValueError, match="no such field"):
        split_examples(labelled(), stratify="priority")
    with pytest.raises(ValueError, match="fractions"):
        split_examples(labelled(), validation=0.6, test=0.5)


def test_overlap_ignores_case_and_spacing():
    a = labelled({"a": 3})
    b = [Example([{"role": "user", "content": "Ticket  A 1 "}], "test.jsonl:4")]
    assert find_overlap(a, b) == [(a[1], b[0])]
    (problem,) = check_splits(a, [], b)
    assert problem.location == "test.jsonl:4" and "same user input as t.jsonl:2" in str(problem)


# --- the tokenizer and the shipped data -----------------------------------------------


def test_max_length_counts_tokens_with_the_chat_template(tmp_path, embedded_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    long = chat(("user", "word " * 300), ("assistant", "ok"))
    path = write(tmp_path, "long.jsonl", [GOOD, long])
    with pytest.raises(DataError, match=r"long.jsonl:2: messages: \d+ tokens with the chat"):
        load_examples(path, tokenizer=tokenizer, max_length=128)
    loaded = load_examples(path, strict=False, tokenizer=tokenizer, max_length=128)
    assert loaded.report.kept == 1 and "over max_length=128" in str(loaded.report)
    assert load_examples(path, tokenizer=tokenizer, max_length=4096).report.kept == 2
    with pytest.raises(ValueError, match="no chat template"):
        check_lengths(load_examples(path), SimpleNamespace(chat_template=None), 10)


@pytest.fixture(scope="module")
def shipped() -> dict[str, Examples]:
    return load_dataset_splits("support_tickets")


def test_shipped_splits_load_without_any_problem(shipped):
    for split, examples in shipped.items():
        assert examples.format == "chat", split
        assert examples.report.dropped == [] and examples.report.warnings == [], split
        assert examples.report.kept == examples.report.rows_read > 100
        assert {"id", "category", "priority", "product"} <= set(examples[0].meta)


def test_shipped_test_and_validation_inputs_never_appear_in_train(shipped):
    assert find_overlap(shipped["train"], shipped["test"]) == []
    assert check_splits(shipped["train"], shipped["validation"], shipped["test"]) == []


def test_saving_the_shipped_data_keeps_every_field(shipped, tmp_path):
    path = save_examples(shipped["validation"], tmp_path / "copy.jsonl")
    again = load_examples(path)
    assert [e.to_dict() for e in again] == [e.to_dict() for e in shipped["validation"]]


def test_unknown_dataset_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="support_tickets"):
        load_dataset_splits("support_tickts")
