"""Sweeps: a grid of runs executed one after the other, skipping what the database already has.

Several sweep processes may share one output folder: each run is claimed atomically, so none runs
twice, and a run interrupted by a crash is taken over (and resumed from its checkpoint) by the next
sweep that reaches it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import SweepSpec, resolve, run_key
from .db import ResultsDB, make_owner
from .run import DatasetCache, RunOutcome, describe_outcome, run_one


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
) -> SweepSummary:
    """Run every run of ``spec`` not yet done; return what happened to each.

    Args:
        out_dir: holds ``results.db`` and the run folders.
        progress: progress bars (default: when stderr is a terminal); without them one line per run
            is printed to stderr.
        retry_failed: run again the runs that failed before.
    """
    out_dir = Path(out_dir)
    runs = spec.runs()
    configs = [resolve(r) for r in runs]
    keys = [run_key(c) for c in configs]
    start = time.time()
    summary = SweepSummary()
    show = sys.stderr.isatty() if progress is None else progress
    datasets = DatasetCache(spec.data_dir)
    owner = make_owner()
    with ResultsDB(out_dir / "results.db") as db:
        for key, config in zip(keys, configs):
            db.ensure(key, config)
        bar = tqdm(total=len(runs), desc="runs", unit="run", disable=not show, position=0, dynamic_ncols=True)
        for i, r in enumerate(runs, 1):
            outcome = run_one(r, out_dir, db=db, datasets=datasets, device=device, owner=owner,
                              progress=show, retry_failed=retry_failed)
            summary.outcomes.append(outcome)
            line = f"[{i}/{len(runs)}] {describe_outcome(outcome)}"
            if show:
                bar.set_postfix_str(line[:60])
                bar.update(1)
            elif log and outcome.status != "skipped":
                print(line, file=sys.stderr, flush=True)
        bar.close()
    summary.seconds = time.time() - start
    return summary
