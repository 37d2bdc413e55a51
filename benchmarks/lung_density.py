"""Lung densitometry (report.json's ``densitometry``) on every whole HU volume in ../shared/data, checked against a
direct computation, with its time.

For each volume: the shipped lung mask (from ``benchmarks/hu_volumes.py``'s ``--cache`` folder when given, else
``covidct analyze`` in process), then ``covidct.pipeline.densitometry.densitometry``. The check recomputes every
figure of each lung from the lung's voxels with plain NumPy (mean, ``np.percentile(..., method="inverted_cdf")``
rounded down, boolean class masks) and prints the largest difference. The table gives mean lung density, Perc15,
LAA-950 and Lung CT Analyzer's affected share, whole and per region, beside the volume's known state (COVID-19,
pneumonia, healthy): a threshold share that does not separate them is what the lesion masks must beat.

``--emphysema``: normal001 and LIDC-IDRI-0001 with emphysema-like low attenuation simulated over 10, 30 and 50 % of
their lung field (``covidct.evaluate.hu_volumes.emphysema_simulated``, also with a subpleural weighting), through
``covidct analyze`` in process: LAA-950 beside the simulated region's share of the final lung mask.

``--windowed``: the four covid-ct-md / LIDC series stored as 8-bit display values in two common lung windows
(``covidct.evaluate.hu_volumes.display_windowed``), which ``analyze`` maps back to approximate HU
(``covidct.display_hu``): the densitometry of the mapped volume beside the HU original's.

Usage: python benchmarks/lung_density.py [--data DIR] [--cache DIR] [--emphysema] [--windowed] [--json OUT]
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from covidct.labels import LEFT_LUNG, RIGHT_LUNG
from covidct.pipeline.densitometry import AFFECTED, LCTA_CLASSES, PARENCHYMA, densitometry

REPO = Path(__file__).resolve().parents[1]
STATE = {"P001": "COVID-19", "cap001": "pneumonia", "normal001": "healthy", "LIDC-IDRI-0001": "healthy (nodules)",
         "cip-ct-64": "no lesion label (CIP test chest)", "totalseg lung bases": "healthy (bases only)"}


def volumes(data: Path) -> list[tuple[str, Path]]:
    md, out = data / "covid-ct-md", []
    for name in ("P001", "cap001", "normal001"):
        out.append((name, md / name))
    out += [("LIDC-IDRI-0001", data / "lidc-idri" / "LIDC-IDRI-0001"),
            ("cip-ct-64", data / "chest-misc" / "cip-ct-64" / "ct-64.nrrd")]
    ts = sorted((data / "chest-misc" / "totalseg-example").glob("*ct*.nii*"))
    if ts:
        out.append(("totalseg lung bases", ts[0]))
    return [(n, p) for n, p in out if p.exists()]


def direct(hu: np.ndarray, lung: np.ndarray) -> dict:
    """The figures of one lung mask from its voxels, without the histogram."""
    v = hu[lung].astype(np.float64)
    cls = {name: np.count_nonzero((v >= lo) & (v < hi)) for name, lo, hi in LCTA_CLASSES}
    par = sum(cls[n] for n in PARENCHYMA)
    return {"mean_hu": v.mean(), "perc15_hu": float(np.floor(np.percentile(v, 15, method="inverted_cdf"))),
            "laa950_percent": 100.0 * np.count_nonzero(v < -950) / v.size,
            "affected_percent": 100.0 * sum(cls[n] for n in AFFECTED) / par, "n_by_class": cls}


def emphysema_rows(data: Path, analyzer) -> list[dict]:
    """LAA-950 of healthy volumes with simulated emphysema, beside the simulated share of the final lung mask."""
    from covidct.evaluate.hu_volumes import emphysema_simulated
    from covidct.io import load_ct

    rows = []
    for name, path in volumes(data):
        if name not in ("normal001", "LIDC-IDRI-0001"):
            continue
        base = load_ct(path)
        for subpleural in (False, True):
            for share in (0.0, 0.1, 0.3, 0.5):
                ct, region = emphysema_simulated(base, share, subpleural=subpleural) if share else (base, None)
                res = analyzer(ct, None, html=False)
                lung = res.lungs > 0
                t = res.report["densitometry"]["total"]
                rows.append({"volume": name, "simulated_share": share, "subpleural": subpleural,
                             "simulated_pct_of_final_lung": 0.0 if region is None else
                             round(100.0 * np.count_nonzero(region & lung) / np.count_nonzero(lung), 3),
                             "lung_ml": t["lung_ml"], "laa950_percent": t["laa950_percent"],
                             "perc15_hu": t["perc15_hu"], "mean_hu": t["mean_hu"],
                             "diagnosis": res.report["diagnosis"]["label"]})
                print(json.dumps(rows[-1]), flush=True)
                if not share and subpleural:
                    rows.pop()  # the unsimulated row once per volume
    return rows


WINDOWS = ((-600, 1500), (-500, 2000))  # (level, width) HU: common lung windows that keep outside air


def windowed_rows(data: Path, analyzer) -> list[dict]:
    """Densitometry of display-range versions (mapped back to HU by analyze) beside the HU original's."""
    from covidct.evaluate.hu_volumes import display_windowed
    from covidct.io import load_ct

    rows = []
    for name, path in volumes(data):
        if name not in ("P001", "cap001", "normal001", "LIDC-IDRI-0001"):
            continue
        base = load_ct(path)
        ref = analyzer(base, None, html=False).report["densitometry"]["total"]
        for level, width in WINDOWS:
            res = analyzer(base.with_array(display_windowed(base.array, level, width), is_hu=False), None, html=False)
            got = (res.report.get("densitometry") or {}).get("total")
            row = {"volume": name, "window": f"W{width} L{level}",
                   "mapped": res.report["input"]["display_window"] is not None}
            for key in ("lung_ml", "mean_hu", "perc15_hu", "laa950_percent", "affected_percent"):
                row[key] = None if got is None else got[key]
                row[f"{key}_hu_original"] = ref[key]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=None, help="benchmarks/hu_volumes.py's --cache folder")
    ap.add_argument("--emphysema", action="store_true", help="also simulated emphysema on the healthy volumes")
    ap.add_argument("--windowed", action="store_true", help="also display-range versions mapped back to HU")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"skipped: no data folder {a.data}")
        return 0
    from covidct.io import load_ct
    from covidct.pipeline import Analyzer

    analyzer, rows = None, []
    for name, path in volumes(a.data):
        ct = load_ct(path)
        cached = a.cache / f"{name.replace(' ', '_')}.npz" if a.cache else None
        if cached is not None and cached.exists():
            lungs = np.load(cached)["lungs"]
        else:
            analyzer = analyzer or Analyzer()
            lungs = analyzer(ct, None, html=False).lungs
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            d = densitometry(ct, lungs)
            times.append(time.perf_counter() - t0)
        worst = 0.0
        for side, lab in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
            ref = direct(ct.array, lungs == lab)
            got = d[side]
            worst = max([worst, abs(ref["mean_hu"] - got["mean_hu"]) - 0.05, abs(ref["perc15_hu"] - got["perc15_hu"]),
                         abs(ref["laa950_percent"] - got["laa950_percent"]) - 5e-4,
                         abs(ref["affected_percent"] - got["affected_percent"]) - 5e-4]
                        + [abs(ref["n_by_class"][c] * ct.voxel_volume_ml - got["classes_ml"][c]) - 0.005
                           for c in ref["n_by_class"]])
        t = d["total"]
        rows.append({"volume": name, "state": STATE[name], "lung_ml": t["lung_ml"], "mean_hu": t["mean_hu"],
                     "perc15_hu": t["perc15_hu"], "laa950_percent": t["laa950_percent"],
                     "affected_percent": t["affected_percent"],
                     "affected_ml": round(t["classes_ml"]["infiltrated"] + t["classes_ml"]["collapsed"], 1),
                     **{f"affected_{r}": t["regions"][r]["affected_percent"] for r in t["regions"]},
                     "check_max_excess": round(max(worst, 0.0), 6), "seconds_median": round(float(np.median(times)), 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(_table(rows))
    emph = emphysema_rows(a.data, analyzer or Analyzer()) if a.emphysema else []
    if emph:
        print(_table(emph))
    windowed = windowed_rows(a.data, analyzer or Analyzer()) if a.windowed else []
    if windowed:
        print(_table(windowed))
    if a.json:
        a.json.write_text(json.dumps({"volumes": rows, "emphysema": emph, "windowed": windowed}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
