"""The architecture's rules (docs/architecture.md): imports only go down the layers, inference never imports
training or evaluation (import-linter contracts in pyproject.toml), and no source file is over 400 lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
MAX_LINES = 400
# Files still over the limit while another change splits them; each entry is that file's current length
# and may only shrink. Remove an entry as soon as its file is split (the test says when).
OVER_THE_LIMIT: dict[str, int] = {}


def _lint_imports() -> Path:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.exists():
        return exe
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[dev]'")
    return Path(found)


def test_import_contracts_hold():
    env = dict(os.environ, PYTHONPATH=str(SRC))
    res = subprocess.run([str(_lint_imports()), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_no_source_file_over_the_limit():
    lengths = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in sorted(SRC.rglob("*.py"))}
    too_long = {p: n for p, n in lengths.items() if n > OVER_THE_LIMIT.get(p, MAX_LINES)}
    assert not too_long, f"over {MAX_LINES} lines (split them): {too_long}"
    done = sorted(p for p in OVER_THE_LIMIT if lengths.get(p, 0) <= MAX_LINES)
    assert not done, f"no longer over the limit: remove {done} from OVER_THE_LIMIT"


def test_every_top_level_module_is_in_a_layer():
    """A new package (e.g. covidct.pacs) must be placed in the layers, or import-linter never checks it."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for part in layer.split("|") for name in part.split(":")}
    modules = {p.stem for p in (SRC / "covidct").glob("*.py")} | {
        p.parent.name for p in (SRC / "covidct").glob("*/__init__.py")}
    missing = sorted(modules - placed - {"__init__", "__main__"})
    assert not missing, f"not in any layer of [tool.importlinter] in pyproject.toml: {missing}"
