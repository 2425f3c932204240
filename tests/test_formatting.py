"""Formatting: completion-only labels (checked token for token against TRL), padding,
truncation, packing without cross-talk, token statistics, time estimates, the preview, plots."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from ftkit.course.preview import preview_html
from ftkit.estimates import (
    FLOPS_PER_TOKEN,
    T4_PEAK_FLOPS,
    estimate_training_time,
    measure_throughput,
    token_stats,
)
from ftkit.formatting import (
    IGNORE_INDEX,
    TokenizedExample,
    block_causal_mask,
    collate,
    pack,
    render,
    tokenize_example,
    tokenize_examples,
)
from ftkit.shipped import dataset_dir

DATA = dataset_dir("support_tickets")
SPLITS = ("train", "validation", "test")

# The embedded model's ChatML template with {% generation %} markers around what an
# assistant turn trains (reply, <|im_end|>, "\n"): TRL needs them for assistant_only_loss.
MARKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MULTI_TURN = [
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ],
    [
        {"role": "user", "content": "Say hi <script>alert(1)</script>"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "Again, with a newline:\n"},
        {"role": "assistant", "content": "hi\nthere 😀 ünïcode"},
        {"role": "user", "content": "Thanks! (a last user turn trains nothing)"},
    ],
    [
        {"role": "system", "content": "Reply with JSON."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": '{"x": 1}'},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": '{"x": 2}'},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": '{"x": 3}'},
    ],
]


def load_rows(split: str) -> list[dict]:
    with open(DATA / f"{split}.jsonl", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="module")
def fp32_model(embedded_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def trl_model(embedded_dir):
    """A model of its own for TRL's trainer, which changes the config it is given."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def shipped_rows() -> list[dict]:
    return [row for split in SPLITS for row in load_rows(split)]


def trained_text(tokenized: TokenizedExample, tokenizer) -> str:
    return tokenizer.decode([t for t in tokenized.labels if t != IGNORE_INDEX])


def as_prompt_completion(rows: list[dict]) -> list[dict]:
    """TRL's conversational prompt/completion form: the user turn, then the reply."""
    return [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]


def trl_prepare(tokenizer, model, rows: list[dict], **config):
    """TRL's own data preparation: build an SFTTrainer and read its tokenized dataset."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(DATA / ".never_written"), use_cpu=True, report_to=[],
                     max_length=None, shuffle_dataset=False, **config)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)  # fmt: skip
    return trainer.train_dataset


# --- labels ---------------------------------------------------------------------------


def test_render_is_the_chat_template_with_its_default_system_prompt(tokenizer, shipped_rows):
    text = render(shipped_rows[0], tokenizer)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith(shipped_rows[0]["messages"][1]["content"] + "<|im_end|>\n")
    assert render(shipped_rows[0]["messages"][:1], tokenizer, True).endswith("assistant\n")


def test_only_the_reply_and_its_end_of_turn_train(tokenizer, shipped_rows):
    row = shipped_rows[0]
    tokenized = tokenize_example(row, tokenizer)
    reply = row["messages"][1]["content"]
    assert trained_text(tokenized, tokenizer) == reply + "<|im_end|>\n"
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        assert label in (token, IGNORE_INDEX)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained = [t for t in tokenized.labels if t != IGNORE_INDEX]
    assert trained[-2:] == [end_of_turn, tokenizer.convert_tokens_to_ids("Ċ")]
    assert all(label == IGNORE_INDEX for label in tokenized.labels[: tokenized.message_spans[0][2]])


@pytest.mark.parametrize("messages", MULTI_TURN, ids=["system", "last-user", "three-turns"])
def test_every_assistant_turn_trains_and_nothing_else(tokenizer, messages):
    tokenized = tokenize_example(messages, tokenizer)
    replies = [m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant"]
    assert trained_text(tokenized, tokenizer) == "".join(replies)
    for role, start, end in tokenized.message_spans:
        if role != "assistant":
            assert set(tokenized.labels[start:end]) == {IGNORE_INDEX}


def test_an_example_without_a_reply_is_refused(tokenizer):
    with pytest.raises(ValueError, match="no assistant message"):
        tokenize_example([{"role": "user", "content": "hello"}], tokenizer)
    with pytest.raises(ValueError, match="conversation"):
        tokenize_example("just a string", tokenizer)


def conversation(prompt: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def test_truncation_keeps_labels_aligned_and_is_reported(tokenizer):
    long_prompt = conversation("word " * 40, "ok")  # its prompt alone is over 50 tokens
    long_reply = conversation("hi", "reply " * 40)
    short = conversation("hi", "ok")
    full = tokenize_example(long_reply, tokenizer)
    cut = tokenize_example(long_reply, tokenizer, max_length=50)
    assert cut.input_ids == full.input_ids[:50] and cut.labels == full.labels[:50]
    assert cut.truncated and cut.full_length == len(full.input_ids) and cut.num_trained > 0
    assert cut.message_spans[-1][2] == 50
    report = r"2 of 3 examples are longer than max_length=50 .* 1 lost their whole reply"
    with pytest.warns(UserWarning, match=report):
        kept = tokenize_examples([long_prompt, long_reply, short], tokenizer, max_length=50)
    assert [t.text for t in kept] == [cut.text, render(short, tokenizer)]
    assert token_stats(kept).truncated == 1  # the example with no reply left is dropped, like TRL


def test_collate_right_pads_and_never_trains_padding(tokenizer, shipped_rows):
    items = tokenize_examples(shipped_rows[:3], tokenizer)
    batch = collate(items, tokenizer, pad_to_multiple_of=64)
    width = -(-max(len(item.input_ids) for item in items) // 64) * 64
    assert batch["input_ids"].shape == (3, width)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # why labels never come from ids
    for row, item in enumerate(items):
        n = len(item.input_ids)
        assert batch["input_ids"][row, :n].tolist() == item.input_ids
        assert batch["labels"][row, :n].tolist() == item.labels
        assert batch["labels"][row, n - 2] == tokenizer.eos_token_id  # the real end of turn trains
        assert set(batch["labels"][row, n:].tolist()) == {IGNORE_INDEX}
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)


# --- the same tokens as TRL ---------------------------------------------------------------


def test_labels_equal_trl_prompt_completion_on_every_shipped_example(
    tokenizer, trl_model, shipped_rows
):
    theirs = trl_prepare(tokenizer, trl_model, as_prompt_completion(shipped_rows))
    ours = tokenize_examples(shipped_rows, tokenizer)
    assert len(ours) == len(theirs) == len(shipped_rows) > 900  # train + validation + test
    for row, mine, trl in zip(shipped_rows, ours, theirs, strict=True):
        assert mine.input_ids == trl["input_ids"], row["id"]
        assert mine.labels == trl["labels"], row["id"]


def test_labels_equal_trl_assistant_only_loss_on_multi_turn(tokenizer, trl_model):
    marked = copy.deepcopy(tokenizer)
    marked.chat_template = MARKED_TEMPLATE
    for messages in MULTI_TURN:  # the markers change nothing the model sees
        assert render(messages, marked) == render(messages, tokenizer)
    rows = [{"messages": messages} for messages in MULTI_TURN]
    theirs = trl_prepare(marked, trl_model, rows, assistant_only_loss=True)
    for messages, trl in zip(MULTI_TURN, theirs, strict=True):
        mine = tokenize_example(messages, tokenizer)
        assert mine.input_ids == trl["input_ids"]
        assert mine.labels == trl["labels"]


def test_a_template_that_renders_the_prompt_differently_is_handled_like_trl(
    tokenizer, trl_model, shipped_rows
):
    """Some templates (Qwen3, Gemma) end the generation prompt with text the full chat lacks."""
    thinking = copy.deepcopy(tokenizer)
    header = "'<|im_start|>assistant\n' }}{% endif %}"
    assert tokenizer.chat_template.endswith(header)
    thinking.chat_template = tokenizer.chat_template.replace(
        header, "'<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{% endif %}"
    )
    rows = shipped_rows[:5]
    theirs = trl_prepare(thinking, trl_model, as_prompt_completion(rows))
    with pytest.warns(UserWarning, match="renders the first 1 message"):
        ours = [tokenize_example(row, thinking) for row in rows]
    for mine, trl in zip(ours, theirs, strict=True):
        assert mine.labels == trl["labels"]


# --- packing ---------------------------------------------------------------------------


def test_pack_fills_rows_best_fit_and_keeps_every_example(tokenizer, shipped_rows):
    items = tokenize_examples(shipped_rows[:40], tokenizer)
    packed = pack(items, max_length=256)
    members = sorted(i for row in packed for i in row.members)
    assert members == list(range(40))
    for row in packed:
        assert len(row.input_ids) == sum(row.seq_lengths) <= 256
        starts = [sum(row.seq_lengths[:k]) for k in range(len(row.seq_lengths))]
        assert [row.position_ids[s] for s in starts] == [0] * len(starts)
        assert all(row.labels[s] == IGNORE_INDEX for s in starts)
    best_fit = pack([hand_made(n, 1) for n in (6, 5, 4, 3, 2)], max_length=10)
    assert [row.members for row in best_fit] == [[0, 2], [1, 3, 4]]  # two full rows
    with pytest.raises(ValueError, match="more than max_length=50"):
        pack(items, max_length=50)


def test_packed_logits_and_loss_equal_each_example_alone(tokenizer, fp32_model, shipped_rows):
    items = tokenize_examples(shipped_rows[:3], tokenizer)
    rows = pack(items, max_length=512)
    assert len(rows) == 1 and len(rows[0].seq_lengths) == 3
    with torch.no_grad():
        packed = fp32_model(**collate(rows, tokenizer))
        start = 0
        for i in rows[0].members:
            alone = fp32_model(torch.tensor([items[i].input_ids])).logits[0]
            torch.testing.assert_close(packed.logits[0, start : start + len(alone)], alone,
                                       rtol=1e-4, atol=1e-3)  # fmt: skip
            start += len(alone)
        padded = fp32_model(**collate(items, tokenizer)).loss  # the same tokens train
    torch.testing.assert_close(packed.loss, padded, rtol=1e-4, atol=1e-4)


def test_position_ids_alone_isolate_only_without_a_2d_mask_and_cache(tokenizer, fp32_model):
    """Why `collate` builds a 4-D mask: the two traps of the position_ids convention."""
    items = [tokenize_example(m, tokenizer) for m in MULTI_TURN[:2]]
    row = collate(pack(items, 512), tokenizer)
    ids, positions = row["input_ids"], row["position_ids"]
    with torch.no_grad():
        exact = fp32_model(ids, attention_mask=row["attention_mask"]).logits
        isolated = fp32_model(ids, position_ids=positions, use_cache=False).logits
        with_cache = fp32_model(ids, position_ids=positions, use_cache=True).logits
        ones = torch.ones_like(ids)
        with_2d_mask = fp32_model(ids, attention_mask=ones, position_ids=positions, use_cache=False)
    torch.testing.assert_close(isolated, exact, rtol=1e-4, atol=1e-3)
    assert (with_cache - exact).abs().max() > 1.0  # the second example saw the first
    assert (with_2d_mask.logits - exact).abs().max() > 1.0


def test_block_causal_mask_shapes_and_float_form():
    mask = block_causal_mask([[2, 1], [3]], length=4)
    assert mask.shape == (2, 1, 4, 4) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    additive = block_causal_mask([[2, 1]], length=3, dtype=torch.float32)
    assert additive[0, 0, 2, 0] == torch.finfo(torch.float32).min and additive[0, 0, 1, 0] == 0


# --- statistics and estimates -------------------------------------------------------------


def hand_made(length: int, trained: int, full_length: int | None = None) -> TokenizedExample:
    labels = [IGNORE_INDEX] * (length - trained) + [7] * trained
    return TokenizedExample([7] * length, labels, [1] * length, [], "", [], full_length or length)


def test_token_stats_on_hand_made_examples():
    stats = token_stats([hand_made(10, 2), hand_made(20, 5), hand_made(30, 3, 45)])
    assert (stats.count, stats.total_tokens, stats.trained_tokens) == (3, 60, 10)
    assert (stats.mean_length, stats.median_length, stats.max_length) == (20, 20, 30)
    assert stats.p95_length == pytest.approx(29.0)  # numpy's linear interpolation
    assert stats.truncated == 1 and stats.trained_share == pytest.approx(1 / 6)
    assert "3 examples, 60 tokens (10 trained, 17%)" in str(stats)


def test_estimate_training_time_arithmetic():
    stats = token_stats([hand_made(100, 10)] * 50)  # 5,000 tokens per epoch
    here = estimate_training_time(stats, num_epochs=3, tokens_per_second=250)
    assert here.seconds == pytest.approx(3 * 5000 / 250)
    assert "60 s" in str(here)
    t4 = estimate_training_time(stats, num_epochs=2, hardware="t4", method="full")
    expected = T4_PEAK_FLOPS * 0.30 / (FLOPS_PER_TOKEN["full"] * 134_515_008)
    assert t4.tokens_per_second == pytest.approx(expected, rel=1e-3)
    lora = estimate_training_time(stats, num_epochs=2, hardware="t4")
    assert lora.seconds == pytest.approx(t4.seconds * 4 / 6)
    with pytest.raises(ValueError, match="measure_throughput"):
        estimate_training_time(stats)
    with pytest.raises(ValueError, match="hardware"):
        estimate_training_time(stats, tokens_per_second=1, hardware="tpu")


def test_measure_throughput_times_forward_and_backward(tokenizer, fp32_model, shipped_rows):
    items = tokenize_examples(shipped_rows[:1], tokenizer)
    speed = measure_throughput(fp32_model, tokenizer, items, batch_size=1, seconds=0.1)
    assert 1 < speed < 1e6
    assert all(p.grad is None for p in fp32_model.parameters())


# --- preview and plots ---------------------------------------------------------------------


def test_preview_highlights_trained_tokens_and_escapes_html(tokenizer):
    tokenized = tokenize_example(MULTI_TURN[1], tokenizer)
    page = preview_html(tokenized, tokenizer)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in re.sub(r"<[^>]+>", "", page)  # text only
    assert page.count('class="trained"') == tokenized.num_trained
    assert page.count('class="context"') == len(tokenized.input_ids) - tokenized.num_trained
    assert '<span class="trained" title="' in page and "⟨|im_end|⟩</span>" in page
    assert "↵<br>" in page and "😀" in page
    assert f"{len(tokenized.input_ids)} tokens, {tokenized.num_trained} trained" in page


def test_plots_return_figures_and_leave_pyplot_clean(tokenizer, shipped_rows):
    import matplotlib.pyplot as plt

    from ftkit.course.plots import plot_label_distribution, plot_token_lengths

    stats = token_stats(tokenize_examples(shipped_rows[:50], tokenizer))
    figure = plot_token_lengths(stats, max_length=100)
    assert len(figure.axes[0].lines) == 2  # max_length and p95
    assert plot_token_lengths(stats.lengths).axes[0].patches
    splits = {split: load_rows(split) for split in SPLITS}
    figure = plot_label_distribution(splits, field="priority")
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert sum(heights) == sum(len(rows) for rows in splits.values())
    shares = plot_label_distribution(splits, share=True).axes[0].patches
    assert sum(patch.get_height() for patch in shares) == pytest.approx(len(splits))
    assert plt.get_fignums() == []
