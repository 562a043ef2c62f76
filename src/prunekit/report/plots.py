"""Plots of result tables: accuracy vs sparsity, and per-layer density per method (PNG).

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never through
``pyplot``: importing or using prunekit does not touch the user's matplotlib backend or figures.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ..files import atomic_savefig
from .tables import _METRIC_NAMES, Table, epochs_text, percent


def _classes(dataset: str) -> int | None:
    from ..data import get_info

    try:
        return get_info(dataset).num_classes
    except Exception:
        return None


def plot_accuracy(table: Table, path: str | Path) -> Path:
    """Accuracy vs density (log scale), error bars = std over seeds, dense as a band."""
    path = Path(path)
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    ax = fig.subplots()
    markers = "osD^v<>phX*"
    for i, (label, row) in enumerate(table.rows.items()):
        xs = sorted(s for s in row if row[s].n)  # a cell whose every run failed has no point
        if not xs:
            continue
        ax.errorbar(
            [1 - s for s in xs], [100 * row[s].mean for s in xs], yerr=[100 * row[s].std for s in xs],
            marker=markers[i % len(markers)], capsize=3, linewidth=1.4, markersize=4, label=label,
        )
    if table.dense is not None:
        m, s = 100 * table.dense.mean, 100 * table.dense.std
        ax.axhline(m, color="black", linestyle="--", linewidth=1, label="dense")
        if s > 0:
            ax.axhspan(m - s, m + s, color="black", alpha=0.08)
    classes = _classes(table.dataset)
    if classes:
        ax.axhline(100 / classes, color="grey", linestyle=":", linewidth=1, label=f"chance ({100 / classes:.0f} %)")
    ticks = [1 - s for s in table.sparsities]
    ax.set_xlim(max(ticks) * 1.3, min(ticks) / 1.3)  # reversed: sparsity grows to the right; before the log
    ax.set_xscale("log")  # scale, which cannot autoscale a single column
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{percent(s)}%" for s in table.sparsities])
    ax.minorticks_off()
    ax.set_xlabel("sparsity (density on a log scale)")
    ax.set_ylabel(f"{_METRIC_NAMES[table.metric]} (%)")
    seeds = sorted({c.n + c.failed for row in table.rows.values() for c in row.values()})
    ax.set_title(f"{table.model} on {table.dataset} ({table.recipe}, {epochs_text(table.epochs)}); "
                 f"points: mean, bars: ± std over {'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    atomic_savefig(fig, path)
    return Path(path)


def plot_layer_densities(table: Table, path: str | Path) -> Path | None:
    """Per-layer density of each method, one panel per sparsity (log scale)."""
    sparsities = [s for s in table.sparsities if any(s in v for v in table.layers.values())]
    if not sparsities:
        return None
    path = Path(path)
    fig = Figure(figsize=(4.2 * len(sparsities) + 1, 4.2), dpi=120)
    axes = fig.subplots(1, len(sparsities), squeeze=False)
    for ax, s in zip(axes[0], sparsities):
        names: list[str] = []
        for label in table.rows:  # the table's order, so each method has the colour of the accuracy plot
            by_s = table.layers.get(label, {})
            if s not in by_s:
                continue
            rows = by_s[s]
            names = [r["name"] for r in rows]
            dens = [max(r["density"], 1e-5) for r in rows]
            ax.plot(range(len(rows)), dens, marker="o", markersize=3, linewidth=1.2, label=label)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"sparsity {percent(s)}%", fontsize=9)
        ax.set_ylabel("layer density (kept fraction)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"Per-layer density: {table.model} on {table.dataset}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    return Path(path)
