#!/usr/bin/env bash
# Set up (scripts/setup.sh), check style and types (ruff, mypy: both must be clean), and run the
# test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
export PRUNEKIT_REQUIRE_DATA=1   # the real-data tests must run, not skip
exec .venv/bin/python -m pytest -q "$@"
