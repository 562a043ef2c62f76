#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on Fashion-MNIST. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prunekit prune "$@"
