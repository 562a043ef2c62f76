"""The training core shared by the single-model :class:`~prunekit.training.Trainer` and the stacked
engine (:class:`~prunekit.stacked.StackedTrainer`): the epoch's step loop, the per-epoch metrics, the
validation split, the RNG state and the checkpoint layout. Each trainer adds only what is its own
(one model, or N members fused into one network).

Every quantity of an epoch is a vector over the ``n`` networks trained together (``n = 1`` for one
model), so both trainers share one loop and produce bit-identical histories for a model trained
alone or as a stacked member (float64 accumulation, one host sync per epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data.loader import split_validation
from ..distributed import sum_across_ranks_, world_size
from ..options import key_dict
from .checkpoint import FORMAT, CheckpointError
from .config import TrainConfig
from .precision import Precision

# (inputs, targets) -> (per-network mean losses [n], per-network correct counts [n], samples per network)
StepFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor, int]"]


def split_dataset(train: Any, config: TrainConfig, seed: int) -> tuple[Any, Any]:
    """``(training part, validation part or None)`` of the training set ``train`` as ``config`` splits
    it (its hold-out and subset; :func:`prunekit.data.split_validation`, the one splitter)."""
    return split_validation(train, config.holdout, seed, config.train_subset)


def drop_last_batch(n: int, batch_size: int, world: int = 1) -> bool:
    """Whether an epoch of ``n`` samples drops its last, incomplete batch: when it would hold a single
    sample (BatchNorm cannot train on one) or fewer samples than data-parallel ranks. The one rule of
    every trainer (one model, stacked members, data-parallel ranks)."""
    rest = n % batch_size
    return rest == 1 or 0 < rest < world


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (a no-op write when unchanged)."""
    for group in optimizer.param_groups:
        if group["lr"] != lr:
            group["lr"] = lr


def make_optimizer(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG state a checkpoint carries (CPU, and the device's on CUDA)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_state(
    *,
    epoch: int,
    model: Mapping[str, Any],
    optimizer: Mapping[str, Any],
    history: list[dict[str, Any]],
    rng: Mapping[str, Any],
    train_seconds: float,
    images: int,
    config: TrainConfig,
    seed: int,
    masks: Mapping[str, Tensor] | None,
    callbacks: list[dict[str, Any]],
    precision: Precision,
) -> dict[str, Any]:
    """One network's complete training state, in the one checkpoint layout both trainers write."""
    return {
        **precision.as_dict(),
        "format": FORMAT,
        "epoch": epoch,
        "model": model,
        "optimizer": optimizer,
        "history": history,
        "rng": rng,
        "train_seconds": train_seconds,
        "images": images,
        "config": key_dict(config),
        "seed": seed,
        "masks": None if masks is None else dict(masks.items()),
        "callbacks": callbacks,
    }


def check_resumable(state: Mapping[str, Any], config: TrainConfig, seed: int, precision: Precision) -> None:
    """Refuse a checkpoint written by a run with another config, seed or training precision (a
    checkpoint from before precisions were recorded is taken as it is)."""
    if state.get("config") != key_dict(config) or state.get("seed") != seed:
        raise CheckpointError("the checkpoint was written by a run with a different config or seed")
    if state.get("precision", precision.dtype) != precision.dtype:
        raise CheckpointError(f"the checkpoint was trained in {state['precision']}, this run trains in {precision.dtype}")


@dataclass
class EpochTotals:
    """What one epoch of training steps added up to, per network."""

    loss: list[float]  # mean training loss
    acc: list[float]  # training accuracy
    samples: int  # per network
    seconds: float
    lr: float | None


def train_epoch(
    batches: Iterable[tuple[Tensor, Tensor]],
    steps: int,
    step: StepFn,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    n: int,
    device: torch.device,
    on_batch_end: Callable[[int], None] | None = None,
) -> EpochTotals:
    """Run the training steps of ``epoch``: set the scheduled learning rate, call ``step`` on every
    batch, accumulate each network's loss and accuracy on the device (one host sync at the end)."""
    start = time.perf_counter()
    loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
    correct = torch.zeros(n, dtype=torch.long, device=device)
    seen = 0
    lr = None
    for i, (x, y) in enumerate(batches):
        lr = config.lr_at(epoch, i, steps)
        set_lr(optimizer, lr)
        losses, hits, size = step(x, y)
        loss_sum += losses.detach().double() * size
        correct += hits
        seen += size
        if on_batch_end is not None:
            on_batch_end(i)
    if world_size() > 1:  # data-parallel: the epoch's loss and accuracy over every rank's samples
        counts = torch.cat([correct.double(), torch.tensor([float(seen)], dtype=torch.float64, device=device)])
        sum_across_ranks_([loss_sum, counts])
        correct, seen = counts[:n], int(counts[-1].item())
    loss = (loss_sum / seen).tolist()
    acc = (correct.double() / seen).tolist()
    return EpochTotals(loss, acc, seen, time.perf_counter() - start, lr)


# Fewer optimizer steps than this prove nothing about a network that is still at chance level: a
# healthy one may not have left it yet (a few steps on a tiny dataset, a warm-up, a badly pruned mask).
STALL_MIN_STEPS = 100


def stalled(history: list[dict[str, Any]], classes: int | None, steps_per_epoch: int) -> str | None:
    """Why a run never left chance level, or None: after at least ``STALL_MIN_STEPS`` optimizer
    steps, every epoch's training loss at least 97 % of ``ln(classes)`` (the loss of a uniform guess)
    and the last epoch's training accuracy at most 1.5 / ``classes``. A dead network (e.g. every
    ReLU off after a too large first step) looks so; a network that learns, however slowly, does not."""
    import math

    if not history or classes is None or classes < 2 or len(history) * steps_per_epoch < STALL_MIN_STEPS:
        return None
    chance = math.log(classes)
    losses = [h.get("train_loss") for h in history]
    if any(v is None or not v >= 0.97 * chance for v in losses) or history[-1].get("train_acc", 0.0) > 1.5 / classes:
        return None
    return (f"the training loss stayed at chance level for all {len(history)} epochs ({losses[-1]:.4f}, ln {classes} = {chance:.4f}; "
            f"training accuracy {history[-1].get('train_acc', 0.0):.2%}): the network did not learn (dead units from a too large "
            "first step? a lower learning rate or a warm-up may help)")


def epoch_metrics(epoch: int, totals: EpochTotals, k: int = 0) -> dict[str, Any]:
    """Network ``k``'s metrics of a finished epoch (evaluation adds its own)."""
    elapsed = totals.seconds
    return {
        "epoch": epoch + 1,
        "lr": totals.lr,
        "train_loss": totals.loss[k],
        "train_acc": totals.acc[k],
        "epoch_seconds": elapsed,
        "images_per_second": totals.samples / elapsed if elapsed > 0 else 0.0,
    }
