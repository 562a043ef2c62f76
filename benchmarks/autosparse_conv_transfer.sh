#!/usr/bin/env bash
# AutoSparse with a convolutional teacher: teach the shipped scorer `lenet5-fmnist` (an IRP run of LeNet-5
# on Fashion-MNIST, seed 0), then its transfer table: (a) the same architecture with a new seed, next to
# SNIP and ProsPr on that seed, (b) LeNet-300-100 on the same dataset, (c) LeNet-5 on CIFAR-10-jpg.
# Resumable; the other methods' rows of (b) and (c) are the LeNet-300-100 table's and
# benchmarks/autosparse_transfer.sh's (same configs and seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/autosparse_conv}
PK=${PRUNEKIT:-.venv/bin/prunekit}
CIFAR=${CIFAR:-.data/cifar10-jpg.tar.gz}
C=benchmarks/configs/autosparse_conv
# the teacher: 20 rounds of the num schedule to 1 % density, round 1 on the initial weights, 3 epochs a round
$PK run --model lenet5 --dataset fashion-mnist --method imp --sparsity 0.99 --recipe lenet-fmnist --epochs 3 \
  --opt schedule=num --opt rounds=20 --opt prune_first=true --out runs/irp --no-progress
# (the scorer it taught ships as src/prunekit/autosparse/scorers/lenet5-fmnist.pt:
#  $PK autosparse teach --from-run KEY --out runs/irp --save src/prunekit/autosparse/scorers/lenet5-fmnist.pt)
$PK sweep --config $C/baselines_lenet5_seed1.toml --out "$OUT" --no-progress
$PK sweep --config $C/fmnist_lenet5_newseed.toml --out "$OUT" --no-progress
$PK sweep --config $C/fmnist_lenet5_newseed_mlp_scorer.toml --out "$OUT" --no-progress
$PK sweep --config $C/fmnist_lenet300.toml --out "$OUT" --no-progress
$PK sweep --config $C/cifar_lenet5.toml --data-dir "$CIFAR" --out "${OUT}_cifar" --no-progress
$PK report --out "$OUT"
$PK report --out "${OUT}_cifar"
