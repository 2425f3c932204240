"""Pictures of what the core computes: matplotlib figures for the notebooks.

Every function returns a `matplotlib.figure.Figure` (a notebook shows it once, when it is
the cell's last value) and leaves nothing open in pyplot's global state. Pass `ax=` to draw
into an axes of your own figure instead.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ftkit.catalog import GPU, get_gpu
from ftkit.course.shipping import size_mb
from ftkit.evaluation import class_pairs
from ftkit.memory import COMPONENTS, FITS_BELOW, MemoryEstimate
from ftkit.task import Task

# One colour per memory part, the same in every plot: model state in blues, per-step
# memory in oranges, overhead in grey.
PART_COLOURS = {
    "weights": "#1f4e79",
    "adapters": "#4a90c2",
    "gradients": "#8fbfe0",
    "optimizer_states": "#c6dbef",
    "activations": "#e6550d",
    "logits": "#fdae6b",
    "overhead": "#bdbdbd",
}


def plot_memory_breakdown(
    estimates: MemoryEstimate | Mapping[str, MemoryEstimate] | Iterable[MemoryEstimate],
    gpu: GPU | str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw stacked bars of where the memory goes, one bar per estimate, against a GPU's size."""
    labelled = _labelled(estimates)
    if not labelled:
        raise ValueError("plot_memory_breakdown: give at least one MemoryEstimate.")
    ax = ax if ax is not None else _new_axes(rows=len(labelled))
    rows, left = range(len(labelled)), [0.0] * len(labelled)
    for part in COMPONENTS:
        widths = [estimate.components()[part] for estimate in labelled.values()]
        label = part.replace("_", " ")
        ax.barh(rows, widths, left=left, color=PART_COLOURS[part], label=label, height=0.6)
        left = [start + width for start, width in zip(left, widths, strict=True)]
    for row, estimate in zip(rows, labelled.values(), strict=True):
        ax.text(estimate.total, row, f" {estimate.total:.1f} GiB", va="center", fontsize=9)
    ax.set_yticks(list(rows), list(labelled))
    ax.invert_yaxis()  # first estimate on top
    ax.set_xlabel("peak GPU memory, GiB (2**30 bytes)")
    ax.set_title(_title(labelled))
    if gpu is not None:
        _draw_gpu(ax, get_gpu(gpu))
    ax.set_xlim(0, _right_edge(ax, labelled))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return ax.figure


def _labelled(estimates) -> dict[str, MemoryEstimate]:
    """Labels for the bars: the dict's keys, or each estimate's method (and model if mixed)."""
    if isinstance(estimates, MemoryEstimate):
        estimates = [estimates]
    if isinstance(estimates, Mapping):
        return dict(estimates)
    estimates = list(estimates)
    mixed = len({e.model for e in estimates}) > 1
    names = [f"{e.model}\n{e.method}" if mixed else e.method for e in estimates]
    return {_unique(name, i, names): estimates[i] for i, name in enumerate(names)}


def _unique(name: str, index: int, names: list[str]) -> str:
    """Number repeated labels ("qlora", "qlora (2)") so that no bar hides another."""
    repeats = names[:index].count(name)
    return f"{name} ({repeats + 1})" if repeats else name


def _title(labelled: dict[str, MemoryEstimate]) -> str:
    models = sorted({e.model for e in labelled.values()})
    first = next(iter(labelled.values()))
    shape = f"batch {first.batch_size} x {first.max_length} tokens"
    return f"{models[0]}, {shape}" if len(models) == 1 else f"where the memory goes, {shape}"


def _draw_gpu(ax: Axes, card: GPU) -> None:
    """The card's memory as a solid line, and the "fits" threshold as a dotted one."""
    ax.axvline(card.memory_gib, color="#b2182b", linewidth=2, label=f"{card.name}")
    ax.axvline(FITS_BELOW * card.memory_gib, color="#b2182b", linestyle=":", linewidth=1,
               label=f"{FITS_BELOW:.0%} of {card.name}")  # fmt: skip


def _right_edge(ax: Axes, labelled: dict[str, MemoryEstimate]) -> float:
    """Room for the total's text and for a GPU line beyond the longest bar."""
    lines = [line.get_xdata()[0] for line in ax.get_lines()]
    return 1.15 * max([e.total for e in labelled.values()] + lines)


def _new_axes(rows: int) -> Axes:
    """A figure sized for its bars. pyplot makes it (so Jupyter's inline backend can show it)
    and then lets go of it, so a notebook shows it once, as the cell's value."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * rows), layout="constrained")
    plt.close(figure)
    return ax


def plot_token_lengths(
    stats_or_lengths, max_length: int | None = None, ax: Axes | None = None
) -> Figure:
    """Histogram of example lengths in tokens, with the 95th percentile and `max_length` marked.

    Takes a `TokenStats` (from `ftkit.estimates.token_stats`) or a list of lengths.
    """
    lengths = np.asarray(getattr(stats_or_lengths, "lengths", stats_or_lengths))
    if lengths.size == 0:
        raise ValueError("plot_token_lengths: no lengths to plot (token_stats of no examples?).")
    ax = ax if ax is not None else _new_axes(rows=4)
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths.tolist())))), color="#4a90c2")
    p95 = float(np.percentile(lengths, 95))
    ax.axvline(p95, color="#e6550d", linestyle="--", label=f"95% are at most {p95:.0f} tokens")
    if max_length is not None:
        cut = int((lengths > max_length).sum())
        ax.axvline(max_length, color="#b2182b", linewidth=2,
                   label=f"max_length {max_length} ({cut} longer: truncated)")  # fmt: skip
    ax.set_xlabel("tokens per example (chat template included)")
    ax.set_ylabel("examples")
    ax.set_title(f"{lengths.size} examples, {int(lengths.sum()):,} tokens")
    ax.legend(fontsize=8, frameon=False)
    return ax.figure


def plot_label_distribution(
    examples_by_split: Mapping[str, Iterable],
    field: str | Task = "category",
    share: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars: how many examples of each class every split holds.

    `field` is a record field (read from an Example's `.meta`, or a JSONL row's key), or a
    `Task`, whose `stratify` says what the class is (`Task.value_of`). `share=True` plots
    each split's fractions instead, so splits of different sizes compare (a stratified split
    shows bars of equal height).
    """
    name = field.stratify if isinstance(field, Task) else field
    ax = ax if ax is not None else _new_axes(rows=4)
    if name is None:  # a task with nothing to stratify on: say so rather than fail
        sizes = ", ".join(f"{split} {len(list(rows))}" for split, rows in examples_by_split.items())
        ax.text(0.5, 0.5, f"no class to balance splits on ({sizes} examples):\nthe splits are "
                "random", ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        return ax.figure
    counts = {split: _count_field(rows, field) for split, rows in examples_by_split.items()}
    values = sorted({value for per_split in counts.values() for value in per_split})
    if not values:
        raise ValueError(f"plot_label_distribution: no example has a {name!r} value.")
    width = 0.8 / len(counts)
    for k, (split, per_split) in enumerate(counts.items()):
        positions = [i + (k - (len(counts) - 1) / 2) * width for i in range(len(values))]
        total = sum(per_split.values())
        heights = [per_split.get(v, 0) / (total if share else 1) for v in values]
        ax.bar(positions, heights, width, label=f"{split} ({total})")
    ax.set_xticks(range(len(values)), [_short(v) for v in values], rotation=30, ha="right")
    ax.set_ylabel("share of the split" if share else "examples")
    ax.set_title(f"{name} per split")
    ax.legend(fontsize=8, frameon=False)
    return ax.figure


def _count_field(rows: Iterable, field: str | Task) -> Counter:
    """How often each value of `field` occurs; examples without it are left out."""
    counts: Counter = Counter()
    for row in rows:
        if isinstance(field, Task):
            value = field.value_of(row)
        elif isinstance(row, Mapping):  # a JSONL row
            value = row.get(field)
        else:  # an Example: the field sits in .meta (or is an attribute)
            value = (getattr(row, "meta", None) or {}).get(field, getattr(row, field, None))
        if value is not None:
            counts[str(value)] += 1
    return counts


# --- notebooks/03_qlora_training.ipynb ------------------------------------------------


def _records(run_or_records) -> list[dict]:
    """Metrics records from a TrainResult (`.history`), a Run (`.metrics`) or a list."""
    for attribute in ("history", "metrics"):
        if hasattr(run_or_records, attribute):
            return list(getattr(run_or_records, attribute))
    return list(run_or_records)


def plot_losses(
    run_or_records, ax: Axes | None = None, label: str = "", colour: str = "#1f4e79",
    stopped_at: int | None = None,
) -> Figure:  # fmt: skip
    """Training loss (line) and validation loss (dots) against steps; the best point starred.

    Takes a `TrainResult`, a `Run` or a list of metrics records (ftkit.callbacks); also draws
    the live plot of `TrainingMonitor`.
    """
    records = _records(run_or_records)
    ax = ax if ax is not None else _new_axes(rows=5)
    train = [(r["step"], r["loss"]) for r in records if r.get("event") == "train"]
    evals = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval"]
    prefix = f"{label} " if label else ""
    if train:
        ax.plot(*zip(*train, strict=True), color=colour, alpha=0.6, linewidth=1.2,
                label=f"{prefix}training loss")  # fmt: skip
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", color=colour, markersize=5, linewidth=1.8,
                label=f"{prefix}validation loss")  # fmt: skip
        step, loss = min(evals, key=lambda point: point[1])
        ax.plot([step], [loss], "*", color="#e6550d", markersize=15, zorder=5,
                label=f"{prefix}best: {loss:.3f} at step {step}")  # fmt: skip
    if stopped_at is not None:
        ax.axvline(stopped_at, color="#b2182b", linestyle=":", label=f"stopped: step {stopped_at}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy per trained token)")
    if train or evals:
        ax.legend(fontsize=8, frameon=False)
    return ax.figure


def plot_checkpoint_scores(
    scores: Mapping, metric: str, chosen: int | None = None, loss_best: int | None = None,
    ax: Axes | None = None,
) -> Figure:  # fmt: skip
    """A run's checkpoints scored on `metric` (`ftkit.iterate.score_checkpoints`): percent
    with its 95% interval against the step, the chosen one starred, the lowest-loss one
    marked."""
    if not scores:
        raise ValueError("plot_checkpoint_scores: no scored checkpoints.")
    ax = ax if ax is not None else _new_axes(rows=4)
    steps = sorted(scores)
    value = np.array([100 * scores[s].scores[metric] for s in steps])
    low, high = (np.array([100 * scores[s].intervals[metric][i] for s in steps]) for i in (0, 1))
    ax.errorbar(steps, value, yerr=[value - low, high - value], fmt="o-", color="#1f4e79",
                capsize=4, markersize=6, linewidth=1.8,
                label=f"{metric}, 95% interval")  # fmt: skip
    if chosen is not None:
        ax.plot([chosen], [100 * scores[chosen].scores[metric]], "*", color="#e6550d",
                markersize=16, zorder=5, label=f"chosen: step {chosen}")  # fmt: skip
    if loss_best is not None:
        ax.axvline(loss_best, color="#636363", linestyle=":",
                   label=f"lowest validation loss: step {loss_best}")  # fmt: skip
    ax.set_xticks(steps)
    ax.set_xlabel("checkpoint (optimizer step)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, max(5.0, min(100.0, float(high.max()) * 1.25)))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside
    return ax.figure


def plot_runs(runs, ax: Axes | None = None, log_loss: bool = False) -> Figure:
    """Several runs' loss curves on one plot, one colour per run, to compare versions.

    Takes `Run`s (`ftkit.runs.list_runs`), `TrainResult`s, or a dict of label -> either.
    `log_loss=True` draws the loss on a log scale (plain numbers on its ticks), for runs
    whose losses differ by orders of magnitude (a learning rate that blew up). With more
    than two runs the legend sits beside the plot, off the curves.
    """
    if isinstance(runs, Mapping):
        labelled = dict(runs)
    else:
        runs = list(runs)
        names = [_run_label(run) for run in runs]
        labelled = {_unique(names[i], i, names): run for i, run in enumerate(runs)}
    if not labelled:
        raise ValueError("plot_runs: give at least one run (see ftkit.runs.list_runs()).")
    ax = ax if ax is not None else _new_axes(rows=6)
    colours = ["#1f4e79", "#e6550d", "#31a354", "#756bb1", "#636363", "#de2d26"]
    for i, (label, run) in enumerate(labelled.items()):
        plot_losses(run, ax=ax, label=label, colour=colours[i % len(colours)])
    ax.set_title(f"{len(labelled)} runs" if len(labelled) > 1 else next(iter(labelled)))
    if log_loss:
        ax.set_yscale("log")
        _readable_log_ticks(ax, axis="y")
    if len(labelled) > 2:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return ax.figure


def _run_label(run) -> str:
    """A run's name: `Run.name`, or the folder of a `TrainResult`."""
    if hasattr(run, "name"):
        return run.name
    return getattr(getattr(run, "run_dir", None), "name", None) or "run"


# --- notebooks/04_prompt_vs_finetune.ipynb --------------------------------------------

# Prompting the base model grey, the fine-tune blue, the classical baseline green.
APPROACH_COLOURS = {"base": "#9e9e9e", "finetuned": "#1f4e79", "classical": "#31a354"}
MARKERS = "osD^vP*Xhp<>"  # one per approach, in the comparison's order


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=size, layout="constrained")
    plt.close(figure)
    return ax


def _interval(result, metric: str) -> tuple[float, float]:
    low, high = result.intervals.get(metric, (result.scores[metric],) * 2)
    return 100 * low, 100 * high


def plot_approach_scores(comparison, metrics=None, ax: Axes | None = None) -> Figure:
    """Grouped bars: each approach's score on each metric, in points, with 95% intervals."""
    results = list(comparison.results.values())
    if not results:
        raise ValueError("plot_approach_scores: the comparison holds no approach.")
    metrics = list(metrics or comparison.task.headline_metrics()[:2])
    ax = _axes(ax, (8, 1.5 + 0.45 * len(results) * len(metrics)))
    height = 0.8 / len(metrics)
    shades = ["#1f4e79", "#6baed6", "#e6550d", "#fdae6b", "#31a354", "#a1d99b"]
    for m, metric in enumerate(metrics):
        rows = [i + m * height for i in range(len(results))]
        values = [100 * r.scores[metric] for r in results]
        spans = [_interval(r, metric) for r in results]
        errors = [[v - lo for v, (lo, _) in zip(values, spans, strict=True)],
                  [hi - v for v, (_, hi) in zip(values, spans, strict=True)]]  # fmt: skip
        ax.barh(rows, values, height=height, xerr=errors, capsize=3, label=metric,
                color=shades[m % len(shades)])  # fmt: skip
        for row, value, (_, high) in zip(rows, values, spans, strict=True):
            cannot = math.isnan(value)  # the classical baseline writes no free text
            ax.text(1 if cannot else high + 1, row, "n/a" if cannot else f"{value:.0f}",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(results))], [r.name for r in results])
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("points (x 100), bars: bootstrap 95% interval")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_title(f"{comparison.split_size} examples")
    return ax.figure


def plot_quality_vs_cost(
    comparison,
    metric: str | None = None,
    cost: str = "prompt_tokens",
    ax: Axes | None = None,
    legend: bool = True,
) -> Figure:
    """Quality against cost per request: prompt tokens (`cost="prompt_tokens"`) or latency
    (`cost="latency"`). Up and to the left is better. Each approach has its own marker, named
    in a legend to the right (`legend=False` leaves it out, for a second panel); colour says
    its kind. The classical baseline reads no prompt: it has no place on the token axis and
    the panel says so.
    """
    metric = metric or comparison.primary
    ax = _axes(ax, (8.5, 4))
    left_out = []
    for index, result in enumerate(comparison.results.values()):
        x = result.prompt_tokens if cost == "prompt_tokens" else 1000 * result.latency_s
        y = 100 * result.scores[metric]
        if not x > 0 or math.isnan(y):  # nothing to place on a log axis
            left_out.append(result.name)
            continue
        low, high = _interval(result, metric)
        colour = APPROACH_COLOURS.get(result.approach.model, "#636363")
        ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt=MARKERS[index % len(MARKERS)],
                    color=colour, capsize=4, markersize=8, label=result.name)  # fmt: skip
    ax.set_xscale("log")
    _readable_log_ticks(ax)
    label = "prompt tokens per request (log scale)" if cost == "prompt_tokens" else (
        "latency per request, ms (log scale)")  # fmt: skip
    if left_out:
        label += f"\nnot shown, it reads no prompt: {', '.join(left_out)}"
    ax.set_xlabel(label)
    ax.set_ylabel(f"{metric}, points")
    ax.set_ylim(-5, 105)
    kinds = {r.approach.model for r in comparison.results.values()}
    ax.set_title("; ".join(f"{colour}: {name}" for kind, (colour, name) in _KINDS.items()
                           if kind in kinds), fontsize=10)  # fmt: skip
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return ax.figure


_KINDS = {  # an approach's model -> (its colour in words, what it is)
    "base": ("grey", "prompting the base model"),
    "finetuned": ("blue", "the fine-tune"),
    "classical": ("green", "classical"),
}


def _readable_log_ticks(ax: Axes, axis: str = "x") -> None:
    """Plain numbers on a log axis (50, 100, 200), not 10^2, and no crowded minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    which = ax.xaxis if axis == "x" else ax.yaxis
    which.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    which.set_major_formatter(formatter)
    which.set_minor_formatter(NullFormatter())


def plot_confusion(result, field: str | None = None, ax: Axes | None = None) -> Figure:
    """Confusion matrix of a class: reference rows, answered columns (invalid JSON, or a value
    outside the reference labels, gets its own column).

    The class is `field` of a JSON answer (default: the task's stratify field, else its first
    label field), or the answer itself for a label task; a free-text task has none.
    """
    pairs, name = class_pairs(result, field)
    labels = sorted({truth for truth, _ in pairs})
    extra = sorted({answer for _, answer in pairs} - set(labels))
    columns = labels + extra
    counts = np.zeros((len(labels), len(columns)), dtype=int)
    for truth, answer in pairs:
        counts[labels.index(truth), columns.index(answer)] += 1
    ax = _axes(ax, (1.8 + 0.75 * len(columns), 1.2 + 0.5 * len(labels)))
    ax.imshow(counts, cmap="Blues", aspect="auto")
    for (row, column), value in np.ndenumerate(counts):
        if value:
            dark = value > counts.max() / 2
            ax.text(column, row, str(value), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)), [_short(c) for c in columns], rotation=35, ha="right",
                  fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(labels)), [_short(c) for c in labels], fontsize=8)
    ax.set_xlabel(f"answered {name}")
    ax.set_ylabel(f"reference {name}")
    right = int(np.trace(counts[:, : len(labels)]))
    ax.set_title(f"{result.name}: {right}/{len(pairs)} {name} right")
    return ax.figure


def plot_best_confusions(comparison) -> Figure | None:
    """The confusion matrices of the best prompting and the best fine-tuned approach, side
    by side; None for a free-text task (it has no classes)."""
    if comparison.task.answer == "text":
        return None
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(15, 4.8), layout="constrained")
    plot_confusion(comparison.best_prompting, ax=axes[0])
    plot_confusion(comparison.best_finetuned, ax=axes[1])
    plt.close(figure)
    return figure


def _short(label: str, width: int = 24) -> str:
    """A tick label cut to `width` characters, so long answers do not push the plot away."""
    return label if len(label) <= width else label[: width - 1] + "…"


def plot_learning_curve(points, reference=None, ax: Axes | None = None) -> Figure:
    """The fine-tune's score against the number of training examples, with 95% intervals;
    `reference` (an ApproachResult, e.g. the best prompting approach) as a horizontal band.

    `points` are `ftkit.curve.CurvePoint`s.
    """
    from matplotlib.ticker import NullFormatter

    points = sorted(points, key=lambda p: p.examples)
    if not points:
        raise ValueError("plot_learning_curve: no points (see ftkit.curve.learning_curve).")
    ax = _axes(ax, (7, 4))
    sizes = [p.examples for p in points]
    values = [100 * p.score for p in points]
    lows = [100 * p.interval[0] for p in points]
    highs = [100 * p.interval[1] for p in points]
    ax.fill_between(sizes, lows, highs, color="#1f4e79", alpha=0.15, label="95% interval")
    ax.plot(sizes, values, "o-", color="#1f4e79", label=f"fine-tuned: {points[0].metric}")
    for x, y in zip(sizes, values, strict=True):
        ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 8), ha="center",
                    fontsize=8)  # fmt: skip
    if reference is not None:
        metric = points[0].metric
        low, high = _interval(reference, metric)
        ax.axhspan(low, high, color="#9e9e9e", alpha=0.2)
        ax.axhline(100 * reference.scores[metric], color="#636363", linestyle="--",
                   label=f"best prompting: {reference.name}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())  # no "3x10^2" between (or over) the sizes
    ax.margins(x=0.08)  # the first and last points clear of the frame
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(f"{points[0].metric}, points")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return ax.figure


def plot_exports(rows: Iterable[Mapping], metric: str, questions: int) -> Figure:
    """What each export weighs against how it answers: size (MB) and the score on the check
    questions side by side, one bar per export (`exports_html`'s rows, which carry "form",
    "path", "score" and "same"), the number of answers identical to the merged model's at
    the end of each score bar."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    figure, (sizes, scores) = plt.subplots(1, 2, sharey=True, layout="constrained",
                                           figsize=(12, 0.5 * len(rows) + 1.6))  # fmt: skip
    plt.close(figure)
    names = [row["form"] for row in rows]
    where = np.arange(len(rows))[::-1]  # the first row on top
    megabytes = [size_mb(Path(row["path"])) for row in rows]  # as exports_html shows them
    sizes.barh(where, megabytes, color="#4a90c2")
    for y, mb in zip(where, megabytes, strict=True):
        sizes.text(mb, y, f" {mb:,.0f}", va="center", fontsize=9)
    sizes.set_yticks(where, [_short(name, 44) for name in names])
    sizes.set_xlabel("size on disk (MB)")
    sizes.set_xlim(0, max(megabytes) * 1.18)
    values = [row["score"] for row in rows]
    scores.barh(where, values, color="#e6550d")
    for y, row in zip(where, rows, strict=True):
        scores.text(row["score"], y, f" {row['score']:.0f} · {row['same']}/{questions} same",
                    va="center", fontsize=9)  # fmt: skip
    noun = "question" if questions == 1 else "questions"
    scores.set_xlabel(f"{metric} on {questions} test {noun} (points)\nk/{questions} same: "
                      "answers identical to the merged model's")  # fmt: skip
    scores.set_xlim(0, max(100.0, max(values) * 1.3))
    for ax in (sizes, scores):
        ax.spines[["top", "right"]].set_visible(False)
    figure.suptitle("Each export, loaded back: what it weighs and how it answers")
    return figure
