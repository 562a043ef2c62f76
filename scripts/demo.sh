#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: every method on LeNet-300-100 / Fashion-MNIST at 90, 98
# and 99.5 % sparsity against dense (31 runs, a few minutes on 2 CPU cores), then print the table and
# write the plots.
# Finished runs are kept in runs/demo/results.db, so running it again is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prunekit demo "$@"
