"""Batches on the training device: uint8 images live there; augmentation and normalisation run there.

A tiny network such as ResNet-20 is launch-bound on a GPU, so the input pipeline must not add host
work per batch: the whole split is uploaded once as uint8, and each batch is gathered, cropped,
flipped and normalised with a handful of tensor operations on the device.

Randomness is a pure function of ``(seed, epoch)``: the same seed gives the same batches, and a run
resumed at epoch ``e`` sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError
from .datasets import ArrayDataset


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    g.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (e.g. ``(seed, epoch)``)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFF_FFFF_FFFF_FFFF
    return h & 0x7FFF_FFFF_FFFF_FFFF


def crop_flip(x: Tensor, padding: int, dy: Tensor | None, dx: Tensor | None, flips: Tensor | None) -> Tensor:
    """Crop a zero-padded batch ``[B, C, H, W]`` at offsets ``(dy, dx)`` and flip where ``flips``."""
    b, _, h, w = x.shape
    if padding > 0 and dy is not None and dx is not None:
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        batch_idx = torch.arange(b, device=x.device)[:, None, None, None]
        chan_idx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch_idx, chan_idx, rows, cols]
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop of a zero-padded batch (``[B, C, H, W]``) and random horizontal flip, per image."""
    b = x.shape[0]
    dy = dx = None
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    flips = torch.rand(b, device=x.device, generator=generator) < 0.5 if flip else None
    return crop_flip(x, padding, dy, dx, flips)


@dataclass
class EpochPlan:
    """Every random choice of one epoch, drawn up front: sample order, crop offsets, flips."""

    order: Tensor
    dy: Tensor | None = None
    dx: Tensor | None = None
    flips: Tensor | None = None


def epoch_plan(
    n: int, device: torch.device, seed: int, epoch: int, shuffle: bool, augment: bool, padding: int, flip: bool
) -> EpochPlan:
    """The random choices of ``epoch`` for a loader of ``n`` samples seeded with ``seed``.

    The permutation is drawn first, then (with augmentation) the crop offsets and flips of all ``n``
    positions, so an un-augmented loader and an augmented one visit samples in the same order, and a
    stacked loader can reproduce each member's batches exactly.
    """
    g = _generator(device, mix_seed(seed, epoch))
    order = torch.randperm(n, device=device, generator=g) if shuffle else torch.arange(n, device=device)
    plan = EpochPlan(order)
    if augment:
        if padding > 0:
            plan.dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=g)
            plan.dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=g)
        if flip:
            plan.flips = torch.rand(n, device=device, generator=g) < 0.5
    return plan


class DeviceLoader:
    """Mini-batches ``(float inputs, int64 labels)`` from an :class:`ArrayDataset` on ``device``.

    Args:
        dataset: uint8 images ``[N, C, H, W]`` and labels (moved to ``device`` once).
        batch_size: samples per batch.
        device: where batches are produced.
        mean, std: per-channel normalisation (in [0, 1] pixel units).
        shuffle: a new seeded permutation every epoch.
        augment: random crop with ``crop_padding`` zero padding and horizontal flip.
        seed: with the epoch (see :meth:`set_epoch`), fixes order and augmentation.
        drop_last: drop a final incomplete batch.
        dtype: floating dtype of the produced inputs.
        channels_last: produce channels-last inputs (faster convolutions on recent GPUs).
        shard: ``(rank, world_size)`` for data-parallel training: every batch is the rank's share
            of the global batch of ``batch_size`` (same order and augmentation on every rank).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = True,
        augment: bool = False,
        crop_padding: int = 4,
        flip: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(dataset) == 0:
            raise DataError("cannot load batches from an empty dataset")
        channels = dataset.images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
        self.device = torch.device(device)
        self.dataset = dataset.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.crop_padding = crop_padding
        self.flip = flip
        self.seed = seed
        self.drop_last = drop_last
        self.dtype = dtype
        self.channels_last = channels_last
        self.scale, self.shift = normalization(mean, std, self.device, dtype)
        self.epoch = 0
        rank, world = shard
        if not 0 <= rank < world:
            raise ConfigError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
        if world > batch_size:
            raise ConfigError(f"a batch of {batch_size} cannot be shared by {world} ranks")
        self.shard = (rank, world)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation and augmentation draws of ``epoch``."""
        self.epoch = epoch

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> normalised float."""
        x = images.to(self.dtype).mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def plan(self) -> EpochPlan:
        """The random choices of the current epoch."""
        return epoch_plan(
            len(self.dataset), self.device, self.seed, self.epoch, self.shuffle, self.augment, self.crop_padding, self.flip
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plan = self.plan()
        rank, world = self.shard
        n = len(self.dataset)
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            # data-parallel: every rank takes its share of the same global batch, so that the ranks'
            # averaged gradients are the gradient of the global batch (exactly when world divides it)
            sl = slice(lo + (hi - lo) * rank // world, lo + (hi - lo) * (rank + 1) // world)
            idx = plan.order[sl]
            x = self.dataset.images.index_select(0, idx)
            if self.augment:
                x = crop_flip(
                    x, self.crop_padding,
                    None if plan.dy is None else plan.dy[sl], None if plan.dx is None else plan.dx[sl],
                    None if plan.flips is None else plan.flips[sl],
                )
            yield self.normalize(x), self.dataset.labels.index_select(0, idx)


def normalization(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of shape ``[1, C, 1, 1]`` so that ``uint8 * scale - shift`` is the input
    normalised by per-channel ``mean``/``std`` (given in [0, 1] pixel units)."""
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std_t)).to(dtype), (mean_t / std_t).to(dtype)


def validation_indices(n: int, size: int | float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted ``(train, validation)`` index sets of a seeded hold-out of ``size`` out of ``n``.

    Args:
        size: number of samples (int) or fraction (float in (0, 1)).
    """
    count = round(size * n) if isinstance(size, float) else size
    if isinstance(size, bool) or not 0 < count < n:
        raise ConfigError(f"validation size must leave both parts non-empty (0 < size < {n}), got {size!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 0x5A11D)))
    return perm[count:].sort().values, perm[:count].sort().values


def split_indices(n: int, size: int | float | None, seed: int = 0, subset: int | None = None) -> tuple[Tensor, Tensor | None]:
    """``(train, validation)`` indices of a training set of ``n`` samples: a seeded hold-out of
    ``size`` (a count, or a fraction in (0, 1); ``None``: nothing held out, validation ``None``), the
    training part then cut to a seeded random ``subset`` of that many images (sorted). The one
    splitter: the trainers, the stacked engine and the scoring data of a run all split with it, so
    the same seed gives the same split everywhere."""
    if size is None:
        train, val = torch.arange(n), None
    else:
        train, val = validation_indices(n, size, seed)
    if subset is not None and subset < len(train):
        g = torch.Generator().manual_seed(mix_seed(seed, 0x5B5E7))
        train = train[torch.randperm(len(train), generator=g)[:subset]].sort().values
    return train, val


def split_validation(
    dataset: ArrayDataset, size: int | float | None, seed: int = 0, subset: int | None = None
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Hold out a seeded random validation set from ``dataset`` (see :func:`split_indices`).

    Args:
        size: number of samples (int) or fraction (float in (0, 1)); None holds nothing out.
        subset: train on a seeded random subset of this many of the remaining samples.

    Returns:
        ``(train, validation or None)``; without ``subset`` together a permutation of ``dataset``.
    """
    train_idx, val_idx = split_indices(len(dataset), size, seed, subset)
    train = dataset if len(train_idx) == len(dataset) else dataset.subset(train_idx)
    return train, None if val_idx is None else dataset.subset(val_idx)


def class_balanced_indices(labels: Tensor, samples_per_class: int, seed: int) -> Tensor:
    """``samples_per_class`` seeded random indices of every class (fewer where a class is smaller)."""
    labels = labels.cpu()
    g = torch.Generator().manual_seed(mix_seed(seed, 0xBA1A))
    picked = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=g)[:samples_per_class]])
    return torch.cat(picked)


def scoring_batches(
    dataset: ArrayDataset,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    seed: int = 0,
    num_batches: int | None = None,
    samples_per_class: int | None = None,
    augment: bool = False,
    crop_padding: int = 4,
) -> DeviceLoader | list[tuple[Tensor, Tensor]]:
    """The batches pruning methods score on (shared by every data-driven method).

    * ``samples_per_class``: one class-balanced batch with that many samples of each class (GraSP).
    * ``num_batches``: a list of that many batches of a seeded shuffle.
    * neither: a re-iterable loader over a seeded shuffle of the whole set, the same sequence every
      pass, from which each method draws what it needs (FORCE: one fresh batch per step).
    """
    loader = DeviceLoader(
        dataset, batch_size, device=device, mean=mean, std=std, shuffle=True, augment=augment,
        crop_padding=crop_padding, seed=mix_seed(seed, 0x5C0E),
    )
    if samples_per_class is not None:
        idx = class_balanced_indices(dataset.labels, samples_per_class, seed)
        sub = dataset.subset(idx)
        x = sub.images.to(loader.device)
        if augment:
            x = random_crop_flip(x, crop_padding, True, _generator(loader.device, mix_seed(seed, 0xA06)))
        return [(loader.normalize(x), sub.labels.to(loader.device))]
    if num_batches is not None:
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == num_batches:
                break
        return batches
    return loader
