"""Turning scores into masks: density allocation across layers, exact top-k, density schedules.

Everything here is a pure function of tensors and numbers, shared by every method (one-shot and
iterative) and by IMP.

Conventions:
    * ``density`` is the kept fraction, ``sparsity = 1 - density``.
    * The number of kept weights is ``kept_count(N, density) = floor(density * N + 1/2)`` (round half
      up), exactly, whatever the ties: selection is index-based, not threshold-based.
    * Ties are broken deterministically: among equal scores the parameter that comes first in
      ``model.named_parameters()`` order, and within a tensor the lower flat index, is kept; except
      ties among *zero* scores that straddle the cut (vanished gradients, a zero-initialised head),
      which by default (``ties="random"``) are spread over the layers in proportion to their tied
      weights, at random within a layer, seeded: parameter order would hand whole early layers the
      budget and empty the later ones.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, ScoreError, unknown

ALLOCATIONS: dict[str, str] = {
    "global": "one ranking across all prunable layers (the default of every method)",
    "layerwise": "every layer keeps the same fraction of its weights",
    "erk": "Erdos-Renyi-Kernel layer densities, proportional to sum(shape)/prod(shape) (RigL, Liu et al. 2022)",
    "learned": "the per-layer counts a method predicts for the model (autosparse_layerwise), its scores ranking within each layer",
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
    if allocation == "learned":
        raise ConfigError("the 'learned' allocation's counts come from its method, not from the layer shapes")
    if allocation == "layerwise":
        densities = [density] * len(sizes)
    elif allocation == "erk":
        densities = erk_densities(shapes, density)
    else:
        raise unknown("allocation", allocation, ALLOCATIONS)
    return apportion([d * n for d, n in zip(densities, sizes)], sizes, kept_count(sum(sizes), density))


def _exact_topk(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of a 1-D tensor, ties to the lower index, without a host sync.

    Returns:
        ``(keep, zero_ties)``: the boolean mask (exactly ``k`` True) and a 0-d tensor holding the
        number of kept entries chosen among zero scores by index order when the ``k``-th largest
        value is 0 and zeros lie on both sides of the cut (0 otherwise).
    """
    n = values.numel()
    if k <= 0 or k >= n:
        keep = torch.full((n,), k > 0, dtype=torch.bool, device=values.device)
        return keep, torch.zeros((), dtype=torch.long, device=values.device)
    threshold = _kth_smallest(values, n - k + 1)  # the k-th largest value
    above = values > threshold
    ties = values == threshold
    missing = k - above.sum()
    rank = ties.cumsum(0)
    keep = above | (ties & (rank <= missing))
    straddles = (threshold == 0) & (rank[-1] > missing)
    return keep, torch.where(straddles, missing, 0)


_SAMPLE = 4096


def _kth_smallest(values: Tensor, m: int) -> Tensor:
    """The ``m``-th smallest entry (1-based) of a 1-D tensor, exactly, as a 0-d tensor.

    On the CPU a full selection over a large tensor costs ~12 ns per entry; when the wanted rank lies
    in one tail (as at every step of a pruning schedule, which drops a few percent), a strided sample
    bounds the tail, one comparison pass keeps only the entries that can hold the answer, and the
    selection runs on those. The bound is checked, so the result is always exact (the full
    selection runs when the bound was too tight). Accelerators select fast enough as they are.
    """
    n = values.numel()
    if values.device.type != "cpu" or n < 4 * _SAMPLE:
        return torch.kthvalue(values, m).values
    sample = values[:: n // _SAMPLE]
    size = sample.numel()
    if m <= n // 2:  # lower tail: every entry <= the sample's bound
        j = min(size, math.ceil(m / n * size * 1.25) + 16)
        part = values[values <= torch.kthvalue(sample, j).values]
        if part.numel() >= m:
            return torch.kthvalue(part, m).values
    else:  # upper tail: the r-th largest, from the entries >= the sample's bound
        r = n - m + 1
        j = min(size, math.ceil(r / n * size * 1.25) + 16)
        part = values[values >= torch.kthvalue(sample, size - j + 1).values]
        if part.numel() >= r:
            return torch.kthvalue(part, part.numel() - r + 1).values
    return torch.kthvalue(values, m).values


TIE_RULES = {
    "random": "zero-score ties spread over the layers in proportion to their tied weights, at random within a layer (seeded)",
    "index": "zero-score ties to the earliest parameters, lowest indices first (the rule of prunekit before 0.3)",
}


def _spread_zero_ties(values: Tensor, keep: Tensor, segments: Tensor, n_segments: int, generator: torch.Generator) -> Tensor:
    """``keep`` with its zero-scored entries chosen again: as many as it holds, spread over the segments
    (layers) in proportion to their zero-scored entries (one for each first, where there are enough:
    the tie rule never empties a layer), at random within a segment.

    Args:
        values: the scores ranked (1-D); the cut is at 0 (every entry above 0 is kept).
        keep: the mask the index-ordered rule chose (its entries among zeros are re-drawn).
        segments: the segment (layer) of each entry of ``values``.
    """
    zeros = values == 0
    need = int((keep & zeros).sum())
    out = keep & ~zeros
    per = torch.bincount(segments[zeros], minlength=n_segments).tolist()
    total = sum(per)
    tied = [i for i, z in enumerate(per) if z]
    if need >= len(tied):  # every layer with tied weights gets one first: the tie rule never empties a layer
        rest = need - len(tied)
        counts = apportion([1 + rest * (z - 1) / max(1, total - len(tied)) if z else 0.0 for z in per], per, need)
    else:
        counts = apportion([need * z / total for z in per], per, need)
    zero_idx = torch.nonzero(zeros).flatten().cpu()
    seg_of = segments[zeros].cpu()
    for seg, c in enumerate(counts):
        if c:
            idx = zero_idx[seg_of == seg]
            pick = idx[torch.randperm(len(idx), generator=generator)[:c]]
            out[pick.to(out.device)] = True
    return out


def topk_flat(values: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor, ties to the lower index.

    Exactly ``k`` entries are ``True`` (``k`` is clipped to ``[0, numel]``).
    """
    return _exact_topk(values, k)[0]


def _indices(mask: Tensor, size: int) -> Tensor:
    """Indices of the ``size`` True entries of ``mask``; on accelerators without a host sync (the
    count is known in advance), on the CPU with plain ``nonzero`` (faster there, and syncs are free)."""
    if mask.device.type != "cpu":
        try:
            return torch.nonzero_static(mask, size=size).flatten()
        except (RuntimeError, NotImplementedError):  # a backend without nonzero_static
            pass
    return torch.nonzero(mask).flatten()


# -- the official code's count and tie rules ------------------------------------------------------
# Each takes the scores of *all* prunable weights (flat, higher = keep), the density of the step and
# the previous step's flat mask (None at the first step), and returns (keep mask, the count the rule
# aims at). They transcribe how each method's official code turns scores into a mask, so that
# ``count_rule="official"`` reproduces its masks; prunekit's own rule is the exact top-k above.
OfficialRule = Callable[[Tensor, float, "Tensor | None"], "tuple[Tensor, int]"]


def _nth_largest(values: Tensor, n: int) -> Tensor:
    return torch.kthvalue(values, values.numel() - n + 1).values


def _floor_keep_ties(values: Tensor, density: float, previous: Tensor | None) -> tuple[Tensor, int]:
    """FORCE (naver/force ``get_mask``): ``k = int(N d)``; keep every score >= the k-th largest (ties kept)."""
    k = int(values.numel() * density)
    if k < 1:
        raise ConfigError(f"the official count rule keeps int(N*d) = 0 of {values.numel()} weights at density {density:g}")
    return values >= _nth_largest(values, k), k


def _floor_keep_ties_min_pruned(values: Tensor, density: float, previous: Tensor | None) -> tuple[Tensor, int]:
    """Iter-SNIP (naver/force): pruned weights take the global minimum score, then FORCE's rule.

    A pruned weight can be selected again when the threshold equals that minimum (massive ties).
    """
    if previous is not None:
        values = torch.where(previous, values, values.min())
    return _floor_keep_ties(values, density, previous)


def _grasp_rule(values: Tensor, density: float, previous: Tensor | None) -> tuple[Tensor, int]:
    """GraSP (alecwangcq/GraSP): remove ``int(N (1 - d))``; keep ``-s <=`` the removal count's largest ``-s``.

    With ``s`` the keep-score (``theta*Hg``), the official ``S = -s`` keeps ``S <= t`` where ``t`` is the
    ``int(N (1-d))``-th largest ``S``: one weight more than asked is kept, and every tie at ``t``.
    """
    n = values.numel()
    remove = int(n * (1.0 - density))
    if remove < 1:
        return torch.ones(n, dtype=torch.bool, device=values.device), n
    threshold = torch.kthvalue(values, remove).values  # the remove-th smallest s = remove-th largest S
    return values >= threshold, n - remove


def _synflow_rule(values: Tensor, density: float, previous: Tensor | None) -> tuple[Tensor, int]:
    """SynFlow (ganguli-lab/Synaptic-Flow ``_global_mask``): ``k = int((1 - d) N)``; prune every score <= the k-th smallest.

    Ties at the threshold are all pruned; when ``k < 1`` the mask is left as it was.
    """
    n = values.numel()
    remove = int((1.0 - density) * n)
    if remove < 1:
        keep = torch.ones(n, dtype=torch.bool, device=values.device) if previous is None else previous.clone()
        return keep, n - remove
    threshold = torch.kthvalue(values, remove).values
    return values > threshold, n - remove


def _ceil_topk(values: Tensor, density: float, previous: Tensor | None) -> tuple[Tensor, int]:
    """ProsPr (mil-ad/prospr ``keep_mask_from_scores``): exactly ``ceil(N d)`` by top-k."""
    k = math.ceil(values.numel() * density)
    return _exact_topk(values, k)[0], k


OFFICIAL_RULES: dict[str, OfficialRule] = {
    "floor_keep_ties": _floor_keep_ties,
    "floor_keep_ties_min_pruned": _floor_keep_ties_min_pruned,
    "grasp": _grasp_rule,
    "synflow": _synflow_rule,
    "ceil_topk": _ceil_topk,
}


@dataclass(frozen=True)
class Selection:
    """The masks one selection step produced, and whether scores or ties decided them.

    Attributes:
        masks: ``{name: bool tensor}`` on the device of the scores.
        target: the number of weights the rule aimed to keep (``round(d N)`` for the exact rule,
            limited by the candidates; the official rule's own count otherwise).
        kept: the number actually kept (equal to ``target`` for the exact rule).
        decided_by_ties: the ``target``-th kept score is exactly 0 and zero-scored candidates lie on
            both sides of the cut (in some layer, for per-layer allocations): which of them survive
            was decided by the tie rule (index order; all or none for the official rules), not by
            the scores.
        tie_chosen: how many of the ``target`` places went to zero-scored weights in that case.
    """

    masks: dict[str, Tensor]
    target: int
    kept: int
    decided_by_ties: bool = False
    tie_chosen: int = 0


class Ranker:
    """Turns scores into masks, step after step, with one host synchronisation per step.

    Args:
        shapes: ``{name: shape}`` of the scored tensors, in ranking order (ties go to the earlier
            name, then to the lower flat index).
        allocation: ``"global"``, ``"layerwise"`` or ``"erk"``.
        rule: an official count rule (:data:`OFFICIAL_RULES`), global only; ``None`` for the exact
            index-based top-k.
        nested: monotone schedules: each step selects only among the weights the previous step kept.
            The global exact rule then ranks only those candidates, so a step costs time in
            proportion to what is still alive.
        counts: for ``allocation="learned"``: ``density -> kept count per tensor`` (in ``shapes``
            order), checked to sum to ``kept_count(N, density)`` with no tensor over its size.
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        allocation: str = "global",
        rule: str | None = None,
        nested: bool = False,
        ties: str = "random",
        seed: int = 0,
        reserve: Sequence[str] = (),
        counts: Callable[[float], Sequence[int]] | None = None,
    ):
        if allocation not in ALLOCATIONS:
            raise unknown("allocation", allocation, ALLOCATIONS)
        if ties not in TIE_RULES:
            raise unknown("tie rule", ties, TIE_RULES)
        if rule is not None:
            if rule not in OFFICIAL_RULES:
                raise unknown("count rule", rule, OFFICIAL_RULES)
            if allocation != "global":
                raise ConfigError(f"the official count rule ranks globally; it cannot be combined with allocation={allocation!r}")
        if (allocation == "learned") != (counts is not None):
            raise ConfigError("allocation='learned' takes its per-layer counts from the method (counts=), and only it does")
        self.counts = counts
        self.names = list(shapes)
        self.shapes = [tuple(int(d) for d in shapes[n]) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.total = sum(self.sizes)
        self.allocation = allocation
        self.rule = rule
        self.nested = nested
        self._kept_idx: Tensor | None = None  # global exact + nested: sorted flat indices kept last step
        self._previous: Tensor | None = None  # flat mask of the last step
        self.ties = ties
        self.seed = seed
        self._step = 0
        self._segments: Tensor | None = None
        # tensors no score can rank (exactly zero when scoring): each keeps the step's density, at random
        # (a fixed seeded order, so nested schedules stay nested); the global ranking shares the rest
        unknown_names = [n for n in reserve if n not in self.names]
        if unknown_names:
            raise ConfigError(f"reserve names {unknown_names[0]!r}, which is not among the ranked tensors")
        self.reserve = [i for i, n in enumerate(self.names) if n in set(reserve)] if rule is None and allocation == "global" else []
        self._reserve_order: dict[int, Tensor] = {}

    def _flat(self, scores: Mapping[str, Tensor]) -> Tensor:
        missing = [n for n in self.names if n not in scores]
        if missing:
            raise ConfigError(f"no score for {', '.join(map(repr, missing))}")
        return torch.cat([scores[n].detach().reshape(-1) for n in self.names])

    def _split(self, flat_mask: Tensor) -> dict[str, Tensor]:
        return {n: p.view(s) for n, p, s in zip(self.names, flat_mask.split(self.sizes), self.shapes)}

    def select(self, scores: Mapping[str, Tensor], density: float, candidates: Mapping[str, Tensor] | None = None) -> Selection:
        """Keep the highest-scoring weights at ``density``.

        Args:
            scores: ``{name: tensor}``, finite, higher = keep (checked: a NaN/inf is a ``ScoreError``).
            density: kept fraction of all scored weights.
            candidates: only these weights may be kept (``{name: bool tensor}``); by default, for a
                nested ranker, the weights the previous step kept.

        Raises:
            ScoreError: a score is NaN or infinite (the message names the tensors).
        """
        check_density(density)
        values = self._flat(scores)
        previous = self._previous
        cand_idx: Tensor | None = None
        cand_flat: Tensor | None = None
        if candidates is not None:
            cand_flat = torch.cat([candidates[n].reshape(-1).to(device=values.device, dtype=torch.bool) for n in self.names])
        elif self.nested and previous is not None:
            cand_flat = previous
            cand_idx = self._kept_idx
        zero_ties: list[Tensor] = []
        budgets: list[int] = []
        if self.rule is not None:
            flat_mask, target = OFFICIAL_RULES[self.rule](values, density, previous if cand_flat is None else cand_flat)
            counted = values
            kept_idx = None
        elif self.allocation == "global":
            if cand_flat is not None and cand_idx is None:
                cand_idx = torch.nonzero(cand_flat).flatten()
            reserved_keep = self._reserved(density, values.device, cand_flat) if self.reserve else None
            ranked = values
            if reserved_keep is not None:  # the reserved tensors' places are taken: rank the rest for the remainder
                ranked = torch.where(self._reserved_mask(values.device), torch.full_like(values, -math.inf), values)
            counted = ranked if cand_idx is None else ranked[cand_idx]
            target = min(kept_count(self.total, density), counted.numel())
            if reserved_keep is not None:
                target -= int(reserved_keep.sum())
            keep_c, ties = _exact_topk(counted, target)
            zero_ties.append(ties)
            if self.ties == "random" and int(ties):
                segments = self._segment_ids(values.device)
                keep_c = _spread_zero_ties(counted, keep_c, segments if cand_idx is None else segments[cand_idx], len(self.sizes),
                                           self._generator())
            if cand_idx is None:
                flat_mask = keep_c
                kept_idx = _indices(keep_c, target) if self.nested else None
            else:
                kept_idx = cand_idx[_indices(keep_c, target)]
                flat_mask = torch.zeros(self.total, dtype=torch.bool, device=values.device)
                flat_mask[kept_idx] = True
            if reserved_keep is not None:
                flat_mask = flat_mask | reserved_keep
                target += int(reserved_keep.sum())
                kept_idx = torch.nonzero(flat_mask).flatten() if self.nested else None
        else:
            budgets = self._learned_budgets(density) if self.counts is not None else layer_budgets(self.shapes, density, self.allocation) or []
            if cand_flat is not None:
                counted = torch.where(cand_flat, values, torch.full_like(values, -math.inf))
                limits = torch.stack([c.sum() for c in cand_flat.split(self.sizes)]).tolist()
                budgets = [min(b, int(c)) for b, c in zip(budgets, limits)]
            else:
                counted = values
            pieces = []
            for v, b in zip(counted.split(self.sizes), budgets):
                keep_l, ties = _exact_topk(v, b)
                if self.ties == "random" and int(ties):
                    keep_l = _spread_zero_ties(v, keep_l, torch.zeros(v.numel(), dtype=torch.long, device=v.device), 1, self._generator())
                pieces.append(keep_l)
                zero_ties.append(ties)
            flat_mask = torch.cat(pieces)
            target = sum(budgets)
            kept_idx = None
        if self.rule is not None:
            # the official rules keep all ties or none: count what they kept, and whether zeros straddled the count
            above, zeros = (counted > 0).sum(), (counted == 0).sum()
            straddles = (above < target) & (above + zeros > target)
            stats = [flat_mask.sum(), torch.where(straddles, target - above, 0)]
        else:
            stats = [torch.tensor(target, device=values.device), torch.stack(zero_ties).sum()]
        # a non-finite candidate score makes the sum non-finite; the exact (slower) check runs only then
        probe = torch.where(cand_flat, values, 0) if cand_flat is not None and self.allocation != "global" else counted
        if self.reserve and self.rule is None and self.allocation == "global":
            probe = values if cand_flat is None else torch.where(cand_flat, values, 0)
        stats.append(probe.sum())
        got = torch.stack([t.to(torch.float64) for t in stats]).tolist()  # the one host synchronisation of the step
        if not math.isfinite(got[2]):
            finite = torch.isfinite(values if cand_flat is None else torch.where(cand_flat, values, 0))
            if not bool(finite.all()):
                self._raise_non_finite(finite)
        kept, chosen = int(got[0]), int(got[1])
        self._previous = flat_mask
        self._kept_idx = kept_idx
        self._step += 1
        return Selection(self._split(flat_mask), target, kept, chosen > 0, chosen)

    def _learned_budgets(self, density: float) -> list[int]:
        assert self.counts is not None
        budgets = [int(c) for c in self.counts(density)]
        want = kept_count(self.total, density)
        if len(budgets) != len(self.sizes) or sum(budgets) != want or any(not 0 <= b <= n for b, n in zip(budgets, self.sizes)):
            raise ConfigError(f"learned per-layer counts {budgets} do not fit the layers {self.sizes} with {want} kept in all")
        return budgets

    def _reserved_mask(self, device: torch.device) -> Tensor:
        segments = self._segment_ids(device)
        return torch.isin(segments, torch.tensor(self.reserve, device=device))

    def _reserved(self, density: float, device: torch.device, candidates: Tensor | None) -> Tensor:
        """The kept entries of the reserved tensors: ``round(density * n)`` of each, in a fixed seeded
        random order (the first ones of it), among the candidates where there are candidates."""
        from ..data.loader import mix_seed

        keep = torch.zeros(self.total, dtype=torch.bool, device=device)
        offsets = [0, *itertools.accumulate(self.sizes)]
        for i in self.reserve:
            if i not in self._reserve_order:
                g = torch.Generator().manual_seed(mix_seed(self.seed, 0x2E5E7, i))
                self._reserve_order[i] = torch.randperm(self.sizes[i], generator=g).to(device)
            order = self._reserve_order[i] + offsets[i]
            if candidates is not None:
                order = order[candidates[order]]
            keep[order[: kept_count(self.sizes[i], density)]] = True
        return keep

    def _segment_ids(self, device: torch.device) -> Tensor:
        """The layer (position in ``names``) of every flat entry."""
        if self._segments is None or self._segments.device != device:
            self._segments = torch.repeat_interleave(torch.arange(len(self.sizes), device=device), torch.tensor(self.sizes, device=device))
        return self._segments

    def _generator(self) -> torch.Generator:
        """The random stream of this step's tie-breaking: a function of the seed and the step."""
        from ..data.loader import mix_seed

        return torch.Generator().manual_seed(mix_seed(self.seed, 0x71E5, self._step))

    def _raise_non_finite(self, finite: Tensor) -> None:
        bad = [(n, int(c)) for n, c in zip(self.names, (~finite).split(self.sizes)) for c in [c.sum()] if int(c)]
        shown = ", ".join(f"{n!r} ({c})" for n, c in bad[:6]) + (f" and {len(bad) - 6} more tensors" if len(bad) > 6 else "")
        raise ScoreError(
            f"NaN/inf scores for {shown}; check the model and the data for NaN/inf values (and the loss for overflow)"
        )


def select(
    scores: Mapping[str, Tensor],
    density: float,
    allocation: str = "global",
    candidates: Mapping[str, Tensor] | None = None,
    ties: str = "random",
    seed: int = 0,
) -> dict[str, Tensor]:
    """Keep the highest-scoring weights: exact index-based top-k under an allocation rule.

    Args:
        scores: ``{name: score tensor}``; higher means more important. Must be finite.
        density: kept fraction over all tensors in ``scores``.
        allocation: ``"global"``, ``"layerwise"`` or ``"erk"`` (see :data:`ALLOCATIONS`).
        candidates: optional ``{name: bool tensor}``; only ``True`` entries may be kept (used by
            monotone iterative methods so that a pruned weight stays pruned). If the budget exceeds
            the candidates, every candidate is kept.
        ties, seed: how ties among zero scores that straddle the cut are broken (:data:`TIE_RULES`).

    Returns:
        ``{name: bool tensor}`` on the device of the scores, with exactly ``kept_count`` ``True``
        entries overall (and per layer for non-global allocations), unless limited by ``candidates``.
    """
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    return Ranker(shapes, allocation, ties=ties, seed=seed).select(scores, density, candidates).masks
