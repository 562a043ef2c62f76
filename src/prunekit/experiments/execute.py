"""Carrying out one resolved run: model, masks (scored, or read back), ablation, training.

Nothing here touches the results database; :mod:`.record` turns what a run produced into its row,
and :mod:`.run` claims, executes and records.

Files of a run live in ``<out>/runs/<key>/``: ``config.json``, ``masks.pt`` (or IMP's per-round
masks under ``imp/``), ``layers.md``/``layers.json`` (per-layer report), ``checkpoint.pt``. An
interrupted run continues from its checkpoint (its masks are read back, not recomputed).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset, load_dataset, scoring_batches
from ..distributed import decided_by_rank0, rank, world_size
from ..errors import ConfigError
from ..files import atomic_write_json
from ..masks import Masks
from ..models import create
from ..prunable import prunable_parameters
from ..pruning import prune
from ..structured import EarlyPruning
from ..training import Callback, TrainResult, fit
from ..training.core import split_dataset
from .ablations import reinit_seed, shuffle_masks
from .config import DENSE, IMP, ResolvedRun
from .imp import run_imp


class DatasetCache:
    """Datasets loaded once per process and shared by the runs of a sweep."""

    def __init__(self, data_dir: str | None = None):
        self.data_dir = data_dir
        self._cache: dict[str, Dataset] = {}

    def get(self, name: str) -> Dataset:
        if name not in self._cache:
            self._cache[name] = load_dataset(name, self.data_dir)
        return self._cache[name]


def make_model(run: ResolvedRun, ds: Dataset, device: torch.device, seed: int | None = None) -> torch.nn.Module:
    """The run's network, initialised as its recipe says (``seed`` defaults to the run's)."""
    return create(
        run.model, ds.num_classes, ds.input_shape, init=run.init, bn_gamma=run.bn_gamma,
        seed=run.seed if seed is None else seed, **dict(run.model_kwargs),
    ).to(device)


def _scoring_data(run: ResolvedRun, ds: Dataset, device: torch.device, num_batches: int | None = None) -> Any:
    """The run's scoring batches: from the training part of its split (never validation data)."""
    train_part = split_dataset(ds.train, run.train, run.seed)[0]
    return scoring_batches(
        train_part, batch_size=run.scoring_batch_size, mean=ds.info.mean, std=ds.info.std, device=device, seed=run.seed,
        num_batches=num_batches,
    )


def prepare(run: ResolvedRun, run_dir: Path, ds: Dataset, device: torch.device, progress: bool | None = None) -> tuple[torch.nn.Module, Masks | None]:
    """The initialised model and its masks (scored now, or read back from an earlier attempt), ablation applied.

    Data-parallel (several ranks): rank 0 decides whether the masks are read back, every rank scores
    (the scores are reduced across ranks, so the masks agree), and only rank 0 writes files.
    """
    writer = rank() == 0
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", run.config, indent=1, sort_keys=True)
    model = make_model(run, ds, device)
    if run.method == DENSE:
        return model, None
    mask_path = run_dir / "masks.pt"
    if decided_by_rank0(mask_path.is_file()):
        masks = Masks.load(mask_path, model=model)
    else:
        batches = _scoring_data(run, ds, device)
        masks = prune(
            model, run.method, run.sparsity, data=batches, seed=run.seed, allocation=run.allocation,
            invert=run.ablation == "invert", progress=progress, **dict(run.method_options),
        )
        if run.ablation == "shuffle":
            masks = shuffle_masks(masks, run.seed)
        if writer:
            masks.save(mask_path)
    if run.ablation == "reinit":
        model = make_model(run, ds, device, reinit_seed(run.seed))
    return model, masks


@dataclass
class Executed:
    """What executing a run produced, before it is recorded."""

    model: torch.nn.Module
    masks: Masks | None
    result: TrainResult
    extra: dict[str, Any]
    train_seconds: float | None = None  # IMP: only the rounds this run trained


def imp_donors(run: ResolvedRun, run_dir: Path) -> list[Path]:
    """IMP work directories of the runs beside ``run_dir`` whose configuration differs only in sparsity."""

    def without_target(c: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in c.items() if k != "sparsity"}, sort_keys=True)

    mine = without_target(run.config)
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
    run: ResolvedRun,
    run_dir: Path,
    *,
    datasets: DatasetCache,
    device: torch.device,
    callbacks: Sequence[Callback] | None = None,
    imp_callbacks: Any = None,
    progress: bool | None = None,
) -> Executed:
    """Carry out ``run`` one model at a time.

    Args:
        callbacks: per-epoch callbacks of the training (e.g. the database's epoch log).
        imp_callbacks: for IMP, ``imp_callbacks(round) -> callbacks`` of each round's training.
    """
    ds = datasets.get(run.dataset)
    if world_size() > 1 and (run.method == IMP or run.structured is not None):
        raise ConfigError(
            "data-parallel training (--nproc) runs pruning-at-initialisation methods and dense baselines; "
            "IMP and early structured pruning train on one process"
        )
    if run.method == IMP:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", run.config, indent=1, sort_keys=True)
        model = make_model(run, ds, device)
        opts = run.method_options
        masks, result, rounds = run_imp(
            model, ds, run.train, sparsity=run.sparsity, fraction=opts["fraction"], rewind_epoch=opts["rewind_epoch"],
            allocation=opts["allocation"], prunable=list(prunable_parameters(model)), device=device, seed=run.seed,
            workdir=run_dir / "imp", epoch_callbacks=imp_callbacks or (lambda r: []), progress=progress,
            donors=imp_donors(run, run_dir), schedule=opts.get("schedule", "fraction"), rounds=opts.get("rounds", 20),
            scorer=opts.get("scorer", "magnitude"), prune_first=opts.get("prune_first", False),
            scoring_data=lambda: _scoring_data(run, ds, device, num_batches=1), precision=run.training_precision(device),
        )
        masks.save(run_dir / "masks.pt")
        # the cost of the ticket: every round this run trained (rounds taken over from another run are
        # counted there), and of all its rounds wherever they were trained
        ticket = {"rounds": rounds, "history_epochs": result.epochs, "ticket_train_seconds": sum(r["train_seconds"] for r in rounds)}
        return Executed(model, masks, result, ticket, sum(r["train_seconds"] for r in rounds if "shared_from" not in r))
    model, scored = prepare(run, run_dir, ds, device, progress)
    early = None
    structured = run.structured
    if structured is not None:
        early = EarlyPruning(structured["budget"], trigger=structured["trigger"], **dict(structured["options"]))
        full = copy.deepcopy(model)
    result = fit(
        model, ds, run.train, masks=scored, device=device, seed=run.seed, checkpoint=run_dir / "checkpoint.pt",
        callbacks=[*(callbacks or []), *([early] if early else [])], progress=progress,
        desc=f"{run.method} {run.sparsity:.4g}" if structured is None else f"structured {structured['trigger']}",
        precision=run.training_precision(device),
    )
    extra: dict[str, Any] = {"history_epochs": result.epochs}
    if world_size() > 1:
        extra["world_size"] = world_size()
    if early is not None:
        final = early.pruned_model if early.pruned_model is not None else model
        summary = early.summary()
        g = torch.Generator().manual_seed(0)  # the global random stream is not touched
        batch = torch.randint(0, 256, (run.train.batch_size, *ds.input_shape), dtype=torch.uint8, generator=g)
        x = ((batch.float() / 255.0) - 0.5).to(device)
        summary["latency_before_ms"] = measure_latency(full, x)
        summary["latency_after_ms"] = measure_latency(final, x)
        before = summary["train_seconds_before_pruning"]
        summary["train_seconds_after_pruning"] = None if before is None else result.train_seconds - before
        extra["structured"] = summary
        model = final
    return Executed(model, scored, result, extra)


def measure_latency(model: torch.nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    """Median wall-clock milliseconds of one inference forward of ``x`` (eval mode, after a warm-up)."""
    model = model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            if i >= 3:
                times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)
