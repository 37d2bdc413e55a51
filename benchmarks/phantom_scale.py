"""Phantoms analysed as they are and on the box a wide field of view gets: does the box suit them too?

    python benchmarks/phantom_scale.py [--json OUT] [--lesions-model NAME_OR_RUN]

13 phantoms (10 with lesions and an effusion, 3 lesion-free; their lungs span 63-68 % of the width, so
``covidct.pipeline.grid.lung_field_box`` leaves them whole) are analysed as they are and with the box forced on every
one of them (lungs at ``grid.TRAINED_LUNG_FRACTION`` of its width), and scored against their exact labels: lung,
infection and effusion Dice, mL, diagnosis. Needs no data folder; about 3 minutes on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_io import ROOT, emit_json  # noqa: E402  (the script's folder is on sys.path)

PHANTOMS = ([{"seed": s, "shape": (48, 192, 192)} for s in range(5)]
            + [{"seed": s, "shape": (32, 160, 160), "lesion_burden": 0.3} for s in range(5, 8)]
            + [{"seed": s, "shape": (32, 256, 256), "spacing": (5.0, 1.4, 1.4)} for s in range(8, 10)]
            + [{"seed": s, "shape": (40, 176, 176), "lesions": False, "effusion": False} for s in range(10, 13)])


def phantom_rows(lesions_model: str = "lesions") -> list[dict]:
    """One row per phantom and setting (``box``: as it is / forced), against the phantom's exact labels."""
    import sys

    import numpy as np

    from covidct.evaluate.hu_volumes import dice as dice_of
    from covidct.phantom import make_phantom
    from covidct.pipeline import grid
    from covidct.pipeline.analyzer import Analyzer

    def dice(a, b) -> float | None:  # None where both are empty
        return round(dice_of(a, b), 4) if a.any() or b.any() else None

    analyzer, rows = Analyzer(lesions_model=lesions_model), []
    for narrow, setting in ((grid.NARROW_LUNG_FRACTION, "as it is"), (1.0, "box forced")):
        grid.NARROW_LUNG_FRACTION = narrow
        for options in PHANTOMS:
            ph = make_phantom(**options)
            res = analyzer(ph.ct, None, html=False)
            ml = float(np.prod(ph.ct.spacing)) / 1000.0
            found, truth = np.isin(res.lesions, (1, 2)), np.isin(ph.lesions, (1, 2))
            row = {"phantom": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                   "setting": setting, "boxed": res.report["input"]["analysed_box_yx"] is not None,
                   "lung_dice": dice(res.lungs > 0, ph.lungs > 0), "infection_dice": dice(found, truth),
                   "effusion_dice": dice(res.lesions == 3, ph.lesions == 3),
                   "infection_ml": round(float(found.sum()) * ml, 2), "true_infection_ml": round(float(truth.sum()) * ml, 2),
                   "effusion_ml": round(float((res.lesions == 3).sum()) * ml, 2),
                   "true_effusion_ml": round(float((ph.lesions == 3).sum()) * ml, 2),
                   "diagnosis": res.report["diagnosis"]["label"]}
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    return rows



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--lesions-model", default="lesions", help="lesion model: shipped name or run folder")
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    return emit_json({"rows": phantom_rows(args.lesions_model), "lesions_model": args.lesions_model}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
