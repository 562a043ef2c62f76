"""Early structured pruning during training: watch the dominant sub-network, prune when it settles.

:class:`EarlyPruning` works two ways:

* as a callback of prunekit's trainer (``fit(..., callbacks=[EarlyPruning(...)])``): it scores the
  channels ``evals_per_epoch`` times per epoch, feeds the indicator, and at the end of the epoch in
  which the indicator fired it removes the channels physically, carries the optimizer state of the
  surviving channels over, and training goes on with the smaller model and the same schedule. The
  checkpoint records the plan, so a resumed run rebuilds the smaller architecture first;
* in your own loop: call :meth:`EarlyPruning.observe` whenever you want a look (it returns True
  when the indicator fires) and :meth:`EarlyPruning.prune` to get the smaller model and optimizer.

Triggers: ``"epi"`` (Early Pruning Indicator), ``"early_bird"``, ``"epoch"`` (a fixed epoch,
``prune_at``; 0 prunes at initialisation) and ``"after_training"`` (train, prune, fine-tune: pruning
at ``epochs - finetune_epochs``). An indicator that has not fired by ``latest`` (a fraction of the
epochs) prunes there, and says so (``forced``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..options import option
from ..training.callbacks import Callback
from ..training.precision import Precision
from .graph import Budget, ChannelGraph, call, parse_budget
from .importance import get_importance, group_importances
from .indicator import EPI_THRESHOLDS, EarlyBirdTracker, EPITracker
from .plan import ChannelPlan, _knapsack, attach_latency, check_min_keep
from .remove import remove_channels, remove_channels_and_carry

TRIGGERS = {
    "epi": "prune when the Early Pruning Indicator says the sub-network's architecture has settled",
    "early_bird": "prune when the Early-Bird channel masks stop changing",
    "epoch": "prune at a fixed epoch (prune_at; 0: at initialisation)",
    "after_training": "train, prune, fine-tune: prune at epochs - finetune_epochs",
}


@dataclass(frozen=True)
class StructuredOptions:
    """Options of a structured early-pruning run (the ``--structured`` spec of ``prunekit run``)."""

    importance: str = option("l1", "channel importance: l1, l2, bn_scale or taylor")
    prune_at: int | None = option(None, "trigger epoch: the epoch to prune at (0: at initialisation)", min=0)
    finetune_epochs: int | None = option(None, "trigger after_training: epochs of fine-tuning (default: a quarter)", min=1)
    evals_per_epoch: int = option(4, "looks of the indicator per epoch", min=1)
    tau: float | None = option(None, "EPI threshold (default 0.983 magnitude, 0.944 taylor)", min=0.0, max=1.0)
    window: int = option(20, "EPI window r: sub-networks compared", min=1)
    eb_threshold: float = option(0.1, "Early-Bird: largest mask distance that counts as settled", min=0.0, max=1.0)
    eb_window: int = option(5, "Early-Bird: masks compared", min=1)
    latest: float = option(0.5, "prune by this fraction of training even if the indicator has not fired", min=0.0, max=1.0, min_exclusive=True)
    min_keep: float = option(0.1, "every group keeps at least this fraction of its channels (and one)", min=0.0, max=0.99)


def check_structured(trigger: str, options: StructuredOptions) -> StructuredOptions:
    """Refuse a trigger, importance or trigger/option combination that cannot run (before anything trains)."""
    if trigger not in TRIGGERS:
        raise ConfigError(f"unknown structured trigger {trigger!r}; valid triggers: {', '.join(TRIGGERS)}")
    get_importance(options.importance)
    if trigger == "epoch" and options.prune_at is None:
        raise ConfigError("structured trigger 'epoch' needs prune_at=N (e.g. 'epoch:prune_at=5')")
    check_min_keep(options.min_keep)
    return options


class EarlyPruning(Callback):
    """Structured pruning early in training (see the module docstring).

    Args:
        budget: ``"macs=F"`` or ``"params=F"`` (or a :class:`~prunekit.structured.Budget`).
        trigger: one of :data:`TRIGGERS`.
        options: a :class:`StructuredOptions`, or its fields as keyword arguments (``importance=``,
            ``prune_at=``, ``evals_per_epoch=``, ...; see :class:`StructuredOptions` for each one's
            meaning and default). ``importance`` is the channel importance of the sub-networks EPI
            watches and of the final pruning (Early-Bird always watches ``bn_scale`` masks, and
            prunes with ``importance``).
        example_inputs: one input batch for tracing (default: the first training batch).
    """

    def __init__(
        self,
        budget: str | Budget = "macs=0.5",
        *,
        trigger: str = "epi",
        options: StructuredOptions | None = None,
        example_inputs: Any = None,
        **values: Any,
    ):
        from ..options import build

        self.budget = parse_budget(budget)
        if options is not None and values:
            raise ConfigError(f"give options= or option keywords ({', '.join(values)}), not both")
        if options is None:
            options = build(StructuredOptions, values, f"structured trigger {trigger!r}")
        self.options = check_structured(trigger, options)
        importance, prune_at, tau = options.importance, options.prune_at, options.tau
        imp = get_importance(importance)
        self.trigger = trigger
        self.importance = importance
        self.prune_at = prune_at
        self.finetune_epochs = options.finetune_epochs
        self.evals_per_epoch = options.evals_per_epoch
        self.latest = options.latest
        self.min_keep = options.min_keep
        self.example_inputs = example_inputs
        tau = tau if tau is not None else EPI_THRESHOLDS["gradient" if imp.needs_gradients else "magnitude"]
        self.epi = EPITracker(tau, options.window)
        self.early_bird = EarlyBirdTracker(options.eb_threshold, options.eb_window)
        self.batch_size = 128  # the training step a latency budget is timed at (the trainer's, under fit)
        self.precision: Precision | None = None
        self.looks: list[dict[str, Any]] = []  # (epoch, step) of every look
        self.plan: ChannelPlan | None = None  # set when pruned
        self.pruned_model: nn.Module | None = None  # the smaller model training went on with
        self.pruned_epoch: int | None = None
        self.forced = False
        self.seconds_before: float | None = None
        self._fired = False
        self._graph: ChannelGraph | None = None
        self._grads: dict[str, Tensor] = {}
        self._interval = 1

    # -- the indicator -------------------------------------------------------------------------
    def _ensure_graph(self, model: nn.Module, example_inputs: Any) -> ChannelGraph:
        if self._graph is None:
            self.example_inputs = example_inputs
            with torch.random.fork_rng(devices=[]):  # tracing (and timing) must not move the training's random stream
                self._graph = ChannelGraph(copy.deepcopy(model).eval(), example_inputs)
                if self.budget.kind == "latency":  # timed once, at the trainer's batch size and precision, on its device
                    attach_latency(self._graph, model, self.batch_size, self.precision)
        return self._graph

    def _plan(self, model: nn.Module, importance: str, grads: dict[str, Tensor] | None) -> ChannelPlan:
        graph = self._graph
        assert graph is not None
        graph.model.load_state_dict(model.state_dict())
        if get_importance(importance).needs_gradients:
            params = dict(graph.model.named_parameters())
            for name, p in params.items():
                p.grad = None if not grads or name not in grads else grads[name].clone()
        scores = group_importances(graph, importance)
        kind, frac = self.budget
        return _knapsack(graph, scores, kind, frac, self.min_keep, importance)

    def observe(self, model: nn.Module, example_inputs: Any = None, grads: dict[str, Tensor] | None = None) -> bool:
        """Score the current weights, feed the indicator; True when it fires (once).

        Args:
            model: the full-width model being trained.
            example_inputs: one input batch (needed at the first call unless given to the constructor).
            grads: for gradient importance, ``{param_name: accumulated gradient}`` (default: the
                model's current ``.grad``).
        """
        if self.plan is not None:
            raise ConfigError("the model has already been pruned")
        self._ensure_graph(model, example_inputs if example_inputs is not None else self.example_inputs)
        if grads is None and get_importance(self.importance).needs_gradients:
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        fired = False
        if self.trigger == "epi":
            fired = self.epi.update(self._plan(model, self.importance, grads).counts)
        elif self.trigger == "early_bird":
            fired = self.early_bird.update(self._plan(model, "bn_scale", None).mask)
        self._fired = self._fired or fired
        return fired

    def prune(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
              grads: dict[str, Tensor] | None = None) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """The smaller model (and optimizer, with the surviving channels' state) under the budget, now."""
        if self.example_inputs is None:
            raise ConfigError("EarlyPruning needs example_inputs= (one input batch) to trace the model")
        self._ensure_graph(model, self.example_inputs)
        if grads is None and get_importance(self.importance).needs_gradients:
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        self.plan = self._plan(model, self.importance, grads)
        if optimizer is None:
            return remove_channels(model, self.plan, self.example_inputs), None
        return remove_channels_and_carry(model, optimizer, self.plan, self.example_inputs)

    # -- prunekit's trainer ----------------------------------------------------------------------
    def _prune_epoch(self, epochs: int) -> int | None:
        if self.trigger == "epoch":
            return self.prune_at
        if self.trigger == "after_training":
            finetune = self.finetune_epochs if self.finetune_epochs is not None else max(1, epochs // 4)
            if not 0 < finetune < epochs:
                raise ConfigError(f"finetune_epochs must be in (0, {epochs}), got {finetune}")
            return epochs - finetune
        return None

    def on_fit_start(self, trainer: Any) -> None:
        if trainer.masks is not None:
            raise ConfigError("structured early pruning trains a dense network; do not pass masks= as well")
        if self.example_inputs is None:
            x, _ = next(iter(trainer.train_loader))
            self.example_inputs = x[:1].detach().clone()
        self.batch_size = trainer.config.batch_size
        self.precision = getattr(trainer, "precision", None)
        self._interval = max(1, len(trainer.train_loader) // self.evals_per_epoch)
        target = self._prune_epoch(trainer.config.epochs)
        if target is not None and not 0 <= target < trainer.config.epochs:
            raise ConfigError(f"prune_at must be in [0, {trainer.config.epochs}), got {target}")
        if target == 0 and self.plan is None and trainer.epoch == 0:
            grads = None
            if get_importance(self.importance).needs_gradients:  # at initialisation: a few batches' gradients
                grads = _batch_gradients(trainer.model, trainer.train_loader, 4)
            self._do_prune(trainer, 0, grads)

    def on_batch_end(self, trainer: Any, step: int) -> None:
        if self.plan is not None or self.trigger not in ("epi", "early_bird"):
            return
        if get_importance(self.importance).needs_gradients and self.trigger == "epi":
            for n, p in trainer.model.named_parameters():
                if p.grad is not None:
                    if n in self._grads:
                        self._grads[n].add_(p.grad)
                    else:
                        self._grads[n] = p.grad.detach().clone()
        if (step + 1) % self._interval == 0:
            self.observe(trainer.model, grads=self._grads or None)
            self.looks.append({"epoch": trainer.epoch, "step": step + 1})
            self._grads = {}

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        if self.plan is not None:
            return
        epochs = trainer.config.epochs
        due = self._prune_epoch(epochs)
        if due is not None and epoch + 1 == due:
            self._do_prune(trainer, epoch + 1, None)
        elif due is None and (self._fired or epoch + 1 >= math.ceil(self.latest * epochs)):
            self.forced = not self._fired
            self._do_prune(trainer, epoch + 1, self._grads or None)
        if self.plan is not None:
            metrics["structured_pruned"] = True

    def _do_prune(self, trainer: Any, epoch: int, grads: dict[str, Tensor] | None) -> None:
        start = time.perf_counter()
        model, optimizer = self.prune(trainer.model, trainer.optimizer, grads)
        assert optimizer is not None
        trainer.replace_model(model, optimizer)
        self.pruned_model = model
        self.pruned_epoch = epoch
        self.seconds_before = trainer.train_seconds
        self.prune_seconds = time.perf_counter() - start

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "plan": None if self.plan is None else self.plan.to_dict(),
            "pruned_epoch": self.pruned_epoch,
            "forced": self.forced,
            "seconds_before": self.seconds_before,
            "fired": self._fired,
            "epi": {"history": self.epi.history, "trace": self.epi.trace, "fired_at": self.epi.fired_at},
            "early_bird": {"masks": list(self.early_bird.masks), "trace": self.early_bird.trace, "fired_at": self.early_bird.fired_at},
            "looks": self.looks,
            "grads": dict(self._grads),
            "example_inputs": self.example_inputs,
        }

    def on_load(self, trainer: Any, state: dict[str, Any]) -> None:
        """Before the checkpoint's weights are loaded: rebuild the pruned architecture they belong to."""
        self.example_inputs = state.get("example_inputs", self.example_inputs)
        if state.get("plan") is not None:
            plan = ChannelPlan.from_dict(state["plan"])
            model, optimizer = remove_channels_and_carry(trainer.model, trainer.optimizer, plan, self.example_inputs)
            trainer.replace_model(model, optimizer)
            self.pruned_model = model

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan = None if state["plan"] is None else ChannelPlan.from_dict(state["plan"])
        self.pruned_epoch = state["pruned_epoch"]
        self.forced = state["forced"]
        self.seconds_before = state["seconds_before"]
        self._fired = state["fired"]
        self.epi.history, self.epi.trace, self.epi.fired_at = [list(h) for h in state["epi"]["history"]], list(state["epi"]["trace"]), state["epi"]["fired_at"]
        self.early_bird.masks.clear()
        self.early_bird.masks.extend(state["early_bird"]["masks"])
        self.early_bird.trace, self.early_bird.fired_at = list(state["early_bird"]["trace"]), state["early_bird"]["fired_at"]
        self.looks = list(state["looks"])
        self._grads = dict(state["grads"])

    def summary(self) -> dict[str, Any]:
        """What happened, for the results database: trigger epoch, indicator trace, channels, costs."""
        plan = self.plan
        return {
            "trigger": self.trigger,
            "importance": self.importance,
            "budget": str(self.budget),
            "step_seconds_before": None if plan is None else plan.step_seconds_before,
            "step_seconds_after": None if plan is None else plan.step_seconds_after,
            "pruned_epoch": self.pruned_epoch,
            "forced": self.forced,
            "fired_at_look": self.epi.fired_at if self.trigger == "epi" else self.early_bird.fired_at,
            "trace": self.epi.trace if self.trigger == "epi" else self.early_bird.trace,
            "looks": self.looks,
            "channels": None if plan is None else dict(zip(plan.groups, plan.counts)),
            "layer_channels": None if plan is None else dict(plan.layers),
            "macs_before": None if plan is None else plan.macs_before,
            "macs_after": None if plan is None else plan.macs_after,
            "params_before": None if plan is None else plan.params_before,
            "params_after": None if plan is None else plan.params_after,
            "train_seconds_before_pruning": self.seconds_before,
        }


def _batch_gradients(model: nn.Module, loader: Any, batches: int) -> dict[str, Tensor]:
    """Gradients of ``batches`` training batches summed, on a copy (the model is not touched)."""
    from ..core.outputs import logits_of
    from ..methods.context import default_loss

    work = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[]):
        for i, (x, y) in enumerate(loader):
            if i == batches:
                break
            default_loss(logits_of(call(work, x)), y).backward()
    return {n: p.grad.detach().clone() for n, p in work.named_parameters() if p.grad is not None}


def parse_structured(spec: str) -> tuple[str, StructuredOptions]:
    """``"epi"`` or ``"epoch:prune_at=3,importance=taylor"`` -> ``(trigger, validated options)``."""
    from ..options import build, parse_value

    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"structured must be a trigger ({', '.join(TRIGGERS)}), optionally with ':name=value,...'; got {spec!r}")
    trigger, _, rest = spec.partition(":")
    if trigger not in TRIGGERS:
        raise ConfigError(f"unknown structured trigger {trigger!r}; valid triggers: {', '.join(TRIGGERS)}")
    values: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        if "=" not in pair:
            raise ConfigError(f"structured option {pair!r} must be name=value")
        name, _, text = pair.partition("=")
        values[name.strip()] = parse_value(StructuredOptions, name.strip(), text.strip(), f"structured trigger {trigger!r}")
    return trigger, check_structured(trigger, build(StructuredOptions, values, f"structured trigger {trigger!r}"))
