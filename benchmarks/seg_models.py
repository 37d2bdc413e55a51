"""Accuracy of the shipped 2-D segmentation models on held-out real slices (issue targets beside them).

- infection: the 48 Inf-Net test slices (never trained or tuned on), per-image Dice and Inf-Net's
  mean Dice over 256 thresholds; also the Ma et al. cases of the run's validation and test parts.
- lesions: GGO / consolidation Dice on the 48 Inf-Net multi-class test slices (effusion is not
  labelled there, so effusion predictions count against background).
- lungs: the Ma et al. cases of the lung run's validation and test parts (by case).

Usage: python benchmarks/seg_models.py [--out docs/eval] [--models infection ...] [--transposed]
[--candidate lungs=runs/RUN] — writes one evaluate() report per row. ``--candidate`` scores a run folder in
place of the shipped model of that name (same rows, its own card's split), to choose before shipping.
Skips (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _split_cases(card: dict, part: str) -> list[str]:
    return [c for c in card["split"].get(part, []) if c.startswith("ma-")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/covidct-seg-eval"))
    ap.add_argument("--models", nargs="*", default=None, help="only these shipped models (default: all)")
    ap.add_argument("--transposed", action="store_true",
                    help="score every slice transposed (image and labels): is the model orientation-independent?")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=RUN",
                    help="score this run folder or checkpoint in place of the shipped model NAME")
    args = ap.parse_args()
    candidates = dict(c.split("=", 1) for c in args.candidate)
    from covidct.data import data_root, load_source
    from covidct.evaluate import evaluate
    from covidct.models import zoo

    if data_root() is None:
        print("skip: ../shared/data not found")
        return 0
    rows = []

    def run(model: str, records: list[dict], task: str, what: str) -> None:
        if args.models is not None and model not in args.models:
            return
        source = candidates.get(model, model)
        if not zoo.has_model(source) or not records:
            rows.append((model, what, None))
            return
        weights, _ = zoo.resolve_model_path(source)
        if args.transposed:
            records = [{k: (np.ascontiguousarray(np.asarray(v).T) if k in ("image", "lungs", "infection", "lesions")
                            and v is not None else v) for k, v in r.items()} for r in records]
        res = evaluate(weights, records, task, args.out / f"{model}-{task}-{'-'.join(what.split()[:2])}")  # e.g. Ma-val, Ma-test
        rows.append((f"{model} ({source})" if source != model else model, what, res))

    infnet = load_source("medseg-infnet", split="test")
    infnet_mc = load_source("medseg-infnet", split="test", multiclass=True)
    ma = load_source("ma2020")
    run("infection", infnet, "infection", "Inf-Net test (48 slices)")
    run("lesions", infnet_mc, "lesions", "Inf-Net test multi-class (48)")
    run("lesions", infnet, "infection", "Inf-Net test (48) as infection")
    for name, task in (("lungs", "lungs"), ("infection", "infection")):
        if zoo.has_model(candidates.get(name, name)):
            card = zoo.load(candidates.get(name, name))[1].get("card", {})
            for part in ("val", "test"):
                cases = set(_split_cases(card, part))
                recs = [r for r in ma if r["group"] in cases or f"ma-{r['case']}" in cases]
                run(name, recs, task, f"Ma {part} cases {sorted(cases)}")
    print("| model | data | class | Dice mean ± std | sensitivity | specificity | precision | 256-thr Dice |")
    print("|---|---|---|---|---|---|---|---|")
    for model, what, res in rows:
        if res is None:
            print(f"| {model} | {what} | – | not available | | | | |")
            continue
        per = res["per_class"]
        thr = (res.get("dice_256_thresholds") or {}).get("mean_dice")
        for cls, m in per.items():
            if cls in ("background", "none"):
                continue

            def f(key, m=m):
                v = m.get(key)
                if isinstance(v, dict):
                    return f"{v.get('mean', float('nan')):.3f} ± {v.get('std', float('nan')):.3f}"
                return "–" if v is None else f"{v:.3f}"

            t = f"{thr:.3f}" if isinstance(thr, float) else "–"
            print(f"| {model} | {what} | {cls} | {f('dice')} | {f('sensitivity')} | {f('specificity')} | {f('precision')} | {t} |")
    slim = [(m, w, None if r is None else {k: v for k, v in r.items() if k not in ("ids", "confusion")}) for m, w, r in rows]
    (args.out / "summary.json").write_text(json.dumps(slim, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
