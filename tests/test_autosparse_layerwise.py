"""Layer-aware AutoSparse: the calibration's arithmetic, the density and ranking models learning rules
they can represent on teachers they never saw, exact counts and no empty layer on models no teacher
resembles (a transformer, a depthwise net, a 1-D conv net), the scorer file and its checksum,
deterministic teaching from a real (tiny) IRP run, leave-one-teacher-out, the allocation rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.autosparse import LayerwiseScorer, ScorerFileError, leave_one_teacher_out, teach_layerwise
from prunekit.autosparse import layerwise as lw
from prunekit.core.allocation import erk_densities, kept_count
from prunekit.errors import ConfigError

FAST = lw.TeachSettings(per_layer=3000, epochs=10, batch_size=256)


def _conv_net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Conv2d(width, 2 * width, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * width * 4 * 4, 5 * width), nn.ReLU(), nn.Linear(5 * width, 10))


def _mlp(widths: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _synthetic_teacher(name: str, model: nn.Module, rule: str, seed: int, rounds: int = 6) -> prunekit.autosparse.Teacher:
    """A teacher whose tickets follow a known rule: per-layer counts from ERK densities, and within a
    layer the largest ``|theta0|`` survive longest (``rule="theta"``) or a random order (``"random"``)."""
    params = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    names = list(params)
    shapes = [tuple(p.shape) for p in params.values()]
    g = torch.Generator().manual_seed(seed)
    g0 = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    order = {n: (p.abs() if rule == "theta" else torch.rand(p.shape, generator=g)).flatten() for n, p in params.items()}
    masks = []
    for r in range(1, rounds + 1):
        d = 0.6 ** r
        masks.append({})
        for n, dl in zip(names, erk_densities(shapes, d)):
            k = max(1, round(dl * params[n].numel()))
            keep = torch.zeros(params[n].numel(), dtype=torch.bool)
            keep[torch.topk(order[n], k).indices] = True
            masks[-1][n] = keep.view(params[n].shape)
    return lw.teacher_from_masks(name, model, params, g0, masks)


@pytest.fixture(scope="module")
def teachers():
    return [
        _synthetic_teacher("conv-a", _conv_net(6, 0), "theta", 0),
        _synthetic_teacher("mlp-b", _mlp((64, 48, 32, 10), 1), "theta", 1),
        _synthetic_teacher("conv-c", _conv_net(10, 2), "theta", 2),
        _synthetic_teacher("mlp-d", _mlp((100, 40, 20, 20, 10), 3), "theta", 3),
    ]


@pytest.fixture(scope="module")
def scorer_file(teachers, tmp_path_factory):
    return teach_layerwise(teachers, FAST).save(tmp_path_factory.mktemp("s") / "layerwise.pt")


def test_calibration_keeps_exactly_round_dn_at_least_one_per_layer_none_over_its_size():
    sizes = [500, 25_000, 400_000, 5_000]
    for density in (0.5, 0.1, 0.01, 0.001):
        counts = lw.calibrated_counts([4.0, 1.7, -0.8, 2.7], sizes, density)
        assert sum(counts) == kept_count(sum(sizes), density)
        assert all(1 <= c <= n for c, n in zip(counts, sizes))
    # a ratio no layer can hold fills the layer and the rest is shared as the others' ratios say
    counts = lw.calibrated_counts([10.0, 0.0, 0.0, 0.0], sizes, 0.1)
    assert counts[0] == 500 and counts[1] / 25_000 == pytest.approx(counts[2] / 400_000, rel=1e-3)
    # equal ratios: equal densities (the layerwise rule)
    counts = lw.calibrated_counts([0.3] * 4, sizes, 0.02)
    assert [c / n for c, n in zip(counts, sizes)] == pytest.approx([0.02] * 4, rel=1e-2)
    with pytest.raises(ConfigError, match="fewer than the 4 prunable tensors"):
        lw.calibrated_counts([0.0] * 4, [10, 10, 10, 10], 0.05)


def test_weight_features_are_scale_free_and_hand_checkable():
    theta = torch.tensor([0.1, -0.4, 0.2, 0.0])
    g = torch.tensor([1.0, 1.0, -2.0, 3.0])
    f = lw.weight_features(theta, g)
    assert f.shape == (4, 7)
    torch.testing.assert_close(f[:, 0], torch.tensor([1 / 3, 1.0, 2 / 3, 0.0]))  # rank of |theta|
    torch.testing.assert_close(f[:, 1], torch.tensor([1 / 6, 1 / 6, 2 / 3, 1.0]))  # rank of |g|, ties averaged
    torch.testing.assert_close(f[:, 3], torch.log1p(theta.abs() / theta.abs().mean()))
    product = theta * g
    torch.testing.assert_close(f[:, 6], torch.sign(product) * torch.log1p(product.abs() / product.abs().mean()))
    # neither the weights' scale nor the gradient's changes a feature
    torch.testing.assert_close(lw.weight_features(7 * theta, 0.01 * g), f)


def test_descriptors_name_the_layer():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8, 4))
    names = ["0.weight", "1.weight", "3.weight"]
    shapes = [tuple(dict(net.named_parameters())[n].shape) for n in names]
    d = lw.layer_descriptors(net, names, shapes)
    col = {k: i for i, k in enumerate(lw.DESCRIPTORS)}
    assert d[:, col["conv"]].tolist() == [1, 0, 0] and d[:, col["depthwise"]].tolist() == [0, 1, 0]
    assert d[:, col["linear"]].tolist() == [0, 0, 1] and d[:, col["first"]].tolist() == [1, 0, 0] and d[:, col["last"]].tolist() == [0, 0, 1]
    assert d[0, col["log_fan_in"]] == pytest.approx(math.log(27)) and d[0, col["log_kernel"]] == pytest.approx(math.log(9))
    assert d[:, col["depth"]].tolist() == [0.0, 0.5, 1.0]
    assert d[2, col["log_erk"]] == pytest.approx(math.log(12 / 32))


def test_the_models_learn_rules_they_can_represent_on_a_teacher_they_never_saw(teachers):
    results = leave_one_teacher_out(teachers, FAST)
    for r in results:
        # ERK tickets: the learned allocation is close to ERK, far closer than equal densities
        assert r["density_error"] < 0.1 < 0.4 < r["density_error_layerwise"]
        # survival by |theta0| within a layer: the ranking model learns it (the features hold it)
        assert r["ranking_spearman"] > r["ranking_spearman_abs_theta"] - 0.01 and r["ranking_spearman_abs_theta"] > 0.9
        assert r["ticket_iou"] > r["ticket_iou_random_placement"] + 0.3
        assert sum(r["kept_final"]) == sum(r["kept_final_ticket"]) or abs(sum(r["kept_final"]) - sum(r["kept_final_ticket"])) <= 4


def test_leave_one_teacher_out_scores_each_teacher_with_a_scorer_taught_without_it(teachers):
    results = leave_one_teacher_out(teachers, FAST)
    for i, held in enumerate(teachers):
        alone = lw.evaluate(teach_layerwise([t for j, t in enumerate(teachers) if j != i], FAST), held)
        assert results[i] == alone
    # what the held-out teacher holds changes its score, never the scorer it is scored with: its
    # predicted counts stay, whatever its own tickets say
    tampered = list(teachers)
    t = teachers[0]
    from dataclasses import replace

    tampered[0] = replace(t, kept=t.kept.flip(1), targets=[1 - y for y in t.targets])
    again = leave_one_teacher_out(tampered, FAST)[0]
    assert again["kept_final"] == results[0]["kept_final"] and again["ranking_spearman"] == pytest.approx(-results[0]["ranking_spearman"])
    with pytest.raises(ConfigError, match="at least two teachers"):
        leave_one_teacher_out(teachers[:1], FAST)


class _Encoder(nn.Module):
    """A transformer no teacher resembles: embedding, attention, a feed-forward block, a head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.block = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.block(self.embed(x)).mean(1))


def _unseen_models():
    torch.manual_seed(0)
    depthwise = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
                              nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
    conv1d = nn.Sequential(nn.Conv1d(2, 12, 5), nn.ReLU(), nn.Conv1d(12, 24, 5), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                           nn.Linear(24, 5))
    g = torch.Generator().manual_seed(1)
    return {
        "transformer": (_Encoder(), [(torch.randn(8, 7, 6, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]),
        "depthwise": (depthwise, [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]),
        "conv1d": (conv1d, [(torch.randn(8, 2, 30, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]),
    }


@pytest.mark.filterwarnings("ignore:autosparse_layerwise. layer collapse")  # 0.5 % of a 3,000-weight network
@pytest.mark.parametrize("kind", ["transformer", "depthwise", "conv1d"])
def test_exact_count_and_no_empty_layer_on_models_no_teacher_resembles(kind, scorer_file):
    model, data = _unseen_models()[kind]
    for sparsity in (0.9, 0.99, 0.995):
        masks = prunekit.prune(model, "autosparse_layerwise", sparsity, data=data, scorer=str(scorer_file), gradient_batches=2)
        total = sum(m.numel() for m in masks.values())
        assert masks.kept == kept_count(total, 1 - sparsity)
        assert all(int(m.sum()) >= 1 for m in masks.values()), {n: int(m.sum()) for n, m in masks.items()}
        assert masks.meta["allocation"] == "learned"
        again = prunekit.prune(model, "autosparse_layerwise", sparsity, data=data, scorer=str(scorer_file), gradient_batches=2)
        assert all(torch.equal(masks[n], again[n]) for n in masks)  # deterministic


def test_the_mask_is_the_learned_counts_filled_by_the_learned_ranking(scorer_file):
    model, data = _unseen_models()["conv1d"]
    scorer = LayerwiseScorer.load(scorer_file)
    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    shapes = [tuple(dict(model.named_parameters())[n].shape) for n in names]
    counts = scorer.counts(lw.layer_descriptors(model, names, shapes), [math.prod(s) for s in shapes], 0.05)
    masks = prunekit.prune(model, "autosparse_layerwise", 0.95, data=data, scorer=str(scorer_file), gradient_batches=2)
    assert [int(masks[n].sum()) for n in names] == counts
    scores = prunekit.score(model, "autosparse_layerwise", data=data, scorer=str(scorer_file), gradient_batches=2)
    for n, k in zip(names, counts):
        assert torch.equal(masks[n].flatten(), torch.zeros_like(masks[n].flatten()).index_fill_(0, torch.topk(scores[n].flatten(), k).indices, True))


def test_allocation_rules():
    model, data = _unseen_models()["conv1d"]
    with pytest.raises(ConfigError, match="within a layer only"):
        prunekit.prune(model, "autosparse_layerwise", 0.9, data=data, allocation="global")
    with pytest.raises(ConfigError, match="'snip' predicts none"):
        prunekit.prune(model, "snip", 0.9, data=data, allocation="learned")
    from prunekit.experiments import RunSpec
    from prunekit.experiments.spec import resolve

    with pytest.raises(ConfigError, match="within a layer only"):
        resolve(RunSpec("lenet5", "fashion-mnist", "autosparse_layerwise", 0.9, 0, allocation="global"))


def test_learned_ranking_with_another_allocation(scorer_file):
    model, data = _unseen_models()["depthwise"]
    masks = prunekit.prune(model, "autosparse_layerwise", 0.9, data=data, scorer=str(scorer_file), gradient_batches=2, allocation="erk")
    shapes = [tuple(m.shape) for m in masks.values()]
    assert [int(m.sum()) for m in masks.values()] == prunekit.core.allocation.layer_budgets(shapes, 0.1, "erk")


def test_a_teachers_profile_gives_its_ticket_counts_at_its_round_densities(teachers, scorer_file):
    scorer = LayerwiseScorer.load(scorer_file)
    t = teachers[0]
    for r in (0, 3, len(t.densities) - 1):
        assert scorer.profile_counts(t.name, t.shapes, t.densities[r]) == t.kept[r].tolist()
    between = scorer.profile_counts(t.name, t.shapes, math.sqrt(t.densities[1] * t.densities[2]))
    assert all(min(a, b) <= c <= max(a, b) + 1 for a, b, c in zip(t.kept[1].tolist(), t.kept[2].tolist(), between))
    with pytest.raises(ConfigError, match="not this model's"):
        scorer.profile_counts(t.name, teachers[1].shapes, 0.1)
    with pytest.raises(ConfigError, match="was taught on"):
        scorer.profile_counts("resnet", t.shapes, 0.1)


def test_scorer_file_round_trips_with_its_checksum(scorer_file, tmp_path):
    scorer = LayerwiseScorer.load(scorer_file)
    assert scorer.sha256 and len(scorer.sha256) == 64
    again = LayerwiseScorer.load(scorer.save(tmp_path / "again.pt"))
    assert again.sha256 == scorer.sha256
    f = torch.rand(50, 7)
    torch.testing.assert_close(again.rank(f), scorer.rank(f))
    payload = torch.load(scorer_file, weights_only=True)
    payload["tensors"]["density.coef"][0] += 1e-3
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ScorerFileError, match="corrupt .*checksum"):
        LayerwiseScorer.load(tmp_path / "tampered.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a scorer")
    with pytest.raises(ScorerFileError, match="not a readable scorer file"):
        LayerwiseScorer.load(tmp_path / "junk.pt")
    paper = prunekit.autosparse.list_scorers()["lenet300-fmnist"]
    with pytest.raises(ScorerFileError, match="paper's AutoSparse"):
        LayerwiseScorer.load(paper)
    model, data = _unseen_models()["conv1d"]
    with pytest.raises(ScorerFileError, match="changed since"):
        prunekit.prune(model, "autosparse_layerwise", 0.9, data=data, scorer=str(scorer_file), scorer_sha256="0" * 64)


def test_teaching_from_a_tiny_irp_run_is_deterministic(tmp_path, tiny_mnist):
    from conftest import TINY_TRAIN
    from prunekit.autosparse import teacher_from_imp_run
    from prunekit.experiments import DatasetCache, RunSpec, run_one
    from prunekit.experiments.spec import resolve

    spec = RunSpec("lenet_300_100", "mnist", "imp", 0.95, 0, recipe="lenet-fmnist", epochs=1, train=TINY_TRAIN,
                   method_options={"schedule": "pct", "rounds": 3})
    datasets = DatasetCache(str(tiny_mnist))
    out = run_one(spec, tmp_path / "o", datasets=datasets, device=torch.device("cpu"))
    assert out.status == "done", out.record.error
    run = resolve(spec)
    ds = datasets.get("mnist")
    cpu = torch.device("cpu")

    def teacher():
        return teacher_from_imp_run(out.record.run_dir, run.make_model(ds, cpu), run.scoring_data(ds, cpu), "lenet300/mnist",
                                    num_batches=2)

    t = teacher()
    assert t.densities == pytest.approx([0.05 ** (1 / 3), 0.05 ** (2 / 3), 0.05], abs=1e-5)
    assert t.kept.shape == (3, 3) and [len(f) for f in t.features] == [784 * 300, 300 * 100, 100 * 10]
    a = teach_layerwise([t], FAST).save(tmp_path / "a.pt")
    b = teach_layerwise([teacher()], FAST).save(tmp_path / "b.pt")
    assert LayerwiseScorer.load(a).sha256 == LayerwiseScorer.load(b).sha256
