"""Comparison: every approach on one split, the verdict, and how much data is needed.

`compare` runs `ftkit.evaluation.evaluate_approach` for every approach on the same
examples and returns a `Comparison`: the best prompting and the best fine-tuned approach
on the primary metric, the margin between them, a table with intervals, prompt tokens and
latency, and JSON for the report. `learning_curve` trains the same recipe on nested
subsets of the training data and scores each on the test examples.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ftkit import __version__, runs
from ftkit.baseline import CLASSICAL
from ftkit.cache import file_sha256
from ftkit.config import TrainConfig
from ftkit.evaluation import (
    GIVE_UP_AFTER,
    Approach,
    ApproachResult,
    Prediction,
    answer_budget,
    build_prompt,
    eval_batch_size,
    evaluate_approach,
    generate_answers,
    pick_shots,
    restrict,
    scored,
    shots_for,
)
from ftkit.generation import Reply
from ftkit.reuse import training_code_id
from ftkit.scoring import SIMILAR
from ftkit.task import Task
from ftkit.training import train


@dataclass
class Comparison:
    """Every approach's result on one split, and the verdict on the primary metric."""

    results: dict[str, ApproachResult]  # approach name -> result, in the order run
    task: Task  # what an answer is, and the metric the verdict is about
    settings: dict = field(default_factory=dict)  # temperature, shots, max_new_tokens, ...

    @property
    def primary(self) -> str:
        """The metric the verdict is about (the task's primary metric)."""
        return self.task.primary_metric

    def __getitem__(self, name: str) -> ApproachResult:
        return self.results[name]

    @property
    def best_prompting(self) -> ApproachResult:
        """The base-model approach with the highest primary score."""
        return max(self._where("base"), key=lambda r: r.scores[self.primary])

    @property
    def best_finetuned(self) -> ApproachResult:
        """The fine-tuned approach with the highest primary score."""
        return max(self._where("finetuned"), key=lambda r: r.scores[self.primary])

    @property
    def few_shot(self) -> ApproachResult | None:
        """The base model with fixed few-shot examples (not retrieved, not constrained)."""
        return next((r for r in self._where("base") if r.approach.shots
                     and not r.approach.retrieve and not r.approach.constrained), None)  # fmt: skip

    @property
    def classical(self) -> ApproachResult | None:
        """The classical baseline's result, if it was added (`add`)."""
        return next((r for r in self.results.values() if r.approach.model == CLASSICAL), None)

    @property
    def split_size(self) -> str:
        """How many examples of which split were scored, e.g. "160 test"."""
        return f"{self.settings.get('examples', '?')} {self.settings.get('split', 'test')}"

    @property
    def margin(self) -> float:
        """Best fine-tuned minus best prompting, on the primary metric (a share; x100: points)."""
        return self.best_finetuned.scores[self.primary] - self.best_prompting.scores[self.primary]

    def add(self, result: ApproachResult | None) -> Comparison:
        """Add another approach's result measured on the same examples (the classical
        baseline, say); None (an approach that does not apply) adds nothing."""
        if result is not None:
            self.results[result.name] = result
        return self

    def _where(self, model: str) -> list[ApproachResult]:
        chosen = [r for r in self.results.values() if r.approach.model == model]
        if not chosen:
            kind = {"base": "prompting", "finetuned": "fine-tuned"}.get(model, model)
            raise ValueError(f"This comparison has no {kind} approach.")
        return chosen

    def rows(self, metrics: Sequence[str] | None = None) -> list[dict]:
        """One dict per approach: scores (in points), intervals, tokens and latency."""
        rows = []
        for result in self.results.values():
            keys = metrics or list(result.scores)
            row = {"approach": result.name}
            for key in keys:
                low, high = result.intervals.get(key, (float("nan"),) * 2)
                row[key] = 100 * result.scores[key]
                row[f"{key}_ci"] = (100 * low, 100 * high)
            row |= {"prompt_tokens": result.prompt_tokens, "latency_ms": 1000 * result.latency_s}
            rows.append(row)
        return rows

    def table_html(self, metrics: Sequence[str] | None = None) -> str:
        """The comparison as an HTML table: points with 95% intervals, tokens, latency."""
        metrics = list(metrics or self.task.headline_metrics())
        head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
        body = []
        best = {
            max(chosen, key=lambda r: r.scores[self.primary]).name  # bold: each kind's best
            for kind in ("base", "finetuned")
            if (chosen := [r for r in self.results.values() if r.approach.model == kind])
        }
        for row in self.rows(metrics):
            cells = "".join(_cell(row[m], row[m + "_ci"]) for m in metrics)
            weight = "font-weight:bold" if row["approach"] in best else ""
            body.append(
                f"<tr style='{weight}'><td>{html.escape(row['approach'])}</td>{cells}"
                f"<td>{row['prompt_tokens']:.0f}</td><td>{row['latency_ms']:.0f}</td></tr>"
            )
        cut = self.settings.get("give_up_after") if self.task.answer == "json" else None
        cut_note = (
            f" An answer that could no longer be valid JSON was cut (…) after {cut} tokens: no "
            "score changes."
            if cut
            else ""
        )
        cannot = " n/a: the classical baseline cannot write free text." if any(
            math.isnan(row[m]) for row in self.rows(metrics) for m in metrics) else ""  # fmt: skip
        return (
            "<table><tr><th>approach</th>" + head + "<th>prompt tokens</th><th>latency (ms)</th>"
            "</tr>" + "".join(body) + "</table><p><small>Scores in points (x 100) with bootstrap "
            f"95% intervals over the {self.split_size} examples; latency "
            f"per request, one at a time.{cut_note}{cannot}</small></p>"
        )

    def samples_html(self, n: int = 4) -> str:
        """The first `n` test examples side by side: the reference and every approach's answer.

        Model output is escaped, shown as text and never rendered as HTML. An answer with
        everything right is green, partly right amber, nothing right red (`Prediction.hits`).
        """
        results = list(self.results.values())
        answers = [{p.id: p for p in r.predictions} for r in results]
        names = ["reference", *(r.name for r in results)]
        head = "".join(f"<th style='text-align:left'>{html.escape(name)}</th>" for name in names)
        rows = []
        for first in results[0].predictions[:n]:
            ticket = first.question if len(first.question) <= 300 else first.question[:300] + "..."
            rows.append(
                f"<tr><td colspan='{len(results) + 1}' style='text-align:left'><b>"
                f"{html.escape(first.id)}</b>: {html.escape(ticket)}</td></tr>"
            )
            cells = [_answer_cell(by_id.get(first.id), self.task) for by_id in answers]
            rows.append(f"<tr>{_answer_cell(first, self.task, True)}{''.join(cells)}</tr>")
        return (
            f"<table><tr>{head}</tr>{''.join(rows)}</table><p><small>Each question, then the "
            f"expected answer and every approach's answer. {_legend(self.task)}</small></p>"
        )

    def to_json(self, path: str | Path) -> Path:
        """Save scores, costs and every prediction as JSON (the report reads it)."""
        data = {
            "primary": self.primary,
            "task": self.task.to_dict(),
            "settings": self.settings,
            "results": [
                {
                    "approach": asdict(r.approach),
                    "scores": r.scores,
                    "intervals": r.intervals,
                    "prompt_tokens": r.prompt_tokens,
                    "new_tokens": r.new_tokens,
                    "latency_s": r.latency_s,
                    "batch_seconds_per_request": r.batch_seconds_per_request,
                    "predictions": [asdict(p) for p in r.predictions],
                }
                for r in self.results.values()
            ],
        }
        path = Path(path)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def compare(
    model,
    tokenizer,
    examples: Sequence,
    approaches: Iterable[Approach],
    task: Task,
    shot_pool: Sequence = (),
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    batch_size: int | None = None,
    latency_sample: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = print,
    give_up_after: int | None = GIVE_UP_AFTER,
    split: str = "test",
) -> Comparison:
    """Evaluate every approach on the same examples, scored as `task` says; see `Comparison`.

    `model` is the fine-tuned PeftModel (its adapter is switched off for base approaches);
    `max_new_tokens` defaults to `ftkit.evaluation.answer_budget`; `split` names the
    examples' split in tables and plots ("validation" when choosing settings).
    """
    examples = list(examples)
    max_new_tokens = max_new_tokens or answer_budget(task, examples, tokenizer)
    batch_size = batch_size or eval_batch_size(model)
    results = {}
    for approach in approaches:
        started = time.perf_counter()
        result = evaluate_approach(
            model, tokenizer, examples, approach, task, shot_pool, max_new_tokens, temperature,
            batch_size, latency_sample, n_resamples, seed, give_up_after=give_up_after,
        )  # fmt: skip
        results[approach.name] = result
        if progress:
            primary = task.primary_metric
            progress(
                f"{approach.name}: {primary} {100 * result.scores[primary]:.1f} points, "
                f"{result.prompt_tokens:.0f} prompt tokens, {1000 * result.latency_s:.0f} ms "
                f"per request ({time.perf_counter() - started:.0f} s)"
            )
    settings = {"examples": len(examples), "max_new_tokens": max_new_tokens,
                "temperature": temperature, "seed": seed, "batch_size": batch_size,
                "give_up_after": give_up_after, "split": split}  # fmt: skip
    return Comparison(results, task, settings=settings)


def with_settings(approaches: Iterable[Approach], shots: int) -> list[Approach]:
    """The same approaches with the few-shot one re-set to `shots` examples (renamed)."""
    changed = []
    for approach in approaches:
        if approach.shots:
            name = approach.name.replace(f"{approach.shots}-shot", f"{shots}-shot")
            name = name.replace(f"{approach.shots} retrieved", f"{shots} retrieved")
            approach = replace(approach, name=name, shots=shots)
        changed.append(approach)
    return changed


_PRE = "white-space:pre-wrap;margin:0;font-size:85%;background:none;color:inherit"


def _cell(value: float, interval: tuple[float, float]) -> str:
    """One score as a table cell: points with the interval, or n/a."""
    if math.isnan(value):
        return "<td>n/a</td>"
    return f"<td>{value:.1f} <small>[{interval[0]:.1f}, {interval[1]:.1f}]</small></td>"


def _answer_cell(prediction: Prediction | None, task: Task, reference: bool = False) -> str:
    """One answer as an escaped, coloured table cell (the reference is left uncoloured)."""
    if prediction is None:
        return "<td>(no answer)</td>"
    if reference:
        text = html.escape(prediction.reference)
        return f"<td style='text-align:left'><pre style='{_PRE}'>{text}</pre></td>"
    hits = prediction.hits(task)
    right = sum(hits.values())
    colour = "#d7f0d8" if right == len(hits) else "#fbe3b8" if right else "#f6d0d0"
    if task.answer == "json":
        note = f"{right}/{len(hits)} labels right"
    elif task.answer == "label":
        note = "right" if right else "wrong"
    else:
        note = f"ROUGE-L {prediction.similarity or 0:.2f}"
    return (
        f"<td style='text-align:left;background:{colour};color:#222'><pre style='{_PRE}'>"
        f"{html.escape(prediction.output)}{' …' if prediction.gave_up else ''}</pre>"
        f"<small>{note}</small></td>"
    )


def _legend(task: Task) -> str:
    """What the colours of `samples_html` mean for this task."""
    if task.answer == "json":
        fields = len(task.label_fields)
        return f"Green: all {fields} label fields right; amber: some; red: none."
    if task.answer == "label":
        return "Green: the right label; red: a wrong one."
    return f"Green: ROUGE-L at least {SIMILAR} against the reference; red: below."


# --- how much data do I need? ------------------------------------------------------------


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
    with runs.held(lock, waiting, f"scoring {trained.run_dir}"):
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
