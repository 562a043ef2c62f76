"""A training run: the dense baseline, or a pruning-at-initialisation method at a sparsity (with an
optional sanity-check ablation): score the masks, train the masked network, evaluate it."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ...core.masks import Masks
from ...core.pruning import prune
from ...data import Dataset
from ...distributed import decided_by_rank0, rank, world_size
from ...errors import MaskFileError
from ...methods import get_method
from ...options import key_dict
from ...training import StopAfter, TrainingStalled, TrainResult, fit
from ...training.checkpoint import set_aside
from ..ablations import reinit_seed, shuffle_masks
from .base import DENSE, Executed, Run, RunContext, logger


@dataclass(frozen=True, kw_only=True)
class TrainingRun(Run):
    """Dense (``method="dense"``, ``options=None``) or ``method`` at ``sparsity`` with its typed ``options``."""

    method: str = DENSE  # a field here, a property on the base
    options: Any = None  # the method's options dataclass (None for dense)
    allocation: str | None = None
    ablation: str | None = None

    kind: ClassVar[str] = "training"
    data_parallel: ClassVar[bool] = True

    @property
    def pruned(self) -> bool:
        """Whether the run scores masks at initialisation."""
        return self.method != DENSE

    @property
    def label(self) -> str:
        return super().label + (f" ({self.ablation})" if self.ablation else "")

    @property
    def variant(self) -> list[str]:
        extras = super().variant
        if self.pruned and self.allocation != get_method(self.method).allocation:
            extras.append(str(self.allocation))
        return extras

    @property
    def group(self) -> str | None:
        if self.train.compile:  # the stacked engine trains eagerly
            return None
        c = self.config
        return json.dumps({k: c.get(k) for k in ("model", "dataset", "recipe", "train", "model_kwargs", "init", "bn_gamma", "precision")},
                          sort_keys=True)

    def _kind_config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "ablation": self.ablation,
            "allocation": self.allocation,
            "method_options": {} if self.options is None else key_dict(self.options),
        }

    def prepare(self, ctx: RunContext, ds: Dataset) -> tuple[nn.Module, Masks | None]:
        """The initialised model and its masks (scored now, or read back from an earlier attempt), ablation applied.

        Data-parallel (several ranks): rank 0 decides whether the masks are read back, every rank scores
        (the scores are reduced across ranks, so the masks agree), and only rank 0 writes files.
        """
        model = self.make_model(ds, ctx.device)
        if not self.pruned:
            return model, None
        mask_path = ctx.run_dir / "masks.pt"
        sound = False
        if rank() == 0 and mask_path.is_file():  # an earlier attempt's masks, read back unless damaged
            try:
                Masks.load(mask_path, model=model)
                sound = True
            except MaskFileError as exc:
                moved = set_aside(mask_path)
                ctx.events.append(f"{exc}; set aside as {moved.name}, the masks scored again")
                logger.warning("%s; set aside as %s, the masks are scored again", exc, moved)
        if decided_by_rank0(sound):
            masks = Masks.load(mask_path, model=model)
        else:
            masks = prune(
                model, self.method, self.sparsity, data=self.scoring_data(ds, ctx.device), seed=self.seed, allocation=self.allocation,
                invert=self.ablation == "invert", progress=ctx.progress, options=self.options,
            )
            if self.ablation == "shuffle":
                masks = shuffle_masks(masks, self.seed)
            if rank() == 0:
                ctx.guard()
                masks.save(mask_path)
        if self.ablation == "reinit":
            model = self.make_model(ds, ctx.device, reinit_seed(self.seed))
        return model, masks

    def _execute(self, ctx: RunContext) -> Executed:
        ds = ctx.datasets.get(self.dataset)
        model, masks = self.prepare(ctx, ds)
        return self.train_prepared(ctx, ds, model, masks)

    def train_prepared(self, ctx: RunContext, ds: Dataset, model: nn.Module, masks: Masks | None) -> Executed:
        """Train what :meth:`prepare` returned in ``ctx`` (alone, in this process) and say what it produced."""
        callbacks = ctx.epoch_callbacks(0)
        if disconnects(model, masks, ds):  # nothing the recipe does can change that: one epoch shows it
            logger.warning("%s: the mask leaves no path from input to output; the run stops after one epoch", self.label)
            callbacks = [*callbacks, StopAfter(1, DISCONNECTED)]
        result = fit(
            model, ds, self.train, masks=masks, device=ctx.device, seed=self.seed, checkpoint=ctx.run_dir / "checkpoint.pt",
            callbacks=callbacks, progress=ctx.progress, desc=f"{self.method} {self.sparsity:.4g}",
            precision=self.training_precision(ctx.device),
        )
        return self.executed(model, masks, result, ds, ctx.events)

    def executed(self, model: nn.Module, masks: Masks | None, result: TrainResult, ds: Dataset, events: Sequence[str] = ()) -> Executed:
        """What the run produced, however it was trained (alone, stacked, data-parallel); ``events``: what
        its preparation recovered from (a damaged mask file set aside), recorded before the training's own.

        Raises:
            TrainingStalled: the network never left chance level although its masks leave a path from
                input to output (a mask that disconnects the network makes chance level the method's
                result: recorded, marked ``disconnected``; such a run trains one epoch, not its recipe).
        """
        if events:
            result.extra["recovered"] = [*events, *result.extra.get("recovered", [])]
        extra: dict[str, Any] = {"history_epochs": result.epochs}
        if world_size() > 1:
            extra["world_size"] = world_size()
        why = result.extra.get("stalled")
        # a run stopped for a cut mask was checked before it trained; a stalled one is checked now
        if DISCONNECTED in result.extra.get("stopped", "") or (why is not None and disconnects(model, masks, ds)):
            extra["disconnected"] = True
        elif why is not None:
            raise TrainingStalled(why)
        return Executed(model, masks, result, extra)


DISCONNECTED = ("the mask leaves no path from input to output, so the output does not depend on the input and no training "
                "can take the network past the accuracy of one constant prediction")


def disconnects(model: nn.Module, masks: Masks | None, ds: Dataset) -> bool:
    """Whether ``masks`` leave no path from ``model``'s input to its output (False where that is unknown)."""
    if masks is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masks.report(model, input_shape=ds.input_shape).effective_density == 0.0


