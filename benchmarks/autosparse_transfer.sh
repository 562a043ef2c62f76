#!/usr/bin/env bash
# AutoSparse: teach the shipped scorer (an IRP run of LeNet-300-100 on Fashion-MNIST), then the
# transfer table: (a) the same architecture with new seeds, (b) LeNet-5 on the same dataset, (c)
# LeNet-5 on CIFAR-10-jpg next to SNIP, GraSP, SynFlow and random-ERK. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/autosparse}
PK=${PRUNEKIT:-.venv/bin/prunekit}
CIFAR=${CIFAR:-.data/cifar10-jpg.tar.gz}
# the teacher: 20 rounds of the num schedule to 1 % density, round 1 on the initial weights, 3 epochs a round
$PK run --model lenet_300_100 --dataset fashion-mnist --method imp --sparsity 0.99 --recipe openlth-mnist --epochs 3 \
  --opt schedule=num --opt rounds=20 --opt prune_first=true --out runs/irp --no-progress
# (the scorer it taught ships as src/prunekit/autosparse/scorers/lenet300-fmnist.pt:
#  $PK autosparse teach --from-run KEY --out runs/irp --save src/prunekit/autosparse/scorers/lenet300-fmnist.pt)
$PK sweep --config benchmarks/configs/autosparse/fmnist_lenet300_newseed.toml --out "$OUT" --no-progress
$PK sweep --config benchmarks/configs/autosparse/fmnist_lenet5.toml --out "$OUT" --no-progress
$PK sweep --config benchmarks/configs/autosparse/cifar_lenet5.toml --data-dir "$CIFAR" --out "${OUT}_cifar" --no-progress
$PK report --out "$OUT"
$PK report --out "${OUT}_cifar"
