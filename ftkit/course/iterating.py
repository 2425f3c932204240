"""Notebook 05's tables: the bias experiment per class, and full / LoRA / QLoRA side by side.

Both return HTML that the notebook displays and the report quotes as it is, so everything
that comes from the data (class names, run names) is escaped here.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from ftkit.iterate import answer_shares, class_counts, class_recall


def bias_table_html(
    results: Mapping[str, object], field: str, test: Sequence, majority: str, rare: str | None
) -> str:
    """Per class of `field`: test examples, then per run (name -> `ApproachResult`) the
    recall of the class and the share of all answers that named it."""
    truth = class_counts(test, field)
    recall = {name: class_recall(result, field) for name, result in results.items()}
    shares = {name: answer_shares(result, field) for name, result in results.items()}
    head = "".join(
        f"<th>{html.escape(n)}: recall</th><th>{html.escape(n)}: answered</th>" for n in results
    )
    rows = []
    for label in sorted(truth):
        role = " (majority)" if label == majority else " (rare)" if label == rare else ""
        cells = "".join(
            f"<td>{100 * recall[n].get(label, (0.0, 0))[0]:.0f}%</td>"
            f"<td>{100 * shares[n].get(label, 0.0):.0f}%</td>"
            for n in results
        )
        rows.append(f"<tr><td>{html.escape(label)}{role}</td><td>{truth[label]}</td>{cells}</tr>")
    return (
        f"<table><tr><th>{html.escape(field)}</th><th>test examples</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


METHOD_COLUMNS = (
    "method", "trainable parameters", "peak memory, GiB", "less the runtime",
    "estimate (GPU), GiB", "seconds", "tokens/s", "validation loss",
)  # fmt: skip


def methods_table_html(
    runs: Mapping[str, object], estimates: Mapping[str, object], scores: Mapping[str, object],
    probes: Mapping[str, float], metric: str, runtime_gb: float,
) -> str:  # fmt: skip
    """One row per method (name -> `Run` read back): what its process measured, the
    estimator's figure, its test score on `metric` (name -> `ApproachResult`) and the share
    of the general probe it passed (name -> share)."""
    head = "".join(f"<th>{c}</th>" for c in METHOD_COLUMNS)
    head += f"<th>test {html.escape(metric)}</th><th>probe passed</th>"
    rows = []
    for method, run in runs.items():
        r = run.result
        rows.append(
            f"<tr><td>{html.escape(method)}</td><td>{r['trainable_params']:,}</td>"
            f"<td>{r['peak_memory_gb']:.2f}</td><td>{r['peak_memory_gb'] - runtime_gb:.2f}</td>"
            f"<td>{estimates[method].total:.2f}</td><td>{r['seconds']:.0f}</td>"
            f"<td>{r['tokens_per_second']:.0f}</td><td>{r['val_loss']:.3f}</td>"
            f"<td>{100 * scores[method].scores[metric]:.1f}</td>"
            f"<td>{100 * probes[method]:.0f}%</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
