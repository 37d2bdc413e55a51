"""Accuracy and speed of ``covidct analyze`` on the real HU series COVID-CT-MD P001 and on phantoms.

P001 (148 slices, 512², 2 mm, COVID-19) has radiologists' slice-level infection labels
(``labels_slice.csv``); covidct never trains on it, so it is a held-out test. Measured:
- slice-level infection detection from ``report.slices[].lesion_mm2``: ROC AUC and sensitivity /
  specificity at covidct's operating point (any lesion in the slice), beside the HU baseline
  (voxels between −700 and −300 HU inside the HU-threshold lung mask, per slice);
- lung volumes, diagnosis, per-stage times and peak RSS (whole process);
- phantoms (exact labels): Dice of lungs (left/right) and each lesion class, involvement error;
- lesion-free phantoms: false involvement and diagnosis (normal lungs must not be called COVID-19).

Usage: python benchmarks/analyze_p001.py [--data DIR] [--png out.png] [--phantoms N] [--normal-phantoms N]
Skips (exit 0) when the data folder is absent (the phantom part still runs with --phantoms).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUC (ties count half)."""
    from scipy.stats import rankdata

    pos, neg = labels == 1, labels == 0
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def hu_baseline(hu: np.ndarray) -> np.ndarray:
    from covidct.preprocess import threshold_lung_mask

    lungs = threshold_lung_mask(hu)
    # fill the lung field per slice so dense lesions inside it count (the baseline's best case)
    from scipy import ndimage

    filled = np.stack([ndimage.binary_fill_holes(s) for s in lungs])
    return (filled & (hu > -700) & (hu < -300)).reshape(len(hu), -1).sum(1).astype(float)


def p001(data: Path, png: Path | None, models: dict) -> dict:
    from covidct.io import load_ct
    from covidct.pipeline import Analyzer

    t0 = time.perf_counter()
    analyzer = Analyzer(**models)
    t_models = time.perf_counter() - t0
    folder = data / "covid-ct-md" / "P001"
    t0 = time.perf_counter()
    ct = load_ct(folder)
    t_load = time.perf_counter() - t0
    ct.meta["_load_seconds"] = t_load
    t0 = time.perf_counter()
    res = analyzer(ct, None, html=False)
    t_analysis = time.perf_counter() - t0
    from covidct.report import slice_rows

    rows = slice_rows(ct, res.lungs, res.lesions)
    labels = {}
    with open(data / "covid-ct-md" / "labels_slice.csv", newline="") as f:
        for r in csv.DictReader(f):
            labels[Path(r["dicom_file"]).name] = int(r["label"])
    y = np.array([labels[r["file"]] for r in rows])
    score = np.array([r["lesion_mm2"] for r in rows])
    base = hu_baseline(ct.array)
    pred = score > 0
    # lesion area as a share of the lung area on the radiologists' infection-free vs infected slices: the first
    # is the models' false involvement on real lung (vessels, bases)
    lung_area = np.array([r["lung_mm2"] for r in rows])
    inf_area = np.array([r["ggo_mm2"] + r["consolidation_mm2"] for r in rows])
    share = {f"{name}_slices": round(100 * float(inf_area[y == k].sum() / max(lung_area[y == k].sum(), 1e-9)), 2)
             for name, k in (("infection_free", 0), ("infected", 1))}
    out = {
        "slices": len(rows),
        "positive_slices": int(y.sum()),
        "auc_covidct": roc_auc(score, y),
        "auc_hu_baseline": roc_auc(base, y),
        "sensitivity": float((pred & (y == 1)).sum() / (y == 1).sum()),
        "specificity": float((~pred & (y == 0)).sum() / (y == 0).sum()),
        "ggo_consolidation_percent_of_lung_area": share,
        "lungs_ml": res.report["lungs"],
        "lesions_ml": {k: res.report["lesions"][k] for k in ("ggo_ml", "consolidation_ml", "effusion_ml", "total_ml")},
        "involvement_percent": res.report["involvement_percent"]["total"],
        "severity": res.report["severity"]["score"],
        "diagnosis": res.report["diagnosis"]["label"],
        "probabilities": res.report["diagnosis"]["probabilities"],
        "models": res.report["models"],
        "timings_s": {"model_load": round(t_models, 3), "load": round(t_load, 3), **{k: v for k, v in res.report["timings_s"].items() if k != "load"}},
        "load_plus_analysis_s": round(t_load + t_analysis, 3),
        "warnings": res.report["warnings"],
    }
    if png:
        _montage(ct, res.lungs, res.lesions, y, score, png)
    return out


def _montage(ct, lungs, lesions, y, score, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covidct.preprocess import apply_window

    zs = np.flatnonzero((lungs > 0).reshape(len(lungs), -1).any(1))
    picks = np.linspace(zs.min(), zs.max(), 12).astype(int)
    fig, axes = plt.subplots(3, 4, figsize=(16, 12))
    for ax, k in zip(axes.ravel(), picks, strict=True):
        ax.imshow(apply_window(ct.array[k], "lung"), cmap="gray")
        ax.contour(lungs[k] == 1, levels=[0.5], colors="deepskyblue", linewidths=0.8)
        ax.contour(lungs[k] == 2, levels=[0.5], colors="lime", linewidths=0.8)
        for c, col in ((1, "gold"), (2, "red"), (3, "magenta")):
            if (lesions[k] == c).any():
                ax.contour(lesions[k] == c, levels=[0.5], colors=col, linewidths=0.8)
        ax.set_title(f"z{k} label={y[k]} lesion={score[k]:.0f} mm²", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)


def phantoms(n: int, models: dict) -> dict:
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer

    analyzer = Analyzer(**models)
    rows = []
    for seed in range(100, 100 + n):
        ph = make_phantom(shape=(48, 256, 256), spacing=(5.0, 1.4, 1.4), seed=seed, lesion_burden=0.05 + 0.1 * (seed % 3), margin_slices=4)
        res = analyzer(ph.ct, None, html=False)

        def dice(a, b):
            s = a.sum() + b.sum()
            return float(2 * (a & b).sum() / s) if s else float("nan")

        rows.append({
            "seed": seed,
            "dice_left": dice(res.lungs == 1, ph.lungs == 1),
            "dice_right": dice(res.lungs == 2, ph.lungs == 2),
            "dice_ggo": dice(res.lesions == 1, ph.lesions == 1),
            "dice_consolidation": dice(res.lesions == 2, ph.lesions == 2),
            "dice_effusion": dice(res.lesions == 3, ph.lesions == 3),
            "dice_infection": dice(np.isin(res.lesions, (1, 2)), np.isin(ph.lesions, (1, 2))),
            "involvement_error_pts": res.report["involvement_percent"]["total"] - ph.truth["involvement_percent"]["total"],
        })
    keys = [k for k in rows[0] if k != "seed"]
    return {"n": n, "per_phantom": rows, "mean": {k: float(np.nanmean([r[k] for r in rows])) for k in keys}}


def normal_phantoms(n: int, models: dict) -> dict:
    """Lesion-free phantoms (true involvement 0 %): false involvement and the diagnosis they get.

    Seeds 200.. on the analyze benchmark's grid (56 × 256 × 256), plus the unit tests' coarse
    lesion-free phantom (20 × 128 × 128 at 6 × 2.6 × 2.6 mm, seed 5). No model trains on these seeds."""
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer

    analyzer = Analyzer(**models)
    cases = [(f"seed {s}, 56x256x256", dict(seed=s, shape=(56, 256, 256))) for s in range(200, 200 + n)]
    cases.append(("seed 5, 20x128x128 at 6x2.6x2.6 mm", dict(seed=5, shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))))
    rows = []
    for name, kw in cases:
        ph = make_phantom(lesions=False, effusion=False, **kw)
        rep = analyzer(ph.ct, None, html=False).report
        rows.append({"phantom": name, "involvement_percent": rep["involvement_percent"]["total"],
                     "ggo_ml": rep["lesions"]["ggo_ml"], "consolidation_ml": rep["lesions"]["consolidation_ml"],
                     "severity": rep["severity"]["score"], "diagnosis": rep["diagnosis"]["label"],
                     "probabilities": rep["diagnosis"]["probabilities"]})
    return {"n": len(rows), "per_phantom": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--png", type=Path, default=None, help="save a montage of P001 overlays here")
    ap.add_argument("--phantoms", type=int, default=0, help="also score N phantoms against their exact labels")
    ap.add_argument("--normal-phantoms", type=int, default=0,
                    help="also analyse N lesion-free phantoms (+ the tests' coarse one): false involvement, diagnosis")
    for role in ("lungs", "lesions", "infection"):
        ap.add_argument(f"--{role}", default=role, help=f"{role} model: shipped name, checkpoint or run folder; 'none' = without")
    args = ap.parse_args()
    models = {f"{r}_model": (None if getattr(args, r) == "none" else getattr(args, r)) for r in ("lungs", "lesions", "infection")}
    result: dict = {}
    if (args.data / "covid-ct-md" / "P001").is_dir():
        result["p001"] = p001(args.data, args.png, models)
    else:
        print(f"skip P001: real data not found under {args.data}")
    if args.phantoms:
        result["phantoms"] = phantoms(args.phantoms, models)
    if args.normal_phantoms:
        result["normal_phantoms"] = normal_phantoms(args.normal_phantoms, models)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
