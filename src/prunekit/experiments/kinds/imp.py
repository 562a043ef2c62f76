"""An IMP/IRP run: iterative magnitude (or SNIP-ranked) pruning with rewinding to a target sparsity
(lottery tickets; AutoSparse's teacher). Runs that differ only in their target share common rounds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...core.prunable import prunable_parameters
from ...imp import ImpOptions, run_imp
from ...options import key_dict
from .base import IMP, Executed, Run, RunContext


@dataclass(frozen=True, kw_only=True)
class ImpRun(Run):
    """IMP to ``sparsity`` with ``options``."""

    options: ImpOptions

    kind: ClassVar[str] = "imp"

    @property
    def method(self) -> str:
        return IMP

    def _kind_config(self) -> dict[str, Any]:
        return {"method": IMP, "sparsity": self.sparsity, "ablation": None, "allocation": None, "method_options": key_dict(self.options)}

    def donors(self, run_dir: Path) -> list[Path]:
        """IMP work directories of the runs beside ``run_dir`` whose configuration differs only in sparsity."""

        def without_target(c: dict[str, Any]) -> str:
            return json.dumps({k: v for k, v in c.items() if k != "sparsity"}, sort_keys=True)

        mine = without_target(self.config)
        found = []
        for other in sorted(run_dir.parent.glob("*/config.json")):
            if other.parent == run_dir or not (other.parent / "imp").is_dir():
                continue
            try:
                theirs = json.loads(other.read_text())
            except (OSError, ValueError):
                continue
            if theirs.get("method") == IMP and without_target(theirs) == mine:
                found.append(other.parent / "imp")
        return found

    def _execute(self, ctx: RunContext) -> Executed:
        ds = ctx.datasets.get(self.dataset)
        model = self.make_model(ds, ctx.device)
        masks, result, rounds = run_imp(
            model, ds, self.train, self.options, sparsity=self.sparsity, prunable=list(prunable_parameters(model)), device=ctx.device,
            seed=self.seed, workdir=ctx.run_dir / "imp", epoch_callbacks=ctx.epoch_callbacks, progress=ctx.progress,
            donors=self.donors(ctx.run_dir), scoring_data=lambda: self.scoring_data(ds, ctx.device, num_batches=1),
            precision=self.training_precision(ctx.device), before_write=ctx.guard,
        )
        ctx.guard()
        masks.save(ctx.run_dir / "masks.pt")
        # the cost of the ticket: every round this run trained (rounds taken over from another run are
        # counted there), and of all its rounds wherever they were trained
        trained = sum(r["train_seconds"] for r in rounds if "shared_from" not in r)
        ticket = {"rounds": rounds, "history_epochs": result.epochs, "ticket_train_seconds": sum(r["train_seconds"] for r in rounds)}
        return Executed(model, masks, result, ticket, trained)
