"""What several benchmark scripts share: the default P001 series, and writing a result as JSON.

Imported by the scripts beside it (their folder is on ``sys.path`` when they run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def p001_or_none(scan: Path | None) -> Path | None:
    """``scan``, or COVID-CT-MD P001 in the data folder (``COVIDCT_DATA``) when ``scan`` is None; None (with a
    'skipped' line printed) when there is none."""
    if scan is None:
        sys.path.insert(0, str(ROOT / "src"))
        from covidct.data.sources import data_root

        root = data_root()
        scan = None if root is None else root / "covid-ct-md" / "P001"
    if scan is None or not scan.exists():
        print("skipped: no scan (set COVIDCT_DATA or pass --scan)")
        return None
    return scan


HEALTHY_SERIES = {"normal001": "covid-ct-md/normal001", "LIDC-IDRI-0001": "lidc-idri/LIDC-IDRI-0001"}


def healthy_series_args(doc: str) -> tuple[argparse.Namespace, dict[str, Path]] | None:
    """The command line (``--data DIR``, ``--json OUT``) of a benchmark that draws simulated disease into the two
    healthy whole HU series, and those series (name -> folder); None (with a 'skipped' line printed) without them."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="the data folder (default: COVIDCT_DATA)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    series = healthy_series_or_none(args.data)
    return None if series is None else (args, series)


def real_series_args(doc: str, options) -> tuple[argparse.Namespace, Path] | None:
    """The command line of a benchmark that simulates an acquisition on the real series (``--data DIR``, ``--json OUT``,
    ``--only NAME ...``, and what ``options(parser)`` adds) and the data folder; None (with a 'skipped' line printed)
    without one."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="the data folder (default: COVIDCT_DATA)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--only", nargs="*", default=None, help="only these series")
    options(ap)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from covidct.data.sources import data_root

    data = args.data or data_root()
    if data is None or not Path(data).is_dir():
        print("skipped: no data folder (set COVIDCT_DATA or pass --data)")
        return None
    return args, Path(data)


def healthy_series_or_none(data: Path | None) -> dict[str, Path] | None:
    """The two healthy whole HU series (name -> folder) in ``data`` (default: ``COVIDCT_DATA``), which the simulations
    of disease are drawn into; None (with a 'skipped' line printed) when either is missing."""
    sys.path.insert(0, str(ROOT / "src"))
    from covidct.data.sources import data_root

    root = data or data_root()
    series = {name: root / rel for name, rel in HEALTHY_SERIES.items()} if root is not None else {}
    if not series or not all(p.exists() for p in series.values()):
        print("skipped: normal001 / LIDC-IDRI-0001 not found (set COVIDCT_DATA or pass --data)")
        return None
    return series


def emit_json(result: dict, output: Path | None) -> int:
    """Print ``result`` as indented JSON and write it to ``output`` too when given; returns 0 (the exit code)."""
    text = json.dumps(result, indent=1)
    print(text)
    if output:
        output.write_text(text + "\n")
    return 0
