"""The evaluation harness on the embedded model, its widgets driven from Python, its plots.

The fine-tuned model here is the embedded model in 4 bits with a fresh LoRA adapter: B is
zero, so "fine-tuned" must answer exactly like the base. That makes the harness's adapter
switching checkable without training (training itself is tested in test_training.py;
notebook 04 runs the real comparison).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from ftkit import progress
from ftkit.comparison import Comparison, compare
from ftkit.config import TrainConfig
from ftkit.constrained import INSTALL, compile_constraint, processor_factory, xgrammar_available
from ftkit.course.plots import (
    plot_approach_scores,
    plot_confusion,
    plot_learning_curve,
    plot_quality_vs_cost,
)
from ftkit.course.widgets import Comparator, ComparisonControls, ErrorBrowser
from ftkit.curve import CurvePoint, curve_sizes, learning_curve, subsample
from ftkit.evaluation import (
    EVAL_BATCH,
    OTHER_DEVICES_BATCH,
    Approach,
    build_prompt,
    eval_batch_size,
    evaluate_approach,
    pick_shots,
    standard_approaches,
)
from ftkit.generation import generate_replies, stop_token_ids
from ftkit.models import load_model
from ftkit.scoring import score_predictions
from ftkit.splits import load_dataset_splits
from ftkit.task import parse_json
from ftkit.task_data import load_task_data
from ftkit.training import add_adapters

TICKETS = load_task_data("support_tickets").task  # the shipped ticket task
PRIMARY = TICKETS.primary_metric  # labels_exact


@pytest.fixture(scope="module")
def splits():
    return load_dataset_splits("support_tickets")


@pytest.fixture(scope="module")
def peft_model():
    model, tokenizer = load_model(quantization="nf4")
    return add_adapters(model, TrainConfig(method="qlora")).eval(), tokenizer


@pytest.fixture(scope="module")
def comparison(peft_model, splits):
    model, tokenizer = peft_model
    approaches = standard_approaches(TICKETS, shots=2)
    return compare(model, tokenizer, list(splits["test"])[:4], approaches, TICKETS,
                   list(splits["train"]), max_new_tokens=40, latency_sample=1, n_resamples=100,
                   progress=None)  # fmt: skip


NAMES = ["base, zero-shot", "base + system prompt", "base + prompt + 2-shot",
         "base + prompt + 2 retrieved", "base + prompt + 2-shot, constrained", "fine-tuned",
         "fine-tuned + prompt"]  # fmt: skip


def test_no_batch_of_replies_starts_once_the_runner_asks_to_stop(peft_model, splits, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """Ctrl-C during `make main` (`ftkit.progress.STOP_ENV`): an evaluation stops before its
    next batch, saying so, instead of running to the end of the approach."""
    model, tokenizer = peft_model
    stop = tmp_path / ".ftkit-stop"
    monkeypatch.setenv(progress.STOP_ENV, str(stop))
    examples = list(splits["test"])[:2]
    done = evaluate_approach(model, tokenizer, examples, Approach("fine-tuned", model="finetuned"),
                             TICKETS, max_new_tokens=4, latency_sample=0)  # fmt: skip
    assert len(done.predictions) == 2  # no stop asked: it runs
    stop.touch()
    with pytest.raises(KeyboardInterrupt, match="fine-tuned, replies 1-2 of 2, not started"):
        evaluate_approach(model, tokenizer, examples, Approach("fine-tuned", model="finetuned"),
                          TICKETS, max_new_tokens=4, latency_sample=0)  # fmt: skip


def test_every_approach_answers_every_example(comparison):
    names = NAMES
    assert list(comparison.results) == names
    for result in comparison.results.values():
        assert len(result.predictions) == 4
        assert result.latency_s > 0 and result.batch_seconds_per_request > 0
        assert all(p.prompt_tokens > 0 and p.new_tokens > 0 for p in result.predictions)
        assert all(0 <= v <= 1 for v in result.scores.values())
        low, high = result.intervals[PRIMARY]
        assert low <= result.scores[PRIMARY] <= high


def test_batches_are_64_prompts_on_a_cpu_and_32_elsewhere(peft_model, comparison):
    model, _ = peft_model
    assert eval_batch_size(model) == EVAL_BATCH == 64  # the embedded model, on this CPU
    assert comparison.settings["batch_size"] == EVAL_BATCH  # the default, as resolved
    on_meta = torch.nn.Linear(4, 4, device="meta")  # a device the speed-ups never ran on
    assert eval_batch_size(on_meta) == OTHER_DEVICES_BATCH == 32


def test_prompt_tokens_show_what_each_prompt_costs(comparison):
    tokens = {name: r.prompt_tokens for name, r in comparison.results.items()}
    assert tokens["base, zero-shot"] == tokens["fine-tuned"]  # the same bare question
    assert tokens["base + system prompt"] == tokens["fine-tuned + prompt"]
    assert tokens["base + system prompt"] > tokens["base, zero-shot"] + 300  # the rules
    assert tokens["base + prompt + 2-shot"] > tokens["base + system prompt"] + 60  # 2 examples
    assert tokens["base + prompt + 2 retrieved"] > tokens["base + system prompt"] + 60
    assert tokens["base + prompt + 2-shot, constrained"] == tokens["base + prompt + 2-shot"]


def test_a_fresh_adapter_answers_like_the_base(comparison):
    """B = 0: switching the adapter on must change nothing, so the harness's switching (and
    the fast 4-bit generation under it) is exact."""
    for base, tuned in (("base, zero-shot", "fine-tuned"),
                        ("base + system prompt", "fine-tuned + prompt")):  # fmt: skip
        ours = [p.output for p in comparison[tuned].predictions]
        assert ours == [p.output for p in comparison[base].predictions]


def test_scores_agree_with_the_predictions(comparison):
    for result in comparison.results.values():
        right = [all(p.field_right(f) for f in ("category", "priority", "product"))
                 for p in result.predictions]  # fmt: skip
        assert result.scores[PRIMARY] == pytest.approx(sum(right) / len(right))
        valid = sum(p.parsed is not None for p in result.predictions)
        assert result.scores["json_validity"] == pytest.approx(valid / len(result.predictions))


def test_the_table_says_when_answers_were_cut(comparison):
    assert "was cut (…) after 24 tokens" in comparison.table_html()
    for settings in ({}, {"give_up_after": None}):  # not cut: no such note
        table = Comparison(comparison.results, TICKETS, settings=settings).table_html()
        assert "was cut" not in table


def test_batched_generation_matches_one_at_a_time(splits):
    """Left padding must not change greedy answers: a batch of prompts of different lengths
    gives the same replies as asking one by one. Exact in fp32; in bf16 or 4 bits the
    kernels round differently for different batch shapes, so a near-tie can flip a token
    (measured here: 1 or 2 of these 4 replies differ somewhere after the first tokens)."""
    model, tokenizer = load_model(dtype="fp32")
    prompts = [e.messages[:-1] for e in list(splits["test"])[4:8]]
    system = TICKETS.system_prompt
    batched = generate_replies(model, tokenizer, prompts, system, max_new_tokens=32, batch_size=4)
    single = [generate_replies(model, tokenizer, [p], system, max_new_tokens=32)[0]
              for p in prompts]  # fmt: skip
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({r.prompt_tokens for r in batched}) > 1  # really different lengths


def test_a_shared_prefix_is_read_once_with_the_same_replies(splits):
    """share_prefix=True computes the system prompt's (and the shots') cache once per batch;
    in fp32 the replies are exactly those of the plain batch, prompt token counts too."""
    model, tokenizer = load_model(dtype="fp32")
    prompts = [e.messages[:-1] for e in list(splits["test"])[8:12]]
    system = TICKETS.system_prompt
    plain = generate_replies(model, tokenizer, prompts, system, max_new_tokens=24, batch_size=4)
    shared = generate_replies(model, tokenizer, prompts, system, max_new_tokens=24, batch_size=4,
                              share_prefix=True)  # fmt: skip
    assert [r.text for r in shared] == [r.text for r in plain]
    assert [r.prompt_tokens for r in shared] == [r.prompt_tokens for r in plain]
    assert min(r.prompt_tokens for r in plain) > 500  # the prefix really is long


@pytest.mark.parametrize("constrained", [False, True])
def test_rows_that_finish_early_leave_the_batch_with_the_same_replies(splits, monkeypatch,
                                                                      constrained):  # fmt: skip
    """With share_prefix=True a greedy batch goes on without its finished rows: a `generate`
    call ends once at most half its rows are still writing, and those continue from its
    cache in a smaller call, constrained decoding's processor following them. In fp32 every
    reply (text, token count, given up or not) is the plain batch's, where every row runs
    to the longest reply."""
    if constrained and not xgrammar_available():
        pytest.skip(f"constrained decoding needs xgrammar: {INSTALL}")
    model, tokenizer = load_model(dtype="fp32")
    few_shot = standard_approaches(TICKETS, shots=2)[2]
    shots = pick_shots(list(splits["train"]), 2, task=TICKETS)
    picked = [9, 12, 13, 18, 20, 22, 23, 5] if constrained else range(8)  # constrained:
    test = list(splits["test"])  # most replies take 37 tokens, these 32 to 51
    prompts = [build_prompt(test[i], few_shot, shots) for i in picked]
    settings = {"max_new_tokens": 48, "batch_size": 8, "give_up_after": 24}
    if constrained:
        stops = stop_token_ids(tokenizer)
        compiled = compile_constraint(TICKETS, list(splits["train"]), tokenizer, stops,
                                      model.config.vocab_size)  # fmt: skip
        settings |= {"logits_processor": processor_factory(compiled), "give_up_after": None,
                     "max_new_tokens": 64}  # fmt: skip
    rows = []
    generate = type(model).generate

    def counted(self, **settings):
        rows.append(len(settings["input_ids"]))
        return generate(self, **settings)

    monkeypatch.setattr(type(model), "generate", counted)
    shared = generate_replies(model, tokenizer, prompts, share_prefix=True, **settings)
    compacted, rows[:] = list(rows), []
    plain = generate_replies(model, tokenizer, prompts, **settings)
    assert rows == [8]  # the plain batch: one call, every row to the end
    assert compacted[0] == 8 and len(compacted) > 1 and compacted == sorted(compacted)[::-1]
    assert all(later <= earlier // 2 for earlier, later in itertools.pairwise(compacted))
    assert [(r.text, r.new_tokens, r.gave_up) for r in shared] == [
        (r.text, r.new_tokens, r.gave_up) for r in plain
    ]
    assert len({r.new_tokens for r in plain}) > 2  # replies of really different lengths


def test_the_output_layer_gets_a_contiguous_input_and_the_same_logits(splits):
    """generate_replies serves the output layer with `_output_product` while it generates
    (a contiguous copy of the last position's states, since torch's CPU matmul would copy
    the whole weight once per prompt; in fp32, from two rows on, the product taken as
    (weight x rows^T)^T) and gives the layer back afterwards; the same logits up to
    rounding, and at one row exactly `linear`'s."""
    import torch

    from ftkit.fast.generation_4bit import _output_product

    model, tokenizer = load_model(dtype="fp32")
    head = model.get_output_embeddings()
    served = []
    handle = head.register_forward_hook(lambda *_: served.append("forward" in vars(head)))
    prompts = [e.messages[:-1] for e in list(splits["test"])[12:15]]
    try:
        generate_replies(model, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    finally:
        handle.remove()
    assert served and all(served)
    assert "forward" not in vars(head)  # the layer's own forward again
    for rows in (1, 3, 8, 32):
        hidden = torch.randn(rows, 7, head.in_features)
        strided = hidden[:, -1:, :]
        assert rows == 1 or not strided.is_contiguous()
        expected = torch.nn.functional.linear(strided.contiguous(), head.weight, head.bias)
        got = _output_product(head, strided)
        assert got.shape == expected.shape == (rows, 1, head.out_features)
        assert got.is_contiguous()
        if rows == 1:
            assert torch.equal(got, expected)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    bf16 = torch.nn.Linear(head.in_features, 16, bias=False, dtype=torch.bfloat16)
    hidden = torch.randn(4, 1, head.in_features, dtype=torch.bfloat16)
    assert torch.equal(_output_product(bf16, hidden), bf16(hidden))  # bf16 keeps linear


def test_cannot_be_json_only_when_no_continuation_parses():
    from ftkit.generation import cannot_be_json

    for hopeless in ("I'm sorry", ' {"a": 1} and more', "[1, 2]", '{"a": 1}}', "Sure: {"):
        assert cannot_be_json(hopeless), hopeless
    for still_open in ("", "  ", "{", '{"category": "bil', '{"a": 1}', '{"a": 1}\n ', '{"a": }'):
        assert not cannot_be_json(still_open), still_open


def test_giving_up_on_json_cuts_rambling_replies_and_changes_no_score(splits):
    """The base model without a system prompt rambles: with give_up_after=8 those replies stop
    after 8 to 9 tokens, flagged; replies that may still be JSON are exactly as before."""
    from ftkit.generation import cannot_be_json

    model, tokenizer = load_model(dtype="fp32")
    prompts = [e.messages[:-1] for e in list(splits["test"])[:3]]
    shots = [e.messages for e in list(splits["train"])[:2]]
    prompts.append([m for shot in shots for m in shot] + prompts[0])  # two solved examples
    full = generate_replies(model, tokenizer, prompts, max_new_tokens=40, batch_size=4)
    cut = generate_replies(model, tokenizer, prompts, max_new_tokens=40, batch_size=4,
                           give_up_after=8)  # fmt: skip
    assert any(r.gave_up for r in cut) and not any(r.gave_up for r in full)
    for before, after in zip(full, cut, strict=True):
        assert parse_json(before.text) == parse_json(after.text)
        if after.gave_up:
            assert cannot_be_json(after.text) and before.text.startswith(after.text)
            assert 8 <= after.new_tokens < before.new_tokens
        else:
            assert after.text == before.text and after.new_tokens == before.new_tokens


def test_shots_cover_the_categories_and_come_first(splits):
    train = list(splits["train"])
    shots = pick_shots(train, 6, seed=1, task=TICKETS)
    assert len({parse_json(s.messages[-1]["content"])["category"] for s in shots}) == 6
    assert pick_shots(train, 6, seed=1, task=TICKETS) == shots  # seeded
    assert subsample(train, 50, task=TICKETS)[:25] == subsample(train, 25, task=TICKETS)
    example = splits["test"][0]
    messages = build_prompt(example, Approach("k", system_prompt="RULES", shots=2), shots[:2])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant",
                                             "user"]  # fmt: skip
    assert messages[0]["content"] == "RULES"
    assert messages[-1]["content"] == example.messages[0]["content"]


def test_score_predictions_by_hand():
    ref = '{"category": "bug", "priority": "high", "product": "mail", "summary": "Mail crashes"}'
    outputs = [
        ref,  # all right
        '{"category": "bug", "priority": "low", "product": "mail", "summary": "Mail crash"}',
        "not json at all",
        "",
    ]
    scores, intervals = score_predictions(outputs, [ref] * 4, TICKETS, n_resamples=200)
    assert scores[PRIMARY] == 0.25  # only the first has every label right
    assert scores["category_accuracy"] == 0.5 and scores["priority_accuracy"] == 0.25
    assert scores["json_validity"] == 0.5 and scores["exact_match"] == 0.25
    # ROUGE-L of the summaries: 1 (identical), 0.5 ("mail crash" vs "mail crashes": 1 of 2
    # words in common both ways), 0 and 0 for the invalid answers -> mean 0.375
    assert scores["summary_rouge_l"] == pytest.approx(0.375)
    assert intervals[PRIMARY][0] <= 0.25 <= intervals[PRIMARY][1]


def test_comparator_answers_a_picked_ticket_with_its_reference(peft_model, comparison, splits):
    model, tokenizer = peft_model
    widget = Comparator(model, tokenizer, comparison, list(splits["test"])[:4],
                        list(splits["train"]), max_new_tokens=40)  # fmt: skip
    widget.picker.value = 2
    assert widget.text.value == list(splits["test"])[2].messages[0]["content"]
    widget.compare_button.click()
    assert set(widget.last) == set(comparison.results)
    assert widget.answers.value.count("<tr>") == 1 + 1 + len(NAMES)  # header, reference, ...
    assert "reference" in widget.answers.value and "same as the reference" in widget.answers.value
    # The stored comparison's answer for that ticket is what the widget shows: the same
    # shots, constraint and cut, wherever the comparison's answer was JSON. Left out:
    # retrieved prompts (they differ in length within the comparison's batch, and its
    # padding changes bf16 sums enough to break a near-tie late in an answer) and rambling
    # answers (of the base model, and of this two-step fine-tune), which start on near-ties
    # that a batch's matrix shapes (the comparison: 4 prompts, the widget: 1) tip either way.
    compared = [
        name
        for name, result in comparison.results.items()
        if not result.approach.retrieve and result.predictions[2].parsed is not None
    ]
    assert len(compared) >= 2, compared  # fixed and constrained few-shot at least
    for name in compared:
        assert widget.last[name] == comparison.results[name].predictions[2].output, name


def test_comparator_answers_a_typed_ticket(peft_model, comparison, splits):
    model, tokenizer = peft_model
    # Four of the seven approaches (every approach is typed into in the browser test):
    # shots retrieved for a question with no example behind it, a constraint, the adapter.
    names = ["base, zero-shot", "base + prompt + 2 retrieved",
             "base + prompt + 2-shot, constrained", "fine-tuned"]  # fmt: skip
    some = Comparison({n: comparison[n] for n in names}, TICKETS, settings=comparison.settings)
    widget = Comparator(model, tokenizer, some, list(splits["test"])[:2],
                        list(splits["train"]), max_new_tokens=24)  # fmt: skip
    widget.text.value = "Quillo Mail deletes my drafts when I close the app. Please fix!"
    widget.compare_button.click()
    assert list(widget.last) == names and all(isinstance(t, str) for t in widget.last.values())
    assert "most approaches gave" in widget.answers.value
    assert "<b>reference</b>" not in widget.answers.value


def test_error_browser_filters_wrong_answers(comparison):
    browser = ErrorBrowser(comparison)
    browser.approach.value = "base + system prompt"
    browser.field.value = "category"
    wrong = comparison["base + system prompt"].wrong("category")
    assert len(browser.matching()) == len(wrong)
    assert f"<b>{len(wrong)}</b> of 4" in browser.count.value
    browser.field.value = "invalid"
    invalid = [p for p in comparison["base + system prompt"].predictions if p.parsed is None]
    assert len(browser.matching()) == len(invalid)
    browser.field.value = "any"
    label = browser.label.options[1][1]
    browser.label.value = label
    chosen = browser.matching()
    assert all(json.loads(p.reference)["category"] == label for p in chosen)


def test_controls_rerun_with_new_k_and_temperature(peft_model, splits):
    model, tokenizer = peft_model
    approaches = [Approach("base + prompt + 3-shot", system_prompt="Answer in JSON.", shots=3),
                  Approach("fine-tuned", model="finetuned")]  # fmt: skip
    validation = list(splits["validation"])[:3]
    controls = ComparisonControls(model, tokenizer, TICKETS, approaches, validation,
                                  list(splits["train"]), max_new_tokens=16)  # fmt: skip
    controls.shots.value, controls.temperature.value, controls.n_examples.value = 1, 0.7, 2
    controls.run_button.click()
    comparison = controls.comparison
    assert list(comparison.results) == ["base + prompt + 1-shot", "fine-tuned"]
    assert comparison.settings["temperature"] == 0.7 and comparison.settings["examples"] == 2
    # Choices are made on validation: the re-run scored these validation tickets, said so.
    asked = [p.question for p in comparison["fine-tuned"].predictions]
    assert asked == [e.messages[-2]["content"] for e in validation[:2]]
    assert comparison.settings["split"] == "validation"
    assert "2 validation examples" in controls.table.value
    assert "base + prompt + 1-shot" in controls.table.value
    assert controls.plot_output.outputs[0]["data"]["image/png"]
    assert "done: k=1" in controls.status.value


def test_plots_draw_what_was_measured(comparison):
    figure = plot_approach_scores(comparison)
    assert len(figure.axes[0].patches) == 2 * len(NAMES)  # two metrics, every approach
    figure = plot_quality_vs_cost(comparison)
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(comparison.results)
    result = comparison["base + prompt + 2-shot"]
    figure = plot_confusion(result, "category")
    counts = figure.axes[0].images[0].get_array()
    assert counts.sum() == 4
    right = sum(p.field_right("category") for p in result.predictions)
    assert f"{right}/4 category right" in figure.axes[0].get_title()


def test_learning_curve_trains_nested_subsets(splits, tmp_path, comparison):
    config = TrainConfig(batch_size=2, max_steps=2, eval_steps=None, save_steps=100,
                         runs_dir=str(tmp_path), run_name="curve")  # fmt: skip
    test = list(splits["test"])[:2]
    known = {640: comparison["fine-tuned"]}
    points = learning_curve([4, 640], config, list(splits["train"]), test, TICKETS,
                            max_new_tokens=24, known=known, n_resamples=50,
                            progress=None)  # fmt: skip
    assert [p.examples for p in points] == [4, 640]
    assert points[0].run_dir.endswith("curve-4")
    saved = json.loads((tmp_path / "curve-4" / "config.json").read_text())
    assert saved["data"]["train"]["examples"] == 4
    assert points[1].score == comparison["fine-tuned"].scores[PRIMARY]
    figure = plot_learning_curve(points, reference=comparison["base + prompt + 2-shot"])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["4", "640"]
    assert isinstance(points[0], CurvePoint)


def test_the_learning_curve_labels_only_its_sizes():
    """Notebook 04's sizes for 640 examples span less than a decade: matplotlib would label
    the minor ticks too ("3x10^2", "6x10^2" over "640")."""
    sizes = curve_sizes(640)
    points = [CurvePoint(n, PRIMARY, 0.3, (0.2, 0.4), 1.0) for n in sizes]
    figure = plot_learning_curve(points)
    figure.canvas.draw()  # tick labels are made when drawn
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["64", "200", "640"]
    assert not [t.get_text() for t in axis.get_xticklabels(minor=True) if t.get_text()]
    low, high = axis.get_xlim()
    assert low < 64 and high > 640  # the end points clear of the frame
