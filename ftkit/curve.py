"""How much data do I need? The learning curve, and the kept answers of its runs.

`learning_curve` trains one recipe (`curve_recipe`: the fine-tune's) on nested subsets of
the training data (`curve_sizes`, `subsample`) and scores each run on half the test split
(`curve_tests`). Each run's answers are kept in its folder (`evaluate_run`), so that
`make main` can train and score the curve's runs ahead on a free lane
(`ftkit.course.ahead`) and notebook 04 reads them back instead of answering again.
Notebook 05's runs are the curve's smallest size (`SMALL_RUN`): its run at the series'
recipe is that point's run, trained once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ftkit import __version__, locks
from ftkit.cache import file_sha256
from ftkit.config import TrainConfig
from ftkit.evaluation import (
    GIVE_UP_AFTER,
    Approach,
    ApproachResult,
    build_prompt,
    generate_answers,
    pick_shots,
    restrict,
    scored,
    shots_for,
)
from ftkit.generation import Reply
from ftkit.reuse import training_code_id
from ftkit.task import Task
from ftkit.training import train


@dataclass
class CurvePoint:
    """The fine-tune trained on `examples` training examples, scored on the test split."""

    examples: int  # training examples used
    metric: str  # the metric scored (the primary one)
    score: float  # its value (a share)
    interval: tuple[float, float]  # bootstrap 95% interval
    seconds: float  # training and evaluation time of this point
    run_dir: str | None = None  # the run folder of this point's training


SMALL_RUN = 64  # examples: notebook 05's runs, and the smallest point of notebook 04's curve


def curve_sizes(n: int) -> list[int]:
    """Training-set sizes for a learning curve over `n` examples: `SMALL_RUN` (64), 200 and
    all of them, or, below 400 examples, a quarter, a half and all (at least 4 each).

    The smallest point is the size of notebook 05's runs: its run at the series' recipe is
    that point's run, trained once (`ftkit.reuse.shared_run`)."""
    parts = (SMALL_RUN, 200) if n >= 400 else (max(4, n // 4), max(4, n // 2))
    return sorted({*(size for size in parts if size < n), n})


def curve_recipe(config, run_name: str, runs_dir: str | Path | None = None,
                 smoke: bool = False) -> TrainConfig:  # fmt: skip
    """The learning curve's recipe: the fine-tune `config`'s base model, epochs, learning
    rate and batch size (QLoRA), with no validation or checkpoint along the way, in
    `runs_dir` (by default `config`'s); each point is the run `<run_name>-<examples>`
    (`curve_run`). `smoke`: two steps a run.

    Notebook 04 trains its curve with it, and `make main` trains the curve's runs ahead with
    it on a lane it leaves idle (`ftkit.course.ahead`): the same recipe, so the notebook
    reuses those runs (`ftkit.reuse`)."""
    return TrainConfig(
        model=config.model, method="qlora", num_epochs=config.num_epochs, lr=config.lr,
        batch_size=config.batch_size, eval_steps=None, save_steps=10_000,
        max_steps=2 if smoke else None, run_name=run_name,
        runs_dir=str(config.runs_dir if runs_dir is None else runs_dir),
    )  # fmt: skip


def curve_run(config, train_examples: Sequence, size: int, task: Task | None = None,
              seed: int = 0) -> tuple[TrainConfig, list]:  # fmt: skip
    """The curve point of `size` examples: its run's config (`<run_name>-<size>`, replacing
    an older run of that name that `ftkit.reuse` cannot reuse) and its training examples
    (`subsample`, nested across sizes)."""
    subset = subsample(train_examples, size, seed, task)
    name = f"{config.run_name or 'curve'}-{len(subset)}"
    return replace(config, run_name=name, overwrite=True), subset


def subsample(examples: Sequence, n: int, seed: int = 0, task: Task | None = None) -> list:
    """n examples, stratified as `task` says, so small subsets still show every class.

    Nested: the first 25 of a seed are among its first 50, so a learning curve adds data
    rather than swapping it.
    """
    examples = list(examples)
    if n >= len(examples):
        return examples
    return pick_shots(examples, n, seed, task)


def curve_tests(test_examples: Sequence, task: Task | None = None) -> list:
    """The test examples a learning curve scores its points on: half of them, stratified
    (`subsample`, seed 0). Notebook 04 and the runs `make main` trains ahead for it
    (`ftkit.course.ahead`) both take them from here, so the answers one keeps are the other's
    (`evaluate_run`)."""
    return subsample(test_examples, len(test_examples) // 2, seed=0, task=task)


ANSWERS = "answers"  # the folder of a run's kept answers (`evaluate_run`)
CURVE_APPROACH = Approach("fine-tuned", model="finetuned")  # how a curve's runs are asked


def evaluate_run(trained, examples: Sequence, approach: Approach, task: Task,
                 max_new_tokens: int | None = None, n_resamples: int = 1000, seed: int = 0,
                 shot_pool: Sequence = ()) -> ApproachResult:  # fmt: skip
    """`evaluate_approach` for a trained run (a `TrainResult`, its model loaded), its replies
    kept in the run's folder (`answers/<key>.json`) and scored from there by the next call
    that asks the same: the same adapter weights (hashed), examples, approach, shots and
    token budget. `make main` scores notebook 04's learning-curve runs this way ahead, on a
    free lane (`ftkit.course.ahead`), and the notebook reads the answers back instead of
    generating them again. One process generates a run's answers at a time (a lock beside
    them); another asking for them waits and reads them. Scores and intervals are computed
    every time, from the replies; the kept cost is the batches' (no one-at-a-time latency).
    """
    examples, shot_pool = list(examples), list(shot_pool)
    key = _answers_key(trained, examples, approach, task, max_new_tokens, shot_pool)
    path = Path(trained.run_dir) / ANSWERS / f"{key}.json"
    waiting = (f"Another process is scoring the run {Path(trained.run_dir).name!r}: waiting "
               "for its answers")  # fmt: skip
    lock = path.with_suffix(".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as error:  # a run folder this process may not write: answer, keep nothing
        print(f"[ftkit] Answers not kept in {lock.parent}: {error}")
        lock = None
    with locks.held(lock, waiting, f"scoring {trained.run_dir}"):
        kept = _read_answers(path, examples, approach, task, shot_pool, seed)
        if kept is None:
            replies, batched, _ = generate_answers(
                trained.model, trained.tokenizer, examples, approach, task, shot_pool,
                max_new_tokens, seed=seed,
            )  # fmt: skip
            if lock is not None:  # its folder made above
                try:
                    _write_answers(path, replies, batched)
                except OSError as error:  # a full disk: the answers stand, only not kept
                    print(f"[ftkit] Answers not kept in {path.parent}: {error}")
        else:
            replies, batched = kept
    return scored(approach, examples, replies, task, batched, [], n_resamples, seed)


def _answers_key(trained, examples, approach, task, max_new_tokens, shot_pool) -> str:
    """What decides a run's answers, hashed: its adapter's weights, the precision and device
    they answer in (bf16 and fp32 round apart), ftkit's version and code (its generation
    code: the digest `ftkit.reuse` keys runs on, since an edit that leaves training alone
    retrains a run to the same weights), the examples, the way of asking (and the examples
    its shots come from), the token budget and the rule that cuts hopeless JSON short."""
    weights = sorted(Path(trained.adapter_dir).glob("*.safetensors"))
    model = trained.model
    asked = {
        "weights": [file_sha256(path) for path in weights],
        "computed": [str(getattr(model, "dtype", "")), str(getattr(model, "device", ""))],
        "ftkit": [__version__, training_code_id()],
        "examples": [example.messages for example in examples],
        "approach": asdict(approach),
        "shot_pool": [example.messages for example in shot_pool] if approach.shots else [],
        "answer": task.answer,
        "max_new_tokens": max_new_tokens,
        "give_up_after": GIVE_UP_AFTER,
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:24]


def _read_answers(path: Path, examples: Sequence, approach: Approach, task: Task,
                  shot_pool: Sequence, seed: int) -> tuple[list[Reply], float] | None:  # fmt: skip
    """The replies kept at `path` for `examples` (and their batched seconds per request), or
    None: none kept, or a file that does not read as them."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        rows = kept["replies"]
        shots = shots_for(approach, examples, shot_pool, task, seed)
        replies = [Reply(build_prompt(example, approach, s), r["text"], r["prompt_tokens"],
                         r["new_tokens"], r["seconds"], r["gave_up"])
                   for example, s, r in zip(examples, shots, rows, strict=True)]  # fmt: skip
        return replies, float(kept["batch_seconds_per_request"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_answers(path: Path, replies: Sequence[Reply], batched: float) -> None:
    """Keep `replies` at `path` (its folder made), whole or not at all (written beside it,
    then renamed)."""
    kept = {"batch_seconds_per_request": batched,
            "replies": [{"text": r.text, "prompt_tokens": r.prompt_tokens,
                         "new_tokens": r.new_tokens, "seconds": r.seconds,
                         "gave_up": r.gave_up} for r in replies]}  # fmt: skip
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(kept), encoding="utf-8")
    os.replace(partial, path)


def learning_curve(
    sizes: Sequence[int],
    config,
    train_examples: Sequence,
    test_examples: Sequence,
    task: Task,
    approach: Approach | None = None,
    known: dict | None = None,
    max_new_tokens: int | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = print,
) -> list[CurvePoint]:
    """Train the same recipe on nested subsets of `sizes` examples; score each on the test set.

    `config` (a `TrainConfig`) is the recipe: every point gets the same epochs, lr and
    schedule, only less data (so small subsets also get fewer steps, as they would for a
    learner). `known` maps a size to an `ApproachResult` already measured (the full run of
    the comparison): its answers to `test_examples` are scored rather than trained again. A
    point whose run already exists unchanged (`ftkit.reuse`) is reused, not trained again,
    and answers it keeps for these examples are scored, not generated again (`evaluate_run`).
    """
    approach = approach or CURVE_APPROACH
    known = dict(known or {})
    points = []
    for size in sorted(sizes):
        started = time.perf_counter()
        if size in known:  # scored again on exactly these test examples
            result, run_dir = restrict(known[size], test_examples, n_resamples, seed), None
        else:
            trained = train(*curve_run(config, train_examples, size, task, seed), reuse=True)
            result = evaluate_run(trained, test_examples, approach, task, max_new_tokens,
                                  n_resamples, seed)  # fmt: skip
            run_dir = str(trained.run_dir)
            del trained
        primary = task.primary_metric
        point = CurvePoint(size, primary, result.scores[primary], result.intervals[primary],
                           time.perf_counter() - started, run_dir)  # fmt: skip
        points.append(point)
        if progress:
            progress(f"{size} examples: {primary} {100 * point.score:.1f} points "
                     f"({point.seconds:.0f} s)")  # fmt: skip
    return points
