"""How much simulated diffuse GGO ``covidct analyze`` finds on healthy whole HU series, with the HU rule's GGO floor
as it is and held fixed (no rise with the lung's density).

    python benchmarks/diffuse_disease.py [--data DIR] [--json OUT]

Each healthy series (covid-ct-md normal001, LIDC-IDRI-0001) gets GGO over 60, 80, 90 and 95 % of its HU lung field,
faint (+180 HU per air share, about -670 HU) and moderate (+250, about -600)
(``covidct.evaluate.hu_volumes.diffuse_disease_simulated``). Per case: the simulated lesion mL inside the final lung
mask, the mL found there and outside it, sensitivity, the lift of the GGO floor, and the diagnosis, with the HU
rule's GGO floor fixed (the default) and following the best-aerated lung (``ggo_follows_aerated``, opt-in): a rule
that follows a shallow breath must not take widespread disease for one. Skips (exit 0) when the data folder is
absent.
"""

from __future__ import annotations

import time

import numpy as np

from bench_io import emit_json, healthy_series_args  # noqa: E402  (the script's folder is on sys.path)

SHARES = (0.6, 0.8, 0.9, 0.95)
SHIFTS = (180.0, 250.0)


def main() -> int:
    parsed = healthy_series_args(__doc__)
    if parsed is None:
        return 0
    args, series = parsed

    from covidct.evaluate.hu_volumes import diffuse_disease_simulated
    from covidct.io import load_ct
    from covidct.pipeline import hu_rules
    from covidct.pipeline.analyzer import Analyzer

    shipped_rule = hu_rules.hu_lesions
    seen: dict = {}  # the notes of the rule's last run

    def noting(*a, notes=None, **k):  # noqa: ANN001, ANN202  (the pipeline's call, unchanged; its notes kept)
        out = shipped_rule(*a, notes=notes, **k)
        seen.clear()
        seen.update(notes or {})
        return out

    hu_rules.hu_lesions = noting
    analyzers = {"floor fixed": Analyzer(), "floor follows the lung": Analyzer(ggo_floor_follows_lung=True)}
    rows = []
    for name, folder in series.items():
        base = load_ct(folder)
        ml = float(np.prod(base.spacing)) / 1000.0
        for shift in SHIFTS:
            for share in SHARES:
                ct, region = diffuse_disease_simulated(base, share, shift)
                row: dict = {"series": name, "share": share, "shift_hu": shift}
                for label, analyzer in analyzers.items():
                    t0 = time.perf_counter()
                    res = analyzer(ct, None, html=False)
                    found, lung = res.lesions > 0, res.lungs > 0
                    truth = region & lung
                    tp = float((found & truth).sum()) * ml
                    row[label] = {
                        "simulated_ml": round(float(truth.sum()) * ml, 1), "found_ml": round(tp, 1),
                        "outside_ml": round(float((found & ~region).sum()) * ml, 1),
                        "sensitivity": round(tp / max(float(truth.sum()) * ml, 1e-9), 3),
                        "floor_lift_hu": round(float(seen.get("ggo_floor_lift_hu") or 0.0), 1),
                        "p10_hu": seen.get("aerated_lung_hu"), "p1_hu": seen.get("best_aerated_lung_hu"),
                        "diagnosis": res.report["diagnosis"]["label"], "seconds": round(time.perf_counter() - t0, 1),
                    }
                fixed, follows = row["floor fixed"], row["floor follows the lung"]
                print(f"{name} share {share:g} +{shift:g}: of {fixed['simulated_ml']} mL found {fixed['found_ml']} "
                      f"({fixed['diagnosis']}) with the floor fixed, {follows['found_ml']} ({follows['diagnosis']}) "
                      "following the lung", flush=True)
                rows.append(row)
    hu_rules.hu_lesions = shipped_rule
    return emit_json({"shipped": "floor follows the lung" if hu_rules.DEFAULT.ggo_follows_aerated else "floor fixed",
                      "rows": rows}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
