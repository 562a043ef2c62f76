"""One run, end to end (``prunekit run``): resolve it, then the lifecycle with the local backend.

Data-parallel (``--nproc``): rank 0 claims and records; the other ranks train alongside it only when
rank 0 claimed the run, and write nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..distributed import decided_by_rank0, rank, world_size
from ..errors import ConfigError
from .backends import LocalBackend
from .db import DEFAULT_LEASE, ResultsDB, make_owner
from .kinds import DatasetCache, Run, RunContext
from .lifecycle import Lifecycle, RunOutcome, check_output_folder
from .record import Store
from .spec import RunSpec, resolve


def run_one(
    spec: RunSpec | Run,
    out_dir: str | Path,
    *,
    db: ResultsDB | None = None,
    datasets: DatasetCache | None = None,
    device: torch.device | None = None,
    owner: str | None = None,
    progress: bool | None = None,
    force: bool = False,
    retry_failed: bool = False,
    lease: float = DEFAULT_LEASE,
) -> RunOutcome:
    """Run ``spec`` unless the database already has it; record the outcome.

    Args:
        out_dir: holds ``results.db`` and ``runs/<key>/``.
        force: discard an earlier result (and its files) and run again.
        retry_failed: run again a run that failed earlier (default: report it as failed).
        lease: seconds without a heartbeat after which a run held by a process on another host (or
            in another PID namespace) is taken over.

    Returns:
        A :class:`RunOutcome`. Errors inside the run are recorded in the database (status
        ``failed``), not raised; bad configuration raises before anything is written.
    """
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease < 10:
        raise ConfigError(f"lease must be a number of seconds >= 10, got {lease!r}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = spec if isinstance(spec, Run) else resolve(spec, device)
    if world_size() > 1 and not run.data_parallel:
        raise ConfigError(
            "data-parallel training (--nproc) runs pruning-at-initialisation methods and dense baselines; "
            f"{run.kind} runs train on one process"
        )
    out_dir = Path(out_dir)
    datasets = datasets or DatasetCache()
    run.check_data(datasets.get(run.dataset))  # missing data, or a mistake only the data shows: an error here, before anything is written
    if rank() > 0:
        return _follow(run, out_dir, datasets, device, progress)
    own_db = db is None
    lifecycle = None
    try:
        check_output_folder(out_dir)
        db = db or ResultsDB(out_dir / "results.db", stale_after=float(lease))
        lifecycle = Lifecycle(Store(db, out_dir), owner or make_owner(), retry_failed=retry_failed, data_parallel=world_size() > 1)
        if force:
            _forget(run, lifecycle)
        return lifecycle.carry_out([run], LocalBackend(datasets, device, progress))[0]
    finally:
        if world_size() > 1 and (lifecycle is None or not lifecycle.announced):
            decided_by_rank0(False)  # the other ranks wait for rank 0's word: nothing was claimed
        if own_db and db is not None:
            db.close()


def _forget(run: Run, lifecycle: Lifecycle) -> None:
    """``--force``: the earlier result and its files, gone (refused while another live process trains it)."""
    db = lifecycle.db
    db.ensure(run.key, run.config)
    busy = db.owned_by_live_process(run.key, lifecycle.owner)
    if busy is not None:
        raise ConfigError(f"run {run.key} is being trained right now by another live process ({busy}); stop it first, then --force")
    db.reset(run.key)
    run_dir = lifecycle.store.run_dir(run)
    for leftover in ("checkpoint.pt", "masks.pt"):
        (run_dir / leftover).unlink(missing_ok=True)
    if (run_dir / "imp").is_dir():
        shutil.rmtree(run_dir / "imp")


def _follow(run: Run, out_dir: Path, datasets: DatasetCache, device: torch.device, progress: bool | None) -> RunOutcome:
    """A rank other than 0 of a data-parallel run: train alongside rank 0 if it claimed the run."""
    if not decided_by_rank0(None):
        return RunOutcome(run.key, "skipped", None)
    run.execute(RunContext(out_dir / "runs" / run.key, datasets, device, progress=False if progress is None else progress))
    return RunOutcome(run.key, "follower", None)
