"""Structured pruning: the indicators on hand-made vectors, the knapsack budget, physical removal equal
to zeroing, optimizer state carried across, early pruning in training, exact resume after pruning."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics

import pytest
import torch
from torch import nn

import prunekit
from prunekit import models, structured, training
from prunekit.errors import ConfigError
from prunekit.experiments import ResultsDB
from resume_worker import toy_dataset


# -- the indicators ------------------------------------------------------------------------------
def test_psi_and_epi_by_hand():
    a, b = [16, 32, 64], [8, 32, 48]
    # d = |16-8|/24, 0, |64-48|/112 -> psi = 1 - (1/3 + 0 + 1/7) / 3
    assert structured.psi(a, b) == pytest.approx(1 - (1 / 3 + 1 / 7) / 3)
    assert structured.psi(a, a) == 1.0
    history = [[10, 10], [10, 20], [10, 10], [10, 10]]
    assert structured.epi(history, 3) is not None
    # EPI_t over the last 3: psi(N3, N2) = 1, psi(N3, N1) = 1 - (0 + 10/30)/2, psi(N3, N0) = 1
    assert structured.epi(history, 3) == pytest.approx((1 + (1 - (10 / 30) / 2) + 1) / 3)
    assert structured.epi(history[:3], 3) is None  # needs r earlier sub-networks
    with pytest.raises(ConfigError):
        structured.psi([1, 2], [1])


def test_epi_tracker_fires_once_when_stable_and_no_longer_rising():
    t = structured.EPITracker(threshold=0.95, window=2)
    fired = [t.update(c) for c in ([4, 8], [8, 8], [7, 8], [8, 8], [8, 8], [8, 8], [8, 8])]
    # EPI: -, -, (psi(78,88)+psi(78,48))/2, ..., the first value >= 0.95 that is not above the previous
    assert t.trace[:2] == [None, None]
    assert fired.count(True) == 1 and t.fired_at == fired.index(True)
    v = t.trace[t.fired_at]
    assert v >= 0.95 and (t.trace[t.fired_at - 1] is None or v <= t.trace[t.fired_at - 1])


def test_early_bird_fires_when_masks_stop_changing():
    t = structured.EarlyBirdTracker(threshold=0.1, window=2)
    m = torch.tensor([True] * 8 + [False] * 2)
    moved = m.clone()
    moved[[0, 1, 8, 9]] = ~moved[[0, 1, 8, 9]]  # distance 0.4
    assert not t.update(moved) and not t.update(m)
    assert t.trace[-1] is None  # fewer than `window` earlier masks
    assert not t.update(m)  # max(d(m, moved), d(m, m)) = 0.4
    assert t.update(m)  # the last two are m: distance 0
    assert structured.hamming(m, moved) == pytest.approx(0.4)


# -- the plan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet20", "vgg11_bn"])
@pytest.mark.parametrize("budget", ["macs=0.5", "params=0.3"])
def test_knapsack_meets_the_budget_exactly_and_never_empties_a_group(arch, budget):
    model = models.create(arch, 10, (3, 16, 16), seed=0)
    x = torch.randn(1, 3, 16, 16)
    plan = structured.plan_channels(model, budget, "l1", example_inputs=x)
    kind, frac = structured.parse_budget(budget)
    before, after = (plan.macs_before, plan.macs_after) if kind == "macs" else (plan.params_before, plan.params_after)
    assert after <= frac * before
    assert all(c >= max(1, math.ceil(0.1 * n)) for c, n in zip(plan.counts, plan.sizes))
    # the measured cost of the physically smaller model is the plan's
    smaller = structured.remove_channels(model, plan, x)
    macs, params = structured.count_macs_params(smaller, x)
    assert macs == plan.macs_after and params == plan.params_after
    assert structured.count_macs_params(model, x) == (plan.macs_before, plan.params_before)
    # it stopped at the first removal that met the budget: undoing the last one (some group) breaks it
    graph = structured.ChannelGraph(copy.deepcopy(model), x)
    counts = plan.counts
    undone = [counts[:g] + [counts[g] + 1] + counts[g + 1:] for g in range(len(counts)) if counts[g] < plan.sizes[g]]
    assert any(graph.cost(kind, more) > frac * before for more in undone)
    assert not any(p.grad is not None for p in model.parameters())  # the model was not touched


def test_plan_errors_are_clear():
    model = models.create("resnet20", 10, (3, 16, 16), seed=0)
    x = torch.randn(1, 3, 16, 16)
    for budget, match in [("flops=0.5", "macs, params"), ("macs=1.5", "fraction"), ("macs", "macs=F"), ("macs=abc", "number")]:
        with pytest.raises(ConfigError, match=match):
            structured.plan_channels(model, budget, example_inputs=x)
    with pytest.raises(ConfigError, match="unknown importance"):
        structured.plan_channels(model, "macs=0.5", "l3", example_inputs=x)
    with pytest.raises(ConfigError, match="needs data"):
        structured.plan_channels(model, "macs=0.5", "taylor", example_inputs=x)
    with pytest.raises(ConfigError, match="cannot be met"):
        structured.plan_channels(model, "macs=0.001", example_inputs=x)
    with pytest.raises(ConfigError, match="example_inputs"):
        structured.plan_channels(model, "macs=0.5")
    assert set(structured.list_importances()) == {"l1", "l2", "bn_scale", "taylor"}


def _zero_removed(model: nn.Module, plan, x) -> nn.Module:
    """The dense model with the plan's removed channels zeroed: every out-channel of every coupled
    layer (conv/linear rows and biases, BN weight and bias)."""
    masked = copy.deepcopy(model).eval()
    graph = structured.ChannelGraph(masked, x)
    with torch.no_grad():
        for i in range(len(graph.groups)):
            removed = plan.removed(i)
            if not removed:
                continue
            for dep, idxs in graph.tp_group(i, removed):
                target = dep.target.module
                if not isinstance(target, nn.Module) or "out_channels" not in dep.handler.__name__:
                    continue
                idx = torch.tensor([int(j) for j in idxs])
                if isinstance(target, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    target.weight[idx] = 0
                    if target.bias is not None:
                        target.bias[idx] = 0
    return masked


@pytest.mark.parametrize("arch", ["resnet20", "vgg11_bn"])
@pytest.mark.parametrize("importance", ["l1", "bn_scale"])
def test_removing_channels_equals_zeroing_them(arch, importance):
    torch.manual_seed(0)
    model = models.create(arch, 10, (3, 16, 16), seed=0)
    for m in model.modules():  # non-trivial BN statistics and scales
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.2, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    x = torch.randn(4, 3, 16, 16)
    plan = structured.plan_channels(model, "macs=0.4", importance, example_inputs=x[:1])
    smaller = structured.remove_channels(model, plan, x[:1]).eval()
    masked = _zero_removed(model, plan, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), masked(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model.eval()(x), masked(x), atol=1e-3)  # something was really removed


def test_optimizer_state_of_surviving_channels_is_carried():
    torch.manual_seed(1)
    model = models.create("resnet20", 10, (3, 16, 16), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    plan = structured.plan_channels(model, "macs=0.5", "l1", example_inputs=x[:1])
    before = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    smaller, new_opt = structured.remove_channels_and_carry(model, opt, plan, x[:1])
    groups = {name: i for i, name in enumerate(plan.groups)}
    conv = "layers.0.0.conv2.weight"  # in: block 0.0's internal group, out: stage 1's residual group
    p_small = dict(smaller.named_parameters())[conv]
    buf = new_opt.state[p_small]["momentum_buffer"]
    kept_in = list(plan.kept[groups["layers.0.0.conv1"]])
    kept_out = list(plan.kept[groups["conv1"]])
    assert len(kept_in) < 16  # this layer lost input channels
    expected = before[conv][kept_out][:, kept_in]
    assert torch.equal(buf, expected)
    assert new_opt.param_groups[0]["momentum"] == 0.9 and new_opt.param_groups[0]["weight_decay"] == 5e-4
    # and the next step continues exactly as the full model's step on the surviving entries would
    full_next = copy.deepcopy(model)
    full_opt = torch.optim.SGD(full_next.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    full_opt.load_state_dict(opt.state_dict())
    masked = _zero_removed(full_next, plan, x[:1]).train()
    del masked  # (zeroing is checked above; here only the carried buffers matter)
    w_before = p_small.detach().clone()
    new_opt.zero_grad()
    nn.functional.cross_entropy(smaller(x), y).backward()
    g = p_small.grad.detach().clone()
    new_opt.step()
    by_hand = w_before - 0.1 * (0.9 * expected + g + 5e-4 * w_before)
    torch.testing.assert_close(p_small.detach(), by_hand)


# -- early pruning in training -------------------------------------------------------------------
def _cfg(**kw):
    return training.TrainConfig(**{**dict(epochs=4, batch_size=50, lr=0.05, weight_decay=5e-4, schedule="cosine", val_size=50), **kw})


@pytest.mark.parametrize("trigger, extra", [("epoch", {"prune_at": 1}), ("epi", {"window": 2, "tau": 0.5, "evals_per_epoch": 2}),
                                            ("early_bird", {"eb_window": 2, "eb_threshold": 0.5}), ("after_training", {})])
def test_early_pruning_prunes_and_training_goes_on_smaller(trigger, extra):
    ds = toy_dataset()
    model = models.create("resnet20", 10, (1, 28, 28), seed=0)
    ep = structured.EarlyPruning("macs=0.5", trigger=trigger, **extra)
    result = training.fit(model, ds, _cfg(), callbacks=[ep], device="cpu", seed=0)
    s = ep.summary()
    assert ep.plan is not None and s["pruned_epoch"] is not None and 0 < s["pruned_epoch"] < 4
    assert s["macs_after"] <= 0.5 * s["macs_before"]
    assert result.best_test_acc > 0.25  # chance: 0.1
    if trigger != "after_training":  # (train-prune-finetune fine-tunes one epoch at a near-zero learning rate here)
        assert result.final_test_acc > 0.2  # still learns after pruning
    if trigger in ("epi", "early_bird"):
        assert s["trace"] and not s["forced"]
    if trigger == "after_training":
        assert s["pruned_epoch"] == 3


def test_prune_at_initialisation_with_taylor():
    ds = toy_dataset()
    model = models.create("resnet20", 10, (1, 28, 28), seed=0)
    ep = structured.EarlyPruning("macs=0.5", trigger="epoch", prune_at=0, importance="taylor")
    training.fit(model, ds, _cfg(epochs=1), callbacks=[ep], device="cpu", seed=0)
    assert ep.pruned_epoch == 0 and ep.summary()["macs_after"] <= 0.5 * ep.summary()["macs_before"]


class _StopAt(training.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_pruning_is_bit_exact(tmp_path):
    ds = toy_dataset()

    def run(ckpt, stop=None):
        model = models.create("resnet20", 10, (1, 28, 28), seed=0)
        ep = structured.EarlyPruning("macs=0.5", trigger="epoch", prune_at=1)
        cbs = [ep] if stop is None else [ep, _StopAt(stop)]
        return training.fit(model, ds, _cfg(), callbacks=cbs, device="cpu", seed=0, checkpoint=ckpt), model, ep

    ref, _, _ = run(tmp_path / "ref.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run.pt", stop=2)  # stopped after the pruned model's first checkpoint
    assert training.load_checkpoint(tmp_path / "run.pt")["epoch"] == 2
    resumed, _, ep = run(tmp_path / "run.pt")
    assert ep.pruned_epoch == 1
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in ref.history]
    a = training.load_checkpoint(tmp_path / "ref.pt")["model"]
    b = training.load_checkpoint(tmp_path / "run.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_your_own_loop_observe_and_prune():
    torch.manual_seed(2)
    model = models.create("vgg11_bn", 10, (3, 16, 16), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    ep = structured.EarlyPruning("params=0.5", trigger="epi", window=2, tau=0.9, example_inputs=x[:1])
    fired = False
    for _ in range(12):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if ep.observe(model):
            fired = True
            break
    assert fired
    model, opt = ep.prune(model, opt)
    assert structured.count_macs_params(model, x[:1])[1] <= 0.5 * ep.plan.params_before
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # the smaller model trains with the carried optimizer


def test_a_model_it_cannot_trace_is_one_clear_error():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x).numpy() if False else self.a(x))  # fine

    model = Weird()
    plan = structured.plan_channels(model, "macs=0.6", example_inputs=torch.randn(1, 4))
    assert plan.groups == ("a",)
    with pytest.raises(ConfigError, match="no convolution or linear"):
        structured.plan_channels(nn.Sequential(nn.ReLU()), "macs=0.5", example_inputs=torch.randn(1, 4))
    assert prunekit.structured is structured


# -- runs, sweeps, the database ------------------------------------------------------------------
def test_structured_run_is_recorded_with_trigger_trace_costs_and_latency(tmp_path, tiny_mnist):
    from prunekit.experiments import DatasetCache, RunSpec, run_one

    spec = RunSpec("vgg11_bn", "mnist", "dense", 0.0, 0, recipe="lenet-fmnist", epochs=3,
                   train={"val_size": 40.0, "batch_size": 50}, structured="epi:window=2,tau=0.5,evals_per_epoch=2", budget="macs=0.4")
    out = run_one(spec, tmp_path / "o", datasets=DatasetCache(str(tiny_mnist)), device=torch.device("cpu"))
    assert out.status == "done", out.record.error
    info = out.record.extra["structured"]
    assert info["trigger"] == "epi" and info["pruned_epoch"] in (1, 2) and info["trace"]
    assert info["macs_after"] <= 0.4 * info["macs_before"] and info["params_after"] < info["params_before"]
    assert info["latency_before_ms"] > 0 and info["latency_after_ms"] > 0
    assert info["train_seconds_before_pruning"] > 0 and info["train_seconds_after_pruning"] > 0
    assert set(info["layer_channels"]) and out.record.config["structured"]["budget"] == "macs=0.4"
    again = run_one(spec, tmp_path / "o", datasets=DatasetCache(str(tiny_mnist)))
    assert again.status == "skipped"
    with pytest.raises(ConfigError, match="dense"):
        run_one(RunSpec("vgg11_bn", "mnist", "snip", 0.5, 0, structured="epi"), tmp_path / "o")
    with pytest.raises(ConfigError, match="structured="):
        run_one(RunSpec("vgg11_bn", "mnist", "dense", 0.0, 0, budget="macs=0.5"), tmp_path / "o")


def test_structured_sweep_and_report(tmp_path, tiny_mnist):
    from prunekit.experiments import run_sweep, sweep_from_mapping
    from prunekit.report import write_report

    spec = sweep_from_mapping({
        "models": ["resnet20"], "dataset": "mnist", "recipe": "lenet-fmnist", "epochs": 2, "seeds": [0],
        "train": {"val_size": 40.0, "batch_size": 50}, "data_dir": str(tiny_mnist),
        "structured": ["epoch:prune_at=1", "early_bird:eb_window=2,eb_threshold=0.5,evals_per_epoch=4,latest=1.0", "after_training"],
        "budgets": ["macs=0.5", "params=0.3"],
    })
    runs = spec.resolved()
    assert len(runs) == 1 + 3 * 2 and runs[0].kind == "training" and all(r.kind == "structured" for r in runs[1:])
    summary = run_sweep(spec, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False)
    assert summary.counts["done"] == 7, [o.record.error for o in summary.outcomes if o.status == "failed"]
    tables, files = write_report(tmp_path / "o", "final")
    (t,) = tables
    md = t.to_markdown()
    assert "early structured pruning" in md and "| dense | – |" in md and "| epoch:prune_at=1 | macs=0.5 |" in md
    assert "| after_training | params=0.3 |" in md
    # the second time ratio: the run's epochs at the medians of its own epoch times (here one of each, so
    # the ratio is (1 + pruned epoch / unpruned epoch) / 2, read from the epochs the database holds)
    infos = [r.extra["structured"] for by_budget in t.rows.values() for runs in by_budget.values() for r in runs]
    assert len(t.unpruned_epoch_seconds) == sum(i["pruned_epoch"] for i in infos) > 0
    row = t.rows["epoch:prune_at=1"]["macs=0.5"][0]
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        first, second = (e["epoch_seconds"] for e in db.epochs(row.key))
    expected = (1 + second / first) / 2
    header = next(line for line in md.splitlines() if line.startswith("| trigger"))
    line = next(line for line in md.splitlines() if line.startswith("| epoch:prune_at=1 | macs=0.5 |"))
    column = [c.strip() for c in header.split("|")].index("in epoch medians")
    assert [c.strip() for c in line.split("|")][column] == f"{expected:.2f}x"
    t.epoch_seconds[row.key] = ([], [second])  # the unpruned epoch's time not recorded: the table's unpruned median
    median = statistics.median(t.unpruned_epoch_seconds)
    assert t.epoch_median_ratio(row) == pytest.approx((1 + second / median) / 2)  # still one unpruned epoch of two
    at_init = dataclasses.replace(row, extra={**row.extra, "structured": {**row.extra["structured"], "pruned_epoch": 0}})
    assert t.epoch_median_ratio(at_init) == pytest.approx(second / median)  # pruned at initialisation
    t.epoch_seconds[row.key] = ([first, second], [])  # no pruned epoch recorded: no ratio
    assert t.epoch_median_ratio(row) is None
    names = {f.name for f in files}
    slug = t.slug  # model, data, recipe, epochs and a short hash of the training configuration
    assert "_structured" in slug and {f"{slug}_indicator.png", f"{slug}_cost.png"} <= names
    with pytest.raises(ConfigError, match="methods"):
        sweep_from_mapping({"models": ["vgg11_bn"], "dataset": "mnist"})


# MACs exact for attention: the cost model against torch's own flop counter ------------------------------
class _ViT(nn.Module):
    """A ViT-like stand-in: conv patches, transformer blocks (nn.MultiheadAttention), a linear head."""

    def __init__(self, dim=32, depth=2, heads=4, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(dim, heads, 64, dropout=0.0, batch_first=True) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean(1))


class _MobileNetLike(nn.Module):
    """Depthwise-separable blocks with ReLU6, as MobileNet's."""

    def __init__(self):
        super().__init__()
        layers, c = [nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6()], 16
        for out in (24, 32):
            layers += [nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(), nn.Conv2d(c, out, 1), nn.BatchNorm2d(out), nn.ReLU6()]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class _Encoder(nn.Module):
    """A transformer encoder over 1-D token features (no convolution at all)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True), 2,
                                         enable_nested_tensor=False)
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)).mean(1))


def _flop_counter_macs(model, x):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    # with gradients on, the encoder layers take their plain path (the fused inference one is not counted);
    # the math attention kernel: its products are bmm, which the counter counts
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / x.shape[0]


@pytest.mark.parametrize("name", ["vit", "resnet20", "mobilenet", "encoder"])
def test_macs_agree_with_torch_flop_counter_also_for_attention(name):
    from prunekit.structured import ChannelGraph, count_macs_params

    torch.manual_seed(0)
    model, x = {
        "vit": (_ViT(), torch.randn(2, 3, 16, 16)),
        "resnet20": (models.create("resnet20", 10, (3, 16, 16), seed=0), torch.randn(2, 3, 16, 16)),
        "mobilenet": (_MobileNetLike(), torch.randn(2, 3, 16, 16)),
        "encoder": (_Encoder(), torch.randn(2, 7, 12)),
    }[name]
    expected = _flop_counter_macs(model, x)
    macs, _ = count_macs_params(model, x[:1])
    assert macs == pytest.approx(expected, rel=1e-9)
    graph = ChannelGraph(copy.deepcopy(model).eval(), x[:1])
    assert graph.macs(graph.full_counts) == pytest.approx(expected, rel=1e-9)


def test_a_plan_on_an_attention_model_keeps_whole_heads_and_its_macs_are_what_the_pruned_model_measures():
    from prunekit.structured import count_macs_params

    torch.manual_seed(0)
    model, x = _ViT(heads=4), torch.randn(2, 3, 16, 16)
    plan = structured.plan_channels(model, budget="macs=0.6", importance="l1", example_inputs=x[:1])
    embed = plan.groups.index("blocks.1.linear2")  # the residual stream: the attentions' embedding channels
    assert plan.counts[embed] % 4 == 0 and plan.counts[embed] < 32  # thinned, in whole heads
    smaller = structured.remove_channels(model, plan, example_inputs=x[:1])
    assert smaller(x).shape == (2, 10)
    assert count_macs_params(smaller, x[:1])[0] == pytest.approx(plan.macs_after) and plan.macs_after <= 0.6 * plan.macs_before


def test_remove_channels_reuses_the_input_its_plan_was_made_with():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)))]
    plan = structured.plan_channels(model, budget="params=0.6", importance="l1", data=batches)
    smaller = structured.remove_channels(model, plan)  # no example inputs again: the plan's own
    assert smaller(batches[0][0]).shape == (4, 4)
    with pytest.raises(prunekit.ConfigError, match="example_inputs"):
        structured.remove_channels(model, structured.ChannelPlan.from_dict(plan.to_dict()))  # a plan from a file has none


# a budget in time --------------------------------------------------------------------------------------
def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_a_latency_plan_meets_its_budget_exactly_as_defined_on_a_given_table_and_removes_no_layer():
    from prunekit.structured import ChannelGraph
    from prunekit.structured.latency import LatencyModel, grid

    model, x = _cnn(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(copy.deepcopy(model).eval(), x[:1])

    def fake(index, cin, cout):  # a table: a unit costs in proportion to its MACs, plus a per-channel overhead
        layer = graph.layers[index]
        assert cin >= 1 and cout >= 1, "a width below a group's floor was costed"  # a measured table has no such width
        return 1e-6 * layer.macs * (cin / layer.in_channels) * (cout / layer.out_channels) + 1e-4 * cout

    table = LatencyModel(graph, fake, fixed=0.002)
    plans = [structured.plan_channels(model, budget="latency=0.5", importance="l1", example_inputs=x[:1], graph=graph, latency=table)
             for _ in range(2)]
    plan = plans[0]
    assert plans[1].kept == plan.kept  # deterministic
    full = table.step_time(plan.sizes)
    assert plan.step_seconds_before == pytest.approx(full)
    assert plan.step_seconds_after == pytest.approx(table.step_time(plan.counts))
    assert plan.step_seconds_after <= 0.5 * full  # met, as defined
    for size, count in zip(plan.sizes, plan.counts):
        assert count in grid(size) and count >= 2  # kept at measured widths, no group emptied
    assert "training step" in str(plan)
    # down to the floors: budgets that leave groups at their fewest channels; the width below a floor is never costed
    met = 0
    for fraction in (0.3, 0.2, 0.1, 0.05, 0.02):
        try:
            tight = structured.plan_channels(model, budget=f"latency={fraction}", importance="l1", example_inputs=x[:1], graph=graph,
                                             latency=LatencyModel(graph, fake, fixed=0.0), min_keep=0.0)
        except ConfigError as e:
            assert "cannot be met" in str(e)
            continue
        met += 1
        assert tight.step_seconds_after <= fraction * tight.step_seconds_before and min(tight.counts) >= 1
    assert met >= 2


def test_a_width_slower_than_a_wider_one_is_never_kept_the_plan_steps_over_it_and_flat_steps_do_not_stall():
    from prunekit.structured import ChannelGraph
    from prunekit.structured.latency import LatencyModel, grid

    model, x = _cnn(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(copy.deepcopy(model).eval(), x[:1])

    # kernels that are slow at widths that are not a multiple of 8 (as PyTorch's channels-last
    # BatchNorm is on a CPU at widths that are not a multiple of 16): narrower, yet slower
    def bad_widths(index, cin, cout):
        layer = graph.layers[index]
        return 1e-3 * layer.macs * (cin * cout / layer.in_channels / layer.out_channels + (0.5 if cin % 8 or cout % 8 else 0.0))

    table = LatencyModel(graph, bad_widths, fixed=0.0)
    widths = dict(zip(graph.full_counts, table.widths()))
    assert widths == {16: [16, 8], 32: [32, 24, 16, 8]}  # 14, 12, ... cost more than 16: never kept
    for g, ws in enumerate(table.widths()):  # each kept width is faster than every wider one
        assert all(table.group_time(g, a) > table.group_time(g, b) for a, b in zip(ws, ws[1:]))
    for fraction in (0.7, 0.5, 0.3):
        plan = structured.plan_channels(model, budget=f"latency={fraction}", importance="l1", example_inputs=x[:1], graph=graph,
                                        latency=table, min_keep=0.0)
        assert all(c % 8 == 0 for c in plan.counts), plan.counts  # stepped over the slow widths
        assert plan.step_seconds_after == pytest.approx(table.step_time(plan.counts))  # the estimate is the table itself
        assert plan.step_seconds_after <= fraction * plan.step_seconds_before
        assert [len(k) for k in plan.kept] == plan.counts
    # min_keep rounds up to a kept-able width: 30 % of 16 is 6 channels (a grid width, slow here) -> 8,
    # 30 % of 32 is 12 -> 16;
    # a budget below what those floors cost is refused, naming what they cost
    floors = {16: 8, 32: 16}
    least = table.step_time([floors[n] for n in graph.full_counts]) / table.step_time(graph.full_counts)
    plan = structured.plan_channels(model, budget=f"latency={least + 1e-9}", importance="l1", example_inputs=x[:1], graph=graph,
                                    latency=table, min_keep=0.3)
    assert dict(zip(plan.sizes, plan.counts)) == floors
    with pytest.raises(ConfigError, match="cannot be met"):
        structured.plan_channels(model, budget=f"latency={least * 0.99}", importance="l1", example_inputs=x[:1], graph=graph,
                                 latency=table, min_keep=0.3)

    def stairs(index, cin, cout):  # time changes only every 8 channels, in or out: most single removals free nothing
        layer = graph.layers[index]
        return 1e-3 * layer.macs * math.ceil(cout / 8) / math.ceil(layer.out_channels / 8) * math.ceil(cin / 8) / math.ceil(layer.in_channels / 8)

    plan = structured.plan_channels(model, budget="latency=0.5", importance="l1", example_inputs=x[:1], graph=graph,
                                    latency=LatencyModel(graph, stairs, fixed=0.0))
    assert plan.step_seconds_after <= 0.5 * plan.step_seconds_before
    assert all(c in grid(n) for c, n in zip(plan.counts, plan.sizes))


def test_a_latency_plan_steps_over_a_width_that_became_slower_once_a_neighbour_was_thinned():
    from prunekit.structured import ChannelGraph
    from prunekit.structured.latency import LatencyModel

    model, x = _cnn(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(copy.deepcopy(model).eval(), x[:1])

    def interaction(index, cin, cout):  # the second convolution is slow at 12-16 outputs, but only with <= 8 inputs
        layer = graph.layers[index]
        t = 1e-3 * layer.macs * cin * cout / layer.in_channels / layer.out_channels
        return t + (10e-3 * layer.macs if layer.in_channels == 16 and cin <= 8 and 12 <= cout <= 16 else 0.0)

    table = LatencyModel(graph, interaction, fixed=0.0)
    assert dict(zip(graph.full_counts, table.widths())) == {16: [16, 14, 12, 10, 8, 6, 4, 2], 32: [32, 28, 24, 20, 16, 12, 8, 4]}
    plan = structured.plan_channels(model, budget="latency=0.05", importance="l1", example_inputs=x[:1], graph=graph, latency=table,
                                    min_keep=0.0)
    counts = dict(zip(plan.sizes, plan.counts))
    assert counts[16] <= 8 and not 12 <= counts[32] <= 16  # stepped from 20 straight to 8 or below
    assert plan.step_seconds_after <= 0.05 * plan.step_seconds_before


def test_a_structured_run_under_a_latency_budget_times_its_table_and_keeps_only_faster_widths(tmp_path, tiny_mnist, monkeypatch):
    import math as m

    from prunekit.experiments import DatasetCache, RunSpec, run_one
    from prunekit.structured import latency as lat

    def clock(unit, cin, cout, *args, **kwargs):  # no clock in a test: a cost in MACs, and widths not a multiple of 16 slow
        macs = cin * cout * m.prod(unit.spatial) * m.prod(unit.kernel or (1,))
        return 1e-9 * macs + (1e-3 if unit.kind == "conv" and cout % 16 else 0.0)

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lat, "time_unit", clock)
    monkeypatch.setattr(lat, "time_network", lambda *a, **k: 0.0)  # no fixed part
    spec = RunSpec("vgg11_bn", "mnist", "dense", 0.0, 0, recipe="lenet-fmnist", epochs=2,
                   train={"val_size": 40.0, "batch_size": 50}, structured="epoch:prune_at=1", budget="latency=0.6")
    out = run_one(spec, tmp_path / "o", datasets=DatasetCache(str(tiny_mnist)), device=torch.device("cpu"))
    assert out.status == "done", out.record.error
    info = out.record.extra["structured"]
    assert info["pruned_epoch"] == 1 and out.record.config["structured"]["budget"] == "latency=0.6"
    widths = [c for name, c in info["layer_channels"].items() if name != "classifier"]
    assert all(c % 16 == 0 for c in widths) and widths != [64, 128, 256, 256, 512, 512, 512, 512], info["layer_channels"]
    assert any(list((tmp_path / "cache" / "latency").glob("*.json")))  # the table was measured and cached


def test_the_latency_table_is_cached_per_device_torch_precision_and_batch(tmp_path, monkeypatch):
    from prunekit.structured.latency import LatencyTable, Unit, cache_path, device_key
    from prunekit.training.precision import Precision

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    key = device_key(cpu, Precision("bf16", True), 128)
    unit = Unit("conv", 16, 32, (3, 3), (1, 1), (1, 1), False, (8, 8), True, True)
    table = LatencyTable(key)
    table.put(unit, 8, 16, 0.001)
    table.save()
    assert LatencyTable(key).get(unit, 8, 16) == 0.001  # read back
    for other in (device_key(cpu, Precision("fp32", True), 128), device_key(cpu, Precision("bf16", False), 128),
                  device_key(cpu, Precision("bf16", True), 64)):
        assert cache_path(other) != cache_path(key) and LatencyTable(other).get(unit, 8, 16) is None
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")  # another torch: measured again, never reused
    assert LatencyTable(device_key(cpu, Precision("bf16", True), 128)).get(unit, 8, 16) is None
    monkeypatch.undo()
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    cache_path(key).write_text("{ not json")  # a damaged cache file is measured again, not trusted
    assert LatencyTable(key).get(unit, 8, 16) is None


def test_a_latency_budget_is_refused_where_it_cannot_be_measured():
    from test_structured import _ViT

    vit, x = _ViT(), torch.randn(2, 3, 16, 16)
    with pytest.raises(prunekit.ConfigError, match="latency budget times convolutions"):
        structured.plan_channels(vit, budget="latency=0.5", example_inputs=x[:1])
    with torch.device("meta"):
        meta = _cnn()
    with pytest.raises(prunekit.ConfigError, match="meta device"):
        structured.plan_channels(meta, budget="latency=0.5", example_inputs=torch.randn(1, 3, 8, 8, device="meta"))
