"""The trainer: schedules, masks kept through training, exact resume after SIGKILL, real data."""

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import prunekit
from conftest import file_state, wait_while_progressing
from prunekit import data, models, training
from prunekit.errors import ConfigError
from resume_worker import toy_dataset

HERE = Path(__file__).parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_multistep_schedule():
    cfg = training.TrainConfig(epochs=160, lr=0.1, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)
    assert cfg.milestone_epochs() == [80, 120]
    assert cfg.lr_at(79, 390, 391) == pytest.approx(0.1)
    assert cfg.lr_at(80, 0, 391) == pytest.approx(0.01)
    assert cfg.lr_at(159, 0, 391) == pytest.approx(0.001)
    short = replace(cfg, epochs=8)
    assert short.milestone_epochs() == [4, 6]  # fractions keep the shape when epochs change


def test_cosine_onecycle_and_warmup():
    cos = training.TrainConfig(epochs=10, lr=0.2, schedule="cosine")
    assert cos.lr_at(0, 0, 100) == pytest.approx(0.2)
    assert cos.lr_at(5, 0, 100) == pytest.approx(0.1)
    assert cos.lr_at(9, 99, 100) < 1e-3
    one = training.TrainConfig(epochs=10, lr=0.2, schedule="onecycle")
    assert one.lr_at(0, 0, 100) == pytest.approx(0.2 / 25)
    assert one.lr_at(3, 0, 100) == pytest.approx(0.2)
    warm = training.TrainConfig(epochs=10, lr=0.1, schedule="multistep", warmup_epochs=2)
    assert warm.lr_at(0, 0, 10) == pytest.approx(0.1 * 0.1 / 2)
    assert warm.lr_at(2, 0, 10) == pytest.approx(0.1)


def test_bad_milestones():
    with pytest.raises(ConfigError, match="milestones"):
        training.TrainConfig(milestones=(80.0, 120.0))


def test_masks_stay_exactly_zero_after_every_step():
    ds = toy_dataset()
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    masks = prunekit.prune(model, "magnitude", 0.9)
    params = dict(model.named_parameters())
    checks = []

    class Check(training.Callback):
        def on_batch_end(self, trainer, step):
            checks.append(all(torch.count_nonzero(params[n].detach()[~m]) == 0 for n, m in masks.items()))

    cfg = training.TrainConfig(epochs=2, batch_size=50, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3)
    training.fit(model, ds, cfg, masks=masks, callbacks=[Check()], device="cpu")
    assert len(checks) == 20 and all(checks)


def test_result_records_final_best_and_best_val():
    ds = toy_dataset()
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    cfg = training.TrainConfig(epochs=3, batch_size=50, lr=0.05, val_size=50)
    res = training.fit(model, ds, cfg, device="cpu")
    tests = [h["test_acc"] for h in res.history]
    assert res.final_test_acc == tests[-1] and res.best_test_acc == max(tests)
    assert res.best_test_epoch == tests.index(max(tests)) + 1
    vals = [h["val_acc"] for h in res.history]
    assert res.test_at_best_val == tests[vals.index(max(vals))]
    assert res.images_per_second > 0 and res.epochs == 3


def test_divergence_is_reported():
    ds = toy_dataset()
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    with pytest.raises(training.TrainingDiverged, match="epoch 1"):
        training.fit(model, ds, training.TrainConfig(epochs=1, batch_size=50, lr=1e6, momentum=0.9), device="cpu")


def _worker(*args):
    return [sys.executable, str(HERE / "resume_worker.py"), *map(str, args)]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    # reference: never interrupted (waits as long as the checkpoint keeps changing: no wall-clock limit)
    ref = subprocess.Popen(_worker(tmp_path / "ref.ckpt", tmp_path / "ref.pt"), env=env)
    assert wait_while_progressing(ref, file_state(tmp_path / "ref.ckpt", tmp_path / "ref.pt")) == 0
    # interrupted in the middle of epoch 3, killed with SIGKILL, then resumed from the epoch-2 checkpoint
    out = tmp_path / "run.pt"
    proc = subprocess.Popen(_worker(tmp_path / "run.ckpt", out, "--stall-epoch", 3), env=env)
    wait_while_progressing(proc, file_state(tmp_path / "run.ckpt"), until=out.with_suffix(".stalled").exists)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert training.load_checkpoint(tmp_path / "run.ckpt")["epoch"] == 2
    assert not out.exists()
    resumed = subprocess.Popen(_worker(tmp_path / "run.ckpt", out), env=env)
    assert wait_while_progressing(resumed, file_state(tmp_path / "run.ckpt", out)) == 0
    ref, run = torch.load(tmp_path / "ref.pt"), torch.load(out)
    assert ref["state"].keys() == run["state"].keys()
    for k in ref["state"]:
        assert torch.equal(ref["state"][k], run["state"][k]), k
    assert [h["test_acc"] for h in ref["history"]] == [h["test_acc"] for h in run["history"]]
    assert len(run["history"]) == 4


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    ds = toy_dataset()
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    cfg = training.TrainConfig(epochs=1, batch_size=50, lr=0.05)
    training.fit(model, ds, cfg, checkpoint=tmp_path / "c.ckpt", device="cpu")
    with pytest.raises(training.CheckpointError, match="different config"):
        training.fit(model, ds, replace(cfg, lr=0.1), checkpoint=tmp_path / "c.ckpt", device="cpu")


def test_a_callback_ends_training_early_and_a_resumed_run_stays_stopped(tmp_path):
    ds = toy_dataset()
    cfg = training.TrainConfig(epochs=4, batch_size=50, lr=0.05)
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    res = training.fit(model, ds, cfg, checkpoint=tmp_path / "c.ckpt", device="cpu", callbacks=[training.StopAfter(2, "enough")])
    assert res.epochs == 2 and res.extra["stopped"] == "stopped after epoch 2 of 4: enough"
    assert training.load_checkpoint(tmp_path / "c.ckpt")["epoch"] == 2
    again = training.fit(models.create("lenet5", 10, (1, 28, 28), seed=0), ds, cfg, checkpoint=tmp_path / "c.ckpt", device="cpu",
                         callbacks=[training.StopAfter(2, "enough")])
    assert again.epochs == 2 and [h["test_acc"] for h in again.history] == [h["test_acc"] for h in res.history]
    # without the callback the same checkpoint goes on to the recipe's end
    assert training.fit(models.create("lenet5", 10, (1, 28, 28), seed=0), ds, cfg, checkpoint=tmp_path / "c.ckpt", device="cpu").epochs == 4


@pytest.mark.skipif(not FMNIST.exists() and os.environ.get("PRUNEKIT_REQUIRE_DATA") != "1", reason="Fashion-MNIST not installed")
def test_pruned_lenet_learns_fashion_mnist():
    ds = data.load_dataset("fashion-mnist")
    small = data.Dataset(ds.info, ds.train.subset(torch.arange(12_000)), ds.test, ds.source)
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    scoring = data.scoring_batches(small.train, batch_size=128, mean=ds.info.mean, std=ds.info.std, seed=0)
    masks = prunekit.prune(model, "snip", 0.95, data=scoring)
    cfg = training.TrainConfig(epochs=2, batch_size=128, lr=0.05, schedule="constant")
    res = training.fit(model, small, cfg, masks=masks, device="cpu")
    assert res.final_test_acc > 0.7  # chance is 0.1
    assert masks.is_applied(model)


def test_train_subset_is_a_seeded_subset_of_the_training_split_and_keys_do_not_move():
    from prunekit.data.loader import split_indices

    cfg = training.TrainConfig(val_size=100, train_subset=300)
    a_train, a_val = split_indices(1000, cfg.holdout, 3, cfg.train_subset)
    b_train, b_val = split_indices(1000, cfg.holdout, 3, cfg.train_subset)
    full_train, full_val = split_indices(1000, cfg.holdout, 3)
    assert torch.equal(a_train, b_train) and len(a_train) == 300 and torch.equal(a_val, full_val)
    assert set(a_train.tolist()) <= set(full_train.tolist())
    assert not torch.equal(a_train, split_indices(1000, cfg.holdout, 4, cfg.train_subset)[0])
    from prunekit.options import key_dict

    assert "train_subset" not in key_dict(replace(cfg, train_subset=None)) and key_dict(cfg)["train_subset"] == 300


@pytest.mark.parametrize("val_size", [0.0, 100])
def test_the_training_loader_sees_only_the_subset_with_or_without_a_holdout(val_size):
    from prunekit.data.loader import split_indices
    from prunekit.training.trainer import build_loaders

    small = toy_dataset()  # 500 training images
    cfg = training.TrainConfig(batch_size=50, val_size=val_size, train_subset=300)
    loader, evals = build_loaders(small, cfg, torch.device("cpu"), seed=3)
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == 300 == len(loader) * 50
    expected = small.train.labels[split_indices(500, cfg.holdout, 3, cfg.train_subset)[0]]
    assert torch.equal(seen.sort().values, expected.sort().values)
    assert ("val" in evals) == (val_size > 0)
