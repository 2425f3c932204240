"""Any task: the task description (read, checked, inferred with reasons, overridden), scores for
json, label and text answers by hand, data from Parquet, datasets and lists, and DATASET loading.

Expected values are worked out by hand in a comment next to them.
"""

from __future__ import annotations

import json

import pytest

from ftkit.data import load_examples, save_examples
from ftkit.evaluation import standard_approaches
from ftkit.scoring import label_form, score_predictions
from ftkit.shipped import dataset_dir
from ftkit.task import Task, TaskError, infer_task, load_task, task_from_dict
from ftkit.task_data import load_task_data
from ftkit.validation import DataError
from ftkit.verdict import describe_answers


def chat(user: str, answer: str, system: str | None = None, **meta) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages, **meta}


SENTIMENT = [chat(f"review {i}", label) for i, label in
             enumerate(["positive", "negative", "neutral"] * 10)]  # fmt: skip
HOMES = [  # 24 smart-home commands: 4 rooms x 3 devices x on/off, answered as JSON
    chat(f"turn {'on' if on else 'off'} the {room} {device}",
         json.dumps({"device": device, "room": room, "on": on}))
    for room in ("kitchen", "hall", "study", "garage")
    for device in ("light", "heater", "blinds")
    for on in (True, False)
]  # fmt: skip


def examples(records: list[dict]):
    return list(load_examples(records))


# --- inference ------------------------------------------------------------------------------


def test_json_answers_are_a_json_task_with_label_and_text_fields():
    task = infer_task(load_task_data("support_tickets").train, "tickets")
    assert task.answer == "json"
    assert task.fields == {"category": "label", "priority": "label", "product": "label",
                           "summary": "text"}  # fmt: skip
    assert task.stratify == "category" and task.primary_metric == "labels_exact"
    assert any("summary: 220 distinct values" in reason for reason in task.reasons)


def test_few_short_answers_are_a_label_task():
    task = infer_task(examples(SENTIMENT))
    # 3 distinct answers of 1 word among 30 -> labels, stratified on the answer itself
    assert task.answer == "label" and task.labels == ("negative", "neutral", "positive")
    assert task.stratify == "answer" and task.metrics() == ["accuracy", "macro_f1", "exact_match"]
    assert "3 distinct values of at most 1 word" in task.describe()


def test_long_varied_answers_are_a_text_task_stratified_on_a_record_field():
    task = infer_task(load_task_data("brand_voice").train)
    assert task.answer == "text" and task.primary_metric == "rouge_l"
    assert task.stratify == "kind"  # the first record field with 2 to 20 values


@pytest.mark.parametrize(
    ("answers", "kind", "said"),
    [
        # 9 of 10 answers are JSON: not a json task; 10 distinct short answers of 10 -> text
        ([json.dumps({"a": i}) for i in range(9)] + ["oops"], "text", "9 of 10 answers"),
        # JSON objects, but with two different key sets -> not json (the first that differs named)
        ([json.dumps({"a": 1})] * 5 + [json.dumps({"b": 1})] * 5, "label", "<records>:row 6"),
        # short answers, but 20 distinct of 20 -> text, not label
        ([f"code {i}" for i in range(20)], "text", "20 distinct values"),
    ],
    ids=["mostly-json", "json-other-keys", "short-but-all-different"],
)
def test_ambiguous_answers_say_what_was_chosen_and_why(answers, kind, said):
    task = infer_task(examples([chat(f"q{i}", a) for i, a in enumerate(answers)]))
    assert task.answer == kind
    assert said in task.describe()


def test_a_system_prompt_in_every_example_is_the_tasks_and_drops_the_prompt_variants():
    records = [chat(r["messages"][0]["content"], r["messages"][1]["content"], "Be brief.")
               for r in HOMES]  # fmt: skip
    task = infer_task(examples(records))
    assert task.answer == "json" and task.system_prompt == "Be brief." and task.prompt_in_data
    assert task.fields == {"device": "label", "room": "label", "on": "label"}
    names = [a.name for a in standard_approaches(task, shots=2)]
    assert names == [
        "base, zero-shot",
        "base + 2-shot",
        "base + 2 retrieved",
        "base + 2-shot, constrained",
        "fine-tuned",
    ]


# --- the task file --------------------------------------------------------------------------


def test_shipped_task_files_load(tmp_path):
    tickets = load_task(dataset_dir("support_tickets") / "task.json")
    assert tickets.system_prompt.startswith("You") and tickets.max_new_tokens == 64
    saved = tickets.save(tmp_path)
    assert load_task(saved) == tickets  # written and read back, the prompt inline


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"answer": "jsn"}, r"'answer' must be one of \['json', 'label', 'text'\], not 'jsn'"),
        ({"answer": "json"}, "a json task lists its 'fields'"),
        ({"answer": "text", "primary": "accuracy"}, r"'primary' must be one of \['rouge_l'"),
        ({"answer": "label", "colour": 1}, r"unknown key\(s\) \['colour'\]"),
        ({"name": "x"}, "say what an answer is"),
        ({"answer": "json", "fields": {"a": "number"}}, r"each field is \['label', 'text'\]"),
    ],
)
def test_a_wrong_task_says_where_and_what(data, message):
    with pytest.raises(TaskError, match=message):
        task_from_dict(data, where="task.json")


def test_a_broken_task_file_names_its_line(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{\n  "answer": "text",\n  "primary" "rouge_l"\n}\n')
    with pytest.raises(TaskError, match=r"task.json:3: not valid JSON"):
        load_task(path)


def test_overriding_a_choice_takes_one_line_and_is_checked():
    task = infer_task(examples(SENTIMENT))
    assert task.override(primary="macro_f1").primary_metric == "macro_f1"
    with pytest.raises(TaskError, match="no field"):
        task.override(primry="macro_f1")
    with pytest.raises(TaskError, match="'primary' must be one of"):
        task.override(primary="rouge_l")


# --- scores by hand, per kind ---------------------------------------------------------------


def test_label_scores_by_hand():
    task = Task("label", labels=("negative", "positive"))
    outputs = ["Positive.", "negative", "positive", "maybe"]
    references = ["positive", "negative", "negative", "negative"]
    scores, intervals = score_predictions(outputs, references, task, n_resamples=100)
    # label forms: "positive" (case and the final "." forgiven), "negative", "positive",
    # "maybe" -> right, right, wrong, wrong: accuracy 2/4
    assert scores["accuracy"] == 0.5
    # exact match is strict: only "negative" -> 1/4
    assert scores["exact_match"] == 0.25
    # macro-F1 over the reference labels: positive P 1/2 R 1/1 F 2/3; negative P 1/1 R 1/3
    # F 1/2 -> (2/3 + 1/2) / 2 = 7/12
    assert scores["macro_f1"] == pytest.approx(7 / 12)
    assert intervals["accuracy"][0] <= 0.5 <= intervals["accuracy"][1]
    assert label_form("  Neutral. ") == "neutral"


def test_text_scores_by_hand():
    task = Task("text")
    outputs = ["the cat sat on the mat", "", "a dog"]
    references = ["the cat sat on the mat", "a cat sat on a mat", "a cat"]
    scores, _ = score_predictions(outputs, references, task, n_resamples=0)
    # ROUGE-L F: 1 (identical), 0 (empty), "a dog" vs "a cat": LCS 1 of 2 both ways -> 0.5
    assert scores["rouge_l"] == pytest.approx((1 + 0 + 0.5) / 3)
    # chrF: 1 for the identical reply, 0 for the empty one; the third lies in between
    assert 1 / 3 < scores["chrf"] < 2 / 3
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert list(scores) == ["rouge_l", "chrf", "exact_match"]


def test_chrf_is_sacrebleus_per_reply_mean():
    from sacrebleu.metrics import CHRF

    from ftkit.metrics import load_metric

    outputs = ["Thanks for letting us know.", "We refunded $9.99", "abc"]
    references = ["Thanks for telling us.", "We've refunded $9.99.", "xyz"]
    ours = load_metric("chrf").compute(predictions=outputs, references=references,
                                       n_resamples=0)["chrf"]  # fmt: skip
    theirs = [CHRF().sentence_score(o, [r]).score / 100 for o, r in zip(outputs, references,
                                                                         strict=True)]  # fmt: skip
    assert ours == pytest.approx(sum(theirs) / 3)
    assert theirs[2] == 0.0  # no character in common


def test_answers_are_described_as_the_task_judges_them():
    json_task = load_task_data("support_tickets").task
    ref = '{"category": "bug", "priority": "high", "product": "mail", "summary": "x"}'
    said = describe_answers(json_task, [ref, "nope"], [ref, ref])
    assert said == "**1 of 2** replies are valid JSON; 1 have every label field right."
    label = Task("label", labels=("yes", "no"))
    assert describe_answers(label, ["Yes", "maybe"], ["no", "no"]) == (
        "**1 of 2** replies are one of the task's labels; 0 are right.")  # fmt: skip
    text = describe_answers(Task("text"), ["a b", "c"], ["a b", "d"])
    assert text.startswith("**1 of 2** replies are close") and "mean ROUGE-L 0.50" in text


# --- data from the ecosystem ----------------------------------------------------------------


def test_a_list_of_dicts_and_a_datasets_dataset_load_like_a_file():
    import datasets

    records = [*HOMES[:3], {"prompt": "hi"}]  # the last lacks its completion
    with pytest.raises(DataError, match=r"<records>:row 4"):
        load_examples(records)
    loaded = load_examples(records, strict=False)
    assert len(loaded) == 3 and loaded.report.dropped[0][0] == 4
    table = datasets.Dataset.from_list([{"instruction": "Say hi", "output": "hi"},
                                        {"instruction": "Say bye", "output": ""}])  # fmt: skip
    with pytest.raises(DataError, match=r"<Dataset>:row 2: output"):
        load_examples(table)


def test_a_parquet_file_loads_with_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "2+2?", "completion": "4"}, {"prompt": "3+3?", "completion": ""}]
    path = tmp_path / "maths.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"maths.parquet:row 2: completion"):
        load_examples(path)
    assert [e.messages[1]["content"] for e in load_examples(path, strict=False)] == ["4"]
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="unreadable Parquet"):
        load_examples(tmp_path / "broken.parquet")


# --- DATASET: a name, a file, a folder ------------------------------------------------------


def test_one_file_is_split_here_seeded_and_stratified(tmp_path):
    path = save_examples(examples(SENTIMENT), tmp_path / "reviews.jsonl")
    data = load_task_data(path)
    assert data.name == "reviews" and data.task.answer == "label"
    assert (len(data.train), len(data.validation), len(data.test)) == (24, 3, 3)
    assert sorted(data.task.value_of(e) for e in data.test) == ["negative", "neutral", "positive"]
    assert "split 24/3/3 here, seed 0, stratified on answer" in str(data)
    again = load_task_data(path)
    assert [e.source for e in again.test] == [e.source for e in data.test]  # seeded


def test_a_folder_is_used_as_given_and_its_task_file_wins(tmp_path):
    save_examples(examples(HOMES[:16]), tmp_path / "train.jsonl")
    save_examples(examples(HOMES[16:]), tmp_path / "test.jsonl")
    data = load_task_data(tmp_path)
    assert (len(data.train), len(data.validation), len(data.test)) == (14, 2, 8)
    assert "validation carved from train" in data.split_how
    Task("text", name="homes", primary="chrf").save(tmp_path)
    assert load_task_data(tmp_path).task.primary_metric == "chrf"


def test_saved_task_data_loads_back_the_same(tmp_path):
    data = load_task_data("messy_tickets", strict=False)
    assert data.dropped == 10  # the ten deliberate mistakes, each reported
    folder = data.save(tmp_path / "prepared")
    again = load_task_data(folder)
    assert [e.messages for e in again.test] == [e.messages for e in data.test]
    assert again.task == data.task.override()  # the same description (reasons aside)
    assert json.loads((folder / "provenance.json").read_text())["dropped"]


def test_an_unknown_dataset_names_the_shipped_ones():
    shipped = r"brand_voice, general_probe, messy_tickets, quillo_faq, support_tickets"
    with pytest.raises(FileNotFoundError, match=shipped):
        load_task_data("suport_tickets")


def test_a_users_chat_file_with_its_own_keys_system_prompts_and_duplicates(tmp_path):
    """The issue's new-user case: JSON answers with their own keys, a system prompt in each
    example, exact duplicates. Lenient loading drops (and reports) the duplicates; the task
    is read off the answers; the prompting approaches keep the data's own prompt."""
    records = [chat(r["messages"][0]["content"], r["messages"][1]["content"], "Home assistant.")
               for r in HOMES]  # fmt: skip
    records += records[3:6]  # three exact duplicates at the end
    path = tmp_path / "homes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match=r"homes.jsonl:25: messages: exact duplicate of .*:4"):
        load_task_data(path)
    data = load_task_data(path, strict=False)
    assert data.dropped == 3 and len(data.train) + len(data.validation) + len(data.test) == 24
    assert data.task.fields == {"device": "label", "room": "label", "on": "label"}
    assert data.task.prompt_in_data and data.task.metrics()[:2] == ["labels_exact",
                                                                     "device_accuracy"]  # fmt: skip
