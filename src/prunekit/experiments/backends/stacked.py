"""Runs that share architecture, dataset, recipe and precision, trained together as one network.

To the database and the report a stacked group is N ordinary runs: each member is claimed, scored,
checkpointed (in the single-run format), evaluated and recorded on its own. Scoring stays one model
at a time (it is cheap) and gives the masks a single run would. A group whose architecture cannot be
stacked, or whose stacked training fails, is trained one run at a time with a one-line notice.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ...core.masks import Masks
from ...data import Dataset
from ...stacked import Member, StackedModel, StackedTrainer, can_stack, checkpoint_epoch
from ...training import TrainingDiverged
from ...training.trainer import make_optimizer
from ..kinds import DatasetCache, Run, RunContext, TrainingRun
from ..kinds.training import disconnects
from ..lifecycle import interruption
from ..record import EpochsToDB, Store, Trained, trained
from .local import LocalBackend

MAX_GROUP = 32
logger = logging.getLogger("prunekit")


def plan_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Compatible runs together, in order of first appearance; runs that never stack (IMP, structured) alone."""
    groups: OrderedDict[str, list[Run]] = OrderedDict()
    alone = []
    for run in runs:
        if run.group is None:
            alone.append([run])
        else:
            groups.setdefault(run.group, []).append(run)
    return list(groups.values()) + alone


def estimate_group_size(run: TrainingRun, datasets: DatasetCache, device: torch.device, cap: int = MAX_GROUP) -> int:
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
    models = [run.make_model(ds, device, s) for s in (0, 1)]
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

    run: TrainingRun
    ctx: RunContext
    model: nn.Module
    masks: Masks | None


class StackedBackend:
    """Compatible runs in groups of ``size`` (default: as many as fit in free GPU memory, at most 32;
    1 on the CPU, where stacking brings no speed-up); a group of one is trained by :class:`LocalBackend`."""

    def __init__(self, datasets: DatasetCache, device: torch.device, progress: bool | None = None, size: int | None = None):
        self.datasets, self.device, self.progress, self.size = datasets, device, progress, size
        self.alone = LocalBackend(datasets, device, progress)

    def units(self, runs: Sequence[Run]) -> Iterable[Sequence[Run]]:
        for group in plan_groups(runs):
            first = group[0]
            size = 1
            if len(group) > 1 and isinstance(first, TrainingRun):
                size = self.size if self.size is not None else estimate_group_size(first, self.datasets, self.device)
            for i in range(0, len(group), size):
                yield group[i : i + size]

    def train(self, runs: Sequence[Run], store: Store) -> Iterator[tuple[Run, Trained | BaseException]]:
        if len(runs) == 1 or not all(isinstance(r, TrainingRun) for r in runs):
            yield from self.alone.train(runs, store)
            return
        ds = self.datasets.get(runs[0].dataset)
        by_epoch: dict[int, list[Prepared]] = defaultdict(list)
        for run in runs:
            assert isinstance(run, TrainingRun)
            ctx = self.alone.context(run, store)
            try:
                run.start(ctx)
                model, masks = run.prepare(ctx, ds)
            except Exception as exc:
                yield run, exc
                continue
            prepared = Prepared(run, ctx, model, masks)
            if disconnects(model, masks, ds):  # trained alone: it stops after one epoch instead of the whole recipe
                yield run, self.train_alone(prepared, ds)
                continue
            by_epoch[checkpoint_epoch(ctx.run_dir / "checkpoint.pt")].append(prepared)
        for group in by_epoch.values():
            if len(group) == 1:
                yield group[0].run, self.train_alone(group[0], ds)
                continue
            ok, why = can_stack(group[0].model, ds.input_shape, self.device)
            if not ok:
                logger.warning("%s cannot be stacked (%s); training its %d runs one at a time", group[0].run.model, why, len(group))
                for p in group:
                    yield p.run, self.train_alone(p, ds)
                continue
            members = [
                Member(p.model, p.masks, p.run.seed, checkpoint=p.ctx.run_dir / "checkpoint.pt", callbacks=[EpochsToDB(store.db, p.run.key, 0, store.owner)])
                for p in group
            ]
            try:
                results = StackedTrainer(members, ds, group[0].run.train, self.device, group[0].run.precision).fit(
                    progress=bool(self.progress), desc=f"{group[0].run.model} stacked"
                )
            except Exception as exc:
                if (stopped := interruption(exc)) is not None:  # stopped, not failed: nothing to run again here
                    raise stopped from None
                logger.warning("stacked training of %d runs failed (%s: %s); running them one at a time", len(group), type(exc).__name__, exc)
                for p in group:  # prepared again (the stacked training changed the members' models), from the masks saved
                    ctx = self.alone.context(p.run, store)
                    ctx.events = list(p.ctx.events)
                    yield p.run, self.alone.carry_out(p.run, ctx, partial(p.run.execute, ctx))
                continue
            for p, member, result in zip(group, members, results):
                if isinstance(result, TrainingDiverged):
                    yield p.run, result
                    continue
                try:
                    done = p.run.executed(member.model, member.masks, result, ds, p.ctx.events)
                except Exception as exc:  # e.g. a stalled member: recorded as its failure
                    yield p.run, exc
                    continue
                yield p.run, trained(done, p.ctx.run_dir, ds, self.device)

    def train_alone(self, p: Prepared, ds: Dataset) -> Trained | Exception:
        """``p`` trained by itself from the model and masks already prepared (not scored or read again)."""
        return self.alone.carry_out(p.run, p.ctx, lambda: p.run.train_prepared(p.ctx, ds, p.model, p.masks))
