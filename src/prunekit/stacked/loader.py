"""Batches for N stacked members: each member's own samples, order and augmentation, in one gather.

Member ``m`` trains on the samples ``indices[m]`` of a shared uint8 image tensor (its own validation
split held out) with the per-epoch plan its single-run :class:`~prunekit.data.DeviceLoader` would
draw (same seed, same permutation, crops and flips), so every member sees exactly the batches it
would see alone. All members' batches are gathered, cropped, flipped and normalised together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..data.loader import crop_flip, epoch_plan


class StackedLoader:
    """``[N, B, C, H, W]`` inputs and ``[N, B]`` labels per step.

    Args:
        images, labels: the shared dataset tensors (on the training device).
        indices: per member, the global indices of its samples (all of one length).
        seeds: per member, the seed its single-run loader would use.
        shuffle, augment, crop_padding, flip, drop_last: as :class:`~prunekit.data.DeviceLoader`.
        scale, shift: normalisation ``x * scale - shift`` (shaped ``[1, C, 1, 1]``).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Sequence[Tensor],
        seeds: Sequence[int],
        batch_size: int,
        *,
        scale: Tensor,
        shift: Tensor,
        shuffle: bool = True,
        augment: bool = False,
        crop_padding: int = 4,
        flip: bool = True,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        sizes = {len(i) for i in indices}
        if len(sizes) != 1:
            raise ValueError(f"stacked members must have equally many samples, got sizes {sorted(sizes)}")
        self.images, self.labels = images, labels
        self.device = images.device
        self.indices = torch.stack([i.to(self.device) for i in indices])
        self.seeds = list(seeds)
        self.n = len(indices)
        self.size = sizes.pop()
        self.batch_size = batch_size
        self.shuffle, self.augment, self.crop_padding, self.flip, self.drop_last = shuffle, augment, crop_padding, flip, drop_last
        self.scale, self.shift, self.dtype = scale.to(dtype), shift.to(dtype), dtype
        self.epoch = 0

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plans = [
            epoch_plan(self.size, self.device, seed, self.epoch, self.shuffle, self.augment, self.crop_padding, self.flip)
            for seed in self.seeds
        ]
        order = torch.gather(self.indices, 1, torch.stack([p.order for p in plans]))  # [N, size] global indices

        def stacked(attr: str) -> Tensor | None:
            parts = [getattr(p, attr) for p in plans]
            return None if parts[0] is None else torch.stack(parts)

        dy, dx, flips = stacked("dy"), stacked("dx"), stacked("flips")
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[:, sl]
            b = idx.shape[1]
            x = self.images.index_select(0, idx.reshape(-1))
            if self.augment:
                x = crop_flip(
                    x, self.crop_padding,
                    None if dy is None else dy[:, sl].reshape(-1), None if dx is None else dx[:, sl].reshape(-1),
                    None if flips is None else flips[:, sl].reshape(-1),
                )
            x = x.to(self.dtype).mul_(self.scale).sub_(self.shift)
            yield x.view(self.n, b, *x.shape[1:]), self.labels.index_select(0, idx.reshape(-1)).view(self.n, b)
