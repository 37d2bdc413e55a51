#!/usr/bin/env bash
# Install size of the base package and of covidct[train]: fresh venvs under a temp folder, ordinary pip
# installs (torch from `pip install torch==2.13.0`, as scripts/setup.sh does), then `du` of each venv.
#   benchmarks/install_size.sh [WORKDIR]      (default /tmp/covidct-install-size; removed and recreated)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/covidct-install-size}
rm -rf "$work" && mkdir -p "$work/src"
(cd "$repo" && tar --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ -cf - .) | tar -xf - -C "$work/src"
cd "$work"
for v in base train; do python3.11 -m venv $v; $v/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true; done
s=$(date +%s); base/bin/pip install -q ./src; echo "base install: $(( $(date +%s) - s )) s"
s=$(date +%s); train/bin/pip install -q torch==2.13.0; train/bin/pip install -q "./src[train]"
echo "base + train install: $(( $(date +%s) - s )) s"
for v in base train; do echo "$v venv: $(du -sm $v | cut -f1) MB"; done
echo "largest packages of the train venv (MB):"; du -sm train/lib/python3.11/site-packages/* | sort -rn | head -8
base/bin/python -c "import torch" >/dev/null 2>&1 && echo "base has torch (unexpected)" || echo "base: no torch"
train/bin/python -c "import torch, monai; print('train: torch', torch.__version__, 'monai', monai.__version__)"
