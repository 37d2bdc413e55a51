"""Metal implants on the real whole HU series: a pacemaker with its lead, spinal fixation rods (simulated streaks).

    python benchmarks/metal_implants.py [--data DIR] [--json OUT] [--only NAME ...] [--photons N]

Each real chest series of covid-ct-md (P001, cap001, normal001) and LIDC-IDRI-0001 is analysed as it is and with each
implant of ``covidct.evaluate.metal.metal_implant_simulated`` (the metal and the streaks its filtered back-projection
makes; no lesion added). Per case: lesion mL in all and on the slices that hold metal, the lung mL, the severity, the
diagnosis, the warnings about metal, and the slice-level infection AUC where slice labels exist. On the healthy series
every lesion mL is false (LIDC-IDRI-0001 scored outside its readers' nodules, as in ``benchmarks/hu_volumes.py``).
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np

from bench_io import emit_json, real_series_args  # noqa: E402  (the script's folder is on sys.path)

SERIES = {"P001": "covid-ct-md/P001", "cap001": "covid-ct-md/cap001", "normal001": "covid-ct-md/normal001",
          "LIDC-IDRI-0001": "lidc-idri/LIDC-IDRI-0001"}


def main() -> int:
    parsed = real_series_args(__doc__, lambda ap: ap.add_argument(
        "--photons", type=float, default=1e5, help="X-ray photons per ray before the patient"))
    if parsed is None:
        return 0
    args, data = parsed
    from covidct.evaluate.metal import IMPLANTS, metal_implant_simulated

    simulations = [(implant, lambda ct, implant=implant: metal_implant_simulated(ct, implant, photons=args.photons))
                   for implant in IMPLANTS]
    rows = simulated_rows(data, args.only, simulations, "metal")
    return emit_json({"rows": rows, "photons": args.photons}, args.json)


def simulated_rows(data: Path, only: list[str] | None, simulations: list, region: str | None) -> list[dict]:
    """One row per real series and case: the series as it is, then each ``(case, simulate)`` of ``simulations``
    (``simulate(ct)`` gives the simulated ct and the mask of what it added, e.g. the metal, whose slices the rows
    report as ``region``, unless None). Lesion mL outside the readers' nodules (LIDC-IDRI-0001), lung mL, severity,
    diagnosis, the warnings about metal, noise and density, the slice AUC where slice labels exist."""
    from covidct.data.covid_ct_md import read_slice_labels
    from covidct.evaluate.hu_volumes import slice_auc
    from covidct.evaluate.lidc import nodule_mask, parse_lidc_xml
    from covidct.io import load_ct
    from covidct.pipeline.analyzer import Analyzer

    labels = read_slice_labels(data / "covid-ct-md") if (data / "covid-ct-md").is_dir() else {}
    analyzer = Analyzer()
    rows = []
    for name, rel in SERIES.items():
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
                lesion &= ~exclude
            warnings = res.report["warnings"]
            row = {"series": name, "case": case, "lung_ml": round(float((res.lungs > 0).sum()) * ml, 1),
                   "lesion_ml": round(float(lesion.sum()) * ml, 2),
                   "severity": res.report["severity"]["score"], "diagnosis": res.report["diagnosis"]["label"],
                   "metal_warnings": [w for w in warnings if "metal" in w.lower()],
                   "noise_warning": any("noisier" in w for w in warnings),
                   "warned_lung_noise_hu": next((float(m.group(1)) for w in warnings
                                                 if (m := re.search(r"noisier .*?\((\d+) HU against", w))), None),
                   "density_warning": any("denser than in any series" in w for w in warnings),
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


if __name__ == "__main__":
    raise SystemExit(main())
