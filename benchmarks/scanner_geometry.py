"""The real whole HU series as other scanners' reconstructions would give them: field of view, pixel size, padding.

    python benchmarks/scanner_geometry.py [--data DIR] [--json OUT]

Each real series (covid-ct-md P001, cap001, normal001, LIDC-IDRI-0001) is analysed as it is and as
(``covidct.evaluate.hu_volumes``): a tighter field of view (``field_of_view_cropped``: 8, 10, 12 and 15 % of the
columns off each side, 20 % off the image's left side only, 10 % of the rows off the top and the bottom; the lungs
then touch the image edge), pixels 4/3 and 2/3 as large (``pixel_size_scaled``: 384² and 768²), and -3024 HU outside
the reconstruction circle (``outside_fov_padded``). Per case: the lung found as a share of the as-is analysis's lung
inside the kept region, the lesion mL, the diagnosis and, with slice labels, the slice AUC. Skips (exit 0) when the
data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench_io import REAL_SERIES, ROOT, emit_json  # noqa: E402  (the script's folder is on sys.path)


def crops(h: int, w: int) -> dict[str, tuple[int, int, int, int]]:
    """Variant name -> rows off the top and bottom, columns off the left and right."""
    side = {f"{p} % of columns off each side": (0, 0, int(p / 100 * w), int(p / 100 * w)) for p in (8, 10, 12, 15)}
    return {**side, "20 % of columns off the left side": (0, 0, int(0.2 * w), 0),
            "10 % of rows off the top and bottom": (int(0.1 * h), int(0.1 * h), 0, 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="the data folder (default: COVIDCT_DATA)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from covidct.data.sources import data_root

    root = args.data or data_root()
    series = {n: root / rel for n, rel in REAL_SERIES.items() if root is not None and (root / rel).exists()}
    if not series:
        print("skipped: no real series found (set COVIDCT_DATA or pass --data)")
        return 0

    from covidct.data.covid_ct_md import read_slice_labels
    from covidct.evaluate.hu_volumes import (
        field_of_view_cropped,
        outside_fov_padded,
        pixel_size_scaled,
        slice_auc,
    )
    from covidct.io import load_ct
    from covidct.pipeline.analyzer import Analyzer

    labels = read_slice_labels(root / "covid-ct-md") if (root / "covid-ct-md").is_dir() else {}
    analyzer = Analyzer()
    rows = []
    for name, folder in series.items():
        base = load_ct(folder)
        as_is = analyzer(base, None, html=False)
        h, w = base.array.shape[1:]
        ml = float(np.prod(base.spacing)) / 1000.0
        cases = {"as it is": (base, float((as_is.lungs > 0).sum()) * ml)}
        for case, (t, b, left, r) in crops(h, w).items():
            kept = float((as_is.lungs[:, t : h - b, left : w - r] > 0).sum()) * ml
            cases[case] = (field_of_view_cropped(base, t, b, left, r), kept)
        for factor, text in ((4 / 3, "pixels 4/3 as large"), (2 / 3, "pixels 2/3 as large")):
            cases[text] = (pixel_size_scaled(base, factor), cases["as it is"][1])
        cases["-3024 HU outside the reconstruction circle"] = (outside_fov_padded(base), cases["as it is"][1])
        for case, (ct, kept_ml) in cases.items():
            t0 = time.perf_counter()
            res = as_is if case == "as it is" else analyzer(ct, None, html=False)
            vox = float(np.prod(ct.spacing)) / 1000.0
            inf = res.lesions > 0
            row = {"series": name, "case": case, "shape": list(ct.array.shape),
                   "lung_share": round(float((res.lungs > 0).sum()) * vox / max(kept_ml, 1e-6), 4),
                   "lesion_ml": round(float(inf.sum()) * vox, 1), "diagnosis": res.report["diagnosis"]["label"],
                   "p_covid19": round(res.report["diagnosis"]["probabilities"]["covid19"], 3),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if name in labels:
                row["slice_auc"] = round(slice_auc(ct, inf, labels[name]), 3)
            print(row, flush=True)
            rows.append(row)
    return emit_json({"rows": rows}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
