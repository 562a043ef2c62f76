"""One run: score -> mask -> (ablation) -> train -> evaluate -> store.

Files of a run live in ``<out>/runs/<key>/``: ``config.json``, ``masks.pt`` (or IMP's per-round
masks under ``imp/``), ``layers.md``/``layers.json`` (per-layer report), ``checkpoint.pt``. The row in
``<out>/results.db`` carries the metrics. An interrupted run continues from its checkpoint (its masks
are read back, not recomputed).
"""

from __future__ import annotations

import json
import platform
import shutil
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data import Dataset, load_dataset, scoring_batches, split_validation
from ..masks import Masks
from ..models import create
from ..options import build
from ..prunable import prunable_parameters
from ..pruning import prune
from ..training import Callback, TrainConfig, TrainResult, fit
from .ablations import reinit_seed, shuffle_masks
from .config import DENSE, IMP, RunSpec, resolve, run_key
from .db import Heartbeat, ResultsDB, make_owner
from .imp import run_imp


def versions() -> dict[str, str]:
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


class EpochsToDB(Callback):
    def __init__(self, db: ResultsDB, key: str, phase: int = 0):
        self.db, self.key, self.phase = db, key, phase

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        self.db.add_epoch(self.key, metrics, self.phase)


@dataclass
class RunOutcome:
    """What happened to a requested run: ``done`` (just now), ``skipped`` (already done), ``busy``
    (another process runs it), ``failed`` (now or earlier)."""

    key: str
    status: str
    row: dict[str, Any] | None


class DatasetCache:
    """Datasets loaded once per process and shared by the runs of a sweep."""

    def __init__(self, data_dir: str | None = None):
        self.data_dir = data_dir
        self._cache: dict[str, Dataset] = {}

    def get(self, name: str) -> Dataset:
        if name not in self._cache:
            self._cache[name] = load_dataset(name, self.data_dir)
        return self._cache[name]


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a resolved run configuration."""
    return build(TrainConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in config["train"].items()}, "train")


def make_model(config: dict[str, Any], ds: Dataset, device: torch.device, seed: int) -> torch.nn.Module:
    return create(
        config["model"], ds.num_classes, ds.input_shape, init=config["init"], bn_gamma=config["bn_gamma"],
        seed=seed, **config["model_kwargs"],
    ).to(device)


def prepare(
    config: dict[str, Any], run_dir: Path, ds: Dataset, device: torch.device, progress: bool | None = None
) -> tuple[torch.nn.Module, Masks | None]:
    """The initialised model and its masks (scored now, or read back from an earlier attempt), ablation applied."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    seed, method = config["seed"], config["method"]
    model = make_model(config, ds, device, seed)
    if method == DENSE:
        return model, None
    mask_path = run_dir / "masks.pt"
    if mask_path.is_file():
        masks = Masks.load(mask_path, model=model)
    else:
        cfg = train_config(config)
        train_part = ds.train
        if cfg.val_size > 0:
            size = int(cfg.val_size) if cfg.val_size >= 1 else float(cfg.val_size)
            train_part, _ = split_validation(ds.train, size, seed)  # the split training uses: never score on validation data
        batches = scoring_batches(
            train_part, batch_size=config["scoring_batch_size"], mean=ds.info.mean, std=ds.info.std, device=device, seed=seed
        )
        masks = prune(
            model, method, config["sparsity"], data=batches, seed=seed, allocation=config["allocation"],
            invert=config["ablation"] == "invert", progress=progress, **config["method_options"],
        )
        if config["ablation"] == "shuffle":
            masks = shuffle_masks(masks, seed)
        masks.save(mask_path)
    if config["ablation"] == "reinit":
        model = make_model(config, ds, device, reinit_seed(seed))
    return model, masks


def finalize(
    model: torch.nn.Module, masks: Masks | None, result: TrainResult, run_dir: Path, ds: Dataset, device: torch.device,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result fields of a finished run (and its per-layer report files)."""
    extra = dict(extra or {})
    layers = None
    effective = 1.0
    if masks is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = masks.report(model, input_shape=ds.input_shape)
        layers = report.as_dicts()
        effective = report.effective_density
        extra["collapsed_layers"] = report.collapsed
        extra["warnings"] = [str(w.message) for w in caught]
        (run_dir / "layers.md").write_text(report.to_markdown() + "\n")
        (run_dir / "layers.json").write_text(json.dumps(layers, indent=1))
    extra.update(result.extra)
    return {
        "final_acc": result.final_test_acc,
        "best_acc": result.best_test_acc,
        "best_epoch": result.best_test_epoch,
        "test_at_best_val": result.test_at_best_val,
        "density": 1.0 if masks is None else masks.density,
        "effective_density": effective,
        "scoring_seconds": 0.0 if masks is None else float(masks.meta.get("scoring_seconds", 0.0)),
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "device": device_name(device),
        "versions": versions(),
        "mask_path": None if masks is None else str(run_dir / "masks.pt"),
        "run_dir": str(run_dir),
        "layers": layers,
        "extra": extra,
    }


def imp_donors(config: dict[str, Any], run_dir: Path) -> list[Path]:
    """IMP work directories of the runs beside ``run_dir`` whose configuration differs only in sparsity."""

    def without_target(c: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in c.items() if k != "sparsity"}, sort_keys=True)

    mine = without_target(json.loads(json.dumps(config)))
    donors = []
    for other in sorted(run_dir.parent.glob("*/config.json")):
        if other.parent == run_dir or not (other.parent / "imp").is_dir():
            continue
        try:
            theirs = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if theirs.get("method") == IMP and without_target(theirs) == mine:
            donors.append(other.parent / "imp")
    return donors


def execute(
    config: dict[str, Any],
    key: str,
    run_dir: Path,
    *,
    db: ResultsDB,
    datasets: DatasetCache,
    device: torch.device,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Carry out a resolved run one model at a time; return the result fields for the database."""
    ds = datasets.get(config["dataset"])
    cfg = train_config(config)
    if config["method"] == IMP:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        model = make_model(config, ds, device, config["seed"])
        opts = config["method_options"]
        masks, result, rounds = run_imp(
            model, ds, cfg, sparsity=config["sparsity"], fraction=opts["fraction"], rewind_epoch=opts["rewind_epoch"],
            allocation=opts["allocation"], prunable=list(prunable_parameters(model)), device=device, seed=config["seed"],
            workdir=run_dir / "imp", epoch_callbacks=lambda r: [EpochsToDB(db, key, r)], progress=progress,
            donors=imp_donors(config, run_dir),
        )
        masks.save(run_dir / "masks.pt")
        fields = finalize(model, masks, result, run_dir, ds, device, {"rounds": rounds, "history_epochs": result.epochs})
        # the cost of the ticket: every round this run trained (rounds taken over from another run are
        # counted there), and of all its rounds wherever they were trained
        fields["train_seconds"] = sum(r["train_seconds"] for r in rounds if "shared_from" not in r)
        fields["extra"]["ticket_train_seconds"] = sum(r["train_seconds"] for r in rounds)
        return fields
    model, masks = prepare(config, run_dir, ds, device, progress)
    result = fit(
        model, ds, cfg, masks=masks, device=device, seed=config["seed"], checkpoint=run_dir / "checkpoint.pt",
        callbacks=[EpochsToDB(db, key)], progress=progress, desc=f"{config['method']} {config['sparsity']:.4g}",
    )
    return finalize(model, masks, result, run_dir, ds, device, {"history_epochs": result.epochs})


def run_one(
    spec: RunSpec,
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
    config = resolve(spec)
    key = run_key(config)
    out_dir = Path(out_dir)
    own_db = db is None
    db = db or ResultsDB(out_dir / "results.db")
    try:
        db.ensure(key, config)
        run_dir = out_dir / "runs" / key
        if force:
            db.reset(key)
            for leftover in ("checkpoint.pt", "masks.pt"):
                (run_dir / leftover).unlink(missing_ok=True)
            if (run_dir / "imp").is_dir():
                shutil.rmtree(run_dir / "imp")
        owner = owner or make_owner()
        if not db.claim(key, owner, retry_failed=retry_failed):
            row = db.get(key)
            status = "skipped" if row and row["status"] == "done" else ("failed" if row and row["status"] == "failed" else "busy")
            return RunOutcome(key, status, row)
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            with Heartbeat(db, key, owner):
                results = execute(config, key, run_dir, db=db, datasets=datasets or DatasetCache(), device=device, progress=progress)
        except KeyboardInterrupt:
            db.release(key, owner)
            raise
        except Exception as exc:  # recorded, so that a sweep goes on with the next run
            db.fail(key, owner, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
            return RunOutcome(key, "failed", db.get(key))
        db.finish(key, owner, results)
        return RunOutcome(key, "done", db.get(key))
    finally:
        if own_db:
            db.close()


def describe_outcome(outcome: RunOutcome) -> str:
    row = outcome.row or {}
    head = f"{row.get('method')} @ {row.get('sparsity', 0):.4g} seed {row.get('seed')}"
    if row.get("ablation"):
        head += f" ({row['ablation']})"
    if outcome.status in ("done", "skipped"):
        acc = row.get("final_acc")
        best = row.get("best_acc")
        took = (row.get("train_seconds") or 0) + (row.get("scoring_seconds") or 0)
        return f"{head}: {outcome.status}, final {acc:.2%}, best {best:.2%} ({took:.0f} s)"
    if outcome.status == "failed":
        return f"{head}: FAILED: {(row.get('error') or '').splitlines()[0] if row.get('error') else ''}"
    return f"{head}: running in another process"

