"""Sweeps: a grid of runs executed one after the other, skipping what the database already has.

Several sweep processes may share one output folder: each run is claimed atomically, so none runs
twice, and a run interrupted by a crash is taken over (and resumed from its checkpoint) by the next
sweep that reaches it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .backends import StackedBackend
from .db import ResultsDB, make_owner
from .kinds import DatasetCache
from .lifecycle import Backend, Lifecycle, RunOutcome, check_output_folder
from .record import Store
from .spec import SweepSpec

logger = logging.getLogger("prunekit")


@dataclass
class SweepSummary:
    outcomes: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def __str__(self) -> str:
        c = self.counts
        parts = [f"{c[s]} {s}" for s in ("done", "skipped", "failed", "busy") if c[s]]
        return f"{len(self.outcomes)} runs: " + ", ".join(parts) + f" in {self.seconds:.0f} s"


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    device: torch.device | None = None,
    progress: bool | None = None,
    retry_failed: bool = False,
    log: bool = True,
    stack: int | None = None,
    backend: str = "local",
    address: str | None = None,
) -> SweepSummary:
    """Run every run of ``spec`` not yet done; return what happened to each.

    Args:
        out_dir: holds ``results.db`` and the run folders.
        progress: progress bars (default: when stderr is a terminal); without them one line per
            finished run goes to the ``prunekit`` logger (level INFO; the command line shows it).
        retry_failed: run again the runs that failed before.
        stack: how many runs of one architecture, dataset and recipe train stacked as one network
            (1: one at a time). Default: as many as fit in free GPU memory (at most 32) on CUDA, 1 on
            the CPU, where stacking brings no speed-up.
        backend: ``"local"`` (this process, runs one after another or stacked) or ``"ray"`` (each run
            a Ray task; see :mod:`prunekit.experiments.backends.ray`).
        address: the Ray cluster (``"auto"``, ``"HOST:PORT"``); None starts a local Ray instance.
    """
    out_dir = Path(out_dir)
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; choose local or ray")
    if address is not None and backend != "ray":
        raise ConfigError("--address is for --backend ray")
    if backend == "ray":
        from .backends.ray import check_address, import_ray

        import_ray()  # missing Ray or an unreachable cluster is an error here, before anything is written
        check_address(address)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if stack is not None and (isinstance(stack, bool) or not isinstance(stack, int) or stack < 1):
        raise ConfigError(f"stack must be a positive integer, got {stack!r}")
    if stack is not None and stack > 1 and device.type == "cpu":
        logger.warning("stacking %d runs on the CPU as asked; it measured slower than one at a time there (benchmarks/RESULTS.md)", stack)
    runs = spec.resolved(device)
    start = time.time()
    summary = SweepSummary()
    show = sys.stderr.isatty() if progress is None else progress
    datasets = DatasetCache(spec.data_dir)
    for run in runs:  # missing data, or a mistake only the data shows, fails here, before any row is written
        run.check_data(datasets.get(run.dataset))
    check_output_folder(out_dir)
    with ResultsDB(out_dir / "results.db", stale_after=float(spec.lease)) as db:
        for run in runs:
            db.ensure(run.key, run.config)
        lifecycle = Lifecycle(Store(db, out_dir), make_owner(), retry_failed=retry_failed)
        bar = tqdm(total=len(runs), desc="runs", unit="run", disable=not show, position=0, dynamic_ncols=True)

        def report(outcome: RunOutcome) -> None:
            summary.outcomes.append(outcome)
            line = f"[{len(summary.outcomes)}/{len(runs)}] {outcome.describe()}"
            if show:
                bar.set_postfix_str(line[:60])
                bar.update(1)
            elif log and outcome.status != "skipped":
                logger.info(line)

        todo = []
        for run in runs:  # finished runs are reported as skipped without a claim
            row = db.get(run.key)
            if row is not None and row.status == "done":
                report(RunOutcome(run.key, "skipped", row))
            else:
                todo.append(run)
        chosen: Backend
        if backend == "ray":
            from .backends.ray import RayBackend

            chosen = RayBackend(spec.data_dir, device, address)
        else:
            chosen = StackedBackend(datasets, device, show, stack)
        lifecycle.carry_out(todo, chosen, report)
        bar.close()
    summary.seconds = time.time() - start
    return summary
