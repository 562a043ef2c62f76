"""The same small sweep with the local backend and with Ray on this machine, wall-clock side by side.

Both sweeps train the same runs (LeNet-300-100 on Fashion-MNIST, a few methods, short) into two
fresh output folders, one after the other in this process: ``local`` runs them one at a time in
this process; ``ray`` starts a local Ray instance and runs each as a task (one CPU each, so two at
a time on two cores). Ray's cost per run = (ray - local x parallel speed-up) is read off the table,
with the Ray start-up measured on its own.

    python benchmarks/ray_overhead.py [--runs-dir runs/ray_overhead] [--epochs 1]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from prunekit.experiments import run_sweep, sweep_from_mapping


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs/ray_overhead")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    spec = sweep_from_mapping({
        "models": ["lenet_300_100"], "dataset": "fashion-mnist", "methods": ["random", "magnitude", "snip"],
        "sparsities": [0.9, 0.98], "seeds": [0], "recipe": "openlth-mnist", "epochs": args.epochs, "dense": False,
        "data_dir": args.data_dir,
    })
    n = len(spec.requests())
    root = Path(args.runs_dir)
    shutil.rmtree(root, ignore_errors=True)
    import ray

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - start
    ray.shutdown()
    times = {}
    for backend in ("local", "ray"):
        start = time.perf_counter()
        summary = run_sweep(spec, root / backend, device=torch.device("cpu"), progress=False, log=False, backend=backend)
        times[backend] = time.perf_counter() - start
        assert summary.counts["done"] == n, summary
    print(f"{n} runs, {args.epochs} epoch(s) each, torch threads {torch.get_num_threads()}; Ray start-up alone {ray_start:.1f} s")
    print("| backend | wall-clock (s) | per run (s) |")
    print("|---|---:|---:|")
    for backend, t in times.items():
        print(f"| {backend} | {t:.1f} | {t / n:.1f} |")
    from prunekit.experiments.db import ResultsDB

    with ResultsDB(root / "ray" / "results.db") as db:
        tasks = [r.extra["ray"] for r in db.runs()]
        local = {r.key: r.train_seconds for r in ResultsDB(root / "local" / "results.db").runs()}
        ray_train = sum(r.train_seconds or 0.0 for r in db.runs())
    print(f"inside the Ray tasks: {sum(t['task_seconds'] for t in tasks):.1f} s in all, of which loading data "
          f"{sum(t['data_seconds'] for t in tasks):.1f} s and training {ray_train:.1f} s (local training: {sum(local.values()):.1f} s); "
          f"{len({t['pid'] for t in tasks})} worker processes")


if __name__ == "__main__":
    main()
