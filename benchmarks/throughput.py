"""Training throughput (images/s) of one model with prunekit's trainer, on real data.

    python benchmarks/throughput.py --model lenet5 --dataset fashion-mnist
    python benchmarks/throughput.py --model resnet20 --dataset cifar10-jpg --subset 5000
    python benchmarks/throughput.py --model vgg19_bn --dataset cifar10-jpg --device cuda

Trains ``--epochs`` epochs (default 2) on the first ``--subset`` training images and reports the
throughput of the last epoch (the first warms up), training only (evaluation excluded).
"""

from __future__ import annotations

import argparse
import platform
from datetime import date

import torch

import prunekit
from prunekit import data, models, training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--subset", type=int, default=None, help="train on the first N images only")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=None, help="train a random mask of this sparsity")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = data.load_dataset(args.dataset, args.data_dir)
    if args.subset:
        ds = data.Dataset(ds.info, ds.train.subset(torch.arange(args.subset)), ds.test.subset(torch.arange(min(1000, len(ds.test)))), ds.source)
    model = models.create(args.model, ds.num_classes, ds.input_shape, seed=0)
    masks = prunekit.prune(model, "random", args.sparsity) if args.sparsity else None
    cfg = training.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, schedule="constant")
    res = training.fit(model, ds, cfg, masks=masks, device=args.device, progress=False)
    last = res.history[-1]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"{args.model} on {args.dataset} ({len(ds.train):,} images), batch {args.batch_size}, {where}, "
          f"torch {torch.__version__}, {date.today()}: {last['images_per_second']:,.0f} img/s "
          f"({last['epoch_seconds']:.2f} s/epoch)")


if __name__ == "__main__":
    main()
