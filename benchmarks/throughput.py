"""Training throughput (images/s) with prunekit's trainer on real data: precisions side by side.

    python benchmarks/throughput.py --models lenet5,resnet20,vgg11_bn --threads 2
    python benchmarks/throughput.py --models resnet20 --variants fp32,bf16+cl --rounds 3
    python benchmarks/throughput.py --models vgg19_bn --device cuda

Each variant is ``training.fit`` on the same model, data and seed with one training precision and
memory format: ``fp32`` (fp32, contiguous: the trainer's behaviour on the CPU before bf16), ``cl``
(fp32, channels-last), ``bf16`` (bf16 autocast, contiguous), ``bf16+cl`` (bf16 autocast,
channels-last: the default where the CPU runs bf16 natively), and ``+compile`` of either with
``TrainConfig.compile`` (the step through ``torch.compile``; its first epoch holds the compile and is
not counted). The variants alternate within each
round (so a change in the shared machine's speed hits them alike); a round trains ``--epochs``
epochs on the first ``--subset`` images per variant and keeps the last epoch's training throughput
(the first warms up); the table gives the median over rounds and the ratio to the first variant.
``--bare`` also times the bare step of each variant in the same rounds (forward, cross-entropy,
backward, SGD with momentum on one fixed batch, no loader, no trainer): what the trainer adds, if anything
(eager variants only).
LeNet-5 trains on Fashion-MNIST, the CIFAR models on CIFAR-10-jpg (``--data-dir``).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
from datetime import date

import torch

from prunekit import data, models, training
from prunekit.structured.latency import median_seconds, training_step
from prunekit.training.precision import Precision

VARIANTS = {  # name: (precision and memory format, torch.compile)
    "fp32": (Precision("fp32", False), False),
    "cl": (Precision("fp32", True), False),
    "bf16": (Precision("bf16", False), False),
    "bf16+cl": (Precision("bf16", True), False),
    "fp32+compile": (Precision("fp32", False), True),
    "bf16+cl+compile": (Precision("bf16", True), True),
}
DATASETS = {"lenet5": "fashion-mnist", "lenet_300_100": "fashion-mnist"}


def throughput(model_name: str, ds: data.Dataset, variant: str, args: argparse.Namespace) -> float:
    precision, compile_ = VARIANTS[variant]
    model = models.create(model_name, ds.num_classes, ds.input_shape, seed=0)
    cfg = training.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, schedule="constant", eval_batch_size=1000,
                               compile=compile_)
    res = training.fit(model, ds, cfg, device=args.device, progress=False, precision=precision)
    return float(res.history[-1]["images_per_second"])


def bare_step(model_name: str, ds: data.Dataset, precision: Precision, args: argparse.Namespace, steps: int = 15) -> float:
    """Images/s of the bare training step (the one a latency table times): the median of ``steps``
    timed steps after 3 untimed."""
    device = torch.device(args.device)
    net = models.create(model_name, ds.num_classes, ds.input_shape, seed=0)
    step = training_step(net, torch.randn(1, *ds.input_shape), args.batch_size, precision, device)
    return args.batch_size / median_seconds(step, device, steps, warmup=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,resnet20,vgg11_bn")
    ap.add_argument("--variants", default="fp32,bf16+cl", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--data-dir", default=".data/cifar10-jpg.tar.gz", help="CIFAR-10-jpg (the tarball or its folder)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--subset", type=int, default=5000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bare", action="store_true", help="also time the bare step of each variant (a row per model)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if any(VARIANTS[v][1] for v in variants) and args.epochs < 2:
        raise SystemExit("compiled variants need --epochs 2 or more (the first epoch holds the compile)")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"batch {args.batch_size}, {args.subset:,} images x {args.epochs} epochs, median of {args.rounds} rounds, {where}, "
          f"torch {torch.__version__}, {date.today()}\n")
    print("| model | " + " | ".join(f"{v} img/s" for v in variants) + " | " + " | ".join(f"{v} / {variants[0]}" for v in variants[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(variants) - 1))
    for name in [m.strip() for m in args.models.split(",")]:
        dataset = DATASETS.get(name, "cifar10-jpg")
        ds = data.load_dataset(dataset, args.data_dir if dataset == "cifar10-jpg" else None)
        n = min(args.subset, len(ds.train))
        ds = data.Dataset(ds.info, ds.train.subset(torch.arange(n)), ds.test.subset(torch.arange(min(500, len(ds.test)))), ds.source)
        speeds: dict[str, list[float]] = {v: [] for v in variants}
        bare: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                speeds[v].append(throughput(name, ds, v, args))
                if args.bare and not VARIANTS[v][1]:
                    bare[v].append(bare_step(name, ds, VARIANTS[v][0], args))
        for label, table in ((name, speeds), (f"{name}, bare step", bare)):
            if not table[variants[0]]:
                continue
            med = {v: statistics.median(s) if s else math.nan for v, s in table.items()}
            cells = [f"{med[v]:,.0f}" if s else "–" for v, s in table.items()]
            cells += [f"{med[v] / med[variants[0]]:.2f}x" if table[v] else "–" for v in variants[1:]]
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
