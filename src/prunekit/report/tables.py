"""Result tables from the results database: methods x sparsities, mean +- std over seeds."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..experiments.db import ResultsDB, RunRecord
from ..experiments.kinds import DENSE
from ..experiments.spec import known_methods
from ..files import atomic_write_text
from ..training.precision import FP32

METRICS = {
    "auto": "the accuracy the recipe's paper reports (best epoch for grasp-cifar, final otherwise)",
    "final": "test accuracy after the last epoch",
    "best": "best test accuracy over epochs (as the GraSP paper reports)",
    "val": "test accuracy at the epoch of best validation accuracy",
}
_COLUMN = {"final": "final_acc", "best": "best_acc", "val": "test_at_best_val"}
_METRIC_NAMES = {"final": "final test accuracy", "best": "best-epoch test accuracy", "val": "test accuracy at the best validation epoch"}


def percent(fraction: float) -> str:
    """``0.995`` -> ``"99.5"``, ``0.9999999`` -> ``"99.99999"`` (never rounded up to 100)."""
    return f"{100 * fraction:.10g}"


def epochs_text(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


@dataclass
class Cell:
    """The values of one table cell (one per seed), and how many of its runs had a layer left
    empty (``empty``, marked †) or no input-to-output path at all (``cut``, marked ‡), and how many
    failed to train (``failed``: stalled at chance level or diverged; the method's failure, not the
    machine's), which have no value: the mean is over the others, and the cell says so."""

    values: list[float]
    empty: int = 0
    cut: int = 0
    failed: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        mark = " ‡" if self.cut else (" †" if self.empty else "")
        failed = f" ({self.failed} failed)" if self.failed else ""
        if self.n == 0:
            return f"failed ({self.failed})" if self.failed else "–"
        if self.n == 1:
            return f"{100 * self.mean:.2f}{mark}{failed}"
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}{mark}{failed}"


@dataclass
class Table:
    """One comparison: a model on a dataset under one training configuration."""

    model: str
    dataset: str
    recipe: str
    epochs: int
    metric: str
    sparsities: list[float]
    rows: dict[str, dict[float, Cell]]
    dense: Cell | None
    layers: dict[str, dict[float, list[dict[str, Any]]]] = field(default_factory=dict)
    layer_runs: dict[str, dict[float, list[list[dict[str, Any]]]]] = field(default_factory=dict)
    effective: dict[str, dict[float, list[float]]] = field(default_factory=dict)
    config_id: str = ""  # a short hash of the training configuration: tables of one recipe with other options differ
    precision: str = FP32  # the runs' training precision (in the title)
    compiled: bool = False  # trained through torch.compile (in the title)

    @property
    def slug(self) -> str:
        return f"{self.model}_{self.dataset}_{self.recipe}_{self.epochs}ep_{self.metric}" + (f"_{self.config_id}" if self.config_id else "")

    @property
    def title(self) -> str:
        seeds = sorted({c.n + c.failed for row in self.rows.values() for c in row.values()} | ({self.dense.n} if self.dense else set()))
        n = "/".join(map(str, seeds))
        return (
            f"{self.model} on {self.dataset}, recipe {self.recipe} ({epochs_text(self.epochs)}"
            f", {execution_text(self.precision, self.compiled)}): {_METRIC_NAMES[self.metric]} (%), "
            f"mean ± std over {n} seed{'s' if seeds != [1] else ''}"
        )

    def best(self) -> dict[float, str]:
        """The row with the highest mean in each column (dense excluded)."""
        out = {}
        for s in self.sparsities:
            cands = [(row[s].mean, label) for label, row in self.rows.items() if s in row and row[s].n]
            if cands:
                out[s] = max(cands)[1]
        return out

    def to_markdown(self) -> str:
        best = self.best()
        columns = [f"{percent(s)} %" for s in self.sparsities] or ["0 %"]  # only the dense baseline finished: its own column
        header = "| method | " + " | ".join(columns) + " |"
        lines = [f"**{self.title}**", "", header, "|---|" + "---:|" * len(columns)]
        if self.dense is not None:
            lines.append("| dense (0 %) | " + " | ".join(self.dense.text() for _ in columns) + " |")
        for label, row in self.rows.items():
            cells = []
            for s in self.sparsities:
                if s not in row:
                    cells.append("–")
                else:
                    t = row[s].text()
                    cells.append(f"**{t}**" if best.get(s) == label else t)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Bold: best method per column. Dense: the unpruned network, repeated in every column.")
        flagged = [c for row in self.rows.values() for c in row.values()]
        if any(c.empty and not c.cut for c in flagged):
            lines.append("†: in some run of the cell the mask left a layer without any weight.")
        if any(c.cut for c in flagged):
            lines.append("‡: in some run of the cell the mask left no path from input to output: the network was disconnected "
                         "and could not learn (chance level is the method's result there).")
        if any(c.failed for c in flagged):
            lines.append("(k failed): k runs of the cell never trained (stalled at chance level or diverged, although the mask "
                         "kept a path; each run's error says which); the mean and std are over the others.")
        layers = self.layers_markdown()
        if layers:
            lines += ["", layers]
        return "\n".join(lines)

    def mean_kept(self, label: str, sparsity: float) -> tuple[list[str], list[int], list[float]] | None:
        """``(layer names, sizes, mean kept count per layer over seeds)`` of one row and column."""
        runs = self.layer_runs.get(label, {}).get(sparsity)
        if not runs:
            return None
        names = [r["name"] for r in runs[0]]
        sizes = [r["size"] for r in runs[0]]
        kept = [statistics.fmean(run[i]["kept"] for run in runs) for i in range(len(names))]
        return names, sizes, kept

    def layers_markdown(self) -> str:
        """Mean kept weights per layer and effective density, per row and sparsity; for a method run
        in several variants (options), the per-layer density agreement of each with the plain one.

        Agreement is ``sum_l min(k_a, k_b) / max(K_a, K_b)`` over the mean kept counts: the share of
        kept weights both put in the same layers (1 = the same allocation), the quantity to compare
        between variants rather than mask overlap (see :func:`prunekit.compare_masks`).
        """
        if not self.layer_runs:
            return ""
        first = next(iter(self.layer_runs.values()))
        names = next(iter(first.values()))[0]
        header = " / ".join(r["name"] for r in names)
        def base_of(label: str) -> str:
            return label.split(" [")[0].split(" (")[0]

        variants = any(base_of(label) != label and base_of(label) in self.rows for label in self.rows)
        out = []
        for s in self.sparsities:
            rows = [label for label in self.rows if self.mean_kept(label, s)]
            if not rows:
                continue
            head = "| method | kept per layer | effective density |" + (" agreement with the plain method |" if variants else "")
            lines = [f"*Kept weights per layer at {percent(s)} % ({header}), mean over seeds*", "", head,
                     "|---|---|---:|" + ("---:|" if variants else "")]
            for label in rows:
                _, _, kept = self.mean_kept(label, s)  # type: ignore[misc]
                eff = self.effective.get(label, {}).get(s, [])
                eff_text = f"{100 * statistics.fmean(eff):.2f} %" if eff else "n/a"
                cells = [label, " / ".join(f"{k:.0f}" for k in kept), eff_text]
                if variants:
                    agree = "–"
                    base = self.mean_kept(base_of(label), s) if base_of(label) != label else None
                    if base is not None:
                        ref = base[2]
                        agree = f"{sum(min(a, b) for a, b in zip(kept, ref)) / max(sum(kept), sum(ref)):.3f}"
                    cells.append(agree)
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
        return "\n\n".join(out)


def _row_label(row: RunRecord) -> str:
    """The method, with the options and allocation that differ from its defaults, and the ablation."""
    run = row.run
    label = run.method + (" [" + ", ".join(run.variant) + "]" if run.variant else "")
    return label + (f" ({row.ablation})" if row.ablation else "")


def group_key(config: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """What one table compares runs under: the model, dataset, recipe, training configuration and
    training precision (a bf16 run and an fp32 run of one spec are different runs, never seeds of one cell)."""
    return (config["model"], config["dataset"], config["recipe"], json.dumps(config["train"], sort_keys=True),
            config.get("precision", FP32))


def execution_text(precision: str, compiled: bool) -> str:
    """How a table's runs trained, for its title: the precision, and ``compiled`` where they were."""
    return precision + (", compiled" if compiled else "")


def config_id(train_json: str, precision: str) -> str:
    """A short hash of a table's training configuration and precision (fp32 tables keep the id they had)."""
    return hashlib.sha256((train_json + ("" if precision == FP32 else f"|{precision}")).encode()).hexdigest()[:6]


def build_tables(db: ResultsDB, metric: str = "auto", **filters: Any) -> list[Table]:
    """One :class:`Table` per (model, dataset, recipe, training config) among finished runs.

    Args:
        metric: see :data:`METRICS`.
        **filters: column equalities (``model="lenet5"``, ``dataset=...``, ``recipe=...``).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    groups: dict[tuple[str, str, str, str, str], list[RunRecord]] = defaultdict(list)
    failures: dict[tuple[str, str, str, str, str], list[RunRecord]] = defaultdict(list)
    for row in db.runs(status="done", **filters):
        if row.structured is None:  # structured runs have their own tables (report.structured)
            groups[group_key(row.config)].append(row)
    for row in db.runs(status="failed", **filters):  # a method that does not train is a result too, said as such
        if row.structured is None and row.failure == "method" and row.method != DENSE:
            failures[group_key(row.config)].append(row)
    for key in failures:
        groups.setdefault(key, [])
    order = {m: i for i, m in enumerate(known_methods())}
    tables = []
    for (model, dataset, recipe, train_json, precision), rows in sorted(groups.items()):
        group = (model, dataset, recipe, train_json, precision)
        train = json.loads(train_json)
        chosen = metric if metric != "auto" else (rows or failures[group])[0].config.get("headline", "final")
        col = _COLUMN[chosen]
        cells: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        flags: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0])
        layers: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(dict)
        layer_runs: dict[str, dict[float, list[list[dict[str, Any]]]]] = defaultdict(lambda: defaultdict(list))
        effective: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        dense: list[float] = []
        sort_keys: dict[str, tuple] = {}
        for r in rows:
            value = getattr(r, col)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if r.method == DENSE:
                dense.append(value)
                continue
            label = _row_label(r)
            sort_keys[label] = (order.get(r.method, 99), r.ablation or "", label)
            cells[label][r.sparsity].append(value)
            if r.extra.get("empty_layers"):
                flags[(label, r.sparsity)][0] += 1
            if r.extra.get("disconnected") or (r.effective_density == 0.0):
                flags[(label, r.sparsity)][1] += 1
            if r.layers:
                layers[label].setdefault(r.sparsity, r.layers)
                layer_runs[label][r.sparsity].append(r.layers)
            if r.effective_density is not None:
                effective[label][r.sparsity].append(r.effective_density)
        failed: dict[tuple[str, float], int] = defaultdict(int)
        for r in failures[group]:
            label = _row_label(r)
            sort_keys.setdefault(label, (order.get(r.method, 99), r.ablation or "", label))
            cells[label].setdefault(r.sparsity, [])
            failed[(label, r.sparsity)] += 1
        sparsities = sorted({s for row in cells.values() for s in row})
        table_rows = {label: {s: Cell(v, flags[(label, s)][0], flags[(label, s)][1], failed[(label, s)]) for s, v in cells[label].items()}
                      for label in sorted(cells, key=lambda label: sort_keys[label])}
        tables.append(
            Table(model, dataset, recipe, train["epochs"], chosen, sparsities, table_rows,
                  Cell(dense) if dense else None, dict(layers),
                  {k: dict(v) for k, v in layer_runs.items()}, {k: dict(v) for k, v in effective.items()},
                  config_id(train_json, precision), precision, bool(train.get("compile", False)))
        )
    return tables


CSV_FIELDS = [
    "key", "status", "model", "dataset", "recipe", "method", "ablation", "sparsity", "seed", "final_acc", "best_acc",
    "best_epoch", "test_at_best_val", "density", "effective_density", "scoring_seconds", "train_seconds",
    "images_per_second", "epochs", "precision", "memory_format", "device", "prunekit", "torch", "mask_path", "error",
]


def write_csv(rows: Iterable[RunRecord], path: str | Path) -> Path:
    """Every run (any status), one line each, with its main config fields and metrics."""
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        row = r.as_dict()
        versions = r.versions or {}
        out = {k: row.get(k) for k in CSV_FIELDS}
        out["epochs"] = r.config["train"]["epochs"]
        out["precision"] = r.config.get("precision", FP32)  # keyed: what the run was resolved for
        out["memory_format"] = (r.extra or {}).get("memory_format")  # what it trained in (finished runs)
        out["prunekit"] = versions.get("prunekit")
        out["torch"] = versions.get("torch")
        out["error"] = r.error.splitlines()[0] if r.error else None
        w.writerow(out)
    return atomic_write_text(path, f.getvalue())
