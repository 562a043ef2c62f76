#!/usr/bin/env bash
# The Fashion-MNIST tables of benchmarks/RESULTS.md: sweeps into runs/fmnist (resumable: run it
# again after an interruption and only unfinished runs are trained), then the report.
# The LeNet-5 sweep goes one sparsity column at a time, most telling first, so that an interrupted
# session still leaves whole columns.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fmnist}
sweep() { .venv/bin/prunekit sweep --out "$OUT" --no-progress "$@"; }
sweep --config benchmarks/configs/fmnist_lenet300.toml
sweep --config benchmarks/configs/fmnist_lenet300_imp.toml   # IMP shares rounds across its 5 targets
for s in 0.98 0.995 0.9; do
  sweep --config benchmarks/configs/fmnist_lenet5.toml --sparsities "$s"
done
.venv/bin/prunekit report --out "$OUT"
