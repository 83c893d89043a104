#!/usr/bin/env bash
# Set up (idempotent), check lint + format (ruff), and run the whole test suite. pytest's "no tests ran" (exit 5) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint and format first: a style slip fails the run before the slow tests start.
python3 -m ruff check .
python3 -m ruff format --check .
exec python3 -m pytest -q "$@"
