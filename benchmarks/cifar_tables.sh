#!/usr/bin/env bash
# Table 1 and the precision-parity runs of benchmarks/RESULTS.md: ResNet-20 on the full CIFAR-10-jpg
# with the cifar-cpu recipe, as resumable sweeps into runs/cifar_full (run it again after an
# interruption: only unfinished runs train). Seed 0 of every cell first, so that an interrupted
# machine still leaves a whole table; then the fp32 parity runs; then seed 1.
# The results database (without checkpoints or masks) is copied to benchmarks/cifar_full/ after
# every sweep, so that the table survives a new machine: `prunekit report --out benchmarks/cifar_full`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cifar_full}
DATA=${DATA:-.data/cifar10-jpg.tar.gz}   # copy of ../shared/datasets/cifar10-jpg/cifar10-jpg.tar.gz
C=benchmarks/configs/cifar_full
KEEP=${KEEP:-benchmarks/cifar_full/results.db}
keep() { .venv/bin/python -c "import sys; from prunekit.experiments.db import ResultsDB; ResultsDB(sys.argv[1]).export(sys.argv[2])" "$OUT/results.db" "$KEEP"; }
sweep() { .venv/bin/prunekit sweep --out "$OUT" --data-dir "$DATA" --no-progress --config "$@"; keep; }
sweep $C/table1_seed0.toml
sweep $C/table1_extreme_seed0.toml
sweep $C/parity_fp32.toml --seeds 0
sweep $C/table1_seed1.toml
sweep $C/table1_extreme_seed1.toml
sweep $C/parity_fp32.toml --seeds 1
