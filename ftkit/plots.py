"""Pictures of what the core computes: matplotlib figures for the notebooks.

Every function returns a `matplotlib.figure.Figure` (a notebook shows it once, when it is
the cell's last value) and leaves nothing open in pyplot's global state. Pass `ax=` to draw
into an axes of your own figure instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ftkit.catalog import GPU, get_gpu
from ftkit.memory import COMPONENTS, FITS_BELOW, MemoryEstimate

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
    """Draw stacked bars of where the memory goes, one bar per estimate, against a GPU's size.

    Taught in notebooks/01_choosing_a_base_model.ipynb.
    """
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
    Taught in notebooks/02_formatting_examples.ipynb.
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
    field: str = "category",
    share: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars: how many examples of each value of `field` every split holds.

    Examples may be `ftkit.data.Example`s (the value read from `.meta`) or JSONL rows (dicts).
    `share=True` plots each split's fractions instead, so splits of different sizes compare
    (a stratified split shows bars of equal height).
    Taught in notebooks/02_formatting_examples.ipynb.
    """
    counts = {split: _count_field(rows, field) for split, rows in examples_by_split.items()}
    values = sorted({value for per_split in counts.values() for value in per_split})
    if not values:
        raise ValueError(f"plot_label_distribution: no example has a {field!r} field.")
    ax = ax if ax is not None else _new_axes(rows=4)
    width = 0.8 / len(counts)
    for k, (split, per_split) in enumerate(counts.items()):
        positions = [i + (k - (len(counts) - 1) / 2) * width for i in range(len(values))]
        total = sum(per_split.values())
        heights = [per_split.get(v, 0) / (total if share else 1) for v in values]
        ax.bar(positions, heights, width, label=f"{split} ({total})")
    ax.set_xticks(range(len(values)), values, rotation=30, ha="right")
    ax.set_ylabel("share of the split" if share else "examples")
    ax.set_title(f"{field} per split")
    ax.legend(fontsize=8, frameon=False)
    return ax.figure


def _count_field(rows: Iterable, field: str) -> Counter:
    """How often each value of `field` occurs; examples without it are left out."""
    counts: Counter = Counter()
    for row in rows:
        if isinstance(row, Mapping):  # a JSONL row
            value = row.get(field)
        else:  # an Example: the field sits in .meta (or is an attribute)
            value = (getattr(row, "meta", None) or {}).get(field, getattr(row, field, None))
        if value is not None:
            counts[str(value)] += 1
    return counts
