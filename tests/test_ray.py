"""Sweeps on Ray: a local Ray instance (2 CPUs) trains every run once, the driver alone writes the
database, a worker killed mid-run is retried and resumes from its checkpoint, a rerun is instant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import write_tiny_mnist
from prunekit.errors import ConfigError, DataError
from prunekit.experiments import run_sweep, sweep_from_mapping
from prunekit.experiments.db import ResultsDB

pytest.importorskip("ray")  # a test dependency ([test] extra)

EPOCHS = 40


def _sweep_args(data, out):
    return ["sweep", "--models", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(data), "--methods", "random",
            "--sparsities", "0.5", "--seeds", "0,1", "--no-dense", "--epochs", str(EPOCHS), "--train", "val_size=40",
            "--train", "batch_size=50", "--out", str(out), "--no-progress", "--backend", "ray"]


def test_a_ray_sweep_survives_a_killed_worker_and_records_every_run_once(tmp_path):
    data = write_tiny_mnist(tmp_path / "mnist")
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "prunekit.cli", *_sweep_args(data, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    while proc.poll() is None and killed is None:  # kill the first worker seen mid-run (checkpointed, not finished)
        for info in (out / "runs").glob("*/worker.json") if (out / "runs").is_dir() else []:
            run_dir = info.parent
            if (run_dir / "checkpoint.pt").is_file() and not (run_dir / "layers.json").is_file():
                pid = json.loads(info.read_text())["pid"]
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed = run_dir.name
                break
        time.sleep(0.02)
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert killed is not None, "no worker was caught mid-run"
    with ResultsDB(out / "results.db") as db:
        rows = db.runs()
        assert len(rows) == 2 and all(r.status == "done" and r.attempts == 1 for r in rows)
        for r in rows:
            epochs = db.epochs(r.key)
            assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))  # nothing lost, nothing twice
        victim = next(r for r in rows if r.key == killed)
        assert victim.extra["ray"]["resumed_from_epoch"] >= 1  # the retry continued from the checkpoint
    assert not list(out.glob(".prunekit-ray-*"))  # the shared-storage marker is cleaned up
    # the same sweep again: every run is found done, no Ray instance is started
    spec = sweep_from_mapping({"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5],
                               "seeds": [0, 1], "dense": False, "epochs": EPOCHS, "train": {"val_size": 40.0, "batch_size": 50},
                               "data_dir": str(data)})
    again = run_sweep(spec, out, device=torch.device("cpu"), progress=False, log=False, backend="ray")
    assert again.counts["skipped"] == 2


def test_a_worker_that_cannot_see_the_output_folder_says_so(tmp_path):
    from prunekit.experiments.backends.ray import train_on_worker

    with pytest.raises(DataError, match="storage every node sees"):
        train_on_worker({}, str(tmp_path), None, ".prunekit-ray-missing", "cpu", 1)


def test_without_ray_the_backend_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    spec = sweep_from_mapping({"models": ["lenet_300_100"], "dataset": "mnist", "methods": ["random"], "sparsities": [0.5],
                               "data_dir": str(write_tiny_mnist(tmp_path / "mnist"))})
    with pytest.raises(ConfigError, match=r"pip install 'prunekit\[ray\]'"):
        run_sweep(spec, tmp_path / "o", backend="ray", progress=False)
    assert not (tmp_path / "o").exists()
