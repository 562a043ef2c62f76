"""Cost of each method's scoring relative to one training epoch of the same model, in one run.

    python benchmarks/scoring.py                                  # LeNet-5 / Fashion-MNIST, CPU
    python benchmarks/scoring.py --model resnet20 --dataset cifar10-jpg --device cuda
    python benchmarks/scoring.py --model vgg19_bn --dataset cifar10-jpg --device cuda

Every method runs with its default options (SynFlow 100 steps, FORCE/Iter-SNIP 60 steps, ProsPr 3
inner steps, GraSP 10 samples per class) on batches of the training batch size, unless options follow
its name, ``name:option=value[:option=value]`` (e.g. ``--methods autosparse,autosparse:gradient_batches=39``).
Times are medians of ``--repeats`` runs, after one warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

import prunekit
from prunekit import data, models, training
from prunekit.cli import parse_method_options


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.98)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plan = []  # (entry, method, options), checked before anything is timed
    for entry in prunekit.list_methods() if args.methods == "all" else args.methods.split(","):
        name, *pairs = entry.split(":")
        plan.append((entry, name, parse_method_options(pairs, [name])[name]))
    ds = data.load_dataset(args.dataset, args.data_dir)
    model = models.create(args.model, ds.num_classes, ds.input_shape, seed=0).to(device)

    # one training epoch, same batch size, timed in this run (the second of two: the first warms up)
    cfg = training.TrainConfig(epochs=2, batch_size=args.batch_size, lr=0.01, schedule="constant")
    res = training.fit(models.create(args.model, ds.num_classes, ds.input_shape, seed=0), ds, cfg, device=device, progress=False)
    epoch_s = res.history[-1]["epoch_seconds"]

    batches = data.scoring_batches(ds.train, batch_size=args.batch_size, mean=ds.info.mean, std=ds.info.std, device=device, seed=0)
    rows = []
    for method, name, options in plan:
        times = []
        for _ in range(args.repeats + 1):
            sync(device)
            start = time.perf_counter()
            prunekit.prune(model, name, args.sparsity, data=batches, seed=0, **options)
            sync(device)
            times.append(time.perf_counter() - start)
        t = statistics.median(times[1:])
        rows.append((method, t, t / epoch_s))
        print(f"{method:12s} {t:8.3f} s  {t / epoch_s:8.3f} epochs", flush=True)

    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print()
    print(f"### Scoring cost: {args.model} on {args.dataset}, {name}, torch {torch.__version__}, {date.today()}")
    print(f"One training epoch ({len(ds.train):,} images, batch {args.batch_size}): {epoch_s:.2f} s "
          f"({res.history[-1]['images_per_second']:,.0f} img/s). Sparsity {args.sparsity:.0%}, default options.")
    print()
    print("| method | scoring time (s) | in training epochs |")
    print("|---|---:|---:|")
    for method, t, ratio in rows:
        print(f"| {method} | {t:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
