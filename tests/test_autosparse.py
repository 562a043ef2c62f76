"""AutoSparse: features by hand, targets from known masks, the scorer file, a learnable synthetic
target, exact counts, the IRP schedules and a teaching table from a real (tiny) IRP run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.autosparse import Scorer, ScorerFileError, feature_matrix, full_pass_gradient, spearman, survival_targets, teach
from prunekit.errors import ConfigError
from prunekit.imp import imp_densities


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def test_g0_is_the_sum_of_batch_mean_gradients_over_a_full_pass_in_eval_mode():
    net = _mlp()
    net[1].running_mean.uniform_(-1, 1)  # eval-mode BN must use these, not batch statistics
    data = _batches(3)
    g0 = full_pass_gradient(net, data, ["0.weight", "3.weight"])
    ref = net.eval()
    expected = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for x, y in data:
        ref.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        for n, p in ref.named_parameters():
            expected[n] += p.grad
    for n in ("0.weight", "3.weight"):
        torch.testing.assert_close(g0[n], expected[n])
    assert net.training is False  # (eval() above, for the reference; full_pass_gradient works on a copy)
    feats = feature_matrix(dict(net.named_parameters()), g0, ["0.weight", "3.weight"])
    assert feats.shape == (24 + 18, 2) and feats.dtype == torch.float64
    assert torch.equal(feats[:24, 0], net[0].weight.detach().double().flatten())
    with pytest.raises(ConfigError, match="length"):
        full_pass_gradient(net, iter(data), ["0.weight"])


def test_g0_from_fewer_batches_is_scaled_to_the_full_pass_the_scorer_was_taught_on():
    net = _mlp()
    batch = _batches(1)[0]
    full = full_pass_gradient(net, [batch] * 6, ["0.weight"])["0.weight"]
    # two of six identical batches: their sum x 6/2 is exactly the full-pass sum
    torch.testing.assert_close(full_pass_gradient(net, [batch] * 6, ["0.weight"], num_batches=2)["0.weight"], full)
    # data without a length: no full pass to scale to, the plain sum of the batches asked for
    torch.testing.assert_close(full_pass_gradient(net, iter([batch] * 6), ["0.weight"], num_batches=2)["0.weight"], full / 3)


def test_survival_targets_from_known_round_masks():
    r1 = {"a": torch.tensor([1, 1, 1, 0], dtype=torch.bool)}
    r2 = {"a": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    r3 = {"a": torch.tensor([1, 0, 0, 0], dtype=torch.bool)}
    # survived 3, 2, 1, 0 rounds -> min-max normalised
    assert survival_targets([r1, r2, r3], ["a"]).tolist() == [1.0, 2 / 3, 1 / 3, 0.0]
    with pytest.raises(ConfigError, match="nothing to learn"):
        survival_targets([{"a": torch.ones(3, dtype=torch.bool)}], ["a"])


def test_a_taught_scorer_ranks_a_representable_target_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(2)
    features = torch.stack([torch.randn(6000, generator=g) * 0.1, torch.randn(6000, generator=g) * 1e-3], dim=1).double()
    # survival grows with |theta0| and with theta0 * g0 (a SNIP-like rule), plus noise
    targets = torch.sigmoid(20 * features[:, 0].abs() + 5e3 * features[:, 0] * features[:, 1] + 0.1 * torch.randn(6000, generator=g).double())
    targets = (targets - targets.min()) / (targets.max() - targets.min())
    scorer = teach(features, targets, epochs=6, seed=0, meta={"taught_on": {"model": "synthetic"}})
    assert scorer.meta["heldout_spearman"] > 0.9
    path = scorer.save(tmp_path / "s.pt")
    again = Scorer.load(path)
    assert again.meta == scorer.meta
    torch.testing.assert_close(again.predict(features[:100]), scorer.predict(features[:100]), atol=2e-2, rtol=2e-2)  # float16 file
    # the forward-pass chunk is a matter of speed and memory, not of the scores (eval-mode BN is per row)
    torch.testing.assert_close(again.predict(features, chunk=7), again.predict(features, chunk=65536))
    assert again.predict(features, device="cpu").shape == (6000,) and next(again.network.parameters()).device.type == "cpu"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.pt").write_bytes(bytes(raw))
    with pytest.raises(ScorerFileError):
        Scorer.load(tmp_path / "bad.pt")
    masks_file = prunekit.Masks({"a": torch.ones(3)}).save(tmp_path / "masks.pt")
    with pytest.raises(ScorerFileError, match="not an AutoSparse scorer"):
        Scorer.load(masks_file)
    with pytest.raises(ConfigError, match="no scorer"):
        prunekit.prune(_mlp(), "autosparse", 0.5, data=_batches(2), scorer=str(tmp_path / "missing.pt"))
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(1.0)


def test_autosparse_keeps_exact_counts_and_scores_with_the_scorer(tmp_path):
    g = torch.Generator().manual_seed(3)
    features = torch.randn(3000, 2, generator=g).double()
    scorer = teach(features, torch.sigmoid(features[:, 0]), epochs=2, seed=0)
    path = scorer.save(tmp_path / "s.pt")
    net = _mlp(4)
    data = _batches(4)
    for sparsity in (0.5, 0.9):
        masks = prunekit.prune(net, "autosparse", sparsity, data=data, scorer=str(path))
        n = 4 * 6 + 6 * 3
        assert masks.kept == math.floor((1 - sparsity) * n + 0.5)
    scores = prunekit.score(net, "autosparse", data=data, scorer=str(path))
    loaded = Scorer.load(path)
    names = ["0.weight", "3.weight"]
    g0 = full_pass_gradient(net, data, names)
    expected = loaded.predict(feature_matrix(dict(net.named_parameters()), g0, names))
    torch.testing.assert_close(torch.cat([scores[n].flatten() for n in names]), expected)


def test_irp_schedules():
    # num: the same number removed each round; pct: the same fraction of the remaining
    assert imp_densities(0.01, 0.2, "num", 4) == pytest.approx([1 - 0.99 / 4, 1 - 0.99 / 2, 1 - 0.99 * 3 / 4, 0.01])
    assert imp_densities(0.01, 0.2, "pct", 4) == pytest.approx([0.01 ** 0.25, 0.01 ** 0.5, 0.01 ** 0.75, 0.01])
    assert imp_densities(0.1, 0.2)[-1] == 0.1 and len(imp_densities(0.1, 0.2)) == 11


def test_irp_run_prunes_first_on_initial_weights_and_teaches_from_its_rounds(tmp_path, tiny_mnist):
    from conftest import TINY_TRAIN
    from prunekit.autosparse import table_from_imp_run
    from prunekit.experiments import DatasetCache, RunSpec, run_one

    spec = RunSpec("lenet_300_100", "mnist", "imp", 0.9, 0, recipe="lenet-fmnist", epochs=1, train=TINY_TRAIN,
                   method_options={"schedule": "num", "rounds": 3, "prune_first": True, "scorer": "magnitude"})
    datasets = DatasetCache(str(tiny_mnist))
    out = run_one(spec, tmp_path / "o", datasets=datasets, device=torch.device("cpu"))
    assert out.status == "done", out.record.error
    rounds = out.record.extra["rounds"]
    assert [r["round"] for r in sorted(rounds, key=lambda r: r["round"])] == [0, 1, 2, 3] and rounds[0]["train_seconds"] == 0.0
    run_dir = out.record.run_dir
    first = prunekit.Masks.load(f"{run_dir}/imp/round_01.pt")
    initial = torch.load(f"{run_dir}/imp/rewind.pt", weights_only=True)
    # round 1 is the global magnitude top-k of the *initial* weights (no dense training round)
    expected = prunekit.core.allocation.select({n: initial[n].abs() for n in first}, 1 - 0.9 / 3)
    assert all(torch.equal(first[n], expected[n]) for n in first)
    from prunekit.experiments.spec import resolve

    run = resolve(spec)
    ds = datasets.get("mnist")
    table = table_from_imp_run(run_dir, run.make_model(ds, torch.device("cpu")), run.scoring_data(ds, torch.device("cpu")))
    assert table.features.shape == (266_200, 2) and table.targets.min() == 0 and table.targets.max() == 1
    assert table.source["rounds"] == 3 and table.source["irp"]["prune_first"] is True
    # a weight pruned in round 1 survived 0 rounds; one kept to the end survived all 3
    last = prunekit.Masks.load(f"{run_dir}/imp/round_03.pt")
    flat_first = torch.cat([first[n].flatten() for n in first])
    flat_last = torch.cat([last[n].flatten() for n in last])
    assert bool((table.targets[~flat_first] == 0).all()) and bool((table.targets[flat_last] == 1).all())


def test_every_shipped_scorer_loads_and_says_what_it_was_taught_on():
    from prunekit.autosparse import list_scorers, load_scorer
    from prunekit.data.datasets import list_datasets
    from prunekit.models import list_models

    shipped = list_scorers()
    assert {"lenet300-fmnist", "lenet300-snip-fmnist", "lenet5-fmnist"} <= set(shipped)
    assert prunekit.methods.autosparse.AutoSparseOptions().scorer in shipped  # the default is shipped
    for name in shipped:
        scorer = load_scorer(name)  # checksum verified
        taught = scorer.meta["taught_on"]
        assert taught["model"] in list_models() and taught["dataset"] in list_datasets()
        assert taught["irp"]["schedule"] == "num" and taught["irp"]["prune_first"] is True
        # magnitude-ranked IRP survival is close to |theta0| (Spearman 0.88-0.94); SNIP-ranked survival much
        # less predictable from (theta0, g0) (0.49), but a shipped scorer must carry real signal
        floor = 0.8 if taught["irp"].get("scorer", "magnitude") == "magnitude" else 0.3
        assert floor < scorer.meta["heldout_spearman"] <= 1.0
        out = scorer.predict(torch.tensor([[0.01, 0.0], [-0.2, 1e-3]], dtype=torch.float64))
        assert out.shape == (2,) and torch.isfinite(out).all()


def test_bf16_scoring_agrees_with_fp32_and_keeps_exact_counts(tmp_path):
    g = torch.Generator().manual_seed(5)
    features = torch.randn(4000, 2, generator=g).double()
    scorer = teach(features, torch.sigmoid(features[:, 0] - features[:, 1]), epochs=2, seed=0)
    fp32 = scorer.predict(features)
    bf16 = scorer.predict(features, bf16=True)
    assert float((fp32 - bf16).abs().max()) < 0.02 * float(fp32.max() - fp32.min())
    assert spearman(fp32, bf16) > 0.98
    path = scorer.save(tmp_path / "s.pt")
    net, data = _mlp(2), _batches(3)
    masks = prunekit.prune(net, "autosparse", 0.8, data=data, scorer=str(path), precision="bf16")
    assert masks.kept == math.floor(0.2 * 42 + 0.5) and masks.meta["options"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        prunekit.prune(net, "autosparse", 0.8, data=data, scorer=str(path), precision="fp16")
