#!/usr/bin/env bash
# The Fashion-MNIST tables of benchmarks/RESULTS.md: three sweeps into runs/fmnist (resumable: run it
# again after an interruption and only unfinished runs are trained), then the report.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fmnist}
for cfg in fmnist_lenet300 fmnist_lenet5 fmnist_lenet300_imp; do
  .venv/bin/prunekit sweep --config "benchmarks/configs/$cfg.toml" --out "$OUT" --no-progress
done
.venv/bin/prunekit report --out "$OUT"
