#!/usr/bin/env bash
# Set everything up, then run the linters and the whole test suite (needs no ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
