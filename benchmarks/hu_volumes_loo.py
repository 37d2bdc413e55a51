"""Leave-one-volume-out choice of the HU lesion rule's settings for benchmarks/hu_volumes.py.

The rule (``covidct.pipeline.hu_rules.hu_lesions``) has a few settings; they are chosen on the HU-volume
table itself, so each volume is scored with the setting chosen on the *other* patients' volumes (the objective is
written in docs/BENCHMARKS.md, "HU volumes": best mean slice AUC over the labelled volumes, minus one per
lesion-free volume with false lesions >= 10 mL or >= 0.5 % of lung). The rule runs where the pipeline
runs it: on the working grid, inside the lungs the analysis found (subsampled to that grid).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from covidct.evaluate.hu_volumes import false_lesions, roc_auc, select_loo
from covidct.pipeline.hu_rules import HULesionSettings

MAX_FALSE_ML, MAX_FALSE_PCT = 10.0, 0.5


def settings_grid() -> list[HULesionSettings]:
    """The 32 settings the choice is made among (the shipped default is one of them)."""
    out = []
    for go, g3, co, mn, bd in itertools.product([1.0, 2.0], [False, True], [4.0, 6.0], [0.1, 0.2], [-300.0, -200.0]):
        out.append(HULesionSettings(ggo_hu=(-700.0, bd), consolidation_hu=(bd, 150.0), ggo_open_mm=go, ggo_open_3d=g3,
                                    consolidation_open_mm=co, min_lesion_ml=mn))
    return out


def series_name(name: str) -> str:
    """The series a table row is a version of: its name before the first " (" ('P001 (2x thicker slices)' ->
    'P001', 'phantom 200 (lesion-free)' -> 'phantom 200')."""
    return name.split(" (")[0]


def loo_case(vol: dict, ct, lungs: np.ndarray, exclude: np.ndarray | None) -> dict:
    """What the choice needs of one volume, on the working grid."""
    from covidct.pipeline import working_grid

    work, f = working_grid(ct)
    # the patient: a thick-slice version of a series is the same patient as the series (held out together)
    case = {"name": vol["name"], "patient": series_name(vol["name"]),
            "hu": work.array, "spacing": work.spacing, "lungs": lungs[:, ::f, ::f],
            "lesion_free": bool(vol.get("lesion_free")), "exclude": None if exclude is None else exclude[:, ::f, ::f]}
    if vol.get("slice_labels"):
        files = [Path(s.file).name if s.file else None for s in ct.slices]
        case["y"] = np.array([vol["slice_labels"].get(fn, -1) if fn else -1 for fn in files])
    return case


def figures(case: dict, settings: HULesionSettings) -> dict:
    from covidct.pipeline.hu_rules import hu_lesions

    les = hu_lesions(case["hu"], case["spacing"], case["lungs"], settings)
    inf = (les == 1) | (les == 2)
    out = {"lesion_ml": float(inf.sum() * np.prod(case["spacing"]) / 1000.0)}
    if "y" in case:
        k = case["y"] >= 0
        out["auc"] = roc_auc(inf.reshape(len(inf), -1).sum(1)[k], case["y"][k])
    if case["lesion_free"]:
        out.update(false_lesions(inf, case["lungs"] > 0, case["spacing"], case["exclude"]))
    return out


def objective(fig: dict[str, dict]) -> float:
    """Mean slice AUC of the labelled volumes minus one per lesion-free volume over the limits (thick-slice
    versions carry no slice AUC here: they count only through the limits)."""
    aucs = [f["auc"] for f in fig.values() if "auc" in f]
    bad = sum(1 for f in fig.values() if "false_ml" in f and (f["false_ml"] >= MAX_FALSE_ML or f["false_pct"] >= MAX_FALSE_PCT))
    return (float(np.mean(aucs)) if aucs else 0.0) - bad


def loo_rows(cases: list[dict]) -> list[dict]:
    """One 'hu-rules LOO' row per volume, scored with the setting chosen without its patient (leave-one-patient-out:
    a series and its thick-slice versions are held out together; the other patients' thick-slice versions are in
    the choice, as they were when the shipped setting was chosen); prints the all-volume choice."""
    from covidct.evaluate.hu_volumes import scoring_note

    grid = settings_grid()
    names = [c["name"] for c in cases]
    patient = {c["name"]: c.get("patient", c["name"]) for c in cases}
    table: dict[tuple[int, str], dict] = {}
    for i, st in enumerate(grid):
        for c in cases:
            table[i, c["name"]] = figures(c, st)
        print(f"# setting {i}: {st}", file=sys.stderr, flush=True)

    def obj(i: int, train: list[str]) -> float:
        return objective({n: table[i, n] for n in train})

    chosen = select_loo(names, list(range(len(grid))), obj, tuned_on=names, groups=patient)
    overall = int(np.argmax([obj(i, names) for i in range(len(grid))]))
    print(f"# chosen on all volumes: setting {overall}: {grid[overall]}", file=sys.stderr, flush=True)
    rows = []
    for c in cases:
        i = int(chosen[c["name"]])
        f = table[i, c["name"]]
        row = {"volume": c["name"], "method": f"hu-rules LOO (setting {i})", "scored": scoring_note(c["name"], names),
               "lesion_ml": f["lesion_ml"]}
        for k in ("auc", "false_ml", "false_pct"):
            if k in f:
                row[k] = f[k]
        rows.append(row)
    rows.append({"volume": "all", "method": f"chosen on all volumes: setting {overall}", "scored": "–"})
    return rows
