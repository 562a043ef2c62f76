#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu.py): run it first whenever a GPU is lent.
#   device tool: run command "bash benchmarks/gpu.sh $OUT", carry [".data"], with the CIFAR-10-jpg
#   tarball copied to .data/cifar10-jpg.tar.gz beforehand. About 8 minutes on an H100.
# The device's python3 has CUDA torch, numpy, Pillow, matplotlib and tqdm; prunekit runs from src/.
# Torch-Pruning (pure Python) is not installed there: the structured parts are not part of this check.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-out}}
shift || true
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec python3 benchmarks/gpu.py "$OUT" "$@"
