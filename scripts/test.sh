#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PRUNEKIT_REQUIRE_DATA=1   # the real-data tests must run, not skip
exec .venv/bin/python -m pytest -q "$@"
