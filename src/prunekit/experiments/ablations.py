"""Sanity-check ablations of pruning at initialization (Frankle et al., ICLR 2021; Su et al. 2020).

* ``shuffle``: permute each layer's mask at random: per-layer densities stay, placement is random.
* ``reinit``: keep the mask, train from a fresh random draw of the weights.
* ``invert``: keep the lowest-scoring weights (``prunekit.prune(..., invert=True)``).

Frankle et al. found the first two do not hurt SNIP, GraSP, SynFlow or magnitude at initialization:
what those methods contribute is the per-layer density.
"""

from __future__ import annotations

import torch

from ..core.masks import Masks
from ..data.loader import mix_seed

REINIT_SEED = 0x2E1417


def shuffle_masks(masks: Masks, seed: int) -> Masks:
    """Each layer's mask randomly permuted (same kept count per layer), seeded."""
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5B0FF1E))
    shuffled = {}
    for name, m in masks.items():
        flat = m.flatten()
        shuffled[name] = flat[torch.randperm(flat.numel(), generator=g)].view(m.shape)
    return Masks(shuffled, {**masks.meta, "ablation": "shuffle"})


def reinit_seed(seed: int) -> int:
    """The seed of the fresh weight draw used by the ``reinit`` ablation of a run with ``seed``."""
    return mix_seed(seed, REINIT_SEED) % (2**31)
