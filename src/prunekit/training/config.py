"""Training configuration and learning-rate schedules (pure functions of training progress)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..options import option

SCHEDULES = {
    "constant": "fixed learning rate",
    "multistep": "multiply by gamma at each milestone (fractions of the run)",
    "cosine": "cosine annealing to 0, updated every step",
    "onecycle": "linear warm-up to lr over the first 30% then cosine annealing to 0 (Smith 2018)",
}
MAX_EPOCHS = 100_000  # far beyond any recipe: a larger number is a typo, refused before anything trains
OPTIMIZERS = {"sgd": "SGD with momentum (optionally Nesterov)", "adam": "Adam", "adamw": "AdamW (decoupled weight decay)"}


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Milestones are fractions of the run, so shortening ``epochs`` keeps the shape."""

    epochs: int = option(20, "training epochs", min=1, max=MAX_EPOCHS)
    batch_size: int = option(128, "training batch size", min=1)
    optimizer: str = option("sgd", "optimizer", choices=tuple(OPTIMIZERS))
    lr: float = option(0.1, "peak learning rate", min=0.0, min_exclusive=True)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=0.999)
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    weight_decay: float = option(5e-4, "L2 weight decay (decoupled for adamw)", min=0.0)
    schedule: str = option("multistep", "learning-rate schedule", choices=tuple(SCHEDULES))
    milestones: tuple[float, ...] = option((0.5, 0.75), "multistep: fractions of the run where lr *= gamma")
    gamma: float = option(0.1, "multistep decay factor", min=0.0, min_exclusive=True)
    warmup_epochs: float = option(0.0, "linear warm-up epochs (multistep, cosine)", min=0.0)
    val_size: float = option(0.0, "validation samples held out from train: a count (>= 1) or a fraction (< 1)", min=0.0, max=2.0**40)
    augment: bool | None = option(None, "random crop + flip (None: the dataset's default)")
    train_subset: int | None = option(
        None, "train on a seeded random subset of this many training images (after the validation hold-out)", min=1, max=2**40, since="0.2"
    )
    eval_batch_size: int = option(1000, "batch size for evaluation", min=1)
    amp: bool = option(True, "bf16 autocast where the device runs bf16 natively (CUDA; CPUs with AVX-512 BF16 or AMX)", keyed=False)
    channels_last: bool = option(True, "channels-last memory format (CUDA and the CPU)", keyed=False)
    compile: bool = option(False, "torch.compile the training step's forward and backward pass (a one-time compile per input shape, "
                                  "then faster; another run than the eager one)", since="0.3")

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"milestones must be increasing fractions of the run in (0, 1), got {self.milestones}")

    @property
    def holdout(self) -> int | float | None:
        """The validation hold-out as :func:`prunekit.data.validation_indices` takes it: a count
        (``val_size >= 1``), a fraction (``< 1``), or ``None`` when nothing is held out."""
        if self.val_size <= 0:
            return None
        return int(self.val_size) if self.val_size >= 1 else float(self.val_size)

    def milestone_epochs(self) -> list[int]:
        """Milestones in epochs (``round(fraction * epochs)``)."""
        return [math.floor(m * self.epochs + 0.5) for m in self.milestones]

    def lr_at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """Learning rate for ``step`` (0-based) of ``epoch`` (0-based)."""
        t = epoch + step / steps_per_epoch  # progress in epochs
        total = float(self.epochs)
        if self.schedule == "onecycle":
            warm = 0.3 * total
            if t < warm:
                return self.lr * (0.04 + 0.96 * t / warm)  # from lr/25, as torch's OneCycleLR
            return self.lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
        if self.warmup_epochs > 0 and t < self.warmup_epochs:
            return self.lr * (t + 1.0 / steps_per_epoch) / self.warmup_epochs
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "multistep":
            passed = sum(1 for m in self.milestone_epochs() if epoch >= m)
            return self.lr * self.gamma**passed
        # cosine
        return self.lr * 0.5 * (1 + math.cos(math.pi * t / total))
