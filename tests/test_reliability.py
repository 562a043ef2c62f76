"""What prunekit promises under faults and mistakes: a live run is never taken over, a failure caused
by the environment does not outlive its cause, low-precision models score correctly, and every
ordinary mistake is one clear error with nothing written (one test per numbered item of the issue)."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
from torch import nn

import prunekit
from conftest import TINY_TRAIN, write_tiny_mnist
from prunekit.cli import main
from prunekit.errors import ConfigError, DataError, ScoreError
from prunekit.experiments import DatasetCache, ResultsDB, RunSpec, resolve, run_one
from prunekit.experiments.db import _start_time, make_owner


def spec(**kw):
    kw.setdefault("train", TINY_TRAIN)
    kw.setdefault("epochs", 1)
    kw.setdefault("recipe", "lenet-fmnist")
    return RunSpec("lenet_300_100", "mnist", kw.pop("method", "snip"), kw.pop("sparsity", 0.9), kw.pop("seed", 0), **kw)


# 1. a live run is never executed twice ------------------------------------------------------------
def test_a_paused_live_owner_keeps_its_run_and_force_refuses(tmp_path, tiny_mnist):
    run = resolve(spec())
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        db.ensure(run.key, run.config)
        live = make_owner()  # this very process: alive, however old its heartbeat
        assert db.claim(run.key, live)
        with db._transaction() as c:
            c.execute("UPDATE runs SET heartbeat = ? WHERE key = ?", (time.time() - 10_000, run.key))  # "paused" for hours
        assert not db.claim(run.key, "someone:else")
        assert db.owned_by_live_process(run.key, "someone:else") == live
        with pytest.raises(ConfigError, match="another live process"):
            run_one(spec(), tmp_path / "o", db=db, datasets=DatasetCache(str(tiny_mnist)), force=True, owner="someone:else")
        # a dead process on this host, or a reused pid (another start time), is gone: its run is taken over
        host, pid = socket.gethostname(), os.getpid()
        reused = f"{host}:{pid}:{int(_start_time(pid) or 0) + 1}:abc"
        with db._transaction() as c:
            c.execute("UPDATE runs SET owner = ? WHERE key = ?", (reused, run.key))
        assert db.claim(run.key, "next:owner")


# 2. a failure does not outlive its cause ------------------------------------------------------------
def test_environment_failures_are_retried_and_method_failures_kept(tmp_path):
    run = resolve(spec())
    with ResultsDB(tmp_path / "r.db") as db:
        db.ensure(run.key, run.config)
        assert db.claim(run.key, "a:1")
        db.fail(run.key, "a:1", "DataError: dataset missing", "environment")
        assert db.claim(run.key, "b:2")  # retried by the next invocation, no --retry-failed needed
        db.fail(run.key, "b:2", "ScoreError: NaN", "method")
        assert not db.claim(run.key, "c:3") and db.claim(run.key, "c:3", retry_failed=True)
    from prunekit.experiments.lifecycle import failure_kind

    assert failure_kind(DataError("gone")) == "environment"
    assert failure_kind(OSError(28, "No space left on device")) == "environment"
    assert failure_kind(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")) == "environment"
    assert failure_kind(ValueError("bad")) == "method"


def test_demo_with_missing_data_writes_nothing_and_then_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out), "--no-progress"]) == 2
    assert "fashion-mnist" in capsys.readouterr().err and not (out / "results.db").exists()


# 3. low precision ---------------------------------------------------------------------------------
def test_grasp_on_a_float16_model_scores_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 10)).half()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 20, generator=g).half(), torch.randint(0, 10, (64,), generator=g)) for _ in range(3)]
    masks = prunekit.prune(model, "grasp", 0.9, data=data, samples_per_class=5)
    scores = prunekit.score(model, "grasp", data=data, samples_per_class=5)
    assert scores["0.weight"].dtype == torch.float32
    assert int((scores["0.weight"] == 0).sum()) < 10  # float16 left 98 % of them exactly 0
    assert masks["0.weight"].sum() > 0 and model[0].weight.dtype == torch.float16  # the model is untouched


# 4. a sparsity that keeps nothing -------------------------------------------------------------------
def test_a_density_that_keeps_no_weight_is_refused(capsys):
    model = nn.Sequential(nn.Linear(10, 10))
    with pytest.raises(ConfigError, match="keeps 0 of the 100"):
        prunekit.prune(model, "magnitude", density=1e-9)
    with pytest.raises(ConfigError, match="keeps 0"):
        resolve(RunSpec("lenet5", "fashion-mnist", "snip", 0.9999999, 0))
    assert main(["run", "--model", "lenet5", "--dataset", "fashion-mnist", "--method", "snip", "--sparsity", "0.9999999"]) == 2
    assert "keeps 0" in capsys.readouterr().err


# 5. one clear error for ordinary mistakes ----------------------------------------------------------
def test_ordinary_mistakes_are_one_clear_error(tmp_path, tiny_mnist, capsys):
    base = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--method", "snip", "--epochs", "1",
            "--train", "val_size=40", "--train", "batch_size=50", "--no-progress"]
    as_file = tmp_path / "afile"
    as_file.write_text("x")
    for argv, message in [
        ([*base, "--seed", "9223372036854775808", "--out", str(tmp_path / "o")], "seed must be an integer in [0, 2**63 - 1]"),
        ([*base, "--out", str(as_file)], "is a file"),
        ([*base, "--density", "2", "--out", str(tmp_path / "o")], "density must be in (0, 1]"),
        (["run", "--model", "lenet5", "--dataset", "fashion-mnist", "--method", "dense", "--sparsity", "0.5"], "dense baseline prunes nothing"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="seed"):
        prunekit.prune(nn.Linear(3, 3), "random", 0.5, seed=2**70)
    # a corrupt gzipped dataset names its file
    bad = write_tiny_mnist(tmp_path / "bad")
    raw = bytearray((bad / "train-images-idx3-ubyte.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        prunekit.data.load_dataset("mnist", bad)
    # a truncated results database is reported with its path, never replaced
    db_path = tmp_path / "t" / "results.db"
    run_one(spec(), tmp_path / "t", datasets=DatasetCache(str(tiny_mnist)), device=torch.device("cpu"))
    data = db_path.read_bytes()
    for leftover in ("results.db-wal", "results.db-shm"):
        (tmp_path / "t" / leftover).unlink(missing_ok=True)
    db_path.write_bytes(data[: len(data) // 3])
    assert main(["report", "--out", str(tmp_path / "t"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "results.db" in err and "is damaged or not a prunekit results database" in err and ".recover" in err and "Traceback" not in err
    # a model that cannot run on the data
    with pytest.raises(ScoreError, match=r"inputs \(4, 3, 8, 8\) float32"):
        prunekit.prune(prunekit.models.create("lenet5", 10, (1, 28, 28)), "snip", 0.9,
                       data=[(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))])


# 6. sweep files validated in full ---------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    (b"\xff\xfe\x00binary", "not a text file"),
    (b'models = [["x"]]\ndataset = "mnist"\nmethods = ["snip"]\nsparsities = [0.9]\n', "list of names"),
    (b'models = ["lenet5"]\ndataset = "mnist"\nmethods = ["snip"]\nsparsities = [0.9]\ndense = "false"\n', "true or false"),
    (b'models = ["lenet5"]\ndataset = "mnist"\nmethods = []\nsparsities = [0.9]\n', "'methods'"),
    (b'models = []\ndataset = "mnist"\nmethods = ["snip"]\nsparsities = [0.9]\n', "'models'"),
    (b'models = ["lenet5"]\ndataset = "mnist"\nmethods = ["snip"]\nsparsities = [0.9]\ndata_dir = 3\n', "'data_dir'"),
])
def test_sweep_files_are_validated_before_anything_runs(tmp_path, capsys, text, message):
    cfg = tmp_path / "s.toml"
    cfg.write_bytes(text)
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_empty_methods_flag_is_an_error(tmp_path, capsys):
    assert main(["sweep", "--models", "lenet5", "--dataset", "mnist", "--methods", ",", "--sparsities", "0.9", "--out", str(tmp_path / "o")]) == 2
    assert "methods" in capsys.readouterr().err


# 7. messages that say what happened ------------------------------------------------------------------
def test_messages_name_the_real_problem(tmp_path, tiny_mnist, capsys):
    run_one(spec(), tmp_path / "o", datasets=DatasetCache(str(tiny_mnist)), device=torch.device("cpu"))
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path / "o"), "--model", "resnet20", "--no-plots"]) == 0
    assert "no finished runs match model=resnet20" in capsys.readouterr().err
    with pytest.raises(DataError, match="float targets"):
        prunekit.prune(nn.Linear(4, 3), "snip", 0.5, data=[(torch.randn(8, 4), torch.rand(8))])


# 8. progress outside a terminal ----------------------------------------------------------------------
def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, tiny_mnist, capsys):
    assert main(["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--method", "snip",
                 "--epochs", "2", "--train", "val_size=40", "--train", "batch_size=50", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "left" in err
    from prunekit.report.tables import epochs_text, percent

    assert percent(0.9999999) == "99.99999" and epochs_text(1) == "1 epoch"


def test_the_fault_table_in_the_docs_names_tests_that_exist():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    here = Path(__file__).resolve().parent
    names = [part for line in text.splitlines() if line.startswith("|") for part in line.split("`") if "::" in part]
    assert names
    for name in names:
        file, _, test = name.partition("::")
        assert f"def {test.split('[')[0]}(" in (here.parent / file).read_text(), name
    every_test = "".join(p.read_text() for p in here.glob("test_*.py"))
    bare = [part for line in text.splitlines() if line.startswith("|") for part in line.split("`") if part.startswith("test_")]
    for name in bare:  # a second test named in a row, without its file
        assert f"def {name}(" in every_test, name


# 29.1 a fresh heartbeat is never taken over, whatever the pid check says -----------------------------
def test_a_fresh_heartbeat_from_another_pid_namespace_is_never_taken_over(tmp_path):
    from prunekit.experiments.db import _namespace

    run = resolve(spec())
    assert make_owner().endswith(":" + _namespace())  # an owner names its machine and PID namespace
    host = socket.gethostname()
    dead_pid = 999_999_999
    with ResultsDB(tmp_path / "r.db", stale_after=300.0) as db:
        db.ensure(run.key, run.config)
        assert db.claim(run.key, "x:1")
        # the same hostname, a pid that does not exist here: another PID namespace (a container with
        # host networking, unshare --pid), or an owner written before namespaces were recorded
        for owner in (f"{host}:{dead_pid}:123:nonce:{'0' * 8 if _namespace() != '0' * 8 else '1' * 8}", f"{host}:{dead_pid}:123:nonce"):
            with db._transaction() as c:
                c.execute("UPDATE runs SET owner = ?, heartbeat = ? WHERE key = ?", (owner, time.time(), run.key))
            assert not db.claim(run.key, "thief:1")  # its heartbeat is fresh: it is alive somewhere
            with db._transaction() as c:
                c.execute("UPDATE runs SET heartbeat = ? WHERE key = ?", (time.time() - 301.0, run.key))
            assert db.claim(run.key, "next:1")  # silent past the lease: free
        # in this namespace the pid check is certain: a dead owner's run is free at once
        with db._transaction() as c:
            c.execute("UPDATE runs SET owner = ?, heartbeat = ? WHERE key = ?", (f"{host}:{dead_pid}:-:n:{_namespace()}", time.time(), run.key))
        assert db.claim(run.key, "after:crash")


# 29.2 a worker that lost its claim stops without writing ---------------------------------------------
def test_a_worker_whose_claim_is_taken_over_stops_cleanly_without_writing(tmp_path, tiny_mnist, monkeypatch, capsys):
    from prunekit.experiments.record import Store
    from prunekit.training import Callback

    class TakenOver(Callback):  # another host takes the run over after epoch 1 (this process was paused)
        def __init__(self, db, key):
            self.db, self.key = db, key

        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 0:
                with self.db._transaction() as c:
                    c.execute("UPDATE runs SET owner = 'otherhost:1:-:n:ffffffff', heartbeat = ? WHERE key = ?", (time.time(), self.key))

    original = Store.epoch_callbacks

    def with_takeover(self, run):
        return lambda phase: [*original(self, run)(phase), TakenOver(self.db, run.key)]

    monkeypatch.setattr(Store, "epoch_callbacks", with_takeover)
    out = run_one(spec(epochs=3), tmp_path / "o", datasets=DatasetCache(str(tiny_mnist)))
    assert out.status == "lost" and out.record.owner.startswith("otherhost") and out.record.status == "running"
    assert "taken over" in out.describe()
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        assert [e["epoch"] for e in db.epochs(out.key)] == [1]  # nothing written after the claim was lost
    checkpoint = torch.load(tmp_path / "o" / "runs" / out.key / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1  # the new owner's files are not overwritten
    assert "Traceback" not in capsys.readouterr().err


# 29.4-5 damaged run files are set aside and the run restarts -----------------------------------------
def test_a_checkpoint_damaged_inside_is_detected_set_aside_and_the_run_resumes_from_the_previous_one(tmp_path, tiny_mnist):
    from prunekit.training.checkpoint import CheckpointDamaged, load_checkpoint

    datasets = DatasetCache(str(tiny_mnist))
    first = run_one(spec(epochs=3), tmp_path / "o", datasets=datasets)
    assert first.status == "done"
    run_dir = tmp_path / "o" / "runs" / first.key
    checkpoint, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.pt.prev"
    assert load_checkpoint(checkpoint)["epoch"] == 3 and load_checkpoint(prev)["epoch"] == 2
    data = bytearray(checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)  # 4 KB zeroed inside: torch.load alone would not notice
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match="does not match its checksum|cannot read"):
        load_checkpoint(checkpoint)
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        db.reset(first.key)  # as if it had been interrupted in its last epoch
    again = run_one(spec(epochs=3), tmp_path / "o", datasets=datasets)
    assert again.status == "done" and again.record.final_acc == first.record.final_acc  # resumed exactly from epoch 2
    recovered = " ".join(again.record.extra["recovered"])
    assert "damaged" in recovered or "cannot read" in recovered
    assert "previous checkpoint" in recovered and list(run_dir.glob("checkpoint.pt.damaged*"))


@pytest.mark.parametrize("damage", ["empty checkpoint", "truncated checkpoint", "empty masks", "truncated masks"])
def test_a_truncated_or_empty_run_file_restarts_the_run_without_retry_or_force(tmp_path, tiny_mnist, damage):
    datasets = DatasetCache(str(tiny_mnist))
    first = run_one(spec(epochs=2), tmp_path / "o", datasets=datasets)
    run_dir = tmp_path / "o" / "runs" / first.key
    target = run_dir / ("checkpoint.pt" if "checkpoint" in damage else "masks.pt")
    target.write_bytes(b"" if damage.startswith("empty") else target.read_bytes()[:200])
    if "checkpoint" in damage:
        (run_dir / "checkpoint.pt.prev").unlink()  # no earlier checkpoint: training starts over
    with ResultsDB(tmp_path / "o" / "results.db") as db:
        db.reset(first.key)
    again = run_one(spec(epochs=2), tmp_path / "o", datasets=datasets)
    assert again.status == "done", again.record.error
    assert again.record.final_acc == first.record.final_acc  # the same run, trained again from where it could
    assert again.record.extra["recovered"] and list(run_dir.glob(target.name + ".damaged*"))
    assert prunekit.Masks.load(run_dir / "masks.pt") == prunekit.Masks.load(first.record.mask_path)


# 29.6 scorer files are keyed by their checksum and checked before a run --------------------------------
def test_a_scorer_file_is_keyed_by_its_checksum_and_a_changed_file_is_refused(tmp_path):
    import shutil

    from prunekit.autosparse import ScorerFileError, list_scorers
    from prunekit.methods.autosparse import AutoSparseOptions

    shipped = list_scorers()
    path = tmp_path / "my-scorer.pt"
    shutil.copyfile(shipped["lenet300-fmnist"], path)
    first = resolve(spec(method="autosparse", method_options={"scorer": str(path)}))
    assert first.options.scorer_sha256 and first.config["method_options"]["scorer_sha256"] == first.options.scorer_sha256
    assert resolve(spec(method="autosparse", method_options={"scorer": str(path)})).key == first.key
    shutil.copyfile(shipped["lenet5-fmnist"], path)  # taught again, to the same path
    second = resolve(spec(method="autosparse", method_options={"scorer": str(path)}))
    assert second.key != first.key  # another scorer: another run, not the old result
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(ScorerFileError, match="changed since this run was resolved"):
        prunekit.prune(model, "autosparse", 0.5, data=data, options=first.options)
    assert prunekit.prune(model, "autosparse", 0.5, data=data, options=second.options).density == pytest.approx(0.5, abs=0.01)
    named = resolve(spec(method="autosparse", method_options={"scorer": "lenet5-fmnist"}))
    assert named.options.scorer_sha256 is None and "scorer_sha256" not in named.config["method_options"]  # keys of shipped names unchanged
    assert AutoSparseOptions().scorer in shipped


@pytest.mark.parametrize("bad", ["", "no-such-scorer", "missing.pt", "DIR", "EMPTY", "TEXT", "MASKS", "CHECKPOINT", "TRUNCATED"])
def test_every_bad_scorer_value_is_one_error_before_anything_runs(tmp_path, tiny_mnist, bad, capsys):
    import shutil

    from prunekit.autosparse import list_scorers

    files = {"DIR": tmp_path / "a-dir", "EMPTY": tmp_path / "empty.pt", "TEXT": tmp_path / "text.pt", "MASKS": tmp_path / "masks.pt",
             "CHECKPOINT": tmp_path / "ckpt.pt", "TRUNCATED": tmp_path / "cut.pt"}
    files["DIR"].mkdir()
    files["EMPTY"].write_bytes(b"")
    files["TEXT"].write_text("not a scorer")
    prunekit.Masks({"w": torch.ones(4, dtype=torch.bool)}).save(files["MASKS"])
    torch.save({"format": "prunekit-checkpoint", "epoch": 1}, files["CHECKPOINT"])
    shutil.copyfile(list_scorers()["lenet5-fmnist"], files["TRUNCATED"])
    files["TRUNCATED"].write_bytes(files["TRUNCATED"].read_bytes()[:5000])
    value = str(files.get(bad, tmp_path / bad if bad.endswith(".pt") else bad))
    out = tmp_path / "o"
    argv = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--method", "autosparse",
            "--opt", f"scorer={value}", "--epochs", "1", "--recipe", "lenet-fmnist", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error:") and "Traceback" not in err and "scorer" in err.lower()
    assert not out.exists()


# 29.7-8 environment failures named as such; a damaged database refused before anything trains --------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder):
    with open(folder / "filler", "wb") as f:  # until the disk is full
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_with_a_healthy_database_is_said_as_such_and_the_database_kept(small_disk, tiny_mnist, capsys):
    out = small_disk / "o"
    with ResultsDB(out / "results.db") as db:  # a healthy database, made while there was room
        run = resolve(spec())
        db.ensure(run.key, run.config)
    _fill(small_disk)
    argv = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--method", "snip",
            "--recipe", "lenet-fmnist", "--epochs", "1", "--train", "val_size=40", "--train", "batch_size=50", "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2) and "no space left on" in err and "move" not in err and "Traceback" not in err, err
    (small_disk / "filler").unlink()
    assert main(argv) == 0  # once space is free the same command runs: nothing was lost or damaged


def test_a_checkpoint_write_on_a_full_disk_is_an_environment_failure_retried_next_time(tmp_path, tiny_mnist, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    import prunekit.files as files

    real_save, real_usage = files.torch.save, shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def full(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "prunekit-checkpoint":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4489920 vs 4489808")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(files.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 0))
    argv = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--method", "snip", "--recipe",
            "lenet-fmnist", "--epochs", "1", "--train", "val_size=40", "--train", "batch_size=50", "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no space left on" in err and "environment failure" in err and "Traceback" not in err and "enforce fail" not in err
    monkeypatch.setattr(files.torch, "save", real_save)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    assert main(argv) == 0  # an environment failure is retried by the next invocation, no --retry-failed


def test_a_database_damaged_inside_is_refused_before_anything_trains(tmp_path, tiny_mnist, capsys):
    out = tmp_path / "o"
    with ResultsDB(out / "results.db") as db:
        for i in range(400):  # several pages of rows
            db.ensure(f"k{i:04d}", {**resolve(spec()).config, "seed": i, "note": "x" * 200})
    import sqlite3

    conn = sqlite3.connect(out / "results.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray((out / "results.db").read_bytes())
    data[5 * page : 6 * page] = b"\x55" * page  # an interior page overwritten
    (out / "results.db").write_bytes(bytes(data))
    argv = ["sweep", "--models", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--methods", "snip",
            "--sparsities", "0.9", "--recipe", "lenet-fmnist", "--epochs", "1", "--train", "val_size=40", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and ".recover" in err and "Traceback" not in err
    assert not (out / "runs").exists()  # nothing trained


def test_a_results_database_that_is_a_folder_is_one_error(tmp_path, tiny_mnist, capsys):
    (tmp_path / "o" / "results.db").mkdir(parents=True)
    argv = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--method", "snip",
            "--recipe", "lenet-fmnist", "--epochs", "1", "--train", "val_size=40", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "Traceback" not in err


# 29.9-12 every mistake caught before the run starts: exit 2, one error, nothing written ----------------
def _tiny_cifar_tarball(folder):
    import io
    import tarfile

    from PIL import Image

    tree = folder / "tree"
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("airplane", "cat"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(buf, format="JPEG")
                (tree / split / cls / f"{i:04d}.jpg").write_bytes(buf.getvalue())
    tarball = folder / "cifar10-jpg.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpg")
    return tarball


RUN = ["run", "--model", "lenet_300_100", "--dataset", "mnist", "--recipe", "lenet-fmnist", "--epochs", "1", "--train", "val_size=40"]


@pytest.mark.parametrize("extra, message", [
    (["--method", "snip", "--train", "val_size=60000"], "val_size=60000 does not fit"),
    (["--method", "snip", "--train", "train_subset=99999999"], "train_subset=99,999,999 is more than"),
    (["--method", "snip", "--epochs", "99999999999999999999"], "must be <= 100000"),
    (["--method", "snip", "--nproc", "0"], "--nproc must be at least 1"),
    (["--method", "snip", "--nproc", "-2"], "--nproc must be at least 1"),
    (["--method", "snip", "--lease", "1"], "lease must be a number of seconds >= 10"),
    (["--structured", "epi", "--budget", "macs=1e-9"], "cannot be met without emptying layers"),
    (["--structured", "early_bird", "--budget", "macs=0.5"], "has no BatchNorm layer"),
])
def test_mistakes_that_only_showed_mid_run_are_caught_before_it_starts(tmp_path, tiny_mnist, extra, message, capsys):
    out = tmp_path / "o"
    argv = [*RUN, "--data-dir", str(tiny_mnist), "--out", str(out), *extra]
    if extra[0] == "--structured":
        argv[argv.index("lenet_300_100")] = "resnet20" if "epi" in extra else "lenet5"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error:") and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_sweep_and_teach_mistakes_are_caught_before_anything_is_written(tmp_path, tiny_mnist, capsys):
    out = tmp_path / "o"
    sweep = tmp_path / "s.toml"
    sweep.write_text('models = ["lenet_300_100"]\ndataset = "mnist"\nmethods = ["snip"]\nsparsities = [0.9, 0.9]\nseeds = [0]\n')
    cases = [
        (["sweep", "--config", str(sweep), "--data-dir", str(tiny_mnist), "--out", str(out)], "more than once"),
        (["sweep", "--models", "lenet_300_100", "--dataset", "mnist", "--methods", "snip", "--sparsities", "0.9", "--seeds", "1,1",
          "--data-dir", str(tiny_mnist), "--out", str(out)], "more than once"),
        (["autosparse", "teach", "--from-run", "abc", "--epochs", "0", "--save", str(tmp_path / "s.pt"), "--out", str(out)],
         "--epochs must be at least 1"),
        (["autosparse", "teach", "--from-run", "", "--save", str(tmp_path / "s.pt"), "--out", str(out)], "--from-run needs"),
        (["autosparse", "teach", "--from-run", "abc", "--save", "/proc/no/such/scorer.pt", "--out", str(out)], "cannot write"),
    ]
    sweep_file = tmp_path / "e.toml"
    sweep_file.write_text('models = ["lenet_300_100"]\ndataset = "mnist"\nmethods = ["snip"]\nsparsities = [0.9]\nepochs = 1e20\n')
    cases.append((["sweep", "--config", str(sweep_file), "--data-dir", str(tiny_mnist), "--out", str(out)], "'epochs'"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("prunekit: error:") and message in err and "Traceback" not in err, (argv, err)
        assert not out.exists()


def test_an_unreachable_ray_cluster_is_one_error_at_once(tmp_path, tiny_mnist, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "o"
    argv = ["sweep", "--models", "lenet_300_100", "--dataset", "mnist", "--methods", "snip", "--sparsities", "0.9",
            "--data-dir", str(tiny_mnist), "--backend", "ray", "--address", "127.0.0.1:1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in err and "Traceback" not in err
    assert not out.exists()


def test_a_truncated_tarball_is_one_error_and_the_folder_holding_it_is_understood(tmp_path):
    from prunekit import data

    tarball = _tiny_cifar_tarball(tmp_path)
    cache = tmp_path / "cache"
    import os

    os.environ["PRUNEKIT_CACHE"] = str(cache)
    try:
        ds = data.load_dataset("cifar10-jpg", tmp_path)  # the folder that holds cifar10-jpg.tar.gz
        assert len(ds.train) == 6 and len(ds.test) == 2
        cut = tmp_path / "cut" / "cifar10-jpg.tar.gz"
        cut.parent.mkdir()
        cut.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
        with pytest.raises(DataError, match="truncated or corrupt"):
            data.load_dataset("cifar10-jpg", cut)
    finally:
        del os.environ["PRUNEKIT_CACHE"]


# 29.13 progress off a terminal: a line at least every ~10 s of work ---------------------------------
def test_off_a_terminal_long_scoring_and_training_say_where_they_are(tmp_path, monkeypatch, caplog):
    import logging
    import time as time_module

    from prunekit import training
    from resume_worker import toy_dataset

    ticks = iter(range(0, 10**6, 11))  # every look at the clock: 11 s of work later
    monkeypatch.setattr(time_module, "monotonic", lambda: float(next(ticks)))
    caplog.set_level(logging.INFO, logger="prunekit")
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    prunekit.prune(model, "synflow", 0.9, example_inputs=torch.randn(2, 1, 4, 4), num_steps=5)
    lines = [r.getMessage() for r in caplog.records if "synflow scoring" in r.getMessage()]
    assert len(lines) >= 4 and "steps" in lines[-1] and "left" in lines[-1]
    caplog.clear()
    from prunekit import models

    lenet = models.create("lenet5", 10, (1, 28, 28), seed=0)
    training.fit(lenet, toy_dataset(), training.TrainConfig(epochs=1, batch_size=50, lr=0.05), device="cpu", progress=None)
    batch_lines = [r.getMessage() for r in caplog.records if "batches" in r.getMessage()]
    assert batch_lines and "epoch 1/1" in batch_lines[0] and "left" in batch_lines[0]


# 29 dead runs are flagged, never recorded as results ----------------------------------------------------
def _dead(model):
    """Every ReLU off from the start (first layer's biases far below zero): a network known to die."""
    with torch.no_grad():
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        first.bias.fill_(-100.0)
    return model


def test_a_run_that_never_leaves_chance_level_fails_loudly_unless_its_masks_cut_the_network(tmp_path, tiny_mnist, monkeypatch):
    from prunekit import training
    from prunekit.experiments import TrainingRun
    from prunekit.training.core import STALL_MIN_STEPS
    from resume_worker import toy_dataset

    epochs = STALL_MIN_STEPS // 10  # 500 images in batches of 50: 10 steps an epoch
    model = _dead(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)))
    with pytest.warns(prunekit.PrunekitWarning, match="chance level"):
        result = training.fit(model, toy_dataset(), training.TrainConfig(epochs=epochs, batch_size=50, lr=0.05), device="cpu", progress=False)
    assert "ln 10" in result.extra["stalled"]
    healthy = training.fit(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)), toy_dataset(),
                           training.TrainConfig(epochs=epochs, batch_size=50, lr=0.05), device="cpu", progress=False)
    assert "stalled" not in healthy.extra
    # too few steps prove nothing: the same dead network after 2 epochs (20 steps) is not called stalled
    short = training.fit(_dead(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))), toy_dataset(),
                         training.TrainConfig(epochs=2, batch_size=50, lr=0.05), device="cpu", progress=False)
    assert "stalled" not in short.extra

    original = TrainingRun.make_model
    monkeypatch.setattr(TrainingRun, "make_model", lambda self, ds, device, seed=None: _dead(original(self, ds, device, seed)))
    datasets = DatasetCache(str(tiny_mnist))
    long = -(-STALL_MIN_STEPS // 7)  # 360 training images in batches of 50: at least 7 steps an epoch
    dense = run_one(spec(method="dense", sparsity=0.0, epochs=long), tmp_path / "o", datasets=datasets)
    assert dense.status == "failed" and dense.record.error.startswith("TrainingStalled: the training loss stayed at chance level")
    assert dense.record.failure == "method" and dense.record.final_acc is None  # never a result
    # a mask that cuts every path through the network: chance level is the method's own result, recorded and marked
    monkeypatch.setattr(TrainingRun, "make_model", original)
    original_prepare = TrainingRun.prepare

    def cut(self, ctx, ds):
        model, masks = original_prepare(self, ctx, ds)
        first = next(iter(masks))
        return model, prunekit.Masks({**dict(masks.items()), first: torch.zeros_like(masks[first])}, masks.meta)

    monkeypatch.setattr(TrainingRun, "prepare", cut)
    collapsed = run_one(spec(epochs=long, seed=5), tmp_path / "o", datasets=datasets)
    assert collapsed.status == "done" and collapsed.record.extra["disconnected"] is True and collapsed.record.effective_density == 0.0
    # and it trains one epoch, not the recipe's: no training can change a constant prediction
    assert collapsed.record.extra["history_epochs"] == 1 < long
    assert collapsed.record.extra["stopped"].startswith(f"stopped after epoch 1 of {long}: the mask leaves no path")
