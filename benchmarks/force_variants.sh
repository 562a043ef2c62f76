#!/usr/bin/env bash
# Does FORCE's claim (trainable up to 99.5 % where SNIP fails) come back with the official code's
# loss or count rule? LeNet-5 / Fashion-MNIST, 99 and 99.5 %, 3 seeds, the full lenet-fmnist recipe:
# FORCE and Iter-SNIP in four variants (paper / official loss x exact / official count) next to
# SNIP, SynFlow and dense, all in one results database (resumable), then the report. The official
# variants go first, the baselines last.
# JOBS=2 runs two sweep processes side by side on one database (one thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/force_variants}
JOBS=${JOBS:-1}
PK=${PRUNEKIT:-.venv/bin/prunekit}
sweep_all() {
  for variant in official official_loss official_count paper dense; do
    $PK sweep --config "benchmarks/configs/force_variants/$variant.toml" --out "$OUT" --no-progress
  done
}
if [ "$JOBS" -gt 1 ]; then
  for _ in $(seq "$JOBS"); do OMP_NUM_THREADS=$((2 / JOBS > 0 ? 2 / JOBS : 1)) sweep_all & sleep 5; done
  wait
else
  sweep_all
fi
$PK report --out "$OUT"
