"""Stacked execution of sweep runs: runs that share architecture, dataset and recipe train together.

To the database and the report a stacked group is N ordinary runs: each member is claimed, scored,
checkpointed (in the single-run format), evaluated and recorded on its own. Scoring stays one model
at a time (it is cheap) and gives the masks a single run would. A group whose architecture cannot be
stacked, or whose stacked training fails, falls back to one run at a time with a one-line notice.
"""

from __future__ import annotations

import logging
import traceback
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..masks import Masks
from ..stacked import Member, StackedModel, StackedTrainer, can_stack, checkpoint_epoch
from ..training import TrainingDiverged
from ..training.trainer import make_optimizer
from .config import ResolvedRun
from .db import Heartbeat, ResultsDB
from .execute import DatasetCache, make_model, prepare
from .record import EpochsToDB, result_fields
from .run import RunOutcome, failure_kind, outcome_of_claim_refused, run_one

MAX_GROUP = 32
logger = logging.getLogger("prunekit")


def plan_groups(runs: Sequence[ResolvedRun]) -> list[list[ResolvedRun]]:
    """Compatible runs together, in order of first appearance; IMP runs alone."""
    groups: OrderedDict[str, list[ResolvedRun]] = OrderedDict()
    alone = []
    for run in runs:
        if run.group is None:
            alone.append([run])
        else:
            groups.setdefault(run.group, []).append(run)
    return list(groups.values()) + alone


def estimate_group_size(run: ResolvedRun, datasets: DatasetCache, device: torch.device, cap: int = MAX_GROUP) -> int:
    """How many members fit on ``device``: free memory over the memory one member's training step takes.

    On the CPU stacking brings no speed-up (the kernels are not launch-bound), so the answer is 1.
    """
    if device.type != "cuda":
        return 1
    ds = datasets.get(run.dataset)
    cfg = run.train
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    models = [make_model(run, ds, device, s) for s in (0, 1)]
    stacked = StackedModel(models).to(device)
    opt = make_optimizer(stacked.parameters(), cfg)
    x = torch.randn(2, cfg.batch_size, *ds.input_shape, device=device)
    with run.training_precision(device).autocast(device):
        out = stacked(x)
    out.float().sum().backward()
    opt.step()
    torch.cuda.synchronize(device)
    per_member = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    del models, stacked, opt, x, out
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(cap, (0.6 * free) // per_member)))


@dataclass
class Prepared:
    """A claimed run of a group, scored and ready to train."""

    run: ResolvedRun
    run_dir: Path
    model: nn.Module
    masks: Masks | None


def run_group(
    runs: Sequence[ResolvedRun],
    out_dir: Path,
    *,
    db: ResultsDB,
    datasets: DatasetCache,
    device: torch.device,
    owner: str,
    progress: bool | None = None,
    retry_failed: bool = False,
) -> list[RunOutcome]:
    """Run compatible ``runs`` stacked (those not already done or taken by another process)."""
    outcomes: dict[str, RunOutcome] = {}
    claimed: list[ResolvedRun] = []
    for run in runs:
        db.ensure(run.key, run.config)
        if db.claim(run.key, owner, retry_failed=retry_failed):
            claimed.append(run)
        else:
            outcomes[run.key] = outcome_of_claim_refused(db, run.key)
    if not claimed:
        return [outcomes[r.key] for r in runs]
    ds = datasets.get(claimed[0].dataset)
    by_epoch: dict[int, list[Prepared]] = defaultdict(list)
    with Heartbeat(db, [r.key for r in claimed], owner):
        for run in claimed:
            run_dir = out_dir / "runs" / run.key
            try:
                model, masks = prepare(run, run_dir, ds, device, progress)
            except Exception as exc:
                db.fail(run.key, owner, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}", failure_kind(exc))
                outcomes[run.key] = RunOutcome(run.key, "failed", db.get(run.key))
                continue
            by_epoch[checkpoint_epoch(run_dir / "checkpoint.pt")].append(Prepared(run, run_dir, model, masks))
        for group in by_epoch.values():
            alone: dict[str, Any] = dict(out_dir=out_dir, db=db, datasets=datasets, device=device, owner=owner, progress=progress, outcomes=outcomes)
            if len(group) == 1:
                _release_and_run_alone(group, **alone)
                continue
            ok, why = can_stack(group[0].model, ds.input_shape, device)
            if not ok:
                logger.warning("%s cannot be stacked (%s); training its %d runs one at a time", group[0].run.model, why, len(group))
                _release_and_run_alone(group, **alone)
                continue
            members = [
                Member(p.model, p.masks, p.run.seed, checkpoint=p.run_dir / "checkpoint.pt", callbacks=[EpochsToDB(db, p.run.key)])
                for p in group
            ]
            try:
                results = StackedTrainer(members, ds, group[0].run.train, device, group[0].run.precision).fit(
                    progress=bool(progress), desc=f"{group[0].run.model} stacked"
                )
            except Exception as exc:
                logger.warning("stacked training of %d runs failed (%s: %s); running them one at a time", len(group), type(exc).__name__, exc)
                _release_and_run_alone(group, **alone)
                continue
            for p, member, result in zip(group, members, results):
                if isinstance(result, TrainingDiverged):
                    db.fail(p.run.key, owner, f"TrainingDiverged: {result}")
                    outcomes[p.run.key] = RunOutcome(p.run.key, "failed", db.get(p.run.key))
                    continue
                fields = result_fields(member.model, member.masks, result, p.run_dir, ds, device, {"history_epochs": result.epochs})
                db.finish(p.run.key, owner, fields)
                outcomes[p.run.key] = RunOutcome(p.run.key, "done", db.get(p.run.key))
    return [outcomes[r.key] for r in runs]


def _release_and_run_alone(
    group: Sequence[Prepared], *, out_dir: Path, db: ResultsDB, datasets: DatasetCache, device: torch.device, owner: str,
    progress: bool | None, outcomes: dict[str, RunOutcome],
) -> None:
    for p in group:
        db.release(p.run.key, owner)
        outcomes[p.run.key] = run_one(p.run, out_dir, db=db, datasets=datasets, device=device, owner=owner, progress=progress)
