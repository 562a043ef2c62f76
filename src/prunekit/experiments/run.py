"""One run, end to end: claim it in the results database, execute it, record what it produced.

:mod:`.execute` carries a run out, :mod:`.record` turns its result into a row; this module owns the
claim, the heartbeat and the outcome. A run is identified by its :class:`ResolvedRun`'s key.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distributed import decided_by_rank0, rank, world_size
from ..errors import ConfigError, DataError
from .config import ResolvedRun, RunSpec, resolve
from .db import Heartbeat, ResultsDB, make_owner
from .execute import DatasetCache, execute
from .record import EpochsToDB, result_fields


@dataclass
class RunOutcome:
    """What happened to a requested run: ``done`` (just now), ``skipped`` (already done), ``busy``
    (another process runs it), ``failed`` (now or earlier)."""

    key: str
    status: str
    row: dict[str, Any] | None


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENOENT, errno.EIO}


def check_output_folder(out_dir: Path) -> None:
    """``--out`` must be a folder this process can write (created if missing).

    Raises:
        ConfigError: it is a file, or it cannot be created or written (naming it).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is a file; give a folder for the results database and run files")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {str(out_dir)!r}: {exc.strerror}") from None
    try:  # a real write: permissions, read-only mounts and immutable folders all show here (also for root)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ConfigError(f"the output folder {str(out_dir)!r} is not writable ({exc.strerror}); choose another --out") from None


def failure_kind(exc: BaseException) -> str:
    """``"environment"`` for a failure the next invocation may not meet (missing data, full disk,
    no permission, a file system error); ``"method"`` for everything else."""
    if isinstance(exc, DataError):
        return "environment"
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        return "environment"
    text = str(exc)
    if "No space left on device" in text or "unexpected pos" in text or "PytorchStreamWriter failed" in text:
        return "environment"  # torch.save on a full disk
    return "method"


def outcome_of_claim_refused(db: ResultsDB, key: str) -> RunOutcome:
    """The outcome of a run another process has, or that is finished or failed."""
    row = db.get(key)
    status = "skipped" if row and row["status"] == "done" else ("failed" if row and row["status"] == "failed" else "busy")
    return RunOutcome(key, status, row)


def run_one(
    spec: RunSpec | ResolvedRun,
    out_dir: str | Path,
    *,
    db: ResultsDB | None = None,
    datasets: DatasetCache | None = None,
    device: torch.device | None = None,
    owner: str | None = None,
    progress: bool | None = None,
    force: bool = False,
    retry_failed: bool = False,
) -> RunOutcome:
    """Run ``spec`` unless the database already has it; record the outcome.

    Args:
        out_dir: holds ``results.db`` and ``runs/<key>/``.
        force: discard an earlier result (and its files) and run again.
        retry_failed: run again a run that failed earlier (default: report it as failed).

    Returns:
        A :class:`RunOutcome`. Errors inside the run are recorded in the database (status
        ``failed``), not raised; bad configuration raises before anything is written.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = spec if isinstance(spec, ResolvedRun) else resolve(spec, device)
    key = run.key
    out_dir = Path(out_dir)
    datasets = datasets or DatasetCache()
    datasets.get(run.dataset)  # a missing or unreadable dataset is an error here, before anything is written
    if rank() > 0:
        return _follow(run, out_dir, datasets, device, progress)
    check_output_folder(out_dir)
    own_db = db is None
    db = db or ResultsDB(out_dir / "results.db")
    told = False

    def tell(go: bool) -> None:  # data-parallel: the other ranks train this run only if rank 0 claimed it
        nonlocal told
        if not told:
            told = True
            decided_by_rank0(go)

    try:
        db.ensure(key, run.config)
        run_dir = out_dir / "runs" / key
        if force:
            busy = db.owned_by_live_process(key, owner)
            if busy is not None:
                raise ConfigError(f"run {key} is being trained right now by another live process ({busy}); stop it first, then --force")
            db.reset(key)
            for leftover in ("checkpoint.pt", "masks.pt"):
                (run_dir / leftover).unlink(missing_ok=True)
            if (run_dir / "imp").is_dir():
                shutil.rmtree(run_dir / "imp")
        owner = owner or make_owner()
        if not db.claim(key, owner, retry_failed=retry_failed):
            tell(False)
            return outcome_of_claim_refused(db, key)
        tell(True)
        try:
            with Heartbeat(db, key, owner):
                done = execute(
                    run, run_dir, datasets=datasets, device=device, callbacks=[EpochsToDB(db, key)],
                    imp_callbacks=lambda r: [EpochsToDB(db, key, r)], progress=progress,
                )
                results = result_fields(
                    done.model, done.masks, done.result, run_dir, datasets.get(run.dataset), device, done.extra, done.train_seconds
                )
        except KeyboardInterrupt:
            db.release(key, owner)
            raise
        except Exception as exc:  # recorded, so that a sweep goes on with the next run
            db.fail(key, owner, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}", failure_kind(exc))
            return RunOutcome(key, "failed", db.get(key))
        db.finish(key, owner, results)
        return RunOutcome(key, "done", db.get(key))
    finally:
        if not told and world_size() > 1:
            tell(False)
        if own_db:
            db.close()


def _follow(run: ResolvedRun, out_dir: Path, datasets: DatasetCache, device: torch.device | None, progress: bool | None) -> RunOutcome:
    """A rank other than 0 of a data-parallel run: train alongside rank 0 if it claimed the run.
    Rank 0 alone writes the database, the masks and the checkpoints."""
    if not decided_by_rank0(None):
        return RunOutcome(run.key, "skipped", None)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    execute(run, out_dir / "runs" / run.key, datasets=datasets, device=device, progress=False if progress is None else progress)
    return RunOutcome(run.key, "follower", None)


def describe_outcome(outcome: RunOutcome) -> str:
    row = outcome.row or {}
    head = f"{row.get('method')} @ {row.get('sparsity', 0):.4g} seed {row.get('seed')}"
    structured = (row.get("config") or {}).get("structured")
    if structured:
        from .config import structured_label

        head = f"structured {structured_label(structured)} {structured['budget']} seed {row.get('seed')}"
    if row.get("ablation"):
        head += f" ({row['ablation']})"
    if outcome.status in ("done", "skipped"):
        acc = row.get("final_acc")
        best = row.get("best_acc")
        took = (row.get("train_seconds") or 0) + (row.get("scoring_seconds") or 0)
        line = f"{head}: {outcome.status}, final {acc:.2%}, best {best:.2%} ({took:.0f} s)"
        info = (row.get("extra") or {}).get("structured")
        if info and info.get("macs_after"):
            line += (f"; pruned at epoch {info['pruned_epoch']}{' (forced)' if info.get('forced') else ''}, "
                     f"MACs {info['macs_after'] / info['macs_before']:.0%}")
        return line
    if outcome.status == "failed":
        return f"{head}: FAILED: {(row.get('error') or '').splitlines()[0] if row.get('error') else ''}"
    return f"{head}: running in another process"

