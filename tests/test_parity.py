"""Parity with the official code: each official selection rule transcribed from its formula in
``shared/methods.md`` (not from the code), GraSP's sample order on a BN network, ProsPr's official
first momentum step, the one output contract, tie warnings, and run keys that did not move."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import prunekit
from prunekit.core.allocation import Ranker, density_schedule, kept_count, select
from prunekit.errors import PrunekitWarning


class TinyConvBN(nn.Module):
    """Conv-BN-ReLU x2 and a linear head: train-mode BN makes the sample grouping matter."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 2 * 2, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))


def _batches(n: int, size: int = 16, shape=(6,), classes: int = 4, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def _flat(masks) -> torch.Tensor:
    return torch.cat([m.flatten().cpu() for m in masks.values()])


def _unflat(flat: torch.Tensor, like) -> dict:
    out, i = {}, 0
    for n, m in like.items():
        out[n] = flat[i : i + m.numel()].view(m.shape)
        i += m.numel()
    return out


# -- official count rules, transcribed from methods.md ---------------------------------------------
def force_rule(scores: torch.Tensor, d: float) -> torch.Tensor:
    """naver/force: keep int(N*d) by a sorted top-k, then every score >= its last value."""
    k = int(scores.numel() * d)
    kth = torch.sort(scores, descending=True).values[k - 1]
    return scores >= kth


def iter_snip_rule(scores: torch.Tensor, d: float, previous: torch.Tensor | None) -> torch.Tensor:
    if previous is not None:
        scores = scores.clone()
        scores[~previous] = scores.min()
    return force_rule(scores, d)


def grasp_rule(keep_scores: torch.Tensor, d: float) -> torch.Tensor:
    """alecwangcq/GraSP: S = -theta*Hg normalised by |sum S|; remove int(N(1-d)); keep S <= the
    removal count's largest S."""
    s = -keep_scores
    s = s / (s.sum().abs() + 1e-10)
    remove = int(s.numel() * (1 - d))
    accept = torch.sort(s, descending=True).values[remove - 1]
    return s <= accept


def synflow_rule(scores: torch.Tensor, d: float, previous: torch.Tensor | None) -> torch.Tensor:
    """Synaptic-Flow: k = int((1-d) N); if k >= 1 prune every score <= the k-th smallest."""
    k = int((1 - d) * scores.numel())
    if k < 1:
        return torch.ones_like(scores, dtype=torch.bool) if previous is None else previous
    kth = torch.sort(scores).values[k - 1]
    return scores > kth


def prospr_rule(scores: torch.Tensor, d: float) -> torch.Tensor:
    """mil-ad/prospr: exactly ceil(N d) by top-k."""
    k = math.ceil(scores.numel() * d)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
    return keep


def _steps_of(method: str, model, data, density: float, **opts) -> list[dict]:
    seen: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrunekitWarning)
        prunekit.prune(model, method, density=density, data=data, callback=lambda s, d, m: seen.append(m), **opts)
    return seen


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_official_force_and_iter_snip_masks_equal_the_official_rule_at_every_step(method):
    model = _mlp(1)
    data = _batches(6, seed=2)
    steps = 6
    density = 0.05
    got = _steps_of(method, model, data, density, num_steps=steps, official=True)
    previous = None
    for t, d in enumerate(density_schedule(density, steps), start=1):
        # prune() draws one new batch per step from the same stream; score() starts the stream anew
        scores = prunekit.score(model, method, data=[data[(t - 1) % len(data)]], masks=previous, official=True)
        flat = _flat(scores)
        prev_flat = None if previous is None else _flat(previous)
        expected = force_rule(flat, d) if method == "force" else iter_snip_rule(flat, d, prev_flat)
        assert torch.equal(_flat(got[t - 1]), expected), f"step {t}"
        previous = _unflat(expected, scores)


def test_official_loss_is_nll_on_raw_logits():
    model = _mlp(2)
    x, y = _batches(1, seed=3)[0]
    scores = prunekit.score(model, "force", data=[(x, y)], official_loss=True)
    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith("weight")]
    grads = torch.autograd.grad(-model(x).gather(1, y[:, None]).mean(), [params[n] for n in names])
    for n, g in zip(names, grads):
        torch.testing.assert_close(scores[n], (params[n].detach() * g).abs())
    with pytest.raises(prunekit.ConfigError, match="official_loss"):
        prunekit.prune(model, "force", 0.5, data=[(x, y)], official_loss=True, loss_fn=F.cross_entropy)


def test_official_count_keeps_every_tie_where_the_exact_rule_keeps_round_dn():
    # every score 0 at the first step: the official rule keeps everything, prunekit exactly round(d N)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)  # every hidden unit dead: every gradient is 0
    data = [(torch.rand(8, 4), torch.randint(0, 3, (8,)))]
    n = 4 * 8 + 8 * 3
    official: list = []
    with pytest.warns(PrunekitWarning, match="official rule, which keeps all ties or none"):
        prunekit.prune(model, "force", density=0.1, data=data, num_steps=3, count_rule="official",
                       callback=lambda s, d, m: official.append(m))
    assert [int(_flat(m).sum()) for m in official] == [n, n, n]  # realised density 1.0 at every step
    with pytest.warns(PrunekitWarning, match="zero-scored weights by parameter order"):
        exact = prunekit.prune(model, "force", density=0.1, data=data, num_steps=3)
    assert exact.kept == kept_count(n, 0.1)
    assert [s["step"] for s in exact.meta["tie_steps"]] == [1, 2, 3]
    report = exact.report(model)
    assert report.tie_steps == [1, 2, 3]
    assert "decided by ties" in str(report)


def test_official_grasp_keeps_one_more_than_asked_and_equals_the_official_rule():
    model = _mlp(3)
    data = _batches(4, seed=4)
    kwargs = dict(samples_per_class=3, reinit_linear=False)
    scores = _flat(prunekit.score(model, "grasp", data=data, **kwargs))
    for d in (0.5, 0.1, 0.02):
        masks = prunekit.prune(model, "grasp", density=d, data=data, official=True, **kwargs)
        expected = grasp_rule(scores, d)
        assert torch.equal(_flat(masks), expected)
        assert masks.kept == scores.numel() - int(scores.numel() * (1 - d)) + 1


def test_official_synflow_is_float32_and_equals_the_official_rule_at_every_step():
    model = _mlp(4)
    density, steps = 0.03, 8
    got = _steps_of("synflow", model, None, density, num_steps=steps, input_shape=(6,), official=True)
    previous = None
    for t, d in enumerate(density_schedule(density, steps), start=1):
        scores = prunekit.score(model, "synflow", masks=previous, input_shape=(6,), official=True)
        assert next(iter(scores.values())).dtype == torch.float32
        flat = _flat(scores)
        expected = synflow_rule(flat, d, None if previous is None else _flat(previous))
        assert torch.equal(_flat(got[t - 1]), expected), f"step {t}"
        previous = _unflat(expected, scores)


def test_official_prospr_keeps_ceil_dn_with_the_readme_settings():
    model = _mlp(5)
    data = _batches(5, seed=5)
    masks = prunekit.prune(model, "prospr", density=0.07, data=data, official=True)
    opts = masks.meta["options"]
    assert (opts["inner_lr"], opts["inner_momentum"], opts["new_data_in_inner"]) == (0.5, 0.9, True)
    scores = _flat(prunekit.score(model, "prospr", data=data, official=True))
    assert torch.equal(_flat(masks), prospr_rule(scores, 0.07))
    assert masks.kept == math.ceil(scores.numel() * 0.07)


def _official_prospr_meta_gradient(net, batches, steps, lr, momentum):
    """The official ProsPr recipe, unrolled with autograd: theta0 = c * w, functional SGD whose
    first momentum buffer is a *detached* clone of the gradient, meta-loss on the next batch."""
    params = dict(net.named_parameters())
    names = list(params)
    weights = [n for n in names if n.endswith("weight")]
    masks = {n: torch.ones_like(params[n], requires_grad=True) for n in weights}
    fast = [params[n] * masks[n] if n in masks else params[n].clone() for n in names]
    bufs = [None] * len(fast)
    for k in range(steps):
        x, y = batches[k]
        loss = F.cross_entropy(functional_call(net, dict(zip(names, fast)), (x,)), y)
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        new = []
        for i, (p, g) in enumerate(zip(fast, grads)):
            bufs[i] = torch.clone(g).detach() if bufs[i] is None else bufs[i] * momentum + g
            new.append(p - lr * bufs[i])
        fast = new
    x, y = batches[steps]
    loss = F.cross_entropy(functional_call(net, dict(zip(names, fast)), (x,)), y)
    return dict(zip(weights, torch.autograd.grad(loss, [masks[n] for n in weights])))


def test_prospr_official_first_momentum_step_matches_the_official_unrolled_graph():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g)) for _ in range(4)]
    reference = _official_prospr_meta_gradient(net, batches, 3, 0.5, 0.9)
    official = prunekit.score(net, "prospr", data=batches, official=True)
    paper = prunekit.score(net, "prospr", data=batches, inner_lr=0.5, inner_momentum=0.9)
    for n, r in reference.items():
        torch.testing.assert_close(official[n], r.abs(), rtol=1e-10, atol=1e-14)
    # the detached buffer matters: the paper's full meta-gradient differs
    assert any(not torch.allclose(paper[n], reference[n].abs(), rtol=1e-6) for n in reference)


def _official_grasp_scores(net: nn.Module, x: torch.Tensor, y: torch.Tensor, spc: int, classes: int, temperature: float):
    """alecwangcq/GraSP on samples met in the order (x, y): the first ``spc`` of each class, stored
    class by class, two halves [:N//2], [N//2:]; g and Hg summed over the halves; T in both passes."""
    per_class = [[] for _ in range(classes)]
    for i, c in enumerate(y.tolist()):
        if len(per_class[c]) < spc:
            per_class[c].append(i)
    order = torch.tensor([i for idx in per_class for i in idx])
    xs, ys = x[order], y[order]
    n = len(xs)
    halves = [(xs[: n // 2], ys[: n // 2]), (xs[n // 2 :], ys[n // 2 :])]
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    g = None
    for hx, hy in halves:
        gp = torch.autograd.grad(F.cross_entropy(net(hx) / temperature, hy), weights)
        g = list(gp) if g is None else [a + b for a, b in zip(g, gp)]
    hg = [torch.zeros_like(w) for w in weights]
    for hx, hy in halves:
        gf = torch.autograd.grad(F.cross_entropy(net(hx) / temperature, hy), weights, create_graph=True)
        z = sum((a.detach() * b).sum() for a, b in zip(g, gf))
        for acc, h in zip(hg, torch.autograd.grad(z, weights)):
            acc.add_(h)
    return [w.detach() * h for w, h in zip(weights, hg)]


def test_grasp_on_a_bn_network_orders_samples_by_class_like_the_official_code():
    torch.manual_seed(8)
    net = TinyConvBN(classes=4).double()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(24, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([3, 1, 0, 2, 1, 3, 0, 2, 2, 0, 1, 3, 3, 1, 0, 2, 0, 1, 2, 3, 1, 0, 3, 2])
    ours = prunekit.score(net, "grasp", data=[(x, y)], samples_per_class=2, reinit_linear=False)
    reference = _official_grasp_scores(net, x, y, spc=2, classes=4, temperature=200.0)
    names = [n for n, _ in net.named_parameters() if n.endswith("weight") and not n.startswith("bn")]
    # prunekit weights each half by its share of the samples (mean loss over all of them): a factor
    # 1/2 on g and on the second pass, 1/4 on Hg; the official code sums the halves' means
    for n, r in zip(names, reference):
        torch.testing.assert_close(4 * ours[n], r, rtol=1e-9, atol=1e-20)


def test_model_returning_aux_and_logits_needs_output_fn_and_then_matches_the_plain_model():
    class AuxFirst(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            h = self.inner[1](self.inner[0](x))
            return h, self.inner[4](self.inner[3](self.inner[2](h)))

    plain = _mlp(9)
    wrapped = AuxFirst(plain)
    data = _batches(8, seed=10)
    with pytest.warns(PrunekitWarning, match="inner.2.weight"):
        prunekit.score(wrapped, "synflow", input_shape=(6,))
    logits = lambda out: out[1]
    for method, opts in [("snip", {}), ("grasp", {"samples_per_class": 2}), ("synflow", {"num_steps": 5}),
                         ("force", {"num_steps": 4}), ("prospr", {})]:
        a = prunekit.prune(plain, method, 0.8, data=data, **opts)
        b = prunekit.prune(wrapped, method, 0.8, data=data, output_fn=logits, **opts)
        assert torch.equal(_flat(a), _flat(b)), method


def test_loss_fn_receives_the_same_logits_tensor_in_every_method():
    model = _mlp(11)
    data = _batches(8, seed=12)
    seen: dict[str, set] = {}

    def recording_loss(logits, targets):
        seen.setdefault(current, set()).add((type(logits).__name__, logits.dim(), logits.shape[-1]))
        return F.cross_entropy(logits, targets)

    for current in ["snip", "grasp", "force", "iter_snip", "prospr"]:
        prunekit.prune(model, current, 0.5, data=data, loss_fn=recording_loss, num_steps=2) if current in ("force", "iter_snip") \
            else prunekit.prune(model, current, 0.5, data=data, loss_fn=recording_loss)
    assert all(v == {("Tensor", 2, 4)} for v in seen.values()), seen
    assert set(seen) == {"snip", "grasp", "force", "iter_snip", "prospr"}


def test_ranker_nested_steps_equal_selection_among_candidates():
    g = torch.Generator().manual_seed(13)
    shapes = {"a": (30, 7), "b": (50,), "c": (4, 4, 3)}
    ranker = Ranker(shapes, nested=True)
    previous = None
    for d in (0.8, 0.5, 0.3, 0.1):
        # coarse scores: many exact ties, some zeros
        scores = {n: torch.randint(0, 6, s, generator=g).float() for n, s in shapes.items()}
        got = ranker.select(scores, d).masks
        expected = select(scores, d, candidates=previous)
        assert all(torch.equal(got[n], expected[n]) for n in shapes)
        previous = got


def test_exact_selection_equals_a_stable_sort_reference():
    g = torch.Generator().manual_seed(14)
    for _ in range(20):
        values = torch.randint(-3, 4, (200,), generator=g).double()
        k = int(torch.randint(0, 201, (1,), generator=g))
        keep = select({"v": values}, k / 200 if k else 1e-9, ties="index")["v"]
        expected = torch.zeros(200, dtype=torch.bool)
        expected[torch.sort(-values, stable=True).indices[: kept_count(200, k / 200 if k else 1e-9)]] = True
        assert torch.equal(keep, expected)


def test_run_keys_of_existing_configs_did_not_move(monkeypatch):
    from dataclasses import replace

    from prunekit.experiments import RunSpec, resolve, run_key

    # keys computed by prunekit before the official-mode options existed
    pinned = [
        (RunSpec("lenet5", "fashion-mnist", "force", 0.99, 0, recipe="lenet-fmnist"), "381cf25ca57e0331"),
        (RunSpec("lenet5", "fashion-mnist", "iter_snip", 0.995, 1, recipe="lenet-fmnist"), "99218599f3b9f435"),
        (RunSpec("lenet5", "fashion-mnist", "synflow", 0.98, 2, recipe="lenet-fmnist"), "99bdf1b0d1b9fba7"),
        (RunSpec("lenet5", "fashion-mnist", "grasp", 0.9, 0, recipe="lenet-fmnist"), "dee85e6cff2d4e2e"),
        (RunSpec("lenet5", "fashion-mnist", "prospr", 0.9, 0, recipe="lenet-fmnist"), "fd0948624092d14f"),
        (RunSpec("lenet5", "fashion-mnist", "snip", 0.9, 0, recipe="lenet-fmnist"), "9fbb802613913089"),
        (RunSpec("lenet_300_100", "fashion-mnist", "imp", 0.9, 0, recipe="openlth-mnist"), "210213665dc33bfd"),
    ]
    # the recipes as they were when these keys were recorded (lenet-fmnist has had a warm-up since)
    before = {"warmup_epochs": 0.0}
    pinned = [(replace(spec, train=before if spec.recipe == "lenet-fmnist" else {}), key) for spec, key in pinned]
    for spec, key in pinned:
        # fp32 runs, asked for (amp=False) or resolved on a device without native bf16, keep their keys
        assert run_key(resolve(replace(spec, train={**spec.train, "amp": False}))) == key, spec.method
        with monkeypatch.context() as m:
            m.setenv("PRUNEKIT_BF16", "0")
            assert run_key(resolve(spec)) == key, spec.method
        with monkeypatch.context() as m:  # the same spec trained in bf16 is another run
            m.setenv("PRUNEKIT_BF16", "1")
            bf16 = resolve(spec)
            assert bf16.precision == "bf16" and bf16.config["precision"] == "bf16" and run_key(bf16) != key
    official = RunSpec("lenet5", "fashion-mnist", "force", 0.99, 0, recipe="lenet-fmnist", method_options={"official": True},
                       train={"amp": False, "warmup_epochs": 0.0})
    resolved = resolve(official)
    assert resolved.options.count_rule == "official" and resolved.options.official_loss is True
    assert run_key(resolved) != "381cf25ca57e0331"


def test_a_stored_configuration_says_what_was_asked_and_rebuilds_it_under_the_same_key():
    from dataclasses import replace

    from prunekit.experiments import RunSpec, from_config, resolve, run_key

    spec = RunSpec("lenet5", "fashion-mnist", "snip", 0.9, 0, recipe="lenet-fmnist")
    default = resolve(replace(spec, train={"warmup_epochs": 0.0, "amp": False}))
    contiguous = resolve(replace(spec, train={"warmup_epochs": 0.0, "amp": False, "channels_last": False}))
    assert contiguous.key == default.key == "9fbb802613913089"  # the memory format is not part of the key
    assert contiguous.config["train"]["amp"] is False and contiguous.config["train"]["channels_last"] is False
    # a worker that rebuilds the run from its stored form (Ray, a database row) trains what was asked
    rebuilt = from_config(json.loads(json.dumps(contiguous.config)))
    assert rebuilt.train.channels_last is False and rebuilt.train.amp is False and rebuilt.key == contiguous.key
    assert run_key(contiguous.config) == contiguous.key


def test_official_mode_is_refused_where_the_official_code_is_the_paper():
    model = _mlp(15)
    with pytest.raises(prunekit.ConfigError, match="no official mode"):
        prunekit.prune(model, "magnitude", 0.5, official=True)
    with pytest.raises(prunekit.ConfigError, match="ranks globally"):
        prunekit.prune(model, "force", 0.5, data=_batches(2), count_rule="official", allocation="layerwise")


def test_tail_selection_is_exact_on_large_tensors_with_ties():
    from prunekit.core.allocation import _kth_smallest

    g = torch.Generator().manual_seed(16)
    for dtype in (torch.float32, torch.float64):
        for values in (torch.rand(70_000, generator=g, dtype=dtype) ** 4,
                       torch.randint(0, 50, (70_000,), generator=g).to(dtype),
                       torch.cat([torch.zeros(60_000, dtype=dtype), torch.rand(10_000, generator=g, dtype=dtype)])):
            ordered = torch.sort(values).values
            for m in (1, 17, 3_000, 34_999, 35_001, 66_000, 69_999, 70_000):
                assert _kth_smallest(values, m) == ordered[m - 1], (dtype, m)


def test_compare_masks_reports_per_layer_allocation_agreement_not_overlap():
    a = {"l1": torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool), "l2": torch.tensor([1, 0, 0, 0], dtype=torch.bool)}
    b = {"l1": torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool), "l2": torch.tensor([0, 1, 0, 0], dtype=torch.bool)}
    same = prunekit.compare_masks(a, b)
    assert same.kept_a == [2, 1] and same.kept_b == [2, 1]
    assert same.agreement == 1.0 and same.max_density_gap == 0.0  # disjoint kept sets, identical allocation
    c = {"l1": torch.tensor([1, 0, 0, 0, 0, 0], dtype=torch.bool), "l2": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    moved = prunekit.compare_masks(a, c, labels=("exact", "official"))
    # min(2,1) + min(1,2) = 2 of max(3, 3) kept weights sit in the same layers
    assert moved.agreement == pytest.approx(2 / 3)
    assert moved.max_density_gap == pytest.approx(0.25)
    assert "kept (official)" in moved.to_markdown()
    with pytest.raises(prunekit.MaskError):
        prunekit.compare_masks(a, {"l1": a["l1"]})


def test_report_lists_mean_kept_per_layer_and_agreement_of_variants():
    from prunekit.report import Cell, Table

    def layers(k1, k2):
        return [{"name": "fc1", "size": 100, "kept": k1}, {"name": "fc2", "size": 10, "kept": k2}]

    table = Table(
        "m", "d", "r", 1, "final", [0.9],
        {"force": {0.9: Cell([0.8, 0.82])}, "force [count_rule=official]": {0.9: Cell([0.7])}},
        None,
        layer_runs={"force": {0.9: [layers(8, 3), layers(10, 1)]}, "force [count_rule=official]": {0.9: [layers(6, 5)]}},
        effective={"force": {0.9: [0.1, 0.1]}},
    )
    md = table.to_markdown()
    assert "| force | 9 / 2 | 10.00 % | – |" in md
    # mean of force: 9 / 2; official: 6 / 5 -> (6 + 2) / max(11, 11)
    assert f"| force [count_rule=official] | 6 / 5 | n/a | {8 / 11:.3f} |" in md
