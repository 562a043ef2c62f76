"""Reports of early structured pruning runs: accuracy, trigger epoch, cost and training time per
trigger and budget; the indicator over training with the pruning point; accuracy against training cost.

Reads only the results database. One table per (model, dataset, recipe, training config); dense runs
of the same configuration are the baseline of the time ratio; a second ratio counts each run's epochs at
the medians of its own epoch times, unpruned and pruned (the same machine under the same load: the dense
runs may have been trained at another time, beside other work, and one epoch disturbed by other work
does not move a median).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..experiments.db import ResultsDB, RunRecord
from ..experiments.kinds import DENSE, StructuredRun
from ..files import atomic_savefig
from ..training.precision import FP32
from .tables import _COLUMN, _METRIC_NAMES, METRICS, Cell, config_id, epochs_text, execution_text, group_key


@dataclass
class StructuredTable:
    model: str
    dataset: str
    recipe: str
    epochs: int
    metric: str
    budgets: list[str]
    rows: dict[str, dict[str, list[RunRecord]]]  # label -> budget -> runs
    dense: list[RunRecord] = field(default_factory=list)
    config_id: str = ""  # a short hash of the training configuration
    precision: str = FP32  # the runs' training precision (the dense runs' too)
    epoch_seconds: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # run key -> its epochs' times (unpruned, pruned)
    compiled: bool = False  # trained through torch.compile (in the title)

    @property
    def slug(self) -> str:
        return f"{self.model}_{self.dataset}_{self.recipe}_{self.epochs}ep_structured" + (f"_{self.config_id}" if self.config_id else "")

    def _acc(self, runs: list[RunRecord]) -> Cell:
        return Cell([getattr(r, _COLUMN[self.metric]) for r in runs if getattr(r, _COLUMN[self.metric]) is not None])

    @property
    def dense_seconds(self) -> float | None:
        return statistics.fmean(r.train_seconds or 0.0 for r in self.dense) if self.dense else None

    @property
    def unpruned_epoch_seconds(self) -> list[float]:
        """The time of every epoch the table's structured runs trained before pruning."""
        return [t for unpruned, _ in self.epoch_seconds.values() for t in unpruned]

    def epoch_median_ratio(self, run: RunRecord) -> float | None:
        """``run``'s training time over a dense run's, both counted in median epochs measured inside ``run``:
        ``(k + (N - k) * pruned / unpruned) / N`` for a run pruned at the end of epoch ``k`` of ``N``, with
        the medians of its own pruned and unpruned epochs (pruned at initialisation: the unpruned median of
        the whole table, as for a run whose unpruned epochs' times were not recorded). None where no
        pruned epoch's time was recorded."""
        unpruned, pruned = self.epoch_seconds.get(run.key, ([], []))
        base = unpruned or self.unpruned_epoch_seconds
        if not base or not pruned:
            return None
        k = int((run.extra.get("structured") or {}).get("pruned_epoch") or 0)
        return (k + (self.epochs - k) * statistics.median(pruned) / statistics.median(base)) / self.epochs

    def to_markdown(self) -> str:
        dense = self._acc(self.dense) if self.dense else None
        lines = [
            f"**{self.model} on {self.dataset}, recipe {self.recipe} ({epochs_text(self.epochs)}"
            f", {execution_text(self.precision, self.compiled)}): early structured pruning, "
            f"{_METRIC_NAMES[self.metric]} (%)**",
            "",
            "| trigger | budget | accuracy | pruned at epoch | MACs kept | params kept | training time vs dense "
            "| in epoch medians | inference latency |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        all_unpruned = self.unpruned_epoch_seconds
        if dense is not None and dense.n:
            same = f"{self.dense_seconds / (self.epochs * statistics.median(all_unpruned)):.2f}x" if all_unpruned and self.dense_seconds else "–"
            lines.append(f"| dense | – | {dense.text()} | – | 100 % | 100 % | 1.00x | {same} | – |")
        for label, by_budget in self.rows.items():
            for budget in self.budgets:
                runs = by_budget.get(budget)
                if not runs:
                    continue
                infos = [r.extra["structured"] for r in runs]
                epochs = ", ".join(f"{i['pruned_epoch']}{'*' if i.get('forced') else ''}" for i in infos)
                macs = statistics.fmean(i["macs_after"] / i["macs_before"] for i in infos)
                params = statistics.fmean(i["params_after"] / i["params_before"] for i in infos)
                secs = statistics.fmean(r.train_seconds or 0.0 for r in runs)
                ratio = f"{secs / self.dense_seconds:.2f}x" if self.dense_seconds else "–"
                medians = [m for m in map(self.epoch_median_ratio, runs) if m is not None]
                same = f"{statistics.fmean(medians):.2f}x" if len(medians) == len(runs) else "–"
                lat = statistics.fmean(i["latency_after_ms"] / i["latency_before_ms"] for i in infos)
                lines.append(f"| {label} | {budget} | {self._acc(runs).text()} | {epochs} | {macs:.1%} | {params:.1%} | {ratio} | {same} "
                             f"| {lat:.2f}x |")
        basis = (f"{statistics.median(all_unpruned):.1f} s, the median of the {len(all_unpruned)} unpruned epochs of this table"
                 if all_unpruned else "none here: no run trained an epoch unpruned")
        lines += ["", "Pruned at: the epoch whose end removed the channels (0: at initialisation; * : the indicator had not "
                  "fired and the run pruned at its latest allowed epoch). Training time: the measured wall-clock against the "
                  "dense runs of the same configuration; in epoch medians: each run's epochs counted at the medians of its own "
                  "unpruned and pruned epoch times, against as many of its unpruned epochs (pruned at initialisation: against "
                  f"the table's unpruned median, {basis}; the dense row: the dense runs against that median) — the ratio to read "
                  "when the dense runs trained at another time or the machine's load changed. Inference latency: the pruned "
                  "model's forward time over the full one's."]
        return "\n".join(lines)


def build_structured_tables(db: ResultsDB, metric: str = "auto", **filters: Any) -> list[StructuredTable]:
    if metric not in METRICS:
        from ..errors import unknown

        raise unknown("metric", metric, METRICS)
    groups: dict[tuple[str, ...], list[RunRecord]] = defaultdict(list)
    for row in db.runs(status="done", **filters):
        if row.config["method"] == DENSE:
            groups[group_key(row.config)].append(row)
    tables = []
    for (model, dataset, recipe, train_json, precision), rows in sorted(groups.items()):
        structured = [r for r in rows if r.structured is not None]
        if not structured:
            continue
        chosen = metric if metric != "auto" else rows[0].config.get("headline", "final")
        by_label: dict[str, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
        for r in structured:
            run = r.run
            assert isinstance(run, StructuredRun)
            by_label[run.spec_text][str(run.budget)].append(r)
        budgets = sorted({b for v in by_label.values() for b in v}, key=lambda b: (b.split("=")[0], -float(b.split("=")[1])))
        dense = [r for r in rows if r.structured is None]
        train = json.loads(train_json)
        tables.append(StructuredTable(model, dataset, recipe, train["epochs"], chosen, budgets,
                                      {k: dict(v) for k, v in sorted(by_label.items())}, dense,
                                      config_id(train_json, precision), precision, {r.key: epoch_times(db, r) for r in structured},
                                      bool(train.get("compile", False))))
    return tables


def epoch_times(db: ResultsDB, run: RunRecord) -> tuple[list[float], list[float]]:
    """The measured times of ``run``'s epochs before and after it pruned (the end of epoch ``pruned_epoch``
    removed the channels, so epochs 1 to ``pruned_epoch`` trained the full network)."""
    last = (run.extra.get("structured") or {}).get("pruned_epoch") or 0
    epochs = [e for e in db.epochs(run.key, phase=0) if e.get("epoch_seconds")]
    return [e["epoch_seconds"] for e in epochs if e["epoch"] <= last], [e["epoch_seconds"] for e in epochs if e["epoch"] > last]


def plot_indicator(table: StructuredTable, path: str | Path) -> Path | None:
    """The indicators over training, the pruning point of each run dashed: EPI (a similarity, in
    [0, 1], fires *above* its threshold) and Early-Bird's mask distance (fires *below* its threshold)
    on separate panels, each with its threshold drawn."""
    series = [(label, budget, r) for label, bb in table.rows.items() for budget, runs in bb.items() for r in runs[:1]
              if r.extra["structured"]["trigger"] in ("epi", "early_bird")]
    if not series:
        return None
    from ..structured import EPI_THRESHOLDS, StructuredOptions, get_importance

    kinds = [k for k in ("epi", "early_bird") if any(r.extra["structured"]["trigger"] == k for _, _, r in series)]
    fig = Figure(figsize=(7.5, 3.6 * len(kinds)), dpi=120)
    axes = fig.subplots(len(kinds), 1, squeeze=False)[:, 0]
    drawn = 0
    for ax, kind in zip(axes, kinds):
        thresholds = set()
        for label, budget, r in series:
            info = r.extra["structured"]
            if info["trigger"] != kind:
                continue
            looks = info["looks"]
            xs = [lk["epoch"] + lk["step"] / max(1, max(x["step"] for x in looks)) for lk in looks]
            pts = [(x, y) for x, y in zip(xs, info["trace"][: len(xs)]) if y is not None]
            if not pts:
                continue
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.3, marker=".", label=f"{label}, {budget}")
            drawn += 1
            if info["pruned_epoch"] is not None:
                ax.axvline(info["pruned_epoch"], color=line.get_color(), linestyle="--", linewidth=0.9)
            options = r.structured["options"] if r.structured else {}
            if kind == "epi":
                tau = options.get("tau")
                family = "gradient" if get_importance(options.get("importance", "l1")).needs_gradients else "magnitude"
                thresholds.add(tau if tau is not None else EPI_THRESHOLDS[family])
            else:
                thresholds.add(options.get("eb_threshold", StructuredOptions().eb_threshold))
        for t in sorted(thresholds):
            ax.axhline(t, color="red", linestyle=":", linewidth=1, label=f"threshold {t:g}")
        ax.set_ylabel("EPI: architecture similarity (fires above)" if kind == "epi" else "Early-Bird: mask distance (fires below)",
                      fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not drawn:
        return None
    axes[-1].set_xlabel("epoch")
    axes[0].set_title(f"Indicators over training: {table.model} on {table.dataset} (dashed: where each run pruned)", fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path)


def plot_cost(table: StructuredTable, path: str | Path) -> Path | None:
    """Accuracy against measured training time, one point per trigger and budget (mean over seeds)."""
    if not table.rows:
        return None
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    ax = fig.subplots()
    if table.dense and table.dense_seconds is not None:
        ax.scatter([table.dense_seconds], [100 * statistics.fmean(getattr(r, _COLUMN[table.metric]) for r in table.dense)],
                   marker="*", s=120, color="black", label="dense")
    for label, by_budget in table.rows.items():
        pts = [(statistics.fmean(r.train_seconds or 0.0 for r in runs), 100 * statistics.fmean(getattr(r, _COLUMN[table.metric]) for r in runs), b)
               for b, runs in by_budget.items()]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, s=25)
        for x, y, b in pts:
            ax.annotate(b, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel(f"{_METRIC_NAMES[table.metric]} (%)")
    ax.set_title(f"Accuracy vs training cost: {table.model} on {table.dataset}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic_savefig(fig, path)
