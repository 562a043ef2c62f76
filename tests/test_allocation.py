import math

import pytest
import torch

from prunekit.core.allocation import apportion, density_schedule, erk_densities, kept_count, layer_budgets, select, topk_flat
from prunekit.errors import ConfigError


def test_kept_count_rounds_half_up():
    assert kept_count(10, 0.25) == 3  # 2.5 -> 3 (not banker's rounding)
    assert kept_count(430_500, 0.02) == 8610
    assert kept_count(7, 1.0) == 7


def test_topk_breaks_ties_by_lowest_index():
    values = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0], dtype=torch.float64)
    assert topk_flat(values, 2).tolist() == [False, True, True, False, False, False]
    assert topk_flat(values, 4).tolist() == [False, True, True, True, True, False]
    assert topk_flat(torch.zeros(5), 3).tolist() == [True, True, True, False, False]


def test_global_select_exact_count_with_massive_ties():
    scores = {"a": torch.zeros(3, 7), "b": torch.zeros(10)}
    masks = select(scores, density=0.5, ties="index")
    # k = round(0.5 * 31) = 16: all ties; the index rule keeps the first 16 entries in parameter order
    assert kept_count(31, 0.5) == 16
    assert masks["a"].flatten().tolist() == [True] * 16 + [False] * 5
    assert not masks["b"].any()


def test_zero_ties_are_spread_over_the_layers_in_proportion_at_random_and_seeded():
    g = torch.Generator().manual_seed(3)
    # a few nonzero scores, then zeros everywhere (a starved network): the zeros straddle the cut
    scores = {"a": torch.zeros(3, 7), "b": torch.zeros(100), "c": torch.zeros(30)}
    scores["b"][:5] = torch.rand(5, generator=g) + 0.1
    masks = select(scores, density=0.5)  # keep 76 of 151: the 5 nonzero, and 71 of the 146 zeros
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(151, 0.5) == 76
    assert bool(masks["b"][:5].all())  # every nonzero score is kept
    zeros = {"a": 21, "b": 95, "c": 30}  # 71 zero-scored places spread in proportion: 21/146, 95/146, 30/146 of them
    chosen = {"a": int(masks["a"].sum()), "b": int(masks["b"][5:].sum()), "c": int(masks["c"].sum())}
    for name, z in zeros.items():
        assert abs(chosen[name] - 71 * z / 146) <= 1, chosen
    again = select(scores, density=0.5)
    other = select(scores, density=0.5, seed=1)
    assert all(torch.equal(masks[n], again[n]) for n in masks)  # seeded: deterministic
    assert any(not torch.equal(masks[n], other[n]) for n in masks)  # another seed, other places
    assert not bool(masks["c"][:10].all()) or not bool(masks["c"][10:].any())  # within a layer not by index


@pytest.mark.parametrize("density", [0.9, 0.5, 0.1, 0.02, 0.005, 1e-4])
def test_every_allocation_keeps_exactly_round_dN(density):
    g = torch.Generator().manual_seed(1)
    shapes = [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    scores = {f"l{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    n = sum(math.prod(s) for s in shapes)
    for allocation in ("global", "layerwise", "erk"):
        masks = select(scores, density, allocation)
        assert sum(int(m.sum()) for m in masks.values()) == kept_count(n, density), allocation


def test_layerwise_allocation_is_uniform_per_layer():
    scores = {"a": torch.rand(100), "b": torch.rand(1000), "c": torch.rand(10)}
    masks = select(scores, 0.3, "layerwise")
    assert [int(m.sum()) for m in masks.values()] == [30, 300, 3]
    # within a layer the largest scores are kept
    for name, m in masks.items():
        assert scores[name][m].min() >= scores[name][~m].max()


def test_erk_densities_hand_computed():
    # two linear layers 10x10 (raw ratio 20/100 = 0.2) and 10x40 (50/400 = 0.125)
    shapes = [(10, 10), (10, 40)]
    d = erk_densities(shapes, 0.3)
    # eps solves 0.2 eps * 100 + 0.125 eps * 400 = 0.3 * 500 -> eps = 150 / 70
    eps = 150 / 70
    assert d == pytest.approx([0.2 * eps, 0.125 * eps])
    assert sum(di * math.prod(s) for di, s in zip(d, shapes)) == pytest.approx(150)


def test_erk_makes_small_layers_dense_and_resolves():
    shapes = [(3, 1, 3, 3), (64, 64, 3, 3), (10, 64)]  # the first layer is tiny: ERK wants it dense
    d = erk_densities(shapes, 0.1)
    assert d[0] == 1.0
    sizes = [math.prod(s) for s in shapes]
    assert sum(di * n for di, n in zip(d, sizes)) == pytest.approx(0.1 * sum(sizes))
    assert all(0 < di <= 1 for di in d)
    budgets = layer_budgets(shapes, 0.1, "erk")
    assert budgets[0] == 27 and sum(budgets) == kept_count(sum(sizes), 0.1)


def test_apportion_hits_total_and_respects_caps():
    assert apportion([2.5, 2.5, 1.0], [10, 10, 10], 6) == [3, 2, 1]
    assert apportion([5.0, 0.2], [3, 10], 5) == [3, 2]
    with pytest.raises(ConfigError):
        apportion([1.0], [2], 3)


def test_schedules():
    exp = density_schedule(0.01, 4, "exponential")
    assert exp == pytest.approx([0.01 ** (t / 4) for t in range(1, 5)])
    lin = density_schedule(0.2, 4, "linear")
    assert lin == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert exp[-1] == 0.01 and lin[-1] == 0.2
    with pytest.raises(ConfigError, match="schedule"):
        density_schedule(0.1, 3, "cosine")


def test_candidates_restrict_selection():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0])}
    cand = {"a": torch.tensor([False, True, True, True])}
    masks = select(scores, 0.5, candidates=cand)
    assert masks["a"].tolist() == [False, True, True, False]
