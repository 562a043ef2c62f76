"""Reports from the results database: Markdown/CSV tables and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..experiments.db import ResultsDB
from ..files import atomic_write_text
from .plots import plot_accuracy, plot_layer_densities
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
        tables = build_tables(db, metric, **filters)
        written.append(write_csv(db.runs(**filters), report_dir / "results.csv"))
    if tables:
        md = report_dir / "tables.md"
        atomic_write_text(md, "\n\n".join(t.to_markdown() for t in tables) + "\n")
        written.append(md)
    if plots:
        for t in tables:
            written.append(plot_accuracy(t, report_dir / f"{t.slug}_accuracy.png"))
            p = plot_layer_densities(t, report_dir / f"{t.slug}_layers.png")
            if p is not None:
                written.append(p)
    return tables, written


__all__ = ["METRICS", "Cell", "Table", "build_tables", "plot_accuracy", "plot_layer_densities", "write_csv", "write_report"]
