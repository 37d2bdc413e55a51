"""Lungs at the extremes of density on healthy whole HU series: simulated emphysema, dependent consolidation, effusion.

    python benchmarks/lung_extremes.py [--data DIR] [--json OUT]

Each healthy series (covid-ct-md normal001, LIDC-IDRI-0001) is analysed as it is, with emphysema-like low-attenuation
areas over 10, 30 and 50 % of its HU lung field (random patches and subpleural ones;
``covidct.evaluate.hu_volumes.emphysema_simulated``) and with airless lung along its dependent edge over 5, 15 and 30 %
(air bronchograms and vessels kept; ``dependent_consolidation_simulated``), and with a pleural effusion of the same
extent (water in that band), with free fluid as it settles in a supine patient (behind a level, coronal surface:
``covidct.evaluate.acquisitions.layering_effusion_simulated``; both sides over 2, 5, 10 and 20 % of the field, the
right side alone over 1, 2, 3, 10 and 20 %: small effusions of 20-80 mL among them), and as CT pulmonary angiography, its lung vessels enhanced to 250 and 400 HU
(``covidct.evaluate.acquisitions.contrast_enhanced_simulated``: no lesion added, so every lesion mL there is false). Per case: the simulated region's mL, the share of it inside the final lung mask and
labelled consolidation or effusion, the lung mL beside the unchanged series', the lesion mL, severity and diagnosis.
Emphysema must stay lung; dependent consolidation is lung and lesion; an effusion is effusion.
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import time

import numpy as np

from bench_io import emit_json, healthy_series_args  # noqa: E402  (the script's folder is on sys.path)

# each series' own blood pool (median HU of the aorta; twenty-third session): LIDC-IDRI-0001 is contrast-enhanced
BLOOD_HU = {"normal001": 40.0, "LIDC-IDRI-0001": 125.0}


def main() -> int:
    parsed = healthy_series_args(__doc__)
    if parsed is None:
        return 0
    args, series = parsed

    from covidct.evaluate.acquisitions import contrast_enhanced_simulated, layering_effusion_simulated
    from covidct.evaluate.hu_volumes import dependent_consolidation_simulated, emphysema_simulated
    from covidct.io import load_ct
    from covidct.labels import CONSOLIDATION, EFFUSION
    from covidct.pipeline.analyzer import Analyzer

    analyzer = Analyzer()
    rows = []
    for name, folder in series.items():
        base = load_ct(folder)
        ml = float(np.prod(base.spacing)) / 1000.0
        cases = [("as it is", base, None)]
        for share in (0.1, 0.3, 0.5):
            for subpleural in (False, True):
                ct, region = emphysema_simulated(base, share, subpleural=subpleural)
                cases.append((f"emphysema {share:g}{' subpleural' if subpleural else ''}", ct, region))
        for share in (0.05, 0.15, 0.3):
            for effusion in (False, True):
                ct, region = dependent_consolidation_simulated(base, share, effusion=effusion)
                cases.append((f"{'pleural effusion' if effusion else 'dependent consolidation'} {share:g}", ct, region))
        # small effusions too (20-80 mL, 7-14 mm deep at most): what a pneumonia often brings
        for share, sides in ((0.01, ("right",)), (0.02, ("right",)), (0.03, ("right",)), (0.02, ("right", "left")),
                             (0.05, ("right", "left")), (0.1, ("right", "left")), (0.2, ("right", "left")),
                             (0.1, ("right",)), (0.2, ("right",))):
            ct, region = layering_effusion_simulated(base, share, sides)
            cases.append((f"layering effusion {'+'.join(sides)} {share:g}", ct, region))
        blood = BLOOD_HU.get(name, 40.0)
        for contrast in (250.0, 400.0):  # CT pulmonary angiography: the lung's vessels enhanced (no lesion added)
            cases.append((f"pulmonary angiography {contrast:g} HU", contrast_enhanced_simulated(base, contrast, blood), None))
        base_lung = None
        for case, ct, region in cases:
            t0 = time.perf_counter()
            res = analyzer(ct, None, html=False)
            lung, les = res.lungs > 0, res.lesions
            base_lung = float(lung.sum()) * ml if base_lung is None else base_lung
            row = {"series": name, "case": case, "lung_ml": round(float(lung.sum()) * ml, 1),
                   "lung_ml_as_it_is": round(base_lung, 1), "lesion_ml": round(float((les > 0).sum()) * ml, 1),
                   "severity": res.report["severity"]["score"], "diagnosis": res.report["diagnosis"]["label"],
                   "seconds": round(time.perf_counter() - t0, 1),
                   "warnings": [" ".join(w.split()[:8]) for w in res.report.get("warnings", [])]}
            if region is not None:
                n = max(int(region.sum()), 1)
                row.update(region_ml=round(n * ml, 1), region_in_lung=round(float((lung & region).sum()) / n, 3),
                           region_consolidation=round(float(((les == CONSOLIDATION) & region).sum()) / n, 3),
                           region_effusion=round(float(((les == EFFUSION) & region).sum()) / n, 3))
            print(f"{name} {case}: {row}", flush=True)
            rows.append(row)
    return emit_json({"rows": rows}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
