"""An early-structured run: a dense network trained with channels removed physically when a trigger
fires (EPI, Early-Bird, a fixed epoch, or after training), under a MACs or parameter budget."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import ConfigError
from ...options import as_dict
from ...structured import Budget, EarlyPruning, StructuredOptions
from ...training import TrainingStalled, fit
from .base import DENSE, Executed, Run, RunContext


@dataclass(frozen=True, kw_only=True)
class StructuredRun(Run):
    """``trigger`` (one of :data:`prunekit.structured.TRIGGERS`) with ``options``, pruning to ``budget``."""

    trigger: str
    budget: Budget
    options: StructuredOptions

    kind: ClassVar[str] = "structured"

    @property
    def method(self) -> str:
        return DENSE

    @property
    def label(self) -> str:
        return f"structured {self.spec_text} {self.budget} seed {self.seed}"

    @property
    def spec_text(self) -> str:
        """``trigger`` or ``trigger:name=value,...`` with the options that differ from their defaults."""
        defaults = as_dict(StructuredOptions())
        diff = [f"{k}={v}" for k, v in as_dict(self.options).items() if defaults.get(k) != v]
        return self.trigger + (":" + ",".join(diff) if diff else "")

    def check_data(self, ds: Any) -> None:
        """Also: the budget can be met on this network (channel groups traced on a copy, on the CPU),
        and a trigger or importance that reads BatchNorm scales has BatchNorm layers to read."""
        super().check_data(ds)
        from ...structured import ChannelGraph
        from ...structured.plan import check_budget

        model = self.make_model(ds, torch.device("cpu"))
        if (self.trigger == "early_bird" or self.options.importance == "bn_scale") and not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
        ):
            why = "trigger early_bird watches" if self.trigger == "early_bird" else "importance bn_scale reads"
            raise ConfigError(f"{why} BatchNorm scales, and {self.model} has no BatchNorm layer: use another trigger or importance")
        example = torch.zeros(1, *ds.input_shape)
        with torch.random.fork_rng(devices=[]):
            graph = ChannelGraph(model.eval(), example)
        if self.budget.kind == "latency":  # timed when it prunes; here: every layer must be one a latency table can time
            from ...structured.latency import units_of

            units_of(graph)
        else:
            check_budget(graph, self.budget.kind, self.budget.fraction, self.options.min_keep)

    def _kind_config(self) -> dict[str, Any]:
        return {
            "method": DENSE, "sparsity": 0.0, "ablation": None, "allocation": None, "method_options": {},
            "structured": {"trigger": self.trigger, "budget": str(self.budget), "options": as_dict(self.options)},
        }

    def _execute(self, ctx: RunContext) -> Executed:
        ds = ctx.datasets.get(self.dataset)
        model = self.make_model(ds, ctx.device)
        early = EarlyPruning(self.budget, trigger=self.trigger, options=self.options)
        full = copy.deepcopy(model)
        result = fit(
            model, ds, self.train, device=ctx.device, seed=self.seed, checkpoint=ctx.run_dir / "checkpoint.pt",
            callbacks=[*ctx.epoch_callbacks(0), early], progress=ctx.progress, desc=f"structured {self.trigger}",
            precision=self.training_precision(ctx.device),
        )
        if result.extra.get("stalled"):
            raise TrainingStalled(result.extra["stalled"])
        final = early.pruned_model if early.pruned_model is not None else model
        summary = early.summary()
        g = torch.Generator().manual_seed(0)  # the global random stream is not touched
        batch = torch.randint(0, 256, (self.train.batch_size, *ds.input_shape), dtype=torch.uint8, generator=g)
        x = ((batch.float() / 255.0) - 0.5).to(ctx.device)
        summary["latency_before_ms"] = measure_latency(full, x)
        summary["latency_after_ms"] = measure_latency(final, x)
        before = summary["train_seconds_before_pruning"]
        summary["train_seconds_after_pruning"] = None if before is None else result.train_seconds - before
        return Executed(final, None, result, {"history_epochs": result.epochs, "structured": summary})


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
