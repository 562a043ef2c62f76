"""Stacked training: each member of a fused group trains exactly as it would alone."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from conftest import TINY_TRAIN
from prunekit import data, models, training
from prunekit.data.loader import mix_seed
from prunekit.experiments import ResultsDB, run_sweep, sweep_from_mapping
from prunekit.stacked import Member, StackedLoader, StackedModel, StackedTrainer, can_stack

CASES = {
    "mlp": ("lenet_300_100", (1, 12, 12)),
    # VGG without BN: on 16x16 inputs BN would normalise 1x1 maps over a handful of samples, an
    # ill-conditioned map that amplifies float64 roundoff past 1e-8 (BN is covered by the ResNet case)
    "vgg": ("vgg11", (3, 16, 16)),
    "resnet": ("resnet20", (3, 16, 16)),
}


@pytest.mark.parametrize(("case", "path"), [("mlp", "fused"), ("mlp", "vmap"), ("vgg", "fused"), ("resnet", "fused"), ("resnet", "vmap")])
def test_member_follows_its_single_trajectory_step_by_step(case, path):
    name, shape = CASES[case]
    n, steps, batch = (2, 10, 4) if case == "vgg" else (3, 20, 6)  # VGG is the costly one on 2 CPU cores (float64 grouped convs)
    singles = [models.create(name, 10, shape, seed=s).double() for s in range(n)]
    masks = [prunekit.prune(m, "random", 0.7, seed=s) for s, m in enumerate(singles)]
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, n, batch, *shape, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 10, (steps, n, batch), generator=g)
    stacked = StackedModel([copy.deepcopy(m) for m in singles], fused=path == "fused")

    def sgd(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    single_losses = torch.zeros(steps, n, dtype=torch.float64)
    for i, (model, mask) in enumerate(zip(singles, masks)):
        mask.enforce(model)
        opt = sgd(model.parameters())
        model.train()
        for t in range(steps):
            loss = F.cross_entropy(model(xs[t, i]), ys[t, i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mask.enforce(model)
            single_losses[t, i] = loss.detach()
    opt = sgd(stacked.parameters())
    pairs = [(stacked.stacked_parameter(k), torch.stack([m[k] for m in masks]).double()) for k in masks[0]]
    with torch.no_grad():
        for p, m in pairs:
            p.mul_(m)
    stacked_losses = torch.zeros(steps, n, dtype=torch.float64)
    stacked.train()
    for t in range(steps):
        out = stacked(xs[t])
        losses = F.cross_entropy(out.flatten(0, 1), ys[t].reshape(-1), reduction="none").view(n, -1).mean(1)
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)
        stacked_losses[t] = losses.detach()
    torch.testing.assert_close(stacked_losses, single_losses, rtol=0, atol=1e-8)
    assert stacked.path == path
    for i, (model, mask) in enumerate(zip(singles, masks)):
        state = stacked.member_state_dict(i)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(state[k].double() if v.is_floating_point() else state[k], v, rtol=1e-6, atol=1e-8)
        for k, keep in mask.items():
            assert torch.count_nonzero(state[k][~keep]) == 0  # masks stay exact


def _toy_dataset(n=300, shape=(3, 12, 12)):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 80, (n, *shape), generator=g, dtype=torch.uint8)
    for c in range(10):
        images[labels == c, :, c, :] = 250
    train = data.ArrayDataset(images[:240], labels[:240], [str(i) for i in range(10)])
    test = data.ArrayDataset(images[240:], labels[240:], train.classes)
    return data.Dataset(data.get_info("cifar10"), train, test, None)


def test_stacked_loader_gives_each_member_its_single_run_batches():
    ds = _toy_dataset()
    seeds = [0, 5, 9]
    cfg = training.TrainConfig(batch_size=32, val_size=40)
    loaders = []
    indices = []
    for s in seeds:
        train_idx, _ = data.loader.validation_indices(len(ds.train), 40, s)
        indices.append(train_idx)
        single_cfg = replace(cfg)
        loader, _ = training.build_loaders(ds, single_cfg, torch.device("cpu"), s)
        loaders.append(loader)
    stacked = StackedLoader(
        ds.train.images, ds.train.labels, indices, [mix_seed(s, 0x7EA1) for s in seeds], 32,
        scale=loaders[0].scale, shift=loaders[0].shift, augment=True, crop_padding=4,
    )
    for epoch in (0, 3):
        stacked.set_epoch(epoch)
        for l in loaders:
            l.set_epoch(epoch)
        batches = list(stacked)
        singles = [list(l) for l in loaders]
        assert len(batches) == len(singles[0]) == 7
        for t, (x, y) in enumerate(batches):
            for m in range(3):
                assert torch.equal(x[m], singles[m][t][0]) and torch.equal(y[m], singles[m][t][1])


def _members(ds, cfg, tmp_path, seeds=(0, 1), dtype=torch.float32):
    out = []
    for s in seeds:
        model = models.create("resnet20", 10, ds.input_shape, seed=s).to(dtype)
        masks = prunekit.prune(model, "random", 0.8, seed=s)
        out.append(Member(model, masks, s, checkpoint=tmp_path / f"m{s}.ckpt"))
    return out


def test_stacked_trainer_matches_single_fit_and_records_members(tmp_path):
    # float64: this small problem is chaotic in float32 (a 1e-7 change of one weight alters the second
    # epoch), so only float64 can show that every member follows its single run
    ds = _toy_dataset()
    cfg = training.TrainConfig(epochs=2, batch_size=32, lr=0.05, val_size=40)
    members = _members(ds, cfg, tmp_path, dtype=torch.float64)
    results = StackedTrainer(members, ds, cfg, torch.device("cpu")).fit()
    for s, member, res in zip((0, 1), members, results):
        model = models.create("resnet20", 10, ds.input_shape, seed=s).double()
        masks = prunekit.prune(model, "random", 0.8, seed=s)
        single = training.fit(model, ds, cfg, masks=masks, seed=s, device="cpu")
        for a, b in zip(single.history, res.history):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
            assert a["test_acc"] == b["test_acc"] and a["val_acc"] == b["val_acc"]
        assert res.extra["stacked"] == 2 and masks.is_applied(member.model)
        ck = training.load_checkpoint(tmp_path / f"m{s}.ckpt")
        assert ck["epoch"] == 2 and ck["seed"] == s and len(ck["history"]) == 2


class _Crash(training.Callback):
    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_stacked_group_resumes_from_member_checkpoints_exactly(tmp_path):
    ds = _toy_dataset()
    cfg = training.TrainConfig(epochs=3, batch_size=32, lr=0.05, val_size=40)
    reference = StackedTrainer(_members(ds, cfg, tmp_path / "ref"), ds, cfg, torch.device("cpu"))
    reference.fit()
    # a crash in epoch 3, before any epoch-3 checkpoint is written (member 0's callbacks run first)
    (tmp_path / "run").mkdir()
    members = _members(ds, cfg, tmp_path / "run")
    members[0].callbacks.append(_Crash(at_epoch=2))
    with pytest.raises(KeyboardInterrupt):
        StackedTrainer(members, ds, cfg, torch.device("cpu")).fit()
    assert [training.load_checkpoint(m.checkpoint)["epoch"] for m in members] == [2, 2]
    resumed = StackedTrainer(_members(ds, cfg, tmp_path / "run"), ds, cfg, torch.device("cpu"))
    assert resumed.epoch == 2
    resumed.fit()
    for i in range(2):
        a, b = reference.model.member_state_dict(i), resumed.model.member_state_dict(i)
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert [h["test_acc"] for h in reference.histories[i]] == [h["test_acc"] for h in resumed.histories[i]]


def test_members_at_different_epochs_are_not_one_group(tmp_path):
    ds = _toy_dataset()
    cfg = training.TrainConfig(epochs=3, batch_size=32, lr=0.05, val_size=40)
    members = _members(ds, cfg, tmp_path)
    members[1].callbacks.append(_Crash(at_epoch=1))  # member 0 reaches its epoch-2 checkpoint, member 1 does not
    with pytest.raises(KeyboardInterrupt):
        StackedTrainer(members, ds, cfg, torch.device("cpu")).fit()
    with pytest.raises(training.CheckpointError, match="same epoch"):
        StackedTrainer(_members(ds, cfg, tmp_path), ds, cfg, torch.device("cpu"))


def test_a_stacked_member_checkpoint_resumes_as_a_single_run(tmp_path):
    ds = _toy_dataset()
    cfg = training.TrainConfig(epochs=3, batch_size=32, lr=0.05, val_size=40)
    members = _members(ds, cfg, tmp_path, dtype=torch.float64)
    members[0].callbacks.append(_Crash(at_epoch=2))
    with pytest.raises(KeyboardInterrupt):
        StackedTrainer(members, ds, cfg, torch.device("cpu")).fit()
    model = models.create("resnet20", 10, ds.input_shape, seed=1).double()
    masks = prunekit.prune(model, "random", 0.8, seed=1)
    alone = training.fit(model, ds, cfg, masks=masks, seed=1, device="cpu", checkpoint=tmp_path / "m1.ckpt")
    model2 = models.create("resnet20", 10, ds.input_shape, seed=1).double()
    fresh = training.fit(model2, ds, cfg, masks=masks, seed=1, device="cpu")
    assert len(alone.history) == 3
    assert alone.history[-1]["train_loss"] == pytest.approx(fresh.history[-1]["train_loss"], rel=1e-9)


def test_can_stack_rejects_data_dependent_control_flow():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)

    ok, why = can_stack(Branchy(), (4,))
    assert not ok and why
    assert can_stack(models.create("resnet20", 10, (3, 8, 8)), (3, 8, 8)) == (True, "")


def test_sweep_with_stacking_records_ordinary_runs(tmp_path, tiny_mnist):
    spec = sweep_from_mapping(
        {"models": ["lenet5"], "dataset": "mnist", "methods": ["random", "magnitude"], "sparsities": [0.5, 0.9],
         "seeds": [0], "epochs": 2, "train": TINY_TRAIN, "data_dir": str(tiny_mnist)}
    )
    stacked = run_sweep(spec, tmp_path / "stacked", device=torch.device("cpu"), progress=False, log=False, stack=3)
    single = run_sweep(spec, tmp_path / "single", device=torch.device("cpu"), progress=False, log=False, stack=1)
    assert stacked.counts["done"] == single.counts["done"] == 5
    with ResultsDB(tmp_path / "stacked" / "results.db") as a, ResultsDB(tmp_path / "single" / "results.db") as b:
        ra = {r.key: r for r in a.runs()}
        rb = {r.key: r for r in b.runs()}
        assert ra.keys() == rb.keys()  # the same runs, by key
        for key in ra:
            assert ra[key].status == "done" and ra[key].extra["stacked"] in (2, 3)
            assert "stacked" not in rb[key].extra
            assert abs(ra[key].final_acc - rb[key].final_acc) <= 0.05  # float32: equal up to roundoff growth
            if ra[key].mask_path:  # scoring stays one model at a time: the same masks
                assert prunekit.Masks.load(ra[key].mask_path) == prunekit.Masks.load(rb[key].mask_path)
            assert [e["epoch"] for e in a.epochs(key)] == [1, 2]


@pytest.mark.parametrize("name", models.list_models())
def test_every_zoo_model_can_be_stacked(name):
    shape = (1, 28, 28) if name.startswith(("lenet", "conv")) else ((3, 16, 16) if name.startswith("vgg") else (3, 8, 8))
    ok, why = can_stack(models.create(name, 10, shape, seed=0), shape)
    assert ok, why


def test_a_group_that_cannot_be_stacked_falls_back_with_a_notice(tmp_path, tiny_mnist, monkeypatch, caplog):
    import prunekit.experiments.backends.stacked as groups

    monkeypatch.setattr(groups, "can_stack", lambda model, shape, device: (False, "RuntimeError: not here"))
    spec = sweep_from_mapping(
        {"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5, 0.9],
         "seeds": [0], "epochs": 1, "train": TINY_TRAIN, "data_dir": str(tiny_mnist)}
    )
    summary = run_sweep(spec, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=3)
    assert summary.counts["done"] == 3
    notices = [r.getMessage() for r in caplog.records if r.name == "prunekit" and r.levelname == "WARNING"]
    assert sum("cannot be stacked (RuntimeError: not here); training its 3 runs one at a time" in m for m in notices) == 1
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        assert all("stacked" not in r.extra for r in db.runs())


@pytest.mark.parametrize(("name", "shape"), [("resnet20", (3, 16, 16)), ("lenet5", (1, 28, 28))])
def test_a_fused_stacked_step_issues_the_kernels_of_one_model(name, shape):
    import json
    import subprocess
    import sys
    from pathlib import Path

    # counted in a fresh interpreter: no state left by other tests (threads, flags) can change the counts
    worker = Path(__file__).with_name("opcount_worker.py")
    proc = subprocess.run([sys.executable, str(worker), name, *map(str, shape)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    one = counts["one"]
    for n in ("1", "4", "8"):
        path, ops = counts["fused"][n]
        assert path == "fused"
        assert ops <= 1.1 * one, (n, ops, one)  # forward, backward, optimizer and masks: as lean as one model
    path, ops = counts["vmap"]["4"]
    assert path == "vmap" and ops > 1.1 * one  # what the fused path saves (vmap's batching rules)


def test_an_architecture_the_fused_path_cannot_express_uses_vmap_and_says_why():
    members = [models.create("resnet20", 10, (3, 8, 8), seed=s, shortcut="A") for s in range(2)]  # zero-padding shortcuts
    stacked = StackedModel(members)
    out = stacked(torch.randn(2, 3, 3, 8, 8))
    assert out.shape == (2, 3, 10) and stacked.path == "vmap" and "getitem" in stacked.fallback_reason
    with pytest.raises(Exception, match="fused stacked path cannot run"):
        StackedModel(members, fused=True)(torch.randn(2, 3, 3, 8, 8))


def test_a_member_whose_mask_cuts_the_network_trains_alone_for_one_epoch(tmp_path, tiny_mnist, monkeypatch):
    from prunekit.experiments import TrainingRun

    original_prepare = TrainingRun.prepare
    prepared = []

    def cut_at_90(self, ctx, ds):
        prepared.append(self.sparsity)
        model, masks = original_prepare(self, ctx, ds)
        if self.sparsity != 0.9:
            return model, masks
        first = next(iter(masks))
        return model, prunekit.Masks({**dict(masks.items()), first: torch.zeros_like(masks[first])}, masks.meta)

    monkeypatch.setattr(TrainingRun, "prepare", cut_at_90)
    spec = sweep_from_mapping(
        {"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5, 0.8, 0.9],
         "seeds": [0], "epochs": 3, "train": TINY_TRAIN, "data_dir": str(tiny_mnist)}
    )
    summary = run_sweep(spec, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=4)
    assert summary.counts["done"] == 4
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        runs = {r.sparsity: r for r in db.runs()}
    cut = runs[0.9]
    assert cut.extra["disconnected"] is True and "stacked" not in cut.extra
    assert cut.extra["history_epochs"] == 1 and cut.extra["stopped"].startswith("stopped after epoch 1 of 3")
    assert all(runs[s].extra["stacked"] == 3 for s in (0.0, 0.5, 0.8))  # the others (dense too) still train as one network
    assert runs[0.5].extra["history_epochs"] == 3
    assert sorted(prepared) == [0.0, 0.5, 0.8, 0.9]  # each run scored or read once, the one trained alone too


def test_what_a_member_recovered_from_before_training_stacked_reaches_its_record(tmp_path, tiny_mnist):
    spec = sweep_from_mapping(
        {"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5, 0.8], "seeds": [0],
         "epochs": 2, "train": TINY_TRAIN, "data_dir": str(tiny_mnist), "dense": False}
    )
    first = run_sweep(spec, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=4)
    assert first.counts["done"] == 2
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        rows = {r.sparsity: r for r in db.runs()}
        assert rows[0.5].extra["stacked"] == 2
        damaged = tmp_path / "o" / "runs" / rows[0.5].key / "masks.pt"
        damaged.write_bytes(damaged.read_bytes()[:200])  # as a machine lost while writing it would leave it
        for row in rows.values():
            db.reset(row.key)
    again = run_sweep(spec, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=4)
    assert again.counts["done"] == 2
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        after = {r.sparsity: r for r in db.runs()}
    assert after[0.5].extra["stacked"] == 2  # still trained as one group
    assert "set aside" in " ".join(after[0.5].extra["recovered"]) and list(damaged.parent.glob("masks.pt.damaged*"))
    assert "recovered" not in after[0.8].extra


def test_a_group_whose_stacked_training_fails_trains_each_run_alone_from_a_fresh_model(tmp_path, tiny_mnist, monkeypatch, caplog):
    from prunekit.stacked import trainer as stacked_trainer

    mapping = {"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5, 0.9],
               "seeds": [0], "epochs": 2, "train": TINY_TRAIN, "data_dir": str(tiny_mnist)}
    alone = run_sweep(sweep_from_mapping(mapping), tmp_path / "alone", device=torch.device("cpu"), progress=False, log=False, stack=1)
    assert alone.counts["done"] == 3

    def spoil_then_fail(self, *args, **kwargs):
        with torch.no_grad():  # as a failure after some training would leave the members' models
            for member in self.members:
                for p in member.model.parameters():
                    p.mul_(0.5)
        raise RuntimeError("out of memory in the fused step")

    monkeypatch.setattr(stacked_trainer.StackedTrainer, "fit", spoil_then_fail)
    summary = run_sweep(sweep_from_mapping(mapping), tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=3)
    assert summary.counts["done"] == 3
    notices = [r.getMessage() for r in caplog.records if r.name == "prunekit" and r.levelname == "WARNING"]
    assert any("stacked training of 3 runs failed (RuntimeError: out of memory in the fused step)" in m for m in notices)
    with ResultsDB(tmp_path / "alone" / "results.db") as a, ResultsDB(tmp_path / "o" / "results.db") as b:
        expected = {r.key: r.final_acc for r in a.runs()}
        got = {r.key: r.final_acc for r in b.runs()}
        assert all("stacked" not in r.extra for r in b.runs())
    assert got == expected  # prepared again from the saved masks: the same runs as alone, not the spoiled models
