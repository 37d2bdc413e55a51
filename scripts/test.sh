#!/usr/bin/env bash
# Set everything up, then run the linters and the whole test suite (needs no ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# System tools some tests use (the DICOM validator, a headless browser, a PACS); those tests skip without them.
if ! command -v dciodvfy >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
   || [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools chromium orthanc orthanc-dicomweb) >/dev/null 2>&1 \
      || echo "note: could not install dicom3tools/chromium/orthanc; the tests that need them will skip"
  fi
fi
.venv/bin/ruff check src tests benchmarks
# the architecture contracts ([tool.importlinter] in pyproject.toml; docs/architecture.md)
PYTHONPATH=src .venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest -q "$@"
