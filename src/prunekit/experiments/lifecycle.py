"""The one lifecycle of every run, whatever carries it out: claim -> heartbeat -> execute -> record ->
finish / fail / release.

A backend (:mod:`.backends`: one at a time in this process, stacked, Ray tasks) supplies only how
the claimed runs are trained: :meth:`Backend.train` yields each run with what it produced (result
fields) or the exception it failed with. Everything else is here, once: which runs a backend gets
(:meth:`Backend.units`: the runs claimed together), the claim in the results database, the
heartbeat while they train, how a failure is recorded (its kind: ``environment`` failures are
retried by the next invocation, ``method`` failures wait for ``--retry-failed``), and the release of
every unrecorded run when the process is interrupted.
"""

from __future__ import annotations

import errno
import logging
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..distributed import decided_by_rank0
from ..errors import ConfigError, DataError, PrunekitError
from .db import ClaimLost, Heartbeat, RunRecord
from .kinds import Run
from .record import Store, Trained

logger = logging.getLogger("prunekit")


class EnvironmentFailure(PrunekitError, RuntimeError):
    """A run failed for a reason outside it (a worker process lost, a node gone): retried by the next invocation."""


@dataclass
class RunOutcome:
    """What happened to a requested run: ``done`` (just now), ``skipped`` (already done), ``busy``
    (another process runs it), ``failed`` (now or earlier), ``lost`` (taken over by another process
    while this one trained it: left to that one), ``follower`` (a data-parallel rank > 0)."""

    key: str
    status: str
    record: RunRecord | None

    def describe(self) -> str:
        """One line for the terminal: the run, what happened, its accuracy and time."""
        record = self.record
        if record is None:
            return f"run {self.key}: {self.status}"
        head = record.run.label
        if self.status in ("done", "skipped"):
            took = (record.train_seconds or 0) + (record.scoring_seconds or 0)
            line = f"{head}: {self.status}, final {record.final_acc or 0:.2%}, best {record.best_acc or 0:.2%} ({took:.0f} s)"
            info = record.extra.get("structured")
            if info and info.get("macs_after"):
                line += (f"; pruned at epoch {info['pruned_epoch']}{' (forced)' if info.get('forced') else ''}, "
                         f"MACs {info['macs_after'] / info['macs_before']:.0%}")
            return line
        if self.status == "failed":
            return f"{head}: FAILED: {(record.error or '').splitlines()[0] if record.error else ''}"
        if self.status == "lost":
            return f"{head}: taken over by {record.owner} while this process trained it; left to it"
        return f"{head}: running in another process"


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENOENT, errno.EIO}


def failure_kind(exc: BaseException) -> str:
    """``"environment"`` for a failure the next invocation may not meet (missing data, full disk,
    no permission, a file system error, a lost worker); ``"method"`` for everything else."""
    if isinstance(exc, (DataError, EnvironmentFailure)):
        return "environment"
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        return "environment"
    text = str(exc)
    if "No space left on device" in text or "unexpected pos" in text or "PytorchStreamWriter failed" in text:
        return "environment"  # torch.save on a full disk
    return "method"


def interruption(exc: BaseException) -> BaseException | None:
    """The interruption (Ctrl-C, SIGTERM: not an ``Exception``) that ``exc`` was raised while handling,
    if any. Cleanup code can turn an interruption into an error of its own (``torch.save`` stopped in
    the middle of a write raises ``RuntimeError: ... unexpected pos`` as its writer closes): such a run
    was stopped, not failed."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if not isinstance(cause, Exception):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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


@contextmanager
def terminate_releases() -> Iterator[None]:
    """Inside the block, SIGTERM (``kill``, a scheduler's time limit or pre-emption) raises
    ``SystemExit(143)``: the runs held are released as on Ctrl-C, free for the next invocation at once
    (not after their lease), and the process exits with the status a SIGTERM gives. Only in the main
    thread and only where SIGTERM still has its default action (a program's own handler is left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Backend(Protocol):
    """How claimed runs are trained."""

    def units(self, runs: Sequence[Run]) -> Iterable[Sequence[Run]]:
        """The runs in the groups that are claimed (and trained) together."""
        ...

    def train(self, runs: Sequence[Run], store: Store) -> Iterator[tuple[Run, Trained | BaseException]]:
        """Train the claimed ``runs`` (files under ``store``); yield each with what it produced or the exception it failed with."""
        ...


class Lifecycle:
    """Claims, heartbeats and records runs in ``store`` for ``owner`` (see the module docstring).

    Args:
        store: the results database and the folder of ``runs/<key>/``.
        data_parallel: tell the other ranks of a ``torchrun`` launch, after each claim, whether it
            succeeded (they train only what rank 0 claimed); :attr:`announced` says whether it did.
    """

    def __init__(self, store: Store, owner: str, *, retry_failed: bool = False, data_parallel: bool = False):
        store.owner = owner
        self.store, self.db, self.owner = store, store.db, owner
        self.retry_failed = retry_failed
        self.data_parallel = data_parallel
        self.announced = False

    def refused(self, key: str) -> RunOutcome:
        """The outcome of a run another process has, or that is finished or failed."""
        row = self.db.get(key)
        status = "skipped" if row and row.status == "done" else ("failed" if row and row.status == "failed" else "busy")
        return RunOutcome(key, status, row)

    def claim(self, runs: Sequence[Run]) -> tuple[list[Run], list[RunOutcome]]:
        """The runs of ``runs`` this owner now holds, and the outcomes of those it could not take."""
        claimed, refused = [], []
        for run in runs:
            self.db.ensure(run.key, run.config)
            if self.db.claim(run.key, self.owner, retry_failed=self.retry_failed):
                claimed.append(run)
            else:
                refused.append(self.refused(run.key))
        if self.data_parallel:
            decided_by_rank0(bool(claimed))
            self.announced = True
        return claimed, refused

    def record(self, run: Run, produced: Trained | BaseException) -> RunOutcome:
        """Finish or fail ``run`` with what its backend produced (a run whose claim was lost meanwhile
        is left to its new owner: nothing is written). An error raised while an interruption was
        handled raises that interruption again (:func:`interruption`): the run is released, not failed."""
        if isinstance(produced, ClaimLost):
            logger.warning("%s: %s", run.label, produced)
            return RunOutcome(run.key, "lost", self.db.get(run.key))
        if isinstance(produced, BaseException):
            stopped = interruption(produced)
            if stopped is not None:  # released by holding(), as the interruption itself would be
                raise stopped
            text = "".join(traceback.format_exception(type(produced), produced, produced.__traceback__, limit=8))
            self.db.fail(run.key, self.owner, f"{type(produced).__name__}: {produced}\n{text}", failure_kind(produced))
            return RunOutcome(run.key, "failed", self.db.get(run.key))
        try:
            for phase, metrics in produced.epochs:
                self.db.add_epoch(run.key, metrics, phase, self.owner)
            self.db.finish(run.key, self.owner, produced.fields)
        except ClaimLost as lost:
            return self.record(run, lost)
        return RunOutcome(run.key, "done", self.db.get(run.key))

    @contextmanager
    def holding(self, runs: Sequence[Run]) -> Iterator[set[str]]:
        """Heartbeats for ``runs`` while the block trains them; yields the set the block adds each
        recorded key to. Interrupted (Ctrl-C, an error outside a run), every run not yet recorded is
        released, free for the next invocation, and the interruption goes on."""
        recorded: set[str] = set()
        try:
            with Heartbeat(self.db, [r.key for r in runs], self.owner):
                yield recorded
        except BaseException:
            for run in runs:
                if run.key not in recorded:
                    self.db.release(run.key, self.owner)
            raise

    def carry_out(self, runs: Sequence[Run], backend: Backend, report: Callable[[RunOutcome], None] = lambda o: None) -> list[RunOutcome]:
        """Claim, train (with ``backend``) and record ``runs``, unit by unit; report every outcome. A
        SIGTERM meanwhile ends the process as Ctrl-C does (:func:`terminate_releases`)."""
        with terminate_releases():
            return self._carry_out(runs, backend, report)

    def _carry_out(self, runs: Sequence[Run], backend: Backend, report: Callable[[RunOutcome], None]) -> list[RunOutcome]:
        outcomes = []
        for unit in backend.units(runs):
            claimed, refused = self.claim(unit)
            for outcome in refused:
                outcomes.append(outcome)
                report(outcome)
            if not claimed:
                continue
            with self.holding(claimed) as recorded:
                for run, produced in backend.train(claimed, self.store):
                    outcome = self.record(run, produced)
                    recorded.add(run.key)
                    outcomes.append(outcome)
                    report(outcome)
        return outcomes
