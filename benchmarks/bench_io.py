"""What several benchmark scripts share: the default P001 series, the real series' rows under a simulated
acquisition, and writing a result as JSON.

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


REAL_SERIES = {"P001": "covid-ct-md/P001", "cap001": "covid-ct-md/cap001", "normal001": "covid-ct-md/normal001",
               "LIDC-IDRI-0001": "lidc-idri/LIDC-IDRI-0001"}


def simulated_rows(data: Path, only: list[str] | None, simulations: list, region: str | None,
                   lesions_model: str = "lesions") -> list[dict]:
    """One row per real series and case: the series as it is, then each ``(case, simulate)`` of ``simulations``
    (``simulate(ct)`` gives the simulated ct and the mask of what it added, e.g. the metal, whose slices the rows
    report as ``region``, unless None). Lesion mL outside the readers' nodules (LIDC-IDRI-0001), lung mL, severity,
    diagnosis, the warnings about metal, noise and density, the slice AUC where slice labels exist."""
    import re
    import time

    import numpy as np

    from covidct.data.covid_ct_md import read_slice_labels
    from covidct.evaluate.hu_volumes import slice_auc
    from covidct.evaluate.lidc import nodule_mask, parse_lidc_xml
    from covidct.io import load_ct
    from covidct.pipeline.analyzer import Analyzer

    labels = read_slice_labels(data / "covid-ct-md") if (data / "covid-ct-md").is_dir() else {}
    analyzer = Analyzer(lesions_model=lesions_model)
    rows = []
    for name, rel in REAL_SERIES.items():
        folder = data / rel
        if not folder.is_dir() or (only and name not in only):
            continue
        base = load_ct(folder)
        ml = float(np.prod(base.spacing)) / 1000.0
        xml = next(iter(sorted(folder.glob("*.xml"))), None)
        exclude = nodule_mask(base, parse_lidc_xml(xml), margin_mm=10.0) if xml is not None else None
        cases = [("as it is", base, None)] + [(case, *simulate(base)) for case, simulate in simulations]
        for case, ct, added in cases:
            t0 = time.perf_counter()
            res = analyzer(ct, None, html=False)
            lesion = (res.lesions == 1) | (res.lesions == 2)
            if exclude is not None:
                lesion &= ~on_grid_of(exclude, base, ct)
            warnings = res.report["warnings"]
            row = {"series": name, "case": case, "lung_ml": round(float((res.lungs > 0).sum()) * ml, 1),
                   "lesion_ml": round(float(lesion.sum()) * ml, 2),
                   "effusion_ml": round(float((res.lesions == 3).sum()) * ml, 2),
                   "severity": res.report["severity"]["score"], "diagnosis": res.report["diagnosis"]["label"],
                   "metal_warnings": [w for w in warnings if "metal" in w.lower()],
                   "noise_warning": any("noisier" in w for w in warnings),
                   "warned_lung_noise_hu": next((float(m.group(1)) for w in warnings
                                                 if (m := re.search(r"noisier .*?\((\d+) HU against", w))), None),
                   "density_warning": any("denser than in any series" in w for w in warnings),
                   "boxed": res.report["input"].get("analysed_box_yx") is not None,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if added is not None and region is not None:
                on = added.any((1, 2))
                row[f"{region}_slices"] = int(on.sum())
                row[f"lesion_ml_on_{region}_slices"] = round(float(lesion[on].sum()) * ml, 2)
            if name in labels:
                row["slice_auc"] = round(slice_auc(ct, lesion, labels[name]), 4)
            print(f"{name} {case}: {row}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def on_grid_of(mask, base, ct):
    """``mask`` on ``base``'s grid brought to ``ct``'s, whose slices are ``base``'s moved in-plane by whole voxels
    (a wider field of view, ``covidct.evaluate.acquisitions.wide_field_simulated``, or a crop); False where ``base``
    has no voxel."""
    import numpy as np

    if ct.shape == base.shape:
        return mask
    x0, y0 = np.rint(np.linalg.solve(ct.affine, base.affine @ np.array([0.0, 0.0, 0.0, 1.0]))[:2]).astype(int)
    out = np.zeros(ct.shape, bool)
    (h, w), (hh, ww) = base.shape[1:], ct.shape[1:]
    ys, xs = slice(max(0, -y0), min(h, hh - y0)), slice(max(0, -x0), min(w, ww - x0))
    out[:, ys.start + y0 : ys.stop + y0, xs.start + x0 : xs.stop + x0] = mask[:, ys, xs]
    return out


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
