"""Behavioural properties of the methods: nesting, resurrection, data-freeness, purity, determinism."""


import pytest
import torch
from torch import nn

import prunekit
from conftest import FAST, ZOO, SmallCNN, make_batches
from prunekit.core.allocation import kept_count
from prunekit.core.masks import named_weights

ALL = prunekit.list_methods()


def _record(method, model, data, sparsity, **opts):
    steps = []
    masks = prunekit.prune(model, method, sparsity, data=data, callback=lambda t, d, m: steps.append((d, m)), **opts)
    return masks, steps


def test_iter_snip_masks_are_nested(cnn_and_data):
    model, data = cnn_and_data
    masks, steps = _record("iter_snip", model, data, 0.97, num_steps=8)
    assert len(steps) == 8
    for (_, prev), (_, cur) in zip(steps, steps[1:]):
        for name in prev:
            assert not (cur[name] & ~prev[name]).any(), f"{name}: a weight came back"
    densities = [d for d, _ in steps]
    assert densities == sorted(densities, reverse=True) and densities[-1] == pytest.approx(0.03)
    n = sum(m.numel() for m in steps[0][1].values())
    for d, m in steps:
        assert sum(int(v.sum()) for v in m.values()) == kept_count(n, d)


def test_force_resurrects_a_pruned_weight(cnn_and_data):
    model, data = cnn_and_data
    _, steps = _record("force", model, data, 0.98, num_steps=8)
    resurrected = 0
    for (_, prev), (_, cur) in zip(steps, steps[1:]):
        resurrected += sum(int((cur[n] & ~prev[n]).sum()) for n in prev)
    assert resurrected > 0
    # the same run with Iter-SNIP never does
    _, snip_steps = _record("iter_snip", model, data, 0.98, num_steps=8)
    assert all(not (c[n] & ~p[n]).any() for (_, p), (_, c) in zip(snip_steps, snip_steps[1:]) for n in p)


def test_first_iterative_step_equals_snip(cnn_and_data):
    model, data = cnn_and_data
    snip = prunekit.score(model, "snip", data=data)
    for method in ("iter_snip", "force"):
        s = prunekit.score(model, method, data=data)
        for n in snip:
            torch.testing.assert_close(s[n], snip[n])


def test_synflow_is_data_free(cnn_and_data):
    model, data = cnn_and_data
    without = prunekit.prune(model, "synflow", 0.9, input_shape=(1, 16, 16), num_steps=5)
    garbage = [(torch.full((3, 1, 16, 16), 1e6), torch.zeros(3, dtype=torch.long))]
    with_data = prunekit.prune(model, "synflow", 0.9, data=garbage, num_steps=5)
    assert without == with_data
    with pytest.raises(prunekit.ConfigError, match="input_shape="):
        prunekit.prune(model, "synflow", 0.9)


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def _same(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["training"] == b["training"]
    assert a["requires_grad"] == b["requires_grad"]
    for x, y in zip(a["grads"], b["grads"]):
        assert (x is None and y is None) or torch.equal(x, y)
    assert a["hooks"] == b["hooks"]
    assert torch.equal(a["rng"], b["rng"])


@pytest.mark.parametrize("method", ALL)
def test_scoring_never_changes_the_callers_model(method):
    torch.manual_seed(0)
    model = SmallCNN()
    model.eval()  # the caller's mode must survive train-mode scoring
    model.bn1.weight.requires_grad_(False)  # and its requires_grad flags
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # and existing gradients
    model.register_forward_hook(lambda m, i, o: None)
    data = make_batches((1, 16, 16), 10)
    before = _snapshot(model)
    prunekit.prune(model, method, 0.9, data=data, **FAST.get(method, {}))
    _same(before, _snapshot(model))


@pytest.mark.parametrize("method", ALL)
def test_same_seed_same_masks(method):
    torch.manual_seed(0)
    model = SmallCNN()
    data = make_batches((1, 16, 16), 10)
    a = prunekit.prune(model, method, 0.95, data=data, seed=3, **FAST.get(method, {}))
    b = prunekit.prune(model, method, 0.95, data=data, seed=3, **FAST.get(method, {}))
    assert a == b


def test_different_seed_changes_random_masks():
    model = SmallCNN()
    assert prunekit.prune(model, "random", 0.9, seed=0) != prunekit.prune(model, "random", 0.9, seed=1)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "sgd-nesterov-wd", "adam", "adamw"],
)
def test_pruned_weights_stay_exactly_zero_through_training(make_opt):
    torch.manual_seed(0)
    model = SmallCNN()
    data = make_batches((1, 16, 16), 10, n=20)
    masks = prunekit.prune(model, "snip", 0.9, data=data)
    assert masks.apply(model) is model
    opt = make_opt(model.parameters())
    model.train()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert masks.is_applied(model)
    params = named_weights(model)  # the parametrized originals, by their plain names
    for name, m in masks.items():
        assert torch.count_nonzero(params[name].detach()[~m]) == 0
        assert not torch.equal(params[name].detach()[m], start[name.replace(".weight", ".parametrizations.weight.original")][m])


@pytest.mark.parametrize("kind", ["depthwise", "conv1d", "transformer"])
@pytest.mark.parametrize("method", ALL)
def test_works_on_models_that_are_not_ours(kind, method):
    factory, shape, classes = ZOO[kind]
    torch.manual_seed(0)
    model = factory()
    data = make_batches(shape, classes, n=4, batch=12)
    masks = prunekit.prune(model, method, 0.8, data=data, **FAST.get(method, {}))
    total = sum(p.numel() for p in prunekit.prunable_parameters(model).values())
    assert masks.kept == kept_count(total, 0.2)
    masks.apply(model)
    out = model(data[0][0])
    assert torch.isfinite(out).all()


def test_transformer_linear_layers_are_prunable():
    factory, _, _ = ZOO["transformer"]
    names = list(prunekit.prunable_parameters(factory()))
    assert "encoder.layers.0.self_attn.out_proj.weight" in names
    assert "encoder.layers.1.linear1.weight" in names and "encoder.layers.1.linear2.weight" in names
    assert "encoder.layers.0.self_attn.in_proj_weight" in names  # attention's Q/K/V projection, too
    assert names[0] == "inp.weight" and names[-1] == "head.weight"
    assert not any("norm" in n or "bias" in n for n in names)


def test_depthwise_and_conv1d_prunable_sets():
    assert list(prunekit.prunable_parameters(ZOO["depthwise"][0]())) == [
        "stem.weight", "dw.weight", "pw.weight", "grouped.weight", "head.weight"
    ]
    assert list(prunekit.prunable_parameters(ZOO["conv1d"][0]())) == ["c1.weight", "c2.weight", "fc.weight"]


def test_global_ranking_lets_layers_differ_and_erk_option_applies(cnn_and_data):
    model, data = cnn_and_data
    snip = prunekit.prune(model, "snip", 0.9, data=data)
    erk = prunekit.prune(model, "snip", 0.9, data=data, allocation="erk")
    layerwise = prunekit.prune(model, "snip", 0.9, data=data, allocation="layerwise")
    assert len({round(d, 3) for d in snip.layer_densities().values()}) > 1
    assert all(abs(int(m.sum()) - 0.1 * m.numel()) <= 1 for m in layerwise.values())
    assert erk.layer_densities() != snip.layer_densities()
    assert snip.kept == erk.kept == layerwise.kept


def test_synflow_is_finite_on_vgg19_without_bn():
    from prunekit import models

    model = models.create("vgg19", 10, (3, 32, 32), seed=0)
    scores = prunekit.score(model, "synflow", input_shape=(3, 32, 32))
    assert all(s.dtype == torch.float64 and bool(torch.isfinite(s).all()) for s in scores.values())
    assert max(float(s.max()) for s in scores.values()) > 1e20  # float64 headroom is what keeps this finite
    masks = prunekit.prune(model, "synflow", 0.99, input_shape=(3, 32, 32), num_steps=3)
    assert masks.kept == kept_count(masks.size, 0.01)


def test_linear_schedule_option(cnn_and_data):
    model, data = cnn_and_data
    _, steps = _record("force", model, data, 0.8, num_steps=4, schedule="linear")
    assert [d for d, _ in steps] == pytest.approx([0.8, 0.6, 0.4, 0.2])  # density 1 - t(1-d)/T, d = 0.2
