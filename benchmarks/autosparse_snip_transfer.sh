#!/usr/bin/env bash
# AutoSparse taught by SNIP-ranked IRPs: teach the shipped default scorer `lenet300-snip-fmnist` (IRP of
# LeNet-300-100 on Fashion-MNIST, each round ranked by SNIP) and the LeNet-5 one (whose survival the
# scorer cannot learn: held-out Spearman 0.07, not shipped), then the default scorer's transfer table:
# (a) LeNet-300-100 on new seeds, (b) LeNet-5 (seeds 0-1, and seed 2 at 99.5 % with SNIP and ProsPr),
# (c) LeNet-5 on CIFAR-10-jpg. The other methods' rows are the Fashion-MNIST tables' and
# benchmarks/autosparse_transfer.sh's (same configs and seeds). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/autosparse_snip}
PK=${PRUNEKIT:-.venv/bin/prunekit}
CIFAR=${CIFAR:-.data/cifar10-jpg.tar.gz}
C=benchmarks/configs/autosparse_snip
mkdir -p runs/scorers
# the teachers (the first one's scorer ships as src/prunekit/autosparse/scorers/lenet300-snip-fmnist.pt)
$PK autosparse teach --config benchmarks/configs/autosparse/irp_lenet300_snip.toml --out runs/irp_snip --save runs/scorers/lenet300-snip-fmnist.pt --no-progress
$PK autosparse teach --config $C/irp_lenet5_snip.toml --out runs/irp_snip --save runs/scorers/lenet5-snip-fmnist.pt --no-progress
$PK sweep --config $C/fmnist_lenet300.toml --out "$OUT" --no-progress
$PK sweep --config $C/fmnist_lenet5.toml --out "$OUT" --no-progress
$PK sweep --config $C/fmnist_lenet5_seed2.toml --out "$OUT" --no-progress
$PK sweep --config $C/cifar_lenet5.toml --data-dir "$CIFAR" --out "${OUT}_cifar" --no-progress
$PK report --out "$OUT"
$PK report --out "${OUT}_cifar"
