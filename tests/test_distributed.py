"""Masks under torch.distributed: two gloo processes on this machine score their own batches and get
the mask one process gets on both ranks' batches together; a rank that diverged is one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import prunekit
from prunekit import Masks

K = 4  # batches per rank
# method -> (options, reference data: "concat" = step k scores rank 0's and rank 1's k-th batches as one batch,
#            "all" = every batch of both ranks, one after another (a full-pass sum))
CASES = {
    "snip": ({}, "concat"),
    "iter_snip": ({"num_steps": 3}, "concat"),
    "force": ({"num_steps": 3}, "concat"),
    "grasp": ({"samples_per_class": None, "num_batches": 1, "reinit_linear": False}, "concat"),
    "prospr": ({"inner_steps": 2}, "concat"),
    "autosparse": ({}, "all"),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _batches(rank: int) -> list:
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(6, 12, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)) for _ in range(K)]


def _worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        model = _model()
        for method, (opts, _) in CASES.items():
            masks = prunekit.prune(model, method, 0.8, data=_batches(rank), seed=3, **opts)
            masks.save(Path(folder) / f"{method}-{rank}.pt")
        if rank == 1:  # a rank whose weights drifted
            with torch.no_grad():
                model[1].weight.add_(torch.randn(model[1].weight.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
        outcome = {}
        for method in ("snip", "magnitude"):
            try:
                prunekit.prune(model, method, 0.8, data=_batches(rank), seed=3)
                outcome[method] = "no error"
            except prunekit.ScoreError as exc:
                outcome[method] = str(exc)
        (Path(folder) / f"diverged-{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


def test_two_ranks_get_the_mask_of_one_process_on_both_ranks_data(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    model = _model()
    b0, b1 = _batches(0), _batches(1)
    for method, (opts, reference) in CASES.items():
        m0, m1 = Masks.load(tmp_path / f"{method}-0.pt"), Masks.load(tmp_path / f"{method}-1.pt")
        assert m0 == m1, f"{method}: the ranks disagree"
        assert m0.meta["world_size"] == 2
        if reference == "concat":
            data = [(torch.cat([x0, x1]), torch.cat([y0, y1])) for (x0, y0), (x1, y1) in zip(b0, b1)]
        else:
            data = b0 + b1
        single = prunekit.prune(model, method, 0.8, data=data, seed=3, **opts)
        assert single.meta["world_size"] == 1
        assert m0 == single, f"{method}: two ranks and one process disagree"
    for rank in (0, 1):
        outcome = json.loads((tmp_path / f"diverged-{rank}.json").read_text())
        for method in ("snip", "magnitude"):
            assert "rank(s) 1 differ from rank 0" in outcome[method], outcome


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.exists() and os.environ.get("PRUNEKIT_REQUIRE_DATA") != "1", reason="Fashion-MNIST not installed")
def test_a_two_process_run_learns_keeps_masks_and_matches_one_process(tmp_path):
    from prunekit.experiments.db import ResultsDB

    # fp32: the claim checked is the same SGD as one process up to summation order, which bf16's rounding of
    # half batches would blur (the bf16 path of a --nproc run is the kill-and-resume test's)
    args = ["run", "--model", "lenet5", "--dataset", "fashion-mnist", "--method", "snip", "--sparsity", "0.9", "--epochs", "2",
            "--train", "train_subset=6000", "--train", "amp=false", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out, extra in (("one", []), ("two", ["--nproc", "2"])):
        proc = subprocess.run([sys.executable, "-m", "prunekit.cli", *args, "--out", str(tmp_path / out), *extra],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {}
    for out in ("one", "two"):
        with ResultsDB(tmp_path / out / "results.db") as db:
            (record,) = db.runs()
            rows[out] = {**record.as_dict(), "history": db.epochs(record.key)}
    one, two = rows["one"], rows["two"]
    assert one["key"] == two["key"] and two["status"] == "done"  # the same run, trained on two ranks
    assert two["extra"]["world_size"] == 2 and "world_size" not in one["extra"]
    assert two["final_acc"] > 0.6  # learns: chance is 0.1
    # the ranks split every global batch of 128 in halves: the same SGD as one process, up to float order
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert abs(b["test_acc"] - a["test_acc"]) < 0.01
    # rank 0 checkpointed; both ranks ended with identical weights (checked when training ends), pruned ones 0
    run_dir = tmp_path / "two" / "runs" / two["key"]
    masks = Masks.load(run_dir / "masks.pt")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    for name, m in masks.items():
        assert torch.count_nonzero(state[name][~m]) == 0


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":  # a zombie has died already
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not FMNIST.exists() and os.environ.get("PRUNEKIT_REQUIRE_DATA") != "1", reason="Fashion-MNIST not installed")
def test_a_killed_two_process_run_resumes_from_rank_0s_checkpoint(tmp_path):
    import signal
    import time

    from conftest import STALL_SECONDS
    from prunekit.experiments.db import ResultsDB
    from prunekit.training.precision import resolve_precision

    args = [sys.executable, "-m", "prunekit.cli", "run", "--model", "lenet5", "--dataset", "fashion-mnist", "--method", "snip",
            "--sparsity", "0.9", "--epochs", "3", "--train", "train_subset=4000", "--no-progress", "--out", str(tmp_path), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = None
    while proc.poll() is None and checkpoint is None:  # kill every process of the launch once epoch 1 is checkpointed
        found = list((tmp_path / "runs").glob("*/checkpoint.pt")) if (tmp_path / "runs").is_dir() else []
        if found:
            checkpoint = found[0]
            os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: torchrun and both ranks must die with it
        time.sleep(0.05)
    proc.wait()
    assert checkpoint is not None, "the run finished before it could be killed"
    left, since = _processes_mentioning(str(tmp_path)), time.monotonic()
    while left and time.monotonic() - since < STALL_SECONDS:  # orphans would go on training (a hang, not a slow day)
        time.sleep(0.05)
        left = _processes_mentioning(str(tmp_path))
    assert not left, f"processes of the killed launch still run: {left}"
    epoch_at_kill = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= epoch_at_kill < 3
    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    said = again.stdout + again.stderr  # the relaunch trains only the epochs after the checkpoint
    assert f"epoch {epoch_at_kill}/3," not in said and f"epoch {epoch_at_kill + 1}/3," in said, said
    with ResultsDB(tmp_path / "results.db") as db:
        (row,) = db.runs()
        assert row.status == "done" and row.extra["world_size"] == 2
        assert row.extra["precision"] == resolve_precision(True, True, "cpu").dtype  # bf16 where the CPU runs it natively
        assert [e["epoch"] for e in db.epochs(row.key)] == [1, 2, 3]  # continued, nothing twice
    masks = Masks.load(checkpoint.parent / "masks.pt")
    state = torch.load(checkpoint, weights_only=False)["model"]
    assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in masks.items())
