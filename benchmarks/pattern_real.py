"""Pattern diagnosis on every real whole-chest HU volume: three-class label, RSNA category, CO-RADS, features.

Cases (``/work/shared/data`` or ``--data``): COVID-CT-MD P001 (COVID-19), cap001 (community-acquired
pneumonia), normal001 (normal), LIDC-IDRI-0001 (healthy lungs with nodules: expected normal). Nothing here
is fitted or tuned on them: the rules and thresholds are in covidct.pattern.

Stability, per case:
- re-run: the whole analysis twice; the category, CO-RADS and probabilities must be identical;
- lesion threshold: the infection model's foreground threshold (0.5) moved by ``--step`` both ways; the
  table shows the label/category at each threshold and the margins (log-odds of abnormal, and of COVID-19
  against another pneumonia: the distance to the decision boundary at 0);
- lesion boundary: the GGO/consolidation masks grown and shrunk by one voxel in-plane (independent of how
  the lesions stage makes them);
- HU lesion rule (versions whose lesions stage has ``covidct.pipeline.hu_rules``): its GGO floor moved by
  ``--hu-step`` HU both ways.
- ``--calibrate N``: the false opacity of the shipped models on N lesion-free phantoms per grid (the
  256² ones are the source of the 1 % abnormal threshold), phantoms with 5 % lesions, and each pattern
  preset (seeds 0..N-1, 256²) through the shipped models beside its exact labels.
- ``--demo N``: the demo's own COVID-like phantom (``make_phantom(seed=s)``, 192² × 5 mm, default lesions), seeds
  0..N-1, through the shipped models beside its exact labels, and how many read other than COVID-19 (a rule on
  the pattern should not raise that count).

Usage: python benchmarks/pattern_real.py [--data DIR] [--step 0.05] [--json out.json] [--calibrate N] [--demo N]
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CASES = [
    ("P001", "covid-ct-md/P001", "covid19"),
    ("cap001", "covid-ct-md/cap001", "pneumonia"),
    ("normal001", "covid-ct-md/normal001", "normal"),
    ("LIDC-IDRI-0001", "lidc-idri/LIDC-IDRI-0001", "normal"),
]
SHOWN = ("opacity_percent", "minor_side_share", "peripheral_fraction", "peripheral_odds_ratio", "perihilar_fraction", "ggo_fraction",
         "lower_zone_fraction", "posterior_fraction", "n_foci", "n_round_foci", "dependent_density_ml",
         "largest_consolidation_percent", "n_nodules", "effusion_ml", "septal_line_fraction")


def _set_threshold(analyzer, thr: float) -> bool:
    """Set the infection model's foreground threshold (the lesion threshold); False if there is none."""
    info = getattr(analyzer, "infection_info", None)
    if info is None:  # covidct.pipeline as a package of stages: the loaded models by role
        info = getattr((getattr(analyzer, "models", None) or {}).get("infection"), "info", None)
    if not info:
        return False
    info.setdefault("thresholds", {})["foreground"] = float(thr)
    return True


def _set_ggo_floor(step_hu: float) -> bool:
    """Move the HU lesion rule's GGO floor (covidct.pipeline.hu_rules, when this version has one) by ``step_hu``."""
    import dataclasses

    try:
        from covidct.pipeline import hu_rules
    except ImportError:
        return False
    base = hu_rules.DEFAULT
    settings = dataclasses.replace(base, ggo_hu=(base.ggo_hu[0] + step_hu, base.ggo_hu[1]))
    hu_rules.hu_lesions.__defaults__ = (settings,)
    return True


def run_case(analyzer, folder: Path) -> dict:
    from covidct.io import load_ct
    from covidct.pattern import analyse_pattern
    from covidct.pipeline.diagnosis import pattern_reading

    ct = load_ct(folder)
    t0 = time.perf_counter()
    analysis = analyzer(ct)
    t_an = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = analyse_pattern(analysis.lungs, analysis.lesions, ct.spacing, ct.array if ct.is_hu else None,
                          **pattern_reading(ct))
    t_pat = time.perf_counter() - t0
    return _summary(res) | {"analyze_s": round(t_an, 2), "pattern_s": round(t_pat, 2),
                            "report_diagnosis": analysis.report.get("diagnosis", {}).get("label"),
                            "masks": (analysis.lungs, analysis.lesions, ct)}


def _summary(res) -> dict:
    return {"label": res.label, "probabilities": res.probabilities, "rsna": res.rsna_category,
            "co_rads": res.co_rads, "margins": res.margins, "features": res.features, "reasons": res.reasons}


def boundary_shifts(lungs, lesions, ct) -> dict:
    """The pattern with the GGO/consolidation masks grown / shrunk by one voxel in-plane."""
    import numpy as np
    from scipy import ndimage

    from covidct.labels import CONSOLIDATION, GGO
    from covidct.pattern import analyse_pattern
    from covidct.pipeline.diagnosis import pattern_reading

    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    out = {}
    for name, op in (("shrink", ndimage.binary_erosion), ("grow", ndimage.binary_dilation)):
        les = np.where(np.isin(lesions, (GGO, CONSOLIDATION)), 0, lesions).astype(lesions.dtype)
        for lab in (GGO, CONSOLIDATION):
            m = op(lesions == lab, cross) & (lungs > 0) & (les == 0)
            les[m] = lab
        out[name] = _summary(analyse_pattern(lungs, les, ct.spacing, ct.array if ct.is_hu else None,
                                             **pattern_reading(ct)))
    return out


def _phantom_row(ph, **extra) -> dict:
    """One phantom through the shipped models (``pipeline.analyze``), beside the pattern of its exact labels."""
    from covidct.pattern import analyse_pattern
    from covidct.pipeline import analyze
    from covidct.pipeline.diagnosis import pattern_reading

    a = analyze(ph.ct)
    r = analyse_pattern(a.lungs, a.lesions, ph.ct.spacing, ph.ct.array, **pattern_reading(ph.ct))
    t = analyse_pattern(ph.lungs, ph.lesions, ph.ct.spacing, ph.ct.array)
    return extra | {"raw_involvement": a.report["involvement_percent"]["total"],
                    "opacity_percent": r.features["opacity_percent"], "models": [r.rsna_category, r.label],
                    "truth_masks": [t.rsna_category, t.label]}


def demo_phantoms(n: int) -> list[dict]:
    """The demo's phantom, seeds 0..n-1 (see the module docstring)."""
    from covidct.phantom import make_phantom

    rows = [_phantom_row(make_phantom(seed=seed), seed=seed) for seed in range(n)]
    for r in rows:
        print(json.dumps(r), flush=True)
    missed = [r["seed"] for r in rows if r["models"][1] != "covid19"]
    print(f"demo phantoms read other than COVID-19: {len(missed)} of {n} (seeds {missed}); "
          f"true masks other than COVID-19: {sum(r['truth_masks'][1] != 'covid19' for r in rows)}", flush=True)
    return rows


GRIDS = {"256": ((64, 256, 256), (4.0, 1.4, 1.4)), "192": ((56, 192, 192), (4.0, 1.8, 1.8))}


def calibrate(n: int) -> dict:
    """Phantoms through the shipped models: lesion-free and 5 % lesion phantoms on two grids (256² at 1.4 mm,
    the models' working size, and 192² at 1.8 mm), and every pattern preset on the 256² grid."""
    from covidct.phantom import make_phantom
    from covidct.phantom.patterns import EXPECTED, make_pattern_phantom

    row = _phantom_row
    out: dict = {"phantoms": [], "presets": []}
    for grid, (shape, spacing) in GRIDS.items():
        for seed in range(n):
            for kind, kw in (("lesion-free", {"lesions": False}), ("5 % lesions", {"lesion_burden": 0.05, "effusion": False})):
                out["phantoms"].append(row(make_phantom(shape, spacing, seed=seed, **kw), grid=grid, kind=kind, seed=seed))
    shape, spacing = GRIDS["256"]
    for seed in range(n):
        for preset in EXPECTED:
            ph = make_pattern_phantom(preset, shape=shape, spacing=spacing, seed=seed)
            out["presets"].append(row(ph, preset=preset, seed=seed, expected=EXPECTED[preset]))
    for r in out["phantoms"] + out["presets"]:
        print(json.dumps(r), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--step", type=float, default=0.05, help="lesion threshold step (infection model foreground)")
    ap.add_argument("--hu-step", type=float, default=25.0, help="HU lesion rule: GGO floor step (when there is one)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--calibrate", type=int, default=0, help="also measure N lesion-free/lesion phantoms")
    ap.add_argument("--demo", type=int, default=0, help="also read the demo's COVID-like phantom, seeds 0..N-1")
    args = ap.parse_args()
    from covidct.pipeline import Analyzer

    results: dict = {}
    if args.calibrate:
        results["calibration"] = calibrate(args.calibrate)
    if args.demo:
        results["demo_phantoms"] = demo_phantoms(args.demo)
    if not args.data.is_dir():
        print(f"skip: {args.data} not found")
        return 0
    analyzer = Analyzer()
    base_thr = ((getattr(analyzer, "infection_info", None) or {}).get("thresholds") or {}).get("foreground", 0.5)
    rows = []
    for name, rel, truth in CASES:
        folder = args.data / rel
        if not folder.exists():
            print(f"skip {name}: {folder} not found")
            continue
        _set_threshold(analyzer, base_thr)
        first, again = run_case(analyzer, folder), run_case(analyzer, folder)
        identical = all(first[k] == again[k] for k in ("label", "probabilities", "rsna", "co_rads", "features"))
        boundary = boundary_shifts(*first.pop("masks"))
        again.pop("masks")
        shifted = {}
        for thr in (base_thr - args.step, base_thr + args.step):
            if _set_threshold(analyzer, thr):
                shifted[f"thr {thr:.2f}"] = run_case(analyzer, folder)
                shifted[f"thr {thr:.2f}"].pop("masks")
        shifted.update(boundary)
        _set_threshold(analyzer, base_thr)
        for step_hu in (-args.hu_step, args.hu_step):
            if _set_ggo_floor(step_hu):
                shifted[f"GGO floor {step_hu:+.0f} HU"] = run_case(analyzer, folder)
                shifted[f"GGO floor {step_hu:+.0f} HU"].pop("masks")
        _set_ggo_floor(0.0)
        results[name] = {"truth": truth, "base": first, "rerun_identical": identical, "shifted": shifted}
        rows.append((name, truth, first, identical, shifted))
        print(json.dumps({name: results[name]}, default=str), flush=True)

    shifted_names = list(rows[0][4]) if rows else []
    head = "| case | truth | diagnosis (P covid/pneu/normal) | RSNA | CO-RADS | margins abn / covid | re-run | "
    print("\n" + head + " / ".join(shifted_names) + " | pattern s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, truth, r, same, shifted in rows:
        p = r["probabilities"]
        sh = " / ".join(f"{s['label']}, {s['rsna']} ({s['margins']['abnormal_logit']:+.2f}, "
                        f"{s['margins']['covid_logit']:+.2f})" for s in shifted.values())
        print(f"| {name} | {truth} | **{r['label']}** ({p['covid19']:.2f}/{p['pneumonia']:.2f}/{p['normal']:.2f}) | "
              f"{r['rsna']} | {r['co_rads']} | {r['margins']['abnormal_logit']:+.2f} / {r['margins']['covid_logit']:+.2f}"
              f" | {'identical' if same else 'DIFFERS'} | {sh} | {r['pattern_s']} |")
    print("\n| case | " + " | ".join(SHOWN) + " |")
    print("|---|" + "---|" * len(SHOWN))
    for name, _, r, _, _ in rows:
        print(f"| {name} | " + " | ".join(str(r["features"][k]) for k in SHOWN) + " |")
    print()
    for name, _, r, _, _ in rows:
        print(f"- {name}: " + " ".join(r["reasons"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
