"""Evaluation harness: one held-out split, several ways of asking, measured side by side.

Was fine-tuning worth it, or would a better prompt have done? `compare` answers it on the
learner's own run. Every `Approach` is a way of asking one model for the answer:

- the base model zero-shot (the ticket alone);
- the base model with an engineered system prompt (the task's rules spelled out);
- the base model with the system prompt and k solved examples from the training split
  as earlier turns of the conversation (few-shot);
- the fine-tuned adapter with the ticket alone (what it was trained on);
- the fine-tuned adapter with the system prompt too.

Each is generated over the same test examples in batches (left padding, greedy unless a
temperature is given, stopping at the end of the assistant's turn) and scored with the
`evaluate` modules shipped in `ftkit.metrics`, each with a bootstrap 95% confidence
interval. Besides quality, every approach reports what it costs: prompt tokens per
request, and latency per request measured one request at a time (what a user waits).
The base model and the fine-tune share one set of weights: the base approaches run the
same PeftModel with its adapter switched off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cached_property

from ftkit.fast import fast_generation
from ftkit.generation import Messages, generate_replies, parse_json
from ftkit.metrics import load_metric
from ftkit.shipped import dataset_dir

LABEL_FIELDS = ("category", "priority", "product")  # the support-ticket task's label fields
PRIMARY = "labels_exact"  # share of answers with every label field right


@dataclass(frozen=True)
class Approach:
    """A way of asking: which model, which system prompt, how many solved examples."""

    name: str  # shown in tables and plots
    model: str = "base"  # "base" (adapter off) or "finetuned" (adapter on)
    system_prompt: str | None = None  # None: the ticket alone
    shots: int = 0  # solved training examples put before the question (few-shot)

    @property
    def prompting(self) -> bool:
        """True for the base-model approaches (all the work is in the prompt)."""
        return self.model == "base"


def task_system_prompt(dataset: str = "support_tickets") -> str:
    """The engineered system prompt shipped with a dataset (its system_prompt.txt)."""
    path = dataset_dir(dataset) / "system_prompt.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: dataset {dataset!r} ships no system prompt.")
    return path.read_text(encoding="utf-8").strip()


def standard_approaches(system_prompt: str, shots: int = 3) -> list[Approach]:
    """The five approaches of notebook 04, with `shots` examples for the few-shot one."""
    return [
        Approach("base, zero-shot"),
        Approach("base + system prompt", system_prompt=system_prompt),
        Approach(f"base + prompt + {shots}-shot", system_prompt=system_prompt, shots=shots),
        Approach("fine-tuned", model="finetuned"),
        Approach("fine-tuned + prompt", model="finetuned", system_prompt=system_prompt),
    ]


def pick_shots(pool: Sequence, k: int, seed: int = 0, label: str = "category") -> list:
    """k solved examples from `pool`, covering as many values of `label` as k allows.

    Round-robin over the label's values in a seeded order, so 6 shots show 6 categories
    rather than whatever came first.
    """
    if k <= 0:
        return []
    rng = random.Random(seed)
    groups: dict[str, list] = {}
    for example in pool:
        groups.setdefault(str(_labels(example).get(label, "")), []).append(example)
    for members in groups.values():
        rng.shuffle(members)
    order = sorted(groups)
    rng.shuffle(order)
    chosen = []
    while len(chosen) < k and any(groups.values()):
        for value in order:
            if groups[value] and len(chosen) < k:
                chosen.append(groups[value].pop())
    return chosen


def build_prompt(example, approach: Approach, shots: Sequence = ()) -> Messages:
    """The conversation sent for one example: system prompt, solved examples, the question."""
    messages: Messages = []
    if approach.system_prompt:
        messages.append({"role": "system", "content": approach.system_prompt})
    for shot in shots:
        messages += [m for m in shot.messages if m["role"] in ("user", "assistant")]
    messages += [m for m in example.messages[:-1] if m["role"] == "user"]
    return messages


@dataclass
class Prediction:
    """One test example under one approach: what was asked, answered and expected."""

    id: str  # the example's id (or its source line)
    question: str  # the user message (the ticket)
    reference: str  # the expected answer (the example's assistant message)
    output: str  # what the model answered
    prompt_tokens: int  # tokens in the templated prompt
    new_tokens: int  # tokens generated
    parsed: dict | None = None  # the output as a JSON object, if it is one
    gave_up: bool = False  # generation stopped once the output could no longer be JSON

    @cached_property
    def _reference_fields(self) -> dict:
        return parse_json(self.reference) or {}

    def expected(self, name: str) -> str:
        """The reference's `name` field, as a string ("None" if the reference has none)."""
        return str(self._reference_fields.get(name))

    def field_right(self, name: str) -> bool:
        """Whether the answer's `name` field equals the reference's."""
        return self.parsed is not None and str(self.parsed.get(name)) == self.expected(name)


@dataclass
class ApproachResult:
    """An approach's answers on the split, their scores and what they cost."""

    approach: Approach
    predictions: list[Prediction]
    scores: dict[str, float]  # metric -> value (shares in [0, 1]; see score_predictions)
    intervals: dict[str, tuple[float, float]]  # metric -> bootstrap 95% interval
    prompt_tokens: float  # mean prompt tokens per request
    new_tokens: float  # mean generated tokens per request
    latency_s: float  # mean seconds per request, one request at a time
    batch_seconds_per_request: float  # seconds per request when generated in batches

    @property
    def name(self) -> str:
        return self.approach.name

    def wrong(self, field_name: str | None = None) -> list[Prediction]:
        """Predictions with `field_name` wrong (any label field, or invalid JSON, if None)."""
        fields_ = (field_name,) if field_name else LABEL_FIELDS
        return [p for p in self.predictions if not all(p.field_right(f) for f in fields_)]


GIVE_UP_AFTER = 24  # tokens an answer that cannot be JSON gets before it is cut (still shown)


def score_predictions(
    outputs: Sequence[str],
    references: Sequence[str],
    fields: Sequence[str] = LABEL_FIELDS,
    label_field: str = "category",
    text_field: str | None = "summary",
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Score answers with ftkit's `evaluate` modules; every score with a bootstrap 95% CI.

    Returns (scores, intervals). Keys: `labels_exact` (every field in `fields` right: the
    primary metric), `<field>_accuracy`, `json_validity`, `exact_match` (the whole answer,
    summary included), `<label_field>_macro_f1` and `<text_field>_rouge_l`.
    """
    outputs, references = list(outputs), list(references)
    common = {"n_resamples": n_resamples, "seed": seed}
    raw: dict[str, dict] = {
        "fields": load_metric("field_accuracy").compute(
            predictions=outputs, references=references, fields=list(fields), **common
        ),
        "json": load_metric("json_validity").compute(predictions=outputs, **common),
        "exact": load_metric("exact_match").compute(
            predictions=outputs, references=references, **common
        ),
        "f1": load_metric("macro_f1").compute(
            predictions=outputs, references=references, field=label_field, **common
        ),
    }
    if text_field:
        raw["rouge"] = load_metric("rouge_l").compute(
            predictions=outputs, references=references, field=text_field, **common
        )
    names = {
        ("fields", "all_fields"): PRIMARY,
        **{("fields", f"{f}_accuracy"): f"{f}_accuracy" for f in fields},
        ("json", "json_validity"): "json_validity",
        ("exact", "exact_match"): "exact_match",
        ("f1", "macro_f1"): f"{label_field}_macro_f1",
        ("rouge", "rouge_l"): f"{text_field}_rouge_l",
    }
    scores, intervals = {}, {}
    for (source, key), name in names.items():
        if source not in raw:
            continue
        values = raw[source]
        scores[name] = float(values[key])
        if f"{key}_ci_low" in values:
            intervals[name] = (float(values[f"{key}_ci_low"]), float(values[f"{key}_ci_high"]))
    return scores, intervals


def evaluate_approach(
    model,
    tokenizer,
    examples: Sequence,
    approach: Approach,
    shot_pool: Sequence = (),
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 32,
    latency_sample: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    give_up_after: int | None = GIVE_UP_AFTER,
) -> ApproachResult:
    """Generate `approach`'s answers for every example, score them and measure their cost.

    `model` is the fine-tuned PeftModel: base approaches run it with the adapter off.
    Batches read a shared system prompt and shots once (`generate_replies(share_prefix=True)`);
    latency is measured one request at a time, without that sharing, on the first
    `latency_sample` examples: what one user waits for. In the batches an answer that can no
    longer be valid JSON is cut after `give_up_after` tokens (`generate_replies`): every
    score is the same as without the cut, which saves a rambling approach most of its time;
    latency is measured without it, as a user would wait.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_approach: no examples to evaluate on.")
    shots = pick_shots(shot_pool, approach.shots, seed)
    if len(shots) < approach.shots:
        raise ValueError(
            f"{approach.name!r} needs {approach.shots} solved examples but the shot pool has "
            f"{len(shots)}: pass the training split as shot_pool."
        )
    prompts = [build_prompt(example, approach, shots) for example in examples]
    order = sorted(range(len(prompts)), key=lambda i: _length(prompts[i]))  # less padding
    with adapter_for(model, approach), fast_generation(model):  # 4-bit prepared once, not per batch
        started = time.perf_counter()
        replies = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = generate_replies(model, tokenizer, [prompts[i] for i in chunk],
                                     max_new_tokens=max_new_tokens, temperature=temperature,
                                     batch_size=batch_size, share_prefix=True,
                                     give_up_after=give_up_after)  # fmt: skip
            for i, reply in zip(chunk, batch, strict=True):
                replies[i] = reply
            if progress:
                progress(f"{approach.name}: {min(start + batch_size, len(order))}/{len(order)}")
        batched = (time.perf_counter() - started) / len(prompts)
        timed = []
        for prompt in prompts[:latency_sample]:
            started = time.perf_counter()
            generate_replies(model, tokenizer, [prompt], max_new_tokens=max_new_tokens,
                             temperature=temperature)  # fmt: skip
            timed.append(time.perf_counter() - started)
    predictions = [
        Prediction(
            id=str(example.meta.get("id") or example.source),
            question=_question(example),
            reference=example.messages[-1]["content"],
            output=reply.text,
            prompt_tokens=reply.prompt_tokens,
            new_tokens=reply.new_tokens,
            parsed=parse_json(reply.text),
            gave_up=reply.gave_up,
        )
        for example, reply in zip(examples, replies, strict=True)
    ]
    scores, intervals = score_predictions(
        [p.output for p in predictions], [p.reference for p in predictions],
        n_resamples=n_resamples, seed=seed,
    )  # fmt: skip
    return ApproachResult(
        approach=approach,
        predictions=predictions,
        scores=scores,
        intervals=intervals,
        prompt_tokens=sum(p.prompt_tokens for p in predictions) / len(predictions),
        new_tokens=sum(p.new_tokens for p in predictions) / len(predictions),
        latency_s=sum(timed) / len(timed) if timed else float("nan"),
        batch_seconds_per_request=batched,
    )


def adapter_for(model, approach: Approach):
    """Switch the adapter off for base approaches (a no-op on a model without one)."""
    if approach.model == "base" and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    if approach.model == "finetuned" and not hasattr(model, "disable_adapter"):
        raise ValueError(f"{approach.name!r} needs the fine-tuned model (a PeftModel).")
    return nullcontext()


def _length(messages: Messages) -> int:
    return sum(len(m["content"]) for m in messages)


def _question(example) -> str:
    return next((m["content"] for m in example.messages if m["role"] == "user"), "")


def _labels(example) -> dict:
    parsed = parse_json(example.messages[-1]["content"]) if example.messages else None
    return parsed or example.meta


def restrict(result: ApproachResult, examples: Sequence, n_resamples: int = 1000,
             seed: int = 0) -> ApproachResult:  # fmt: skip
    """`result` on a subset of its examples (matched by id), scored again."""
    wanted = [str(e.meta.get("id") or e.source) for e in examples]
    by_id = {p.id: p for p in result.predictions}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise ValueError(f"{result.name!r} has no answer for {len(missing)} of these examples "
                         f"(first: {missing[0]}).")  # fmt: skip
    predictions = [by_id[i] for i in wanted]
    scores, intervals = score_predictions([p.output for p in predictions],
                                          [p.reference for p in predictions],
                                          n_resamples=n_resamples, seed=seed)  # fmt: skip
    tokens = sum(p.prompt_tokens for p in predictions) / len(predictions)
    return replace(result, predictions=predictions, scores=scores, intervals=intervals,
                   prompt_tokens=tokens)  # fmt: skip
