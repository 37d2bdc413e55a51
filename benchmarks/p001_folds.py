"""P001 two-fold check of infection models that learned from half of P001's infection-free slices.

``configs/infection_p001_negatives.yaml`` trains one model per fold: the fold-k model saw fold-k
negatives only (blocks of 8 slices, interleaved; see ``covidct.data.sources.load_covid_ct_md``). Here
each model runs through the whole ``analyze`` pipeline on P001 and is scored on the *other* fold's
slices only (its positives and negatives), beside the HU baseline and reference models (default: the
shipped ``infection``) on exactly the same slices. Same patient in training and test: the figures are
optimistic for new patients.

Usage: python benchmarks/p001_folds.py RUN_DIR [--reference infection ...] [--data DIR]
(RUN_DIR holds the fold-0 and fold-1 variant folders). Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from analyze_p001 import hu_baseline, roc_auc  # noqa: E402


def slice_scores(ct, infection_model: str) -> tuple:
    """The analysis with this infection model and its ``slices`` rows (``lesion_mm2``), in the loader's order."""
    from covidct.pipeline import Analyzer
    from covidct.report import slice_rows

    res = Analyzer(infection_model=infection_model)(ct, None, html=False)
    return res, slice_rows(ct, res.lungs, res.lesions)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--reference", action="append", default=None, help="reference infection model(s); default: infection")
    ap.add_argument("--data", type=Path, default=REPO.parent.parent / "shared" / "data")
    args = ap.parse_args()
    folder = args.data / "covid-ct-md" / "P001"
    if not folder.is_dir():
        print(f"skip: {folder} not found")
        return 0
    import yaml

    from covidct.io import load_ct

    # the fold layout the models were trained with (their covid-ct-md source's options)
    cfg = yaml.safe_load((args.run_dir / "fold-0" / "config.resolved.yaml").read_text())
    block = next(int(src.get("block", 8)) for src in cfg["data"]["sources"] if src["name"] == "covid-ct-md")
    ct = load_ct(folder)
    rows_csv = {Path(r["dicom_file"]).name: r for r in csv.DictReader(open(args.data / "covid-ct-md" / "labels_slice.csv"))}
    base = hu_baseline(ct.array)
    models = {f"fold-{k} model": str(args.run_dir / f"fold-{k}") for k in (0, 1)}
    refs = {r: r for r in (args.reference or ["infection"])}
    scores: dict[str, np.ndarray] = {}
    out: dict = {"folds": {}, "models": {}}
    for name, m in {**models, **refs}.items():
        res, rows = slice_scores(ct, m)  # the same slices in the same order for every model
        scores[name] = np.array([r["lesion_mm2"] for r in rows])
        # whole-series figures (for the fold models they include the slices they learned from)
        out["models"][name] = {"model": m, "involvement_percent": res.report["involvement_percent"]["total"],
                               "diagnosis": res.report["diagnosis"]["label"]}
    y = np.array([int(rows_csv[r["file"]]["label"]) for r in rows])
    pos = np.array([int(rows_csv[r["file"]]["slice_position"]) for r in rows])
    fold = (pos // block) % 2
    oof = np.zeros(len(y))
    for k in (0, 1):
        test = fold == 1 - k  # the fold-k model never saw these slices
        oof[test] = scores[f"fold-{k} model"][test]
        res = {"n": int(test.sum()), "positives": int(y[test].sum()),
               "auc_hu_baseline": roc_auc(base[test], y[test]),
               f"auc_fold-{k} model": roc_auc(scores[f"fold-{k} model"][test], y[test])}
        for r in refs:
            res[f"auc_{r}"] = roc_auc(scores[r][test], y[test])
        for name in (f"fold-{k} model", *refs):
            s = scores[name][test]
            res[f"specificity_any_lesion_{name}"] = float(((s == 0) & (y[test] == 0)).sum() / (y[test] == 0).sum())
        out["folds"][f"test on fold {1 - k}"] = res
    out["out_of_fold"] = {"auc": roc_auc(oof, y), "auc_hu_baseline": roc_auc(base, y),
                          **{f"auc_{r}": roc_auc(scores[r], y) for r in refs}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
