"""One run at a time, in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from ..kinds import DatasetCache, Executed, Run, RunContext
from ..record import Store, Trained, trained


class LocalBackend:
    """Each run claimed and trained alone, its epochs logged to the database as they finish."""

    def __init__(self, datasets: DatasetCache, device: torch.device, progress: bool | None = None):
        self.datasets, self.device, self.progress = datasets, device, progress

    def units(self, runs: Sequence[Run]) -> Iterable[Sequence[Run]]:
        return [[run] for run in runs]

    def train(self, runs: Sequence[Run], store: Store) -> Iterator[tuple[Run, Trained | BaseException]]:
        for run in runs:
            yield run, self.train_one(run, store)

    def context(self, run: Run, store: Store) -> RunContext:
        return RunContext(store.run_dir(run), self.datasets, self.device, epoch_callbacks=store.epoch_callbacks(run), progress=self.progress,
                          guard=store.guard(run))

    def train_one(self, run: Run, store: Store) -> Trained | Exception:
        """``run`` carried out here; an exception inside it is returned (recorded), not raised."""
        ctx = self.context(run, store)
        return self.carry_out(run, ctx, lambda: run.execute(ctx))

    def carry_out(self, run: Run, ctx: RunContext, work: Callable[[], Executed]) -> Trained | Exception:
        """What ``work`` (``run`` carried out in ``ctx``, whole or from its prepared model) produced, or the
        exception it failed with (returned to be recorded, so that a sweep goes on with the next run)."""
        try:
            return trained(work(), ctx.run_dir, self.datasets.get(run.dataset), self.device)
        except Exception as exc:
            return exc
