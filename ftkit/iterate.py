"""Change one thing, retrain, measure: the data changes and measurements of notebook 05.

- `skewed` and `rebalanced`: a deliberately unbalanced training subset, and the same budget
  resampled to equal classes (the bias experiment);
- `class_recall` and `answer_shares`: per class, how often the reference was found and how
  often the class was answered (a drift toward the majority shows in both);
- `train_apart`: a run trained in a fresh Python process, so that its peak memory is its
  own and not the notebook's (the full / LoRA / QLoRA table);
- `runtime_memory_gb`: what that process holds before it loads a model;
- `score_checkpoints` and `choose_checkpoint`: a run's checkpoints scored with the task's
  own metric on validation examples, and the one to ship (early stopping on the metric, not
  only on the loss).

Everything here works on any task with a label field (JSON or label answers).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ftkit.config import TrainConfig, TrainingError
from ftkit.evaluation import Approach, ApproachResult, class_pairs, evaluate_approach
from ftkit.progress import stop_if_requested
from ftkit.reuse import load_adapter_into
from ftkit.runs import Run, adapter_source, load_run, read_run
from ftkit.task import Task
from ftkit.trainer import loss_on


def class_of(example, field: str) -> str:
    """The class of a training example: its `field` column, or that field of its answer."""
    value = example.meta.get(field)
    if value is None:
        answer = example.messages[-1]["content"]
        try:
            value = json.loads(answer).get(field)
        except (json.JSONDecodeError, AttributeError):
            value = answer.strip()
    if value is None:
        raise ValueError(f"class_of: example has no {field!r} (column or answer field).")
    return str(value)


def class_counts(examples: Sequence, field: str) -> Counter:
    """How many examples each class of `field` has."""
    return Counter(class_of(e, field) for e in examples)


def skewed(
    examples: Sequence, field: str, n: int, majority: str, majority_share: float = 0.6,
    rare: str | None = None, rare_count: int = 2, seed: int = 0,
) -> list:  # fmt: skip
    """`n` examples where `majority` is `majority_share` of them, `rare` (if given) has only
    `rare_count`, and the other classes share the rest evenly; shuffled with `seed`.

    Raises ValueError naming the class that has too few examples to draw from.
    """
    rng = random.Random(seed)
    by_class: dict[str, list] = {}
    for example in examples:
        by_class.setdefault(class_of(example, field), []).append(example)
    for name in (majority, rare):
        if name is not None and name not in by_class:
            raise ValueError(f"skewed: no class {name!r} in {field!r}; classes: {sorted(by_class)}")
    want = {majority: round(n * majority_share)}
    if rare is not None:
        want[rare] = rare_count
    others = [c for c in sorted(by_class) if c not in want]
    left = n - sum(want.values())
    for i, name in enumerate(others):
        want[name] = left // len(others) + (i < left % len(others))
    chosen = []
    for name, count in want.items():
        pool = by_class[name]
        if count > len(pool):
            raise ValueError(f"skewed: {count} examples of {name!r} wanted, {len(pool)} exist.")
        chosen += rng.sample(pool, count)
    rng.shuffle(chosen)
    return chosen


def rebalanced(examples: Sequence, field: str, n: int | None = None, seed: int = 0) -> list:
    """The same number of examples (or `n`), resampled so every class has an equal share.

    Classes with fewer examples than their share are repeated (drawn with replacement);
    bigger ones are subsampled. The training budget (examples, hence steps) stays the same,
    so only the balance changes. The cost: a rare class's few examples are seen many times.
    """
    rng = random.Random(seed)
    by_class: dict[str, list] = {}
    for example in examples:
        by_class.setdefault(class_of(example, field), []).append(example)
    n = len(examples) if n is None else n
    names = sorted(by_class)
    chosen = []
    for i, name in enumerate(names):
        count = n // len(names) + (i < n % len(names))
        pool = by_class[name]
        if count <= len(pool):
            chosen += rng.sample(pool, count)
        else:  # every example once, then repeats
            chosen += pool + [rng.choice(pool) for _ in range(count - len(pool))]
    rng.shuffle(chosen)
    return chosen


def class_recall(result, field: str | None = None) -> dict[str, tuple[float, int]]:
    """Per reference class of an `ApproachResult`: (share found, number of examples)."""
    pairs, _ = class_pairs(result, field)
    recall = {}
    for name in sorted({truth for truth, _ in pairs}):
        answers = [answer for truth, answer in pairs if truth == name]
        recall[name] = (sum(a == name for a in answers) / len(answers), len(answers))
    return recall


def answer_shares(result, field: str | None = None) -> dict[str, float]:
    """Share of all answers that named each class (invalid answers under "<invalid>")."""
    pairs, _ = class_pairs(result, field)
    counts = Counter(answer for _, answer in pairs)
    return {name: count / len(pairs) for name, count in counts.most_common()}


def train_apart(
    config: TrainConfig, train_examples: Sequence, validation_examples: Sequence | None = None,
    reuse: bool = True, timeout_s: float | None = None,
) -> Run:  # fmt: skip
    """Train `config` in a fresh Python process (`python -m ftkit.training`) and read the run.

    Its result.json then holds that process's own peak memory, not this one's (a notebook's
    process keeps the peak of everything it loaded before). With `reuse`, a finished run
    with the same fingerprint is read back instead (`ftkit.reuse`). The examples travel as
    JSONL in a temporary folder; the run folder is `config.runs_dir/config.run_name`.
    """
    if not config.run_name:
        raise TrainingError("train_apart: give the config a run_name (the folder to read back).")
    stop_if_requested(f"training {config.run_name}")  # the runner's Ctrl-C
    with tempfile.TemporaryDirectory(prefix="ftkit-apart-") as folder:
        folder = Path(folder)
        files = {"train": train_examples, "validation": validation_examples}
        args = [sys.executable, "-m", "ftkit.training", "--config", str(folder / "config.json")]
        (folder / "config.json").write_text(json.dumps(asdict(config)))
        for split, examples in files.items():
            if examples is None:
                continue
            path = folder / f"{split}.jsonl"
            with path.open("w", encoding="utf-8") as out:
                for example in examples:
                    out.write(json.dumps(example.to_dict()) + "\n")
            args += [f"--{split}", str(path)]
        if reuse:
            args.append("--reuse")
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "TQDM_DISABLE": "1"})  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise TrainingError(
            f"train_apart: training {config.run_name!r} in a fresh process failed (exit "
            f"{done.returncode}). Its last lines:\n" + "\n".join(lines[-12:])
        )
    return read_run(Path(config.runs_dir) / config.run_name)


def runtime_memory_gb() -> float:
    """Peak memory (GiB) of a fresh Python process that imports what training imports and
    loads no model: the part of a run's measured peak that is the runtime, not the run."""
    code = "import ftkit.models, peft, transformers, ftkit.training as t; print(t.peak_rss_gb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def score_checkpoints(
    run: str | Path | Run, examples: Sequence, task: Task, steps: Sequence[int] | None = None,
    max_new_tokens: int | None = None, batch_size: int | None = None,
) -> dict[int, ApproachResult]:  # fmt: skip
    """Each checkpoint of a LoRA or QLoRA run (or those at `steps`) scored on `examples`.

    Give validation examples: the choice made on these scores (`choose_checkpoint`) is then
    scored once on the test split. The base model loads once; each checkpoint's adapter
    weights are swapped in (`ftkit.reuse.load_adapter_into`), so a checkpoint costs its
    generation only.
    """
    scores = {}
    for step, model, tokenizer in _each_checkpoint(run, steps, "score_checkpoints"):
        scores[step] = evaluate_approach(
            model, tokenizer, examples, Approach(f"step {step}", model="finetuned"), task,
            max_new_tokens=max_new_tokens, batch_size=batch_size, latency_sample=0,
        )  # fmt: skip
    return scores


def checkpoint_losses(
    run: str | Path | Run, examples: Sequence, steps: Sequence[int] | None = None
) -> dict[int, float]:
    """Each checkpoint's mean loss per answer token on `examples` (`ftkit.trainer.loss_on`,
    the measure the run's validation and early stopping use), loaded as `score_checkpoints`
    loads them: the base model once, each checkpoint's adapter swapped in."""
    return {
        step: loss_on(model, tokenizer, examples)
        for step, model, tokenizer in _each_checkpoint(run, steps, "checkpoint_losses")
    }


def _each_checkpoint(run: str | Path | Run, steps: Sequence[int] | None, caller: str):
    """(step, model, tokenizer) for each checkpoint at `steps` (all kept ones if None), one
    model whose adapter weights are swapped in turn."""
    run = run if isinstance(run, Run) else read_run(run)
    if run.config.method == "full":
        raise ValueError(
            f"{caller}: {run.name!r} is a full fine-tune (a whole model per "
            "checkpoint): load each one with load_run(..., checkpoint=step) instead."
        )
    steps = list(run.checkpoints if steps is None else steps)
    if not steps:
        raise ValueError(f"{caller}: run {run.name!r} kept no checkpoints to score.")
    missing = sorted(set(steps) - set(run.checkpoints))
    if missing:
        raise ValueError(
            f"{caller}: run {run.name!r} has no checkpoint at step(s) {missing}; it "
            f"kept {run.checkpoints} (keep_checkpoints=None keeps them all)."
        )
    loaded = load_run(run.path, checkpoint=steps[0])
    for step in steps:
        load_adapter_into(loaded.model, adapter_source(run, step))
        yield step, loaded.model, loaded.tokenizer


def choose_checkpoint(scores: dict[int, ApproachResult], metric: str) -> int:
    """The step whose checkpoint scored highest on `metric`; on a tie the earliest (fewer
    steps on the same data: the less overfit of equals)."""
    if not scores:
        raise ValueError("choose_checkpoint: no scored checkpoints.")
    return max(sorted(scores), key=lambda step: scores[step].scores[metric])
