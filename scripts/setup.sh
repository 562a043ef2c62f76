#!/usr/bin/env bash
# Set up everything prunekit needs, from nothing: a virtual environment (.venv) with the CPU build of
# torch, prunekit (with its test dependencies when called with --test), and the Fashion-MNIST Debian
# package (the default data).
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # pinned: a looser spec pulls a multi-GB CUDA build

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC" >&2
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
if [ "${1:-}" = "--test" ]; then   # the test suite's tools: linters and the frameworks the tests drive
  if ! .venv/bin/python -c "import prunekit, pytest, mypy, torch_pruning, transformers, accelerate, lightning, tensorboard, pandas, ray" 2>/dev/null || [ ! -x .venv/bin/ruff ]; then
    echo "setup: installing prunekit with its test dependencies" >&2
    .venv/bin/python -m pip install -q -e ".[test]"
  fi
elif ! .venv/bin/python -c "import prunekit, tqdm, matplotlib, torch_pruning" 2>/dev/null; then
  echo "setup: installing prunekit" >&2
  .venv/bin/python -m pip install -q -e .
fi

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PACKAGES=()
[ -f "$FMNIST" ] || PACKAGES+=(dataset-fashion-mnist)
# the suite trains through torch.compile (TrainConfig.compile), whose CPU kernels need a C++ compiler
if [ "${1:-}" = "--test" ] && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null && [ -z "${CXX:-}" ]; then
  PACKAGES+=(g++)
fi
if [ ${#PACKAGES[@]} -gt 0 ] && [ -z "${PRUNEKIT_NO_APT:-}" ]; then
  echo "setup: installing the Debian packages ${PACKAGES[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  else
    echo "setup: cannot install ${PACKAGES[*]} without root; install them (or pass --data-dir for the data)" >&2
  fi
fi
