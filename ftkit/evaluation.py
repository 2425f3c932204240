"""Evaluation harness: one held-out split, several ways of asking, measured side by side.

Was fine-tuning worth it, or would a better prompt have done? `ftkit.comparison.compare`
answers it on the learner's own run and task. Every `Approach` is a way of asking one model:

- the base model zero-shot (the question as the data presents it);
- the base model with the task's engineered system prompt (its rules spelled out);
- the base model with k solved training examples as earlier turns (few-shot);
- the fine-tuned adapter with the question alone (what it was trained on);
- the fine-tuned adapter with the system prompt too.

What an answer is and how it is scored comes from the `ftkit.task.Task`: a JSON object
(validity, per-field accuracy, all label fields right, ROUGE-L of text fields), a label
(accuracy, macro-F1) or free text (ROUGE-L, chrF), exact match for all, each with a
bootstrap 95% interval from the `evaluate` modules in `ftkit.metrics`. Every approach also
reports what it costs: prompt tokens per request, and latency one request at a time. The
base and the fine-tune share one set of weights: base approaches switch the adapter off.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property

from ftkit.constrained import (
    can_constrain,
    compile_constraint,
    processor_factory,
    token_bound,
    xgrammar_available,
)
from ftkit.fast import fast_generation, measured_on
from ftkit.generation import Messages, Reply, generate_replies, stop_token_ids
from ftkit.progress import TerminalProgress, stop_if_requested
from ftkit.retrieval import retrieve_shots
from ftkit.scoring import SIMILAR, label_form, score_predictions, similarities
from ftkit.task import Task, answer_of, parse_json

GIVE_UP_AFTER = 24  # tokens a JSON answer that cannot be JSON gets before it is cut (still shown)
EVAL_BATCH = 64  # prompts generated together on a CPU (see eval_batch_size)
OTHER_DEVICES_BATCH = 32  # elsewhere: what the GPU check ran with on the H200


@dataclass(frozen=True)
class Approach:
    """A way of asking: which model, which system prompt, how many solved examples."""

    name: str  # shown in tables and plots
    model: str = "base"  # "base" (adapter off), "finetuned" (adapter on), or "classical"
    system_prompt: str | None = None  # None: the question as the data presents it
    shots: int = 0  # solved training examples put before the question (few-shot)
    retrieve: bool = False  # the shots closest to each question (BM25), not a fixed set
    constrained: bool = False  # decoding limited to the task's format (`ftkit.constrained`)

    @property
    def prompting(self) -> bool:
        """True for the base-model approaches (all the work is in the prompt)."""
        return self.model == "base"


def standard_approaches(
    task: Task, shots: int = 3, constrained: bool | None = None
) -> list[Approach]:
    """Notebook 04's approaches for `task`, with `shots` solved examples for the few-shot ones.

    The base model: zero-shot; + the task's system prompt; + k fixed shots; + the k closest
    shots (retrieved); + k fixed shots with decoding constrained to the task's format (when
    the task has one and xgrammar is installed, or as `constrained` says). The fine-tune:
    alone, and + the system prompt. Without a system prompt, or when every example already
    carries it, the prompt variants would repeat others and are left out.
    """
    prompt = task.system_prompt if not task.prompt_in_data else None
    few = f"base + prompt + {shots}-shot" if prompt else f"base + {shots}-shot"
    approaches = [Approach("base, zero-shot")]
    if prompt:
        approaches.append(Approach("base + system prompt", system_prompt=prompt))
    approaches += [
        Approach(few, system_prompt=prompt, shots=shots),
        Approach(few.replace(f"{shots}-shot", f"{shots} retrieved"), system_prompt=prompt,
                 shots=shots, retrieve=True),
    ]  # fmt: skip
    if constrained or (constrained is None and can_constrain(task) and xgrammar_available()):
        approaches.append(Approach(f"{few}, constrained", system_prompt=prompt, shots=shots,
                                   constrained=True))  # fmt: skip
    approaches.append(Approach("fine-tuned", model="finetuned"))
    if prompt:
        approaches.append(Approach("fine-tuned + prompt", model="finetuned", system_prompt=prompt))
    return approaches


def pick_shots(pool: Sequence, k: int, seed: int = 0, task: Task | None = None) -> list:
    """k solved examples from `pool`, covering as many classes of `task.stratify` as k allows.

    Round-robin over the classes in a seeded order, so 6 shots show 6 categories rather than
    whatever came first; without a stratify field, k seeded draws.
    """
    if k <= 0:
        return []
    rng = random.Random(seed)
    groups: dict[str, list] = {}
    for example in pool:
        value = task.value_of(example) if task is not None else None
        groups.setdefault(str(value or ""), []).append(example)
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
    """The conversation sent for one example: system prompt, solved examples, the question.

    The approach's system prompt replaces the example's own; without one, the example keeps
    its own (if it has one), so "zero-shot" asks exactly what the data asks.
    """
    messages: Messages = [m for m in example.messages[:1] if m["role"] == "system"]
    if approach.system_prompt:
        messages = [{"role": "system", "content": approach.system_prompt}]
    for shot in shots:
        messages += [m for m in shot.messages if m["role"] != "system"]
    return messages + [m for m in example.messages[:-1] if m["role"] != "system"]


def answer_budget(task: Task, examples: Sequence, tokenizer) -> int:
    """Tokens an answer may take: the task's `max_new_tokens`, else a quarter more than the
    longest reference answer (at least 16, at most 512), in multiples of 8."""
    if task.max_new_tokens:
        return task.max_new_tokens
    longest = max(len(tokenizer(answer_of(e), add_special_tokens=False)["input_ids"])
                  for e in examples)  # fmt: skip
    return min(512, max(16, 8 * math.ceil(1.25 * (longest + 1) / 8)))


@dataclass
class Prediction:
    """One test example under one approach: what was asked, answered and expected."""

    id: str  # the example's id (or its source line)
    question: str  # the last user message
    reference: str  # the expected answer (the example's last message)
    output: str  # what the model answered
    prompt_tokens: int  # tokens in the templated prompt
    new_tokens: int  # tokens generated
    parsed: dict | None = None  # the output as a JSON object, if it is one
    gave_up: bool = False  # generation stopped once the output could no longer be JSON
    similarity: float | None = None  # free text: ROUGE-L against the reference

    @cached_property
    def _reference_fields(self) -> dict:
        return parse_json(self.reference) or {}

    def expected(self, name: str) -> str:
        """The reference's `name` field, as a string ("None" if the reference has none)."""
        return str(self._reference_fields.get(name))

    def field_right(self, name: str) -> bool:
        """Whether the answer's `name` field equals the reference's."""
        return self.parsed is not None and str(self.parsed.get(name)) == self.expected(name)

    def hits(self, task: Task) -> dict[str, bool]:
        """What is right in this answer: each label field (json), the label, or "close to the
        reference" (text: ROUGE-L at least `SIMILAR`)."""
        if task.answer == "json":
            return {name: self.field_right(name) for name in task.label_fields}
        if task.answer == "label":
            return {"answer": label_form(self.output) == label_form(self.reference)}
        return {"similar": (self.similarity or 0.0) >= SIMILAR}


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
    task: Task = field(repr=False)  # what an answer is, and how it was scored
    fit_seconds: float = 0.0  # time spent fitting before answering (the classical baseline)
    # Answers new examples without generating (the classical baseline's fitted classifiers).
    respond: Callable[[Sequence], list[str]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.approach.name

    def wrong(self, field_name: str | None = None) -> list[Prediction]:
        """Predictions with `field_name` wrong (json), or anything wrong (any label field or
        invalid JSON; a wrong label; a free-text answer not close to its reference)."""
        if field_name:
            return [p for p in self.predictions if not p.field_right(field_name)]
        json_task = self.task.answer == "json"
        return [
            p for p in self.predictions
            if not all(p.hits(self.task).values()) or (json_task and p.parsed is None)
        ]  # fmt: skip


def eval_batch_size(model) -> int:
    """How many prompts `evaluate_approach` generates together unless told: `EVAL_BATCH` (64)
    on a CPU, `OTHER_DEVICES_BATCH` (32) on other devices.

    On the 2-core AVX512-BF16 CPU, 64 against 32 took notebook 04's seven approaches on 160
    test tickets from 327 to 303 s (fewer, fuller decoding steps), at the same peak memory
    (1.50 GiB against 1.55 for the longest prompts): there a prefix all prompts share is kept
    once (`ftkit.fast.shared_prefix`). On a GPU the libraries' own cache holds it once per
    prompt, and a 7-8B model's cache for 64 few-shot prompts of 900 tokens would take about
    7 GiB of a 16 GiB T4, twice what 32 take.
    """
    return EVAL_BATCH if measured_on(model) else OTHER_DEVICES_BATCH


def evaluate_approach(
    model,
    tokenizer,
    examples: Sequence,
    approach: Approach,
    task: Task,
    shot_pool: Sequence = (),
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    batch_size: int | None = None,
    latency_sample: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    give_up_after: int | None = GIVE_UP_AFTER,
) -> ApproachResult:
    """Generate `approach`'s answers for every example, score them and measure their cost.

    `model` is the fine-tuned PeftModel: base approaches run it with the adapter off.
    `max_new_tokens` defaults to `answer_budget`, `batch_size` to `eval_batch_size`. Batches
    read a shared system prompt and shots once (`generate_replies(share_prefix=True)`);
    latency is measured one request at a time, without that sharing, on the first
    `latency_sample` examples: what one user waits for. For a json task an answer that can
    no longer be valid JSON is cut after `give_up_after` tokens in the batches: every score
    is the same as without the cut.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_approach: no examples to evaluate on.")
    replies, batched, timed = generate_answers(
        model, tokenizer, examples, approach, task, shot_pool, max_new_tokens, temperature,
        batch_size, latency_sample, seed, progress, give_up_after,
    )  # fmt: skip
    return scored(approach, examples, replies, task, batched, timed, n_resamples, seed)


def scored(approach: Approach, examples: Sequence, replies: Sequence[Reply], task: Task,
           batched: float, timed: Sequence[float], n_resamples: int = 1000,
           seed: int = 0) -> ApproachResult:  # fmt: skip
    """`approach`'s `replies` to `examples` (in order) scored as `task` says, with what they
    cost: `batched` seconds per request in batches, `timed` one at a time (may be empty)."""
    predictions = [_prediction(example, reply) for example, reply in zip(examples, replies,
                                                                         strict=True)]  # fmt: skip
    return _result(approach, predictions, task, batched, list(timed), n_resamples, seed)


def generate_answers(
    model,
    tokenizer,
    examples: Sequence,
    approach: Approach,
    task: Task,
    shot_pool: Sequence = (),
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    batch_size: int | None = None,
    latency_sample: int = 0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    give_up_after: int | None = GIVE_UP_AFTER,
) -> tuple[list[Reply], float, list[float]]:
    """`approach`'s replies to `examples`, unscored (a typed question has no reference):
    (replies in order, batched seconds per request, one-at-a-time seconds of the first
    `latency_sample`). `evaluate_approach` says what the arguments do."""
    examples = list(examples)
    shots = shots_for(approach, examples, shot_pool, task, seed)
    max_new_tokens = max_new_tokens or answer_budget(task, examples, tokenizer)
    batch_size = batch_size or eval_batch_size(model)
    give_up_after = give_up_after if task.answer == "json" else None
    constraint = None
    if approach.constrained:  # valid by construction: nothing to give up on, a token bound
        constraint, max_new_tokens = _constraint(task, shot_pool or examples, model, tokenizer)
        give_up_after = None
    prompts = [build_prompt(example, approach, s) for example, s in zip(examples, shots,
                                                                        strict=True)]  # fmt: skip
    return _generate_all(
        model, tokenizer, prompts, approach, max_new_tokens, temperature, batch_size,
        latency_sample, give_up_after, progress, constraint,
    )  # fmt: skip


def shots_for(approach: Approach, examples: Sequence, pool: Sequence, task: Task,
              seed: int = 0) -> list[list]:  # fmt: skip
    """The solved examples put before each question: the same stratified set for every one
    (`pick_shots`), or each question's closest ones (`retrieve_shots`, BM25)."""
    if approach.retrieve:
        found = retrieve_shots(pool, examples, approach.shots)
    else:
        found = [pick_shots(pool, approach.shots, seed, task)] * len(examples)
    if found and len(found[0]) < approach.shots:
        raise ValueError(
            f"{approach.name!r} needs {approach.shots} solved examples but the shot pool has "
            f"{len(found[0])}: pass the training split as shot_pool."
        )
    return found


def _constraint(task: Task, examples: Sequence, model, tokenizer):
    """(a logits-processor factory for the task's format, the tokens that always suffice)."""
    compiled = compile_constraint(task, examples, tokenizer, stop_token_ids(tokenizer),
                                  model.config.vocab_size)  # fmt: skip
    return processor_factory(compiled), token_bound(task, examples)


def _generate_all(model, tokenizer, prompts, approach, max_new_tokens, temperature, batch_size,
                  latency_sample, give_up_after, progress, constraint=None):  # fmt: skip
    """(replies in prompt order, batched seconds per request, one-at-a-time seconds)."""
    order = sorted(range(len(prompts)), key=lambda i: _length(prompts[i]))  # less padding
    terminal = TerminalProgress(approach.name, len(order), "replies")  # headless runs only
    with adapter_for(model, approach), fast_generation(model):  # 4-bit prepared once
        started = time.perf_counter()
        replies = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            stop_if_requested(f"{approach.name}, replies {start + 1}-{start + len(chunk)} of "
                              f"{len(order)},")  # the runner's Ctrl-C  # fmt: skip
            batch = generate_replies(model, tokenizer, [prompts[i] for i in chunk],
                                     max_new_tokens=max_new_tokens, temperature=temperature,
                                     batch_size=batch_size, share_prefix=True,
                                     give_up_after=give_up_after,
                                     logits_processor=constraint)  # fmt: skip
            for i, reply in zip(chunk, batch, strict=True):
                replies[i] = reply
            done = min(start + batch_size, len(order))
            terminal.update(done)
            if progress:
                progress(f"{approach.name}: {done}/{len(order)}")
        batched = (time.perf_counter() - started) / len(prompts)
        timed = []
        for prompt in prompts[:latency_sample]:
            started = time.perf_counter()
            generate_replies(model, tokenizer, [prompt], max_new_tokens=max_new_tokens,
                             temperature=temperature, logits_processor=constraint)  # fmt: skip
            timed.append(time.perf_counter() - started)
    return replies, batched, timed


def _prediction(example, reply) -> Prediction:
    return Prediction(
        id=str(example.meta.get("id") or example.source),
        question=_question(example),
        reference=answer_of(example),
        output=reply.text,
        prompt_tokens=reply.prompt_tokens,
        new_tokens=reply.new_tokens,
        parsed=parse_json(reply.text),
        gave_up=reply.gave_up,
    )


def _result(approach, predictions, task, batched, timed, n_resamples, seed) -> ApproachResult:
    """Score the predictions (and, for free text, each one's similarity) into a result."""
    outputs, references = [p.output for p in predictions], [p.reference for p in predictions]
    scores, intervals = score_predictions(outputs, references, task, n_resamples, seed)
    if task.answer == "text":
        for prediction, value in zip(predictions, similarities(outputs, references), strict=True):
            prediction.similarity = value
    return ApproachResult(
        approach=approach,
        predictions=predictions,
        scores=scores,
        intervals=intervals,
        prompt_tokens=sum(p.prompt_tokens for p in predictions) / len(predictions),
        new_tokens=sum(p.new_tokens for p in predictions) / len(predictions),
        latency_s=sum(timed) / len(timed) if timed else float("nan"),
        batch_seconds_per_request=batched,
        task=task,
    )


def adapter_for(model, approach: Approach):
    """The context in which `model` answers as `approach` says: the adapter switched off for
    base approaches (a no-op on a model without one), on for fine-tuned ones."""
    if approach.model == "base" and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    if approach.model == "finetuned" and not hasattr(model, "disable_adapter"):
        raise ValueError(f"{approach.name!r} needs the fine-tuned model (a PeftModel).")
    return nullcontext()


def _length(messages: Messages) -> int:
    return sum(len(m["content"]) for m in messages)


def _question(example) -> str:
    users = [m["content"] for m in example.messages if m["role"] == "user"]
    return users[-1] if users else ""


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
                                          [p.reference for p in predictions], result.task,
                                          n_resamples=n_resamples, seed=seed)  # fmt: skip
    tokens = sum(p.prompt_tokens for p in predictions) / len(predictions)
    return replace(result, predictions=predictions, scores=scores, intervals=intervals,
                   prompt_tokens=tokens)  # fmt: skip


def class_pairs(result, field: str | None) -> tuple[list[tuple[str, str]], str]:
    """(reference class, answered class) per prediction, and what the class is called.

    The class is `field` of a JSON answer (default: the task's stratify field, else its first
    label field; invalid JSON or a missing field answers "<invalid>"), or the answer itself
    for a label task; a free-text task has none (ValueError).
    """
    task = result.task
    if task.answer == "label":
        return [(label_form(p.reference), label_form(p.output)) for p in result.predictions], (
            "label")  # fmt: skip
    if task.answer == "text":
        raise ValueError("class_pairs: a free-text task has no classes to confuse.")
    field = field or (task.stratify if task.stratify in task.label_fields else None)
    field = field or next(iter(task.label_fields), None)
    if field is None:
        raise ValueError("class_pairs: this task's JSON answers have no label field.")
    pairs = []
    for prediction in result.predictions:
        answer = prediction.parsed.get(field) if prediction.parsed else None
        pairs.append((prediction.expected(field), "<invalid>" if answer is None else str(answer)))
    return pairs, field
