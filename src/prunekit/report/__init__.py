"""Reports from the results database: Markdown/CSV tables and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..experiments.db import ResultsDB
from ..files import atomic_write_text
from .plots import plot_accuracy, plot_layer_densities
from .structured import StructuredTable, build_structured_tables, plot_cost, plot_indicator
from .tables import METRICS, Cell, Table, build_tables, write_csv


def write_report(out_dir: str | Path, metric: str = "auto", plots: bool = True, **filters: Any) -> tuple[list[Table], list[Path]]:
    """Build every table from ``<out_dir>/results.db``; write Markdown, CSV and plots to ``<out_dir>/report/``.

    Returns:
        ``(tables, written files)``.
    """
    out_dir = Path(out_dir)
    db_path = out_dir / "results.db"
    if not db_path.is_file():
        from ..errors import ConfigError

        raise ConfigError(f"no results database at {db_path}; run prunekit run/sweep with --out {out_dir} first")
    report_dir = out_dir / "report"
    written: list[Path] = []
    with ResultsDB(db_path) as db:
        tables: list[Any] = list(build_tables(db, metric, **filters))
        structured = build_structured_tables(db, metric, **filters)
        written.append(write_csv(db.runs(**filters), report_dir / "results.csv"))
    # dense runs that are the baseline of a structured table are shown there, not as a table of their own
    shown = {(st.model, st.dataset, st.recipe, st.config_id) for st in structured}
    tables = [t for t in tables if t.sparsities or (t.model, t.dataset, t.recipe, t.config_id) not in shown] + structured
    if tables:
        md = report_dir / "tables.md"
        atomic_write_text(md, "\n\n".join(t.to_markdown() for t in tables) + "\n")
        written.append(md)
    if plots:
        for st in structured:
            for made in (plot_indicator(st, report_dir / f"{st.slug}_indicator.png"), plot_cost(st, report_dir / f"{st.slug}_cost.png")):
                if made is not None:
                    written.append(made)
        for t in tables:
            if not isinstance(t, Table) or not t.sparsities:  # (a table of dense runs only has nothing to plot)
                continue
            written.append(plot_accuracy(t, report_dir / f"{t.slug}_accuracy.png"))
            p = plot_layer_densities(t, report_dir / f"{t.slug}_layers.png")
            if p is not None:
                written.append(p)
    return tables, written


__all__ = [
    "METRICS", "Cell", "StructuredTable", "Table", "build_structured_tables", "build_tables", "plot_accuracy", "plot_cost",
    "plot_indicator", "plot_layer_densities", "write_csv", "write_report",
]
