"""AutoSparse's teaching table: per prunable weight, the features ``(theta0, g0)`` and the target, how
long the weight survived iterative rewind pruning.

* ``theta0``: the weight at initialisation.
* ``g0``: the **sum** of the batch-mean-loss gradients over one pass of the whole training set, at
  initialisation, with BatchNorm in eval mode (the official code's feature, ``shared/methods.md`` §8).
* target: the number of pruning rounds whose mask kept the weight, min-max normalised to ``[0, 1]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core import inputs as inp
from ..core.batches import BatchStream
from ..core.masks import Masks
from ..core.outputs import OutputFn, logits_of
from ..core.parametrized import without_masks
from ..distributed import sum_across_ranks_
from ..errors import ConfigError
from ..methods.context import LossFn, default_loss, model_device, model_dtype


def full_pass_gradient(
    model: nn.Module,
    data: Iterable,
    names: Sequence[str],
    *,
    num_batches: int | None = None,
    loss_fn: LossFn | None = None,
    output_fn: OutputFn | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """``g0``: the sum over batches of the gradient of each batch's mean loss, BN in eval mode, on a copy.

    Args:
        data: the training batches; one full pass (``len(data)`` batches) unless ``num_batches``.
        names: the parameters whose gradient is wanted.
        num_batches: batches to use instead of the full pass. Where ``data`` has a length, their sum is
            scaled by ``len(data) / num_batches``: an estimate of the full-pass sum, the scale a scorer
            was taught on (the unscaled sum of 10 out of 469 batches is 47x too small for its feature
            normalisation). Where ``data`` has no length, the plain sum of ``num_batches`` batches.
        progress: called with the batches done so far after every batch.

    Raises:
        ConfigError: ``data`` has no length and ``num_batches`` is not given.
    """
    stream = BatchStream(data, model_device(model), model_dtype(model))
    count = num_batches if num_batches is not None else stream.length
    if count is None:
        raise ConfigError("the gradient over the whole training set needs data with a length (a DataLoader), or num_batches=")
    net = without_masks(copy.deepcopy(model)).eval()
    params = dict(net.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ConfigError(f"no parameter {missing[0]!r} in {type(model).__name__}")
    for p in net.parameters():
        p.requires_grad_(False)
    wanted = [params[n].requires_grad_(True) for n in names]
    total = [torch.zeros_like(p) for p in wanted]
    for i in range(count):
        x, y = stream.next()
        loss = (loss_fn or default_loss)((output_fn or logits_of)(inp.call(net, x)), y)
        for t, g in zip(total, torch.autograd.grad(loss, wanted, allow_unused=True)):
            if g is not None:
                t.add_(g)
        if progress is not None:
            progress(i + 1)
    if num_batches is not None and stream.length is not None and num_batches != stream.length:
        for t in total:
            t.mul_(stream.length / num_batches)
    sum_across_ranks_(total)  # under torch.distributed: the sum over every rank's shard of the data
    return dict(zip(names, total))


def feature_matrix(theta0: Mapping[str, Tensor], g0: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """``[N, 2]`` float64 features ``(theta0, g0)`` of every weight, in ``names`` order, flattened."""
    return torch.stack(
        [torch.cat([theta0[n].detach().double().flatten().cpu() for n in names]),
         torch.cat([g0[n].detach().double().flatten().cpu() for n in names])], dim=1,
    )


def survival_targets(round_masks: Sequence[Mapping[str, Tensor]], names: Sequence[str]) -> Tensor:
    """Rounds each weight survived (``sum_r mask_r``), min-max normalised to ``[0, 1]`` (float64)."""
    if not round_masks:
        raise ConfigError("survival targets need at least one round's mask")
    counts = sum(torch.cat([m[n].flatten().double().cpu() for n in names]) for m in round_masks)
    assert isinstance(counts, Tensor)
    lo, hi = counts.min(), counts.max()
    if hi == lo:
        raise ConfigError("every weight survived the same number of rounds: there is nothing to learn")
    return (counts - lo) / (hi - lo)


@dataclass
class TeachingTable:
    """Features, targets and where they came from."""

    features: Tensor  # [N, 2] float64
    targets: Tensor  # [N] float64 in [0, 1]
    names: list[str]
    source: dict[str, Any]


def table_from_imp_run(run_dir: str | Path, model: nn.Module, data: Iterable, *, num_batches: int | None = None) -> TeachingTable:
    """The teaching table of an IMP/IRP run folder: its saved initial weights (``imp/rewind.pt``, a
    run rewound to initialisation) and every round's mask (``imp/round_XX.pt``).

    Args:
        model: a model of the run's architecture (its weights are replaced by the saved initial ones).
        data: the run's training batches (for ``g0``).
    """
    run = read_irp_run(run_dir, model, data, num_batches=num_batches)
    masks, names, meta = run.masks, run.names, run.masks[0].meta
    source = {
        "run_dir": str(run_dir), "rounds": len(masks), "final_density": masks[-1].density,
        "irp": {k: meta.get(k) for k in ("scorer", "prune_first", "fraction", "rewind_epoch", "seed")},
    }
    return TeachingTable(feature_matrix(run.theta0, run.g0, names), survival_targets(masks, names), names, source)


@dataclass
class IrpRun:
    """What an IMP/IRP run folder teaches from: every round's mask, the pruned tensors' names, the
    initial weights, ``g0`` at them, and the model holding them."""

    masks: list[Masks]
    names: list[str]
    theta0: dict[str, Tensor]
    g0: dict[str, Tensor]
    model: nn.Module


def read_irp_run(run_dir: str | Path, model: nn.Module, data: Iterable, *, num_batches: int | None) -> IrpRun:
    """The rounds (``imp/round_XX.pt``) and saved initial weights (``imp/rewind.pt``) of an IMP/IRP
    run folder rewound to initialisation, loaded into a copy of ``model``, and ``g0`` from
    ``num_batches`` batches of ``data`` (all of them with ``None``).

    Raises:
        ConfigError: the folder holds no rounds or no initial weights, or the run rewound to a later epoch.
    """
    workdir = Path(run_dir) / "imp"
    rounds = sorted(workdir.glob("round_*.pt"))
    if not rounds or not (workdir / "rewind.pt").is_file():
        raise ConfigError(f"{run_dir} holds no IMP/IRP rounds with their initial weights (imp/round_XX.pt, imp/rewind.pt)")
    masks = [Masks.load(p) for p in rounds]
    if masks[0].meta.get("rewind_epoch", 0) != 0:
        raise ConfigError(f"{run_dir}: the run rewound to epoch {masks[0].meta['rewind_epoch']}; AutoSparse's features are the *initial* weights")
    names = list(masks[0])
    initial = torch.load(workdir / "rewind.pt", map_location="cpu", weights_only=True)
    work = copy.deepcopy(model).cpu()
    work.load_state_dict(initial)
    g0 = full_pass_gradient(work, data, names, num_batches=num_batches)
    return IrpRun(masks, names, {n: initial[n] for n in names}, g0, work)
