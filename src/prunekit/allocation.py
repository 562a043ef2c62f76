"""Turning scores into masks: density allocation across layers, exact top-k, density schedules.

Everything here is a pure function of tensors and numbers, shared by every method (one-shot and
iterative) and by IMP.

Conventions:
    * ``density`` is the kept fraction, ``sparsity = 1 - density``.
    * The number of kept weights is ``kept_count(N, density) = floor(density * N + 1/2)`` (round half
      up), exactly, whatever the ties: selection is index-based, not threshold-based.
    * Ties are broken deterministically: among equal scores the parameter that comes first in
      ``model.named_parameters()`` order, and within a tensor the lower flat index, is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .errors import ConfigError, unknown

ALLOCATIONS: dict[str, str] = {
    "global": "one ranking across all prunable layers (the default of every method)",
    "layerwise": "every layer keeps the same fraction of its weights",
    "erk": "Erdos-Renyi-Kernel layer densities, proportional to sum(shape)/prod(shape) (RigL, Liu et al. 2022)",
}
SCHEDULES: dict[str, str] = {
    "exponential": "d_t = d^(t/T): the same fraction removed at every step (SynFlow, FORCE default)",
    "linear": "d_t = 1 - t(1-d)/T: the same number of weights removed at every step",
}


def check_density(density: float) -> float:
    """Validate a density (kept fraction) in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not math.isfinite(density):
        raise ConfigError(f"density must be a number in (0, 1], got {density!r}")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1] (sparsity in [0, 1)), got density={density!r}")
    return float(density)


def kept_count(total: int, density: float) -> int:
    """Number of weights kept out of ``total`` at ``density``: ``round(density * total)``, halves up."""
    return min(total, max(0, math.floor(density * total + 0.5)))


def density_schedule(final_density: float, num_steps: int, kind: str = "exponential") -> list[float]:
    """Densities ``d_1 .. d_T`` of an iterative pruning schedule ending at ``final_density``.

    Args:
        final_density: kept fraction after the last step.
        num_steps: number of pruning steps ``T`` (>= 1).
        kind: ``"exponential"`` (``d_t = d^(t/T)``) or ``"linear"`` (``d_t = 1 - t(1-d)/T``).

    Returns:
        A list of ``T`` densities, non-increasing, the last equal to ``final_density``.
    """
    check_density(final_density)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if kind == "exponential":
        out = [final_density ** (t / num_steps) for t in range(1, num_steps + 1)]
    elif kind == "linear":
        out = [1.0 - t * (1.0 - final_density) / num_steps for t in range(1, num_steps + 1)]
    else:
        raise unknown("schedule", kind, SCHEDULES)
    out[-1] = final_density  # no floating-point drift on the final target
    return out


def erk_densities(shapes: Sequence[Sequence[int]], density: float, power_scale: float = 1.0) -> list[float]:
    """Per-layer densities of the Erdos-Renyi-Kernel distribution.

    Layer ``l`` with weight shape ``(d_1, ..., d_k)`` gets ``d_l = eps * (sum(d_i) / prod(d_i))^power_scale``;
    ``eps`` is chosen so that ``sum_l d_l n_l = density * N``. Layers whose ``d_l`` would exceed 1 are
    made dense and ``eps`` is solved again, until every density is at most 1 (RigL's procedure).

    Args:
        shapes: weight shapes, one per prunable layer.
        density: overall kept fraction.
        power_scale: exponent on the raw ERK ratio (1 = ERK, 0 = uniform).

    Returns:
        One density per layer, in ``(0, 1]``.
    """
    check_density(density)
    sizes = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
    budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        rest = sum(r * n for i, (r, n) in enumerate(zip(raw, sizes)) if i not in dense)
        if rest <= 0:  # every layer dense
            return [1.0] * len(sizes)
        eps = (budget - sum(sizes[i] for i in dense)) / rest
        over = {i for i, r in enumerate(raw) if i not in dense and eps * r > 1.0}
        if not over:
            return [1.0 if i in dense else eps * r for i, r in enumerate(raw)]
        dense |= over


def apportion(ideal: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integer counts close to ``ideal`` that sum to exactly ``total`` (largest remainder).

    Args:
        ideal: real-valued target count per layer.
        caps: the most each layer can hold (its number of weights, or of candidates).
        total: the exact sum wanted; must be between 0 and ``sum(caps)``.

    Returns:
        Counts ``c_l`` with ``0 <= c_l <= caps[l]`` and ``sum(c_l) == total``; the layer furthest
        below its ideal gains first, ties going to the earlier layer.
    """
    if not 0 <= total <= sum(caps):
        raise ConfigError(f"cannot place {total} weights in layers holding {sum(caps)}")
    counts = [min(cap, max(0, math.floor(x))) for x, cap in zip(ideal, caps)]
    while (rem := total - sum(counts)) != 0:
        if rem > 0:
            order = sorted((i for i in range(len(counts)) if counts[i] < caps[i]), key=lambda i: (counts[i] - ideal[i], i))
            for i in order[:rem]:
                counts[i] += 1
        else:
            order = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: (ideal[i] - counts[i], i))
            for i in order[:-rem]:
                counts[i] -= 1
    return counts


def layer_budgets(shapes: Sequence[Sequence[int]], density: float, allocation: str) -> list[int] | None:
    """Kept count per layer for a non-global allocation, or ``None`` for ``"global"``.

    The counts always sum to ``kept_count(N, density)``.
    """
    check_density(density)
    if allocation == "global":
        return None
    sizes = [math.prod(s) for s in shapes]
    if allocation == "layerwise":
        densities = [density] * len(sizes)
    elif allocation == "erk":
        densities = erk_densities(shapes, density)
    else:
        raise unknown("allocation", allocation, ALLOCATIONS)
    return apportion([d * n for d, n in zip(densities, sizes)], sizes, kept_count(sum(sizes), density))


def topk_flat(values: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor, ties to the lower index.

    Exactly ``k`` entries are ``True`` (``k`` is clipped to ``[0, numel]``).
    """
    n = values.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    threshold = torch.kthvalue(values, n - k + 1).values  # the k-th largest value
    keep = values > threshold
    missing = k - int(keep.sum())
    ties = torch.nonzero(values == threshold).flatten()[:missing]
    keep[ties] = True
    return keep


def select(
    scores: Mapping[str, Tensor],
    density: float,
    allocation: str = "global",
    candidates: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Keep the highest-scoring weights: exact index-based top-k under an allocation rule.

    Args:
        scores: ``{name: score tensor}``; higher means more important. Must be finite.
        density: kept fraction over all tensors in ``scores``.
        allocation: ``"global"``, ``"layerwise"`` or ``"erk"`` (see :data:`ALLOCATIONS`).
        candidates: optional ``{name: bool tensor}``; only ``True`` entries may be kept (used by
            monotone iterative methods so that a pruned weight stays pruned). If the budget exceeds
            the candidates, every candidate is kept.

    Returns:
        ``{name: bool tensor}`` on the device of the scores, with exactly ``kept_count`` ``True``
        entries overall (and per layer for non-global allocations), unless limited by ``candidates``.
    """
    names = list(scores)
    shapes = [tuple(scores[n].shape) for n in names]
    flat = []
    for n in names:
        s = scores[n].detach().flatten().to(torch.float64)
        if candidates is not None:
            s = torch.where(candidates[n].flatten().to(s.device), s, torch.full_like(s, -math.inf))
        flat.append(s)
    budgets = layer_budgets(shapes, density, allocation)
    if budgets is None:
        values = torch.cat(flat)
        k = kept_count(values.numel(), density)
        if candidates is not None:
            k = min(k, sum(int(candidates[n].sum()) for n in names))
        keep = topk_flat(values, k)
        pieces = keep.split([s.numel() for s in flat])
    else:
        pieces = []
        for s, n, k in zip(flat, names, budgets):
            if candidates is not None:
                k = min(k, int(candidates[n].sum()))
            pieces.append(topk_flat(s, k))
    return {n: p.view(shape) for n, p, shape in zip(names, pieces, shapes)}
