"""The lesion models' uncertainty figures (report.json ``uncertainty``) on phantoms and the real HU series.

Used to choose ``covidct.report.heatmap.HIGH_UNCERTAINTY_PERCENT`` (the share of the lung volume with a
lesion probability in 0.3-0.7 above which a report warns): prints, per input, the uncertain share of the
lungs, the uncertain volume, the mean entropy, the slice with the most uncertain area, and the lesion
involvement, so the warning threshold can be set above what the models give on ordinary inputs.

Usage: python benchmarks/uncertainty_check.py [--data DIR] [--phantoms N]
The real series are skipped (with a note) when the data folder is absent; the phantoms always run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REAL = [
    ("COVID-CT-MD P001 (COVID-19)", "covid-ct-md/P001"),
    ("COVID-CT-MD cap001 (pneumonia)", "covid-ct-md/cap001"),
    ("COVID-CT-MD normal001 (normal)", "covid-ct-md/normal001"),
    ("LIDC-IDRI-0001 (nodules, healthy parenchyma)", "lidc-idri/LIDC-IDRI-0001"),
    ("TotalSegmentator example (lung bases)", "chest-misc/totalseg-example/example_ct.nii.gz"),
]


def row(name: str, path: Path) -> str:
    from covidct import pipeline

    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:  # report.slices is filled when the outputs are written
            rep = pipeline.analyze(path, Path(out) / "o", html=False).report
    except Exception as exc:  # noqa: BLE001 - a benchmark line, not a crash
        return f"| {name} | failed: {str(exc).splitlines()[0]} | | | | | |"
    u = rep["uncertainty"]
    worst = max(rep["slices"], key=lambda s: s["uncertain_mm2"] or 0)
    return (f"| {name} | {u['uncertain_percent_of_lungs']} | {u['uncertain_ml']} | {u['mean_entropy_bits']} | "
            f"{worst['index']} ({worst['uncertain_mm2']} mm²) | {rep['involvement_percent']['total']} | "
            f"{'yes' if u['high'] else 'no'} | {time.perf_counter() - t0:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("COVIDCT_DATA", "/work/shared/data")))
    ap.add_argument("--phantoms", type=int, default=2, help="phantoms with lesions and as many without")
    args = ap.parse_args()
    from covidct.phantom import make_phantom, write_phantom

    print("| input | uncertain % of lungs | uncertain mL | mean entropy (bits) | most uncertain slice | "
          "involvement % | warning | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.phantoms):
            for burden in (0.15, 0.0):
                ph = make_phantom(shape=(48, 256, 256), seed=seed, lesion_burden=burden, lesions=burden > 0)
                path = write_phantom(ph, Path(tmp) / f"ph{seed}_{burden}", fmt="nifti")
                print(row(f"phantom seed {seed}, burden {burden}", path), flush=True)
    for name, rel in REAL:
        path = args.data / rel
        if not path.exists():
            print(f"skipped {name}: {path} not found", file=sys.stderr)
            continue
        print(row(name, path), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
