"""When to prune: the Early Pruning Indicator (EPI, Shen et al., CVPR 2022) and Early-Bird tickets
(You et al., ICLR 2020), both computed on the sequence of dominant sub-networks seen during training.

EPI compares *architectures*: a sub-network is the vector of channels kept per group, ``N = (n_l)``.

* ``d_l(N1, N2) = |n1_l - n2_l| / (n1_l + n2_l)``;
* ``Psi(N1, N2) = 1 - (1/L) sum_l d_l`` (1 = the same architecture);
* ``EPI_t = (1/r) sum_{j=1..r} Psi(N_t, N_{t-j})`` over the last ``r`` sub-networks.

It fires at the first evaluation where ``EPI_t >= tau`` once ``r`` earlier sub-networks exist and EPI
is no longer rising (``EPI_t <= EPI_{t-1}``). Defaults (``shared/methods.md`` section 7, from a
re-implementation citing the paper's equations): ``tau = 0.983`` for magnitude importance, ``0.944``
for the gradient (Taylor) family, ``r = 20``.

Early-Bird compares *masks*: the channel mask of the sub-network (kept = 1 over every channel of every
group), normalised Hamming distance to each of the last ``window`` masks (default 5), fires when the
largest is below ``threshold`` (default 0.1). The original draws masks from BN ``|gamma|`` at a channel
ratio; here the mask is the dominant sub-network under the same budget as EPI's, scored by
``bn_scale``, so both indicators see the same budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

EPI_THRESHOLDS = {"magnitude": 0.983, "gradient": 0.944}


def psi(a: Sequence[int], b: Sequence[int]) -> float:
    """Architecture similarity of two sub-networks given as channels kept per group (1 = identical)."""
    if len(a) != len(b) or not a:
        raise ConfigError(f"psi compares two non-empty channel-count vectors of equal length, got {len(a)} and {len(b)}")
    total = 0.0
    for x, y in zip(a, b):
        if x < 0 or y < 0 or x + y == 0:
            raise ConfigError(f"channel counts must be non-negative and not both 0, got {x} and {y}")
        total += abs(x - y) / (x + y)
    return 1.0 - total / len(a)


def epi(history: Sequence[Sequence[int]], window: int) -> float | None:
    """``EPI_t`` of the last sub-network in ``history`` against the ``window`` before it (None: too few)."""
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if len(history) < window + 1:
        return None
    current = history[-1]
    return sum(psi(current, history[-1 - j]) for j in range(1, window + 1)) / window


@dataclass
class EPITracker:
    """Feeds sub-networks in, says when EPI fires."""

    threshold: float
    window: int = 20
    history: list[list[int]] = field(default_factory=list)
    trace: list[float | None] = field(default_factory=list)
    fired_at: int | None = None  # index of the evaluation that fired

    def update(self, counts: Sequence[int]) -> bool:
        """Add the current sub-network; True when the indicator fires (once)."""
        self.history.append(list(counts))
        value = epi(self.history, self.window)
        previous = self.trace[-1] if self.trace else None
        self.trace.append(value)
        if self.fired_at is None and value is not None and value >= self.threshold and (previous is None or value <= previous):
            self.fired_at = len(self.trace) - 1
            return True
        return False


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two channel masks."""
    if a.shape != b.shape:
        raise ConfigError(f"masks of different sizes: {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a != b).sum()) / a.numel()


@dataclass
class EarlyBirdTracker:
    """Early-Bird: fires when the last ``window`` masks all lie within ``threshold`` of the newest."""

    threshold: float = 0.1
    window: int = 5
    masks: deque = field(default_factory=deque)
    trace: list[float | None] = field(default_factory=list)
    fired_at: int | None = None

    def update(self, mask: torch.Tensor) -> bool:
        distances = [hamming(mask, m) for m in self.masks]
        self.masks.append(mask.clone())
        while len(self.masks) > self.window:
            self.masks.popleft()
        value = max(distances) if len(distances) >= self.window else None
        self.trace.append(value)
        if self.fired_at is None and value is not None and value < self.threshold:
            self.fired_at = len(self.trace) - 1
            return True
        return False
