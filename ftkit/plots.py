"""Pictures of what the core computes: matplotlib figures for the notebooks.

Every function returns a `matplotlib.figure.Figure` (a notebook shows it once, when it is
the cell's last value) and leaves nothing open in pyplot's global state. Pass `ax=` to draw
into an axes of your own figure instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
