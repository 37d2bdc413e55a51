"""Whole volumes given in display intensities: the real HU series windowed to 0..255, analysed as such.

    python benchmarks/display_volumes.py [--data DIR] [--json OUT] [--only NAME]

Each real series (covid-ct-md P001, cap001, normal001, LIDC-IDRI-0001) is windowed to 8-bit display values with
13 windows (lung windows of width 1000-2000 HU and level -700..-400 HU, and the mediastinal W400/L40), as a public
dataset converted from JPEG stacks would give it, and stored as HU + 1024 (a converter that dropped the rescale
intercept; values below -1024 HU set to 0). Per case: whether ``covidct.display_hu`` found the window (else
why not), the error of the mapped HU against the true HU (median absolute, over voxels whose true HU lies in
-950..100 and in the lung band -950..-300), and ``analyze``'s lesion mL, diagnosis and slice AUC (P001, cap001) or
false lesions outside the nodules (LIDC-IDRI-0001, outside the readers' contours grown by 10 mm) - with the mapping
(the default) and without it (``COVIDCT_DISPLAY_TO_HU=0``, the display path as it was), beside the HU original.
Where the window is refused ``analyze`` stops with an error (``analyze_stops``: "lungs clipped" where the window's
minimum swallows the lungs, ``clipped_lung_share`` of the body, else "window not undone"); the display-value reading
beside it is what ``COVIDCT_DISPLAY_TO_HU=0`` asks for.
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench_io import REAL_SERIES, ROOT, emit_json  # noqa: E402  (the script's folder is on sys.path)

# (level, width) in HU
WINDOWS = [(-600, 1500), (-600, 1600), (-500, 1500), (-500, 2000), (-550, 1600), (-650, 1500), (-600, 1400),
           (-400, 1500), (-500, 1200), (-700, 1500), (-600, 1200), (-700, 1000), (40, 400)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="the data folder (default: COVIDCT_DATA)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--only", default=None, help="only this series")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from covidct.data.sources import data_root

    root = args.data or data_root()
    series = {n: root / rel for n, rel in REAL_SERIES.items() if root is not None and (root / rel).exists()
              and (args.only is None or n == args.only)}
    if not series:
        print("skipped: no real series found (set COVIDCT_DATA or pass --data)")
        return 0

    from covidct.data.covid_ct_md import read_slice_labels
    from covidct.display_hu import CLIPPED_LUNG_SHARE, clipped_lung_share, estimate_window, to_hu
    from covidct.evaluate.hu_volumes import display_windowed, false_lesions, slice_auc
    from covidct.evaluate.lidc import nodule_mask, parse_lidc_xml
    from covidct.io import load_ct
    from covidct.pipeline.analyzer import Analyzer
    from covidct.pipeline.load import DISPLAY_TO_HU_ENV

    labels = read_slice_labels(root / "covid-ct-md") if (root / "covid-ct-md").is_dir() else {}
    analyzer = Analyzer()

    def analysed(ct, exclude, mapping: bool) -> dict:
        os.environ[DISPLAY_TO_HU_ENV] = "1" if mapping else "0"
        t0 = time.perf_counter()
        res = analyzer(ct, None, html=False)
        inf = res.lesions > 0
        vox = float(np.prod(ct.spacing)) / 1000.0
        out = {"lesion_ml": round(float(inf.sum()) * vox, 1), "diagnosis": res.report["diagnosis"]["label"],
               "p_covid19": round(res.report["diagnosis"]["probabilities"]["covid19"], 3),
               "category": (res.report.get("pattern") or {}).get("rsna_category"),
               "lung_ml": round(float((res.lungs > 0).sum()) * vox, 1), "seconds": round(time.perf_counter() - t0, 1)}
        if name in labels:
            out["slice_auc"] = round(slice_auc(ct, inf, labels[name]), 3)
        if exclude is not None:
            out["false_ml_outside_nodules"] = round(false_lesions(inf, res.lungs > 0, ct.spacing, exclude)["false_ml"], 1)
        return out

    rows = []
    for name, folder in series.items():
        base = load_ct(folder)
        xml = next(iter(sorted(folder.glob("*.xml"))), None)
        exclude = nodule_mask(base, parse_lidc_xml(xml), margin_mm=10.0) if xml else None
        row = {"series": name, "window": "HU original", **analysed(base, exclude, True)}
        print(row, flush=True)
        rows.append(row)
        variants = {f"W{width} L{level}": (lambda hu, lv=level, wd=width: display_windowed(hu, lv, wd)) for level, width in WINDOWS}
        variants["HU + 1024, no intercept"] = lambda hu: np.maximum(hu + 1024.0, 0.0).astype(np.float32)
        for variant, make in variants.items():
            display = base.with_array(make(base.array), is_hu=False)
            window = estimate_window(display.array)
            row = {"series": name, "window": variant, "mapped": not isinstance(window, str)}
            if isinstance(window, str):
                row["refused"] = window
                share = clipped_lung_share(display.array, display.spacing)
                row["clipped_lung_share"] = round(share, 4)
                row["analyze_stops"] = "lungs clipped" if share >= CLIPPED_LUNG_SHARE else "window not undone"
            else:
                hu = to_hu(display.array, window)
                for key, (lo, hi) in (("err_hu", (-950, 100)), ("err_hu_lung_band", (-950, -300))):
                    sel = (base.array >= lo) & (base.array <= hi)
                    row[key] = round(float(np.median(np.abs(hu[sel] - base.array[sel]))), 1)
                row["estimated_window_hu"] = [round(window.lo_hu), round(window.hi_hu)]
                row["with_mapping"] = analysed(display, exclude, True)
            row["without_mapping"] = analysed(display, exclude, False)
            print(row, flush=True)
            rows.append(row)
    os.environ.pop(DISPLAY_TO_HU_ENV, None)
    return emit_json({"rows": rows}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
