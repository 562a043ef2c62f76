"""Runs, sweeps, the results database, IMP and the ablations."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import prunekit
from conftest import TINY_TRAIN, wait_while_progressing, write_tiny_mnist
from prunekit.errors import ConfigError
from prunekit.experiments import (
    DatasetCache,
    ResultsDB,
    RunSpec,
    load_sweep_file,
    resolve,
    run_key,
    run_one,
    run_sweep,
    shuffle_masks,
    sweep_from_mapping,
)
from prunekit.imp import imp_densities


def spec(method="snip", sparsity=0.9, seed=0, **kw):
    kw.setdefault("train", TINY_TRAIN)
    kw.setdefault("epochs", 2)
    kw.setdefault("recipe", "lenet-fmnist")
    return RunSpec("lenet_300_100", "mnist", method, sparsity, seed, **kw)


# -- configuration ------------------------------------------------------------------------------
def test_resolved_config_has_every_default_and_a_stable_key():
    a = resolve(spec())
    assert a.config["method_options"] == {"num_batches": 1, "bn_mode": "train", "reinit": False}
    assert a.train.epochs == 2 and a.train.lr == 0.05 and a.train.val_size == 40.0
    assert a.allocation == "global" and a.scoring_batch_size == 50
    assert a.config["train"]["lr"] == 0.05 and run_key(a) == run_key(a.config) == a.key
    assert run_key(a) == run_key(resolve(spec()))
    assert run_key(a) != run_key(resolve(spec(seed=1)))
    explicit = resolve(spec(method_options={"num_batches": 1}))  # spelling out a default: same run
    assert run_key(explicit) == run_key(a)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(method="snipp"), "unknown method"),
        (dict(method="dense", sparsity=0.5), "dense"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(ablation="flip"), "ablation"),
        (dict(method="imp", ablation="shuffle"), "ablations apply"),
        (dict(method_options={"num_step": 3}), "num_step"),
        (dict(train={"learning_rate": 0.1}), "learning_rate"),
        (dict(recipe="grasp"), "recipe"),
        (dict(method="imp", method_options={"rewind_epoch": 5}), "rewind_epoch"),
    ],
)
def test_bad_run_configs(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve(spec(**bad))


def test_sweep_file_is_validated_in_full_before_any_work(tmp_path):
    good = tmp_path / "s.toml"
    good.write_text(
        'models = ["lenet5"]\ndataset = "fashion-mnist"\nmethods = ["snip", "force"]\nsparsities = [0.9, 0.98]\n'
        "seeds = [0, 1]\nepochs = 2\n[train]\nlr = 0.02\n[options.force]\nnum_steps = 10\n"
    )
    s = load_sweep_file(good)
    runs = s.requests()
    assert len(runs) == 2 + 2 * 2 * 2  # dense x 2 seeds + methods x sparsities x seeds
    assert resolve(runs[-1]).options.num_steps == 10 and resolve(runs[-1]).train.lr == 0.02
    for text, match in [
        ('modles = ["lenet5"]', "modles"),
        ("[options.force]\nnum_step = 10", "num_step"),
        ("[train]\nlrr = 0.1", "lrr"),
        ("[options.grasp]\nsamples_per_class = 5", "grasp"),
        ('seeds = ["a"]', "seed"),
    ]:
        bad = tmp_path / "bad.toml"
        body = good.read_text().replace("[train]\nlr = 0.02\n[options.force]\nnum_steps = 10\n", "")
        if text.startswith("modles"):
            body = body.replace('models = ["lenet5"]', text)
        elif text.startswith("seeds"):
            body = body.replace("seeds = [0, 1]", text)
        else:
            body += text + "\n"
        bad.write_text(body)
        with pytest.raises(ConfigError, match=match):
            load_sweep_file(bad)


# -- database -----------------------------------------------------------------------------------
def test_claims_are_exclusive_and_stale_claims_expire(tmp_path):
    run = resolve(spec())
    key, cfg = run.key, run.config
    with ResultsDB(tmp_path / "r.db") as db:
        db.ensure(key, cfg)
        db.ensure(key, cfg)  # idempotent
        assert db.claim(key, "a:1")  # another host: only the heartbeat can expire it
        assert not db.claim(key, "b:2")
        db.stale_after = 0.0
        time.sleep(0.01)
        assert db.claim(key, "b:2")  # silent too long
        db.stale_after = 300.0
        import socket

        from prunekit.experiments.db import _namespace

        dead = f"{socket.gethostname()}:999999999:-:n:{_namespace()}"
        with db._transaction() as c:
            c.execute("UPDATE runs SET owner = ?, heartbeat = ? WHERE key = ?", (dead, time.time(), key))
        assert db.claim(key, "c:3")  # owner process gone in this machine's PID namespace: certain, at once
        db.finish(key, "c:3", {"final_acc": 0.5})
        assert not db.claim(key, "d:4")
        with pytest.raises(RuntimeError):
            db.finish(key, "b:2", {"final_acc": 0.1})
        assert db.get(key).attempts == 3 and db.get(key).status == "done"


# -- runs ---------------------------------------------------------------------------------------
def test_run_scores_masks_trains_stores_and_is_skipped_when_rerun(tmp_path, tiny_mnist):
    datasets = DatasetCache(str(tiny_mnist))
    out = run_one(spec(), tmp_path / "out", datasets=datasets, device=torch.device("cpu"))
    assert out.status == "done", out.record.error
    row = out.record
    assert row.final_acc > 0.5 and row.density == pytest.approx(0.1, abs=1e-5)
    assert row.config["method"] == "snip" and row.versions["torch"] == torch.__version__
    assert row.scoring_seconds > 0 and row.train_seconds > 0 and row.device.startswith("cpu")
    run_dir = Path(row.run_dir)
    for f in ("masks.pt", "layers.md", "layers.json", "config.json", "checkpoint.pt"):
        assert (run_dir / f).is_file(), f
    masks = prunekit.Masks.load(row.mask_path)
    assert masks.meta["method"] == "snip" and abs(masks.sparsity - 0.9) < 1e-5
    assert [l["name"] for l in row.layers] == list(masks)
    with ResultsDB(tmp_path / "out" / "results.db") as db:
        assert [e["epoch"] for e in db.epochs(out.key)] == [1, 2]
    from prunekit.experiments import TrainingRun

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was executed again")

    original, TrainingRun._execute = TrainingRun._execute, no_training  # type: ignore[method-assign]
    try:
        again = run_one(spec(), tmp_path / "out", datasets=datasets)
    finally:
        TrainingRun._execute = original  # type: ignore[method-assign]
    assert again.status == "skipped"
    forced = run_one(spec(), tmp_path / "out", datasets=datasets, force=True)
    assert forced.status == "done" and forced.record.attempts == 2


def test_failures_are_recorded_with_the_error_and_retried_on_request(tmp_path, tiny_mnist):
    datasets = DatasetCache(str(tiny_mnist))
    bad = spec(method="dense", sparsity=0.0, train={**TINY_TRAIN, "lr": 1e6})
    out = run_one(bad, tmp_path / "o", datasets=datasets)
    assert out.status == "failed" and "TrainingDiverged" in out.record.error
    assert run_one(bad, tmp_path / "o", datasets=datasets).status == "failed"  # not retried by default
    assert run_one(bad, tmp_path / "o", datasets=datasets, retry_failed=True).record.attempts == 2


def test_dense_and_imp_runs(tmp_path, tiny_mnist):
    datasets = DatasetCache(str(tiny_mnist))
    dense = run_one(spec(method="dense", sparsity=0.0), tmp_path / "o", datasets=datasets)
    assert dense.status == "done" and dense.record.density == 1.0 and dense.record.mask_path is None
    imp = run_one(spec(method="imp", sparsity=0.75, method_options={"fraction": 0.5}), tmp_path / "o", datasets=datasets)
    assert imp.status == "done", imp.record.error
    rounds = imp.record.extra["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["density"] for r in rounds] == [1.0, 0.5, 0.25]
    masks = [prunekit.Masks.load(r["mask_file"]) for r in rounds[1:]]
    assert masks[0].density == pytest.approx(0.5, abs=1e-5) and masks[1].density == pytest.approx(0.25, abs=1e-5)
    assert all(not (masks[1][n] & ~masks[0][n]).any() for n in masks[0])  # nested
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        assert sorted({e["phase"] for e in db.epochs(imp.key)}) == [0, 1, 2]


def test_imp_round_counts_match_open_lth():
    assert [len(imp_densities(1 - s, 0.2)) for s in (0.9, 0.95, 0.98, 0.99, 0.995)] == [11, 14, 18, 21, 24]
    d = imp_densities(0.1, 0.2)
    assert d[0] == pytest.approx(0.8) and d[-1] == 0.1 and d == sorted(d, reverse=True)


def test_imp_rewinds_to_init_and_resumes_after_the_last_finished_round(tmp_path, tiny_mnist):
    from prunekit import data, models, training
    from prunekit.imp import ImpOptions, run_imp

    ds = data.load_dataset("mnist", tiny_mnist)
    cfg = training.TrainConfig(epochs=2, batch_size=50, lr=0.05)
    model = models.create("lenet_300_100", 10, (1, 28, 28), seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    starts = []

    class RecordStart(training.Callback):
        def on_fit_start(self, trainer):
            starts.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    names = list(prunekit.prunable_parameters(model))
    kw = dict(sparsity=0.75, prunable=names, device=torch.device("cpu"), seed=0, workdir=tmp_path / "imp",
              epoch_callbacks=lambda r: [RecordStart()])
    options = ImpOptions(fraction=0.5, rewind_epoch=0, allocation="global")
    masks, result, rounds = run_imp(model, ds, cfg, options, **kw)
    assert len(starts) == 3
    assert sorted(p.name for p in (tmp_path / "imp").glob("*.ckpt")) == ["round_02.ckpt"]  # only the last round's
    for start, mask_round in zip(starts[1:], (1, 2)):
        m = prunekit.Masks.load(tmp_path / "imp" / f"round_{mask_round:02d}.pt")
        for name, keep in m.items():  # survivors start from theta_0 (pruned entries from 0)
            assert torch.equal(start[name], init[name] * keep)
    # an interruption after round 1: only round 2 is trained again
    state = json.loads((tmp_path / "imp" / "state.json").read_text())
    state["rounds"] = [r for r in state["rounds"] if r["round"] < 2]
    (tmp_path / "imp" / "state.json").write_text(json.dumps(state))
    (tmp_path / "imp" / "round_02.ckpt").unlink()
    starts.clear()
    masks2, result2, _ = run_imp(models.create("lenet_300_100", 10, (1, 28, 28), seed=0), ds, cfg, options, **kw)
    assert len(starts) == 1 and masks2 == masks
    assert result2.final_test_acc == result.final_test_acc


def test_imp_runs_of_one_sweep_share_their_common_rounds(tmp_path, tiny_mnist):
    datasets = DatasetCache(str(tiny_mnist))
    opts = {"fraction": 0.5, "rewind_epoch": 1}
    shallow = run_one(spec(method="imp", sparsity=0.75, epochs=3, method_options=opts), tmp_path / "o", datasets=datasets)
    deep = run_one(spec(method="imp", sparsity=0.875, epochs=3, method_options=opts), tmp_path / "o", datasets=datasets)
    alone = run_one(spec(method="imp", sparsity=0.875, epochs=3, method_options=opts), tmp_path / "a", datasets=datasets)
    assert shallow.status == deep.status == alone.status == "done"
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        trained = sorted({e["phase"] for e in db.epochs(deep.key)})
    assert trained == [2, 3]  # rounds 0 and 1 taken over; round 2 retrained for its weights, round 3 new
    rounds = deep.record.extra["rounds"]
    assert [("shared_from" in r) for r in rounds] == [True, True, False, False]
    # the same tickets and accuracies as the run that trained every round itself (bit for bit on the CPU)
    for r in (1, 2, 3):
        got = prunekit.Masks.load(Path(deep.record.run_dir) / "imp" / f"round_{r:02d}.pt")
        assert got == prunekit.Masks.load(Path(alone.record.run_dir) / "imp" / f"round_{r:02d}.pt")
    assert deep.record.final_acc == alone.record.final_acc and deep.record.best_acc == alone.record.best_acc
    assert [r["final_acc"] for r in rounds] == [r["final_acc"] for r in alone.record.extra["rounds"]]
    assert deep.record.train_seconds == pytest.approx(sum(r["train_seconds"] for r in rounds[2:]))
    assert deep.record.extra["ticket_train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in rounds))


def test_imp_rewind_to_epoch(tmp_path, tiny_mnist):
    datasets = DatasetCache(str(tiny_mnist))
    out = run_one(spec(method="imp", sparsity=0.5, epochs=3, method_options={"fraction": 0.5, "rewind_epoch": 1}),
                  tmp_path / "o", datasets=datasets)
    assert out.status == "done", out.record.error
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        epochs = db.epochs(out.key)
    assert [e["epoch"] for e in epochs if e["phase"] == 1] == [2, 3]  # the rewound round restarts at epoch 2 of 3
    rewind = torch.load(Path(out.record.run_dir) / "imp" / "rewind.pt", weights_only=True)
    assert not torch.equal(rewind["classifier.0.weight"], resolve_init()["classifier.0.weight"])


def resolve_init():
    from prunekit import models

    return models.create("lenet_300_100", 10, (1, 28, 28), seed=0).state_dict()


# -- ablations ----------------------------------------------------------------------------------
def test_shuffle_keeps_layer_densities_and_changes_placement():
    model = prunekit.models.create("lenet5", 10, (1, 28, 28), seed=0) if hasattr(prunekit, "models") else None
    from prunekit import models

    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    masks = prunekit.prune(model, "magnitude", 0.9)
    shuffled = shuffle_masks(masks, seed=0)
    for name in masks:
        assert int(shuffled[name].sum()) == int(masks[name].sum())
        assert not torch.equal(shuffled[name], masks[name])
    assert shuffle_masks(masks, seed=0) == shuffled and shuffle_masks(masks, seed=1) != shuffled


def test_invert_keeps_the_lowest_scores():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(1.0, 13.0).view(3, 4))
    kept = prunekit.prune(net, "magnitude", 0.75)["0.weight"].flatten().tolist()
    inverted = prunekit.prune(net, "magnitude", 0.75, invert=True)["0.weight"].flatten().tolist()
    assert kept == [False] * 9 + [True] * 3 and inverted == [True] * 3 + [False] * 9


def test_ablation_runs_change_what_they_should_and_nothing_else(tmp_path, tiny_mnist):
    datasets = DatasetCache(str(tiny_mnist))
    rows = {}
    for ablation in (None, "shuffle", "reinit", "invert"):
        out = run_one(spec(ablation=ablation), tmp_path / "o", datasets=datasets)
        assert out.status == "done", out.record.error
        rows[ablation] = out.record
    base = prunekit.Masks.load(rows[None].mask_path)
    shuffled = prunekit.Masks.load(rows["shuffle"].mask_path)
    reinit = prunekit.Masks.load(rows["reinit"].mask_path)
    inverted = prunekit.Masks.load(rows["invert"].mask_path)
    assert reinit == base  # reinit: same mask ...
    init = json.loads((Path(rows["reinit"].run_dir) / "config.json").read_text())
    assert init["ablation"] == "reinit"
    assert shuffled.layer_densities() == base.layer_densities() and shuffled != base
    assert inverted.kept == base.kept and inverted != base
    # ... but a different starting point: the checkpoints hold different trained weights
    ck_base = torch.load(Path(rows[None].run_dir) / "checkpoint.pt", weights_only=True)["model"]
    ck_reinit = torch.load(Path(rows["reinit"].run_dir) / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(ck_base["classifier.0.weight"], ck_reinit["classifier.0.weight"])
    for name, keep in base.items():
        assert torch.count_nonzero(ck_reinit[name][~keep]) == 0


# -- sweeps -------------------------------------------------------------------------------------
def _sweep_cmd(data_dir, out, methods="random,magnitude,snip", epochs=3):
    return [
        sys.executable, "-m", "prunekit.cli", "sweep", "--models", "lenet5", "--dataset", "mnist", "--data-dir", str(data_dir),
        "--methods", methods, "--sparsities", "0.5,0.9", "--seeds", "0", "--epochs", str(epochs),
        "--train", "val_size=200", "--train", "batch_size=100", "--out", str(out), "--no-progress", "--device", "cpu",
    ]


def _db_rows(path):
    if not Path(path).exists():
        return {}
    c = sqlite3.connect(path)
    c.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in c.execute("SELECT key, status, attempts, finished, final_acc, owner FROM runs")}
    except sqlite3.OperationalError:
        return {}
    finally:
        c.close()


def _signal_inside_a_run(proc, db_path, progress, sig, done_first=0):
    """Once ``done_first`` runs are done and a running run has logged an epoch, send ``sig`` to the
    sweep ``proc``; return that run's key and the sweep's exit status."""
    key = None

    def ready():
        nonlocal key
        rows = _db_rows(db_path)
        done = [k for k, r in rows.items() if r["status"] == "done"]
        running = [k for k, r in rows.items() if r["status"] == "running"]
        if len(done) >= done_first and running and _epochs_logged(db_path, running[0]) >= 1:
            key = running[0]
            return True
        return False

    try:
        wait_while_progressing(proc, progress, until=ready, poll=0.02)
    finally:
        os.kill(proc.pid, sig)
        status = proc.wait()
    return key, status


def _db_errors(path):
    """Every failed run's recorded error, for an assertion's message."""
    c = sqlite3.connect(path)
    try:
        return "".join(f"\n{key}: {error}" for key, error in c.execute("SELECT key, error FROM runs WHERE status = 'failed'"))
    finally:
        c.close()


def _db_progress(path):
    """A progress probe for wait_while_progressing: the runs' states and the number of epochs logged."""

    def probe():
        if not Path(path).exists():
            return None
        c = sqlite3.connect(path)
        try:
            return (tuple(c.execute("SELECT key, status, attempts FROM runs ORDER BY key")),
                    c.execute("SELECT COUNT(*) FROM epochs").fetchone()[0])
        except sqlite3.OperationalError:
            return None
        finally:
            c.close()

    return probe


def _epochs_logged(path, key):
    if not Path(path).exists():
        return 0
    c = sqlite3.connect(path)
    try:
        return c.execute("SELECT COUNT(*) FROM epochs WHERE key = ?", (key,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        c.close()


def test_sweep_killed_with_sigkill_loses_and_duplicates_nothing(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist", n_train=3000, n_test=300)
    out = tmp_path / "sweep"
    db_path = out / "results.db"
    proc = subprocess.Popen(_sweep_cmd(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = _db_progress(db_path)
    killed_key, _ = _signal_inside_a_run(proc, db_path, progress, signal.SIGKILL, done_first=2)
    before = _db_rows(db_path)
    finished_before = {k: r for k, r in before.items() if r["status"] == "done"}
    assert before[killed_key]["status"] == "running"
    again = subprocess.Popen(_sweep_cmd(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_while_progressing(again, progress) == 0
    after = _db_rows(db_path)
    assert len(after) == 7 and all(r["status"] == "done" for r in after.values())
    for k, r in finished_before.items():  # nothing finished was lost or run again
        assert after[k]["attempts"] == 1 and after[k]["finished"] == r["finished"] and after[k]["final_acc"] == r["final_acc"]
    assert after[killed_key]["attempts"] == 2  # the interrupted run was taken over ...
    assert _epochs_logged(db_path, killed_key) == 3  # ... and resumed, not duplicated
    assert all(r["attempts"] == 1 for k, r in after.items() if k not in finished_before and k != killed_key)


def test_a_sweep_stopped_with_sigterm_releases_its_run_at_once(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist", n_train=3000, n_test=300)
    out = tmp_path / "sweep"
    db_path = out / "results.db"
    log = tmp_path / "sweep.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(_sweep_cmd(data_dir, out), stdout=subprocess.DEVNULL, stderr=err)
    progress = _db_progress(db_path)
    stopped_key, status = _signal_inside_a_run(proc, db_path, progress, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, log.read_text() + _db_errors(db_path)  # the status a SIGTERM gives, after the release
    row = _db_rows(db_path)[stopped_key]
    assert row["status"] == "pending" and row["owner"] is None  # free now, not after its lease
    again = subprocess.Popen(_sweep_cmd(data_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_while_progressing(again, progress) == 0
    after = _db_rows(db_path)
    assert all(r["status"] == "done" for r in after.values())
    assert _epochs_logged(db_path, stopped_key) == 3  # resumed from its checkpoint, no epoch twice


def test_sigterm_handler_is_installed_only_where_sigterm_has_its_default_action():
    from prunekit.experiments.lifecycle import terminate_releases

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with terminate_releases():
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            with pytest.raises(SystemExit) as info:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs at the next bytecode; never reached
            assert info.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the block

        def own(signum, frame):
            pass

        signal.signal(signal.SIGTERM, own)
        with terminate_releases():
            assert signal.getsignal(signal.SIGTERM) is own  # a program's own handler is left alone
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, before)


def test_interruption_is_found_behind_the_error_cleanup_raised():
    from prunekit.experiments.lifecycle import interruption

    def writer_closing_after(stop):
        try:
            raise stop
        except BaseException:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 106112 vs 106008") from None

    for stop in (KeyboardInterrupt(), SystemExit(143)):
        with pytest.raises(RuntimeError) as info:
            writer_closing_after(stop)
        assert interruption(info.value) is stop  # found through __context__, even with the cause suppressed
    try:
        try:
            raise ValueError("first")
        except ValueError as exc:
            raise OSError("second") from exc
    except OSError as exc:
        assert interruption(exc) is None  # a chain of plain errors is a failure


@pytest.mark.parametrize("stack", [1, 2])
def test_a_sweep_interrupted_inside_a_checkpoint_write_releases_its_run(tmp_path, tiny_mnist, monkeypatch, stack):
    """Ctrl-C or SIGTERM in the middle of ``torch.save``: the zip writer's cleanup raises a RuntimeError
    of its own. The run was stopped, not failed: it is released and the next sweep resumes it."""
    s = sweep_from_mapping(
        {"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5, 0.9],
         "seeds": [0], "dense": False, "epochs": 2, "train": TINY_TRAIN, "data_dir": str(tiny_mnist)}
    )
    real_save, interrupted = torch.save, []

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj and not interrupted:  # the first training checkpoint
            interrupted.append(True)
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 106112 vs 106008") from None
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(s, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=stack)
    rows = _db_rows(tmp_path / "o" / "results.db")
    assert rows and all(r["status"] == "pending" and r["owner"] is None for r in rows.values())
    monkeypatch.setattr(torch, "save", real_save)
    summary = run_sweep(s, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False, stack=stack)
    assert summary.counts["done"] == 2


def test_two_sweeps_on_one_database_never_run_a_run_twice(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist", n_train=1000, n_test=200)
    out = tmp_path / "sweep"
    cmd = _sweep_cmd(data_dir, out, methods="random,magnitude,snip,grasp", epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes side by side: one thread each
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(2)]
    progress = _db_progress(out / "results.db")
    for p in procs:
        assert wait_while_progressing(p, progress) == 0
    rows = _db_rows(out / "results.db")
    assert len(rows) == 9 and all(r["status"] == "done" and r["attempts"] == 1 for r in rows.values())
    assert len({r["owner"] for r in rows.values()}) == 2  # both processes did part of the work


def test_run_sweep_in_process_and_report(tmp_path, tiny_mnist):
    from prunekit.report import write_report

    s = sweep_from_mapping(
        {"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random", "snip"], "sparsities": [0.5, 0.9],
         "seeds": [0, 1], "epochs": 2, "train": TINY_TRAIN, "data_dir": str(tiny_mnist)}
    )
    summary = run_sweep(s, tmp_path / "o", device=torch.device("cpu"), progress=False, log=False)
    assert summary.counts["done"] == 10
    assert run_sweep(s, tmp_path / "o", progress=False, log=False).counts["skipped"] == 10
    tables, files = write_report(tmp_path / "o", "final")
    (t,) = tables
    assert t.sparsities == [0.5, 0.9] and list(t.rows) == ["random", "snip"] and t.dense.n == 2
    md = t.to_markdown()
    assert "dense (0 %)" in md and "±" in md and md.count("**") >= 4
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        accs = [r.final_acc for r in db.runs(status="done", method="snip", sparsity=0.9)]
    cell = t.rows["snip"][0.9]
    assert cell.mean == pytest.approx(sum(accs) / 2) and cell.n == 2
    names = {f.name for f in files}
    assert "results.csv" in names and "tables.md" in names and any(n.endswith("_accuracy.png") for n in names)
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
    csv_lines = (tmp_path / "o" / "report" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 11 and csv_lines[0].startswith("key,status,model")
    # the same database for pandas users and in TensorBoard
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        frame = db.to_dataframe()
        per_epoch = db.to_dataframe(epochs=True)
    assert len(frame) == 10 and {"key", "method", "sparsity", "final_acc", "config"} <= set(frame.columns)
    assert frame.loc[(frame.method == "snip") & (frame.sparsity == 0.9), "final_acc"].mean() == pytest.approx(cell.mean)
    assert len(per_epoch) == 20 and {"key", "epoch", "train_loss", "test_acc"} <= set(per_epoch.columns)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prunekit.report.tensorboard import export_tensorboard

    root = export_tensorboard(tmp_path / "o")
    folders = sorted(root.iterdir())
    assert len(folders) == 10 and any(f.name.startswith("lenet_300_100-snip-0.9-seed1-") for f in folders)
    events = EventAccumulator(str(folders[0]))
    events.Reload()
    key = folders[0].name.rsplit("-", 1)[1]
    want = per_epoch[per_epoch.key == key].sort_values("epoch")["test_acc"].tolist()
    got = [e.value for e in events.Scalars("test_acc")]
    assert [e.step for e in events.Scalars("test_acc")] == [1, 2] and got == pytest.approx(want)


def test_a_database_from_before_schema_versions_is_migrated_and_a_newer_one_refused(tmp_path):
    from prunekit.experiments.db import SCHEMA, SCHEMA_VERSION, ResultsDBError

    old = tmp_path / "old.db"
    c = sqlite3.connect(old)
    c.executescript(SCHEMA)  # what prunekit wrote before PRAGMA user_version was set
    c.execute("INSERT INTO runs (key, status, model, dataset, method, sparsity, seed, recipe, config, created) "
              "VALUES ('k', 'done', 'lenet5', 'mnist', 'snip', 0.9, 0, 'lenet-fmnist', '{}', 0)")
    c.commit()
    assert c.execute("PRAGMA user_version").fetchone()[0] == 0
    c.close()
    with ResultsDB(old) as db:
        assert db.schema_version == SCHEMA_VERSION
        assert db.get("k").status == "done"
    c = sqlite3.connect(old)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(ResultsDBError, match="newer prunekit"):
        ResultsDB(old)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ResultsDBError, match="junk.db"):
        ResultsDB(junk)
    assert junk.read_bytes().startswith(b"this is not")  # reported, never replaced


# -- databases written before the run model --------------------------------------------------------
LEGACY_DB = Path(__file__).parent / "data" / "legacy_results.db"
# the sweeps that wrote tests/data/legacy_results.db (prunekit before typed runs, on tiny MNIST, fp32)
LEGACY_SWEEPS = [
    {"models": ["lenet_300_100"], "methods": ["snip", "force", "random"], "sparsities": [0.9], "seeds": [0], "dense": True,
     "options": {"force": {"num_steps": 3}}},
    {"models": ["lenet_300_100"], "methods": ["magnitude"], "sparsities": [0.5], "seeds": [1], "dense": False, "ablations": ["shuffle"]},
    {"models": ["lenet_300_100"], "methods": ["imp"], "sparsities": [0.75], "seeds": [0], "dense": False, "options": {"imp": {"fraction": 0.5}}},
    {"models": ["resnet20"], "structured": ["epoch:prune_at=0"], "budgets": ["macs=0.5"], "seeds": [0], "dense": False},
]


def test_a_database_written_before_typed_runs_reads_and_its_runs_are_found_done(tmp_path, tiny_mnist, monkeypatch):
    import shutil

    from prunekit.experiments import ImpRun, StructuredRun, TrainingRun
    from prunekit.report import build_structured_tables, build_tables

    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(LEGACY_DB, out / "results.db")
    with ResultsDB(out / "results.db") as db:
        rows = db.runs()
        assert len(rows) == 8 and all(r.status == "done" for r in rows)
        kinds = {}
        for row in rows:  # every stored configuration decodes to a typed run with the same key
            assert row.run.key == row.key and row.run.config == row.config
            kinds[row.key] = type(row.run)
        assert sorted(k.__name__ for k in kinds.values()) == sorted(["TrainingRun"] * 6 + ["ImpRun", "StructuredRun"])
        assert {ImpRun, StructuredRun, TrainingRun} == set(kinds.values())
        assert len(build_tables(db)) == 1 and len(build_structured_tables(db)) == 1
    # the legacy runs trained lenet-fmnist before its 1-epoch warm-up: asking for that recipe as it was finds them
    common = {"dataset": "mnist", "recipe": "lenet-fmnist", "epochs": 1, "train": {"val_size": 40.0, "batch_size": 50, "warmup_epochs": 0.0},
              "data_dir": str(tiny_mnist)}
    for how in ("amp=false", "no native bf16"):  # the same requests as fp32 runs: all found done, nothing trains
        if how == "no native bf16":
            monkeypatch.setenv("PRUNEKIT_BF16", "0")
            train = common["train"]
        else:
            train = {**common["train"], "amp": False}
        for values in LEGACY_SWEEPS:
            summary = run_sweep(sweep_from_mapping({**values, **common, "train": train}), out, device=torch.device("cpu"), progress=False,
                                log=False)
            assert summary.counts["skipped"] == len(summary.outcomes) > 0, how


def test_a_table_where_only_the_dense_baseline_finished_is_well_formed_markdown():
    from prunekit.report.tables import Cell, Table

    t = Table("lenet5", "fashion-mnist", "lenet-fmnist", 20, "final", [], {}, Cell([0.9, 0.92]))
    lines = t.to_markdown().splitlines()
    header, rule, dense = lines[2:5]
    assert header == "| method | 0 % |" and rule == "|---|---:|" and dense == "| dense (0 %) | 91.00 ± 1.41 |"


def test_a_cell_whose_runs_failed_to_train_says_so_and_is_never_the_best():
    from prunekit.report.tables import Cell, Table

    rows = {"snip": {0.9: Cell([0.5, 0.52]), 0.99: Cell([], failed=3)}, "synflow": {0.9: Cell([0.4], failed=2), 0.99: Cell([0.2])}}
    t = Table("lenet5", "cifar10-jpg", "lenet-fmnist", 10, "final", [0.9, 0.99], rows, None)
    md = t.to_markdown()
    assert "| snip | **51.00 ± 1.41** | failed (3) |" in md and "| synflow | 40.00 (2 failed) | **20.00** |" in md
    assert "(k failed): k runs of the cell never trained" in md and "over 1/2/3 seeds" in md  # runs per cell, failed ones counted
    assert t.best() == {0.9: "snip", 0.99: "synflow"}


def test_compiled_runs_are_a_table_of_their_own_and_its_title_says_so(tmp_path):
    from prunekit.report import write_report

    eager = [resolve(spec("dense", 0.0)), resolve(spec("snip", 0.9)), resolve(spec("dense", 0.0, structured="epoch:prune_at=1"))]
    compiled = resolve(spec("dense", 0.0, train={**TINY_TRAIN, "compile": True}))
    assert compiled.key != eager[0].key
    with ResultsDB(tmp_path / "results.db") as db:
        for run, acc in zip([*eager, compiled], (0.80, 0.70, 0.75, 0.60)):
            db.ensure(run.key, run.config)
            assert db.claim(run.key, "me:1")
            info = {"pruned_epoch": 1, "macs_before": 4.0, "macs_after": 2.0, "params_before": 4.0, "params_after": 2.0,
                    "latency_before_ms": 2.0, "latency_after_ms": 1.0}
            extra = {"structured": info} if run.kind == "structured" else {}
            db.finish(run.key, "me:1", {"final_acc": acc, "best_acc": acc, "extra": extra})
    tables, _ = write_report(tmp_path, plots=False)
    titles = [t.title if hasattr(t, "title") else t.to_markdown().splitlines()[0] for t in tables]
    # the eager dense run is the structured table's baseline; the compiled one, of another training
    # configuration, keeps a table of its own, which says it was compiled
    assert len(tables) == 3, titles
    assert sum(", compiled)" in t for t in titles) == 1 and any("(2 epochs, fp32)" in t or "(2 epochs, bf16)" in t for t in titles)
    (alone,) = [t for t in tables if getattr(t, "compiled", False) and not getattr(t, "budgets", None)]
    assert alone.dense is not None and alone.dense.mean == pytest.approx(0.60) and not alone.sparsities


def test_bf16_and_fp32_runs_of_one_spec_are_separate_tables_never_seeds_of_one_cell(tmp_path):
    import csv
    import dataclasses
    import hashlib

    from prunekit.report import build_tables, write_report

    fp32 = {m: resolve(spec(m, 0.9 if m != "dense" else 0.0)) for m in ("dense", "snip")}
    fp32 = {m: dataclasses.replace(r, precision="fp32") for m, r in fp32.items()}
    bf16 = {m: dataclasses.replace(r, precision="bf16") for m, r in fp32.items()}
    with ResultsDB(tmp_path / "results.db") as db:
        for runs, acc in ((fp32, 0.80), (bf16, 0.90)):
            for m, run in runs.items():
                db.ensure(run.key, run.config)
                assert db.claim(run.key, "me:1")
                db.finish(run.key, "me:1", {"final_acc": acc + (0.05 if m == "dense" else 0.0), "best_acc": acc})
        assert len({r.key for r in db.runs()}) == 4
        tables = sorted(build_tables(db), key=lambda t: t.precision)
        assert [t.precision for t in tables] == ["bf16", "fp32"]
        for t, acc in zip(tables, (0.90, 0.80)):
            assert t.dense is not None and t.dense.n == 1 and t.dense.mean == pytest.approx(acc + 0.05)
            assert t.rows["snip"][0.9].n == 1 and t.rows["snip"][0.9].mean == pytest.approx(acc)
            assert "over 1 seed" in t.title
        assert "(2 epochs, bf16)" in tables[0].title and "(2 epochs, fp32)" in tables[1].title
        # an fp32 table keeps the file name it had before precisions were told apart
        train_json = json.dumps(fp32["dense"].config["train"], sort_keys=True)
        assert tables[1].config_id == hashlib.sha256(train_json.encode()).hexdigest()[:6] != tables[0].config_id
    write_report(tmp_path, plots=False)
    with open(tmp_path / "report" / "results.csv") as f:
        assert sorted(r["precision"] for r in csv.DictReader(f)) == ["bf16", "bf16", "fp32", "fp32"]
