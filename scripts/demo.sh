#!/usr/bin/env bash
# Set everything up, then run covidct on its built-in synthetic chest CT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/covidct demo "$@"
