"""Recording what a run produced: its row in the results database and its per-layer report files."""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data import Dataset
from ..files import atomic_write_json, atomic_write_text
from ..training import Callback
from .db import ResultsDB
from .kinds import Executed, Run


def versions() -> dict[str, str]:
    """The versions a result was produced with."""
    return {
        "prunekit": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@dataclass
class Store:
    """Where runs are recorded: the results database and the folder of the run files, written by
    ``owner`` only while it holds the run (every write is preceded by a check of the claim)."""

    db: ResultsDB
    out_dir: Path
    owner: str | None = None

    def run_dir(self, run: Run) -> Path:
        return self.out_dir / "runs" / run.key

    def epoch_callbacks(self, run: Run) -> Callable[[int], list[Callback]]:
        """``phase -> callbacks`` that log every finished epoch of ``run`` to its row as it ends (and
        stop the run with :class:`~prunekit.experiments.db.ClaimLost`, before its checkpoint is
        written, if another process has taken it over)."""
        return lambda phase: [EpochsToDB(self.db, run.key, phase, self.owner)]

    def guard(self, run: Run) -> Callable[[], None]:
        """A check to call before writing a file of ``run``: raises ``ClaimLost`` once the claim is gone."""
        owner = self.owner
        if owner is None:
            return lambda: None
        return lambda: self.db.check_claim(run.key, owner)


@dataclass
class Trained:
    """What a backend produced for one run: its result fields, and per-epoch metrics to record first
    (a backend whose runs log their epochs themselves leaves ``epochs`` empty)."""

    fields: dict[str, Any]
    epochs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def trained(done: Executed, run_dir: Path, ds: Dataset, device: torch.device) -> Trained:
    """A run's result, ready to record (writes its per-layer report files)."""
    return Trained(result_fields(done, run_dir, ds, device))


class EpochsToDB(Callback):
    """Logs every finished epoch's metrics to the run's row (phase: IMP round); with ``owner``, only
    while that owner holds the run (:class:`~prunekit.experiments.db.ClaimLost` otherwise)."""

    def __init__(self, db: ResultsDB, key: str, phase: int = 0, owner: str | None = None):
        self.db, self.key, self.phase, self.owner = db, key, phase, owner

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        self.db.add_epoch(self.key, metrics, self.phase, self.owner)


def result_fields(done: Executed, run_dir: Path, ds: Dataset, device: torch.device) -> dict[str, Any]:
    """The result fields of a finished run for the database; writes its per-layer report files."""
    model, masks, result, train_seconds = done.model, done.masks, done.result, done.train_seconds
    extra = dict(done.extra)
    layers = None
    effective: float | None = 1.0
    if masks is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = masks.report(model, input_shape=ds.input_shape)
        layers = report.as_dicts()
        effective = report.effective_density
        extra["collapsed_layers"] = report.collapsed
        extra["empty_layers"] = report.empty
        extra["disconnected"] = report.disconnected
        extra["warnings"] = [str(w.message) for w in caught]
        if report.tie_steps:
            extra["tie_steps"] = report.tie_steps
        atomic_write_text(run_dir / "layers.md", report.to_markdown() + "\n")
        atomic_write_json(run_dir / "layers.json", layers, indent=1)
    extra.update(result.extra)
    return {
        "final_acc": result.final_test_acc,
        "best_acc": result.best_test_acc,
        "best_epoch": result.best_test_epoch,
        "test_at_best_val": result.test_at_best_val,
        "density": 1.0 if masks is None else masks.density,
        "effective_density": effective,
        "scoring_seconds": 0.0 if masks is None else float(masks.meta.get("scoring_seconds", 0.0)),
        "train_seconds": result.train_seconds if train_seconds is None else train_seconds,
        "images_per_second": result.images_per_second,
        "device": device_name(device),
        "versions": versions(),
        "mask_path": None if masks is None else str(run_dir / "masks.pt"),
        "run_dir": str(run_dir),
        "layers": layers,
        "extra": extra,
    }
