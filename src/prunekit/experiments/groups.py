"""Stacked execution of sweep runs: runs that share architecture, dataset and recipe train together.

To the database and the report a stacked group is N ordinary runs: each member is claimed, scored,
checkpointed (in the single-run format), evaluated and recorded on its own. Scoring stays one model
at a time (it is cheap) and gives the masks a single run would. A group whose architecture cannot be
stacked, or whose stacked training fails, falls back to one run at a time with a one-line notice.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from ..stacked import Member, StackedModel, StackedTrainer, can_stack, checkpoint_epoch
from ..training import TrainingDiverged
from ..training.trainer import make_optimizer
from .config import IMP, RunSpec, resolve, run_key
from .db import Heartbeat, ResultsDB
from .run import DatasetCache, RunOutcome, EpochsToDB, finalize, make_model, prepare, run_one, train_config

MAX_GROUP = 32


def group_key(config: dict[str, Any]) -> str | None:
    """Runs with the same key can be stacked (None: never, e.g. IMP)."""
    if config["method"] == IMP:
        return None
    shared = {k: config[k] for k in ("model", "dataset", "recipe", "train", "model_kwargs", "init", "bn_gamma")}
    return json.dumps(shared, sort_keys=True)


def plan_groups(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Compatible runs together, in order of first appearance; IMP runs alone."""
    groups: OrderedDict[str, list[RunSpec]] = OrderedDict()
    alone = []
    for spec in specs:
        key = group_key(resolve(spec))
        if key is None:
            alone.append([spec])
        else:
            groups.setdefault(key, []).append(spec)
    return list(groups.values()) + alone


def estimate_group_size(config: dict[str, Any], datasets: DatasetCache, device: torch.device, cap: int = MAX_GROUP) -> int:
    """How many members fit on ``device``: free memory over the memory one member's training step takes.

    On the CPU stacking brings no speed-up (the kernels are not launch-bound), so the answer is 1.
    """
    if device.type != "cuda":
        return 1
    ds = datasets.get(config["dataset"])
    cfg = train_config(config)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    models = [make_model(config, ds, device, s) for s in (0, 1)]
    stacked = StackedModel(models).to(device)
    opt = make_optimizer(stacked.parameters(), cfg)
    x = torch.randn(2, cfg.batch_size, *ds.input_shape, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp):
        out = stacked(x)
    out.float().sum().backward()
    opt.step()
    torch.cuda.synchronize(device)
    per_member = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    del models, stacked, opt, x, out
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(cap, (0.6 * free) // per_member)))


def _notice(text: str) -> None:
    print(f"prunekit: {text}", file=sys.stderr, flush=True)


def run_group(
    specs: Sequence[RunSpec],
    out_dir: Any,
    *,
    db: ResultsDB,
    datasets: DatasetCache,
    device: torch.device,
    owner: str,
    progress: bool | None = None,
    retry_failed: bool = False,
) -> list[RunOutcome]:
    """Run compatible ``specs`` stacked (those not already done or taken by another process)."""
    outcomes: dict[str, RunOutcome] = {}
    claimed = []
    for spec in specs:
        config = resolve(spec)
        key = run_key(config)
        db.ensure(key, config)
        if db.claim(key, owner, retry_failed=retry_failed):
            claimed.append((spec, config, key))
        else:
            row = db.get(key)
            status = "skipped" if row and row["status"] == "done" else ("failed" if row and row["status"] == "failed" else "busy")
            outcomes[key] = RunOutcome(key, status, row)
    if not claimed:
        return [outcomes[run_key(resolve(s))] for s in specs]
    ds = datasets.get(claimed[0][1]["dataset"])
    cfg = train_config(claimed[0][1])
    members_by_epoch: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    with Heartbeat(db, [k for _, _, k in claimed], owner):
        for spec, config, key in claimed:
            run_dir = out_dir / "runs" / key
            try:
                model, masks = prepare(config, run_dir, ds, device, progress)
            except Exception as exc:
                db.fail(key, owner, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
                outcomes[key] = RunOutcome(key, "failed", db.get(key))
                continue
            members_by_epoch[checkpoint_epoch(run_dir / "checkpoint.pt")].append((spec, config, key, run_dir, model, masks))
        for group in members_by_epoch.values():
            if len(group) == 1:
                _release_and_run_alone(group, out_dir, db, datasets, device, owner, progress, outcomes)
                continue
            ok, why = can_stack(group[0][4], ds.input_shape, device)
            if not ok:
                _notice(f"{group[0][1]['model']} cannot be stacked ({why}); training its {len(group)} runs one at a time")
                _release_and_run_alone(group, out_dir, db, datasets, device, owner, progress, outcomes)
                continue
            members = [
                Member(model, masks, config["seed"], checkpoint=run_dir / "checkpoint.pt", callbacks=[EpochsToDB(db, key)])
                for _, config, key, run_dir, model, masks in group
            ]
            try:
                results = StackedTrainer(members, ds, cfg, device).fit(
                    progress=bool(progress), desc=f"{group[0][1]['model']} stacked"
                )
            except Exception as exc:
                _notice(f"stacked training of {len(group)} runs failed ({type(exc).__name__}: {exc}); running them one at a time")
                _release_and_run_alone(group, out_dir, db, datasets, device, owner, progress, outcomes)
                continue
            for (spec, config, key, run_dir, _, _), member, result in zip(group, members, results):
                if isinstance(result, TrainingDiverged):
                    db.fail(key, owner, f"TrainingDiverged: {result}")
                    outcomes[key] = RunOutcome(key, "failed", db.get(key))
                    continue
                fields = finalize(member.model, member.masks, result, run_dir, ds, device, {"history_epochs": result.epochs})
                db.finish(key, owner, fields)
                outcomes[key] = RunOutcome(key, "done", db.get(key))
    return [outcomes[run_key(resolve(s))] for s in specs]


def _release_and_run_alone(group, out_dir, db, datasets, device, owner, progress, outcomes) -> None:  # noqa: ANN001
    for spec, _, key, _, _, _ in group:
        db.release(key, owner)
        outcomes[key] = run_one(spec, out_dir, db=db, datasets=datasets, device=device, owner=owner, progress=progress)
