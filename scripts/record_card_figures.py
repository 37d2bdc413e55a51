"""Record the measured whole-volume and slice figures in the shipped models' cards (issue 17: the shipped models carry
cards with the figures of the benchmarks that judge them).

    python benchmarks/hu_volumes.py --data ../shared/data --loo --json HU.json
    python benchmarks/seg_models.py --out SEG                # writes SEG/summary.json
    python benchmarks/segment_infnet.py --json INFNET.json
    python benchmarks/lung_coverage.py --json COVERAGE.json
    python scripts/record_card_figures.py --hu HU.json --seg SEG/summary.json --infnet INFNET.json \
        --coverage COVERAGE.json --machine "..."

Writes ``metrics.benchmarks`` entries (with the commands, the date and the machine) into
``src/covidct/weights/{lungs,lesions,infection}.card.json``: ``whole_hu_volumes`` (lungs, lesions: the pipeline they are
part of on whole HU volumes, against issue 17's targets), ``seg_models`` (each model's rows) and ``segment_infnet``
(infection: ``covidct segment`` on the Inf-Net test files as distributed, with the runtime that ships) and
``lung_coverage`` (lungs: the share of the doctors' GGO and consolidation inside its mask). Weights are not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "covidct" / "weights"
KEEP = ("auc", "false_ml", "false_pct", "lung_ml", "lesion_ml", "neck_ml", "mediastinum_ml", "below_ml", "trachea_ml",
        "lung_dice", "diagnosis")


def _r(v):
    return round(v, 4) if isinstance(v, float) else v


def hu_summary(rows: list[dict]) -> dict:
    """The pipeline's rows (and the HU count's and leave-one-out AUCs beside them), and each issue-17 target's verdict."""
    shipped = {r["volume"]: {k: _r(r[k]) for k in KEEP if k in r} for r in rows if r["method"] == "shipped"}
    count = {r["volume"]: _r(r.get("auc")) for r in rows if r["method"] == "HU count" and r.get("auc") is not None}
    loo = {r["volume"]: _r(r.get("auc")) for r in rows if r.get("scored") == "LOO" and r.get("auc") is not None}
    lesion_free = {v: r for v, r in shipped.items() if "false_ml" in r}
    targets = {
        "lesion-free volumes: false lesions < 10 mL and < 0.5 % of lung, none called COVID-19": all(
            r["false_ml"] < 10 and r["false_pct"] < 0.5 and not str(r.get("diagnosis", "")).startswith("covid19")
            for r in lesion_free.values()),
        "P001, cap001: slice AUC >= 0.95 (leave-one-out) and above the HU count": all(
            loo.get(v, shipped[v].get("auc", 0)) >= 0.95 and shipped[v]["auc"] > count.get(v, 1.0)
            for v in ("P001", "cap001") if v in shipped),
        "no lung label in the neck, mediastinum or below the base": all(
            r.get("neck_ml", 0) == 0 and r.get("mediastinum_ml", 0) == 0 and r.get("below_ml", 0) == 0
            for r in shipped.values()),
        "cip-ct-64 lung Dice >= 0.95": shipped.get("cip-ct-64", {}).get("lung_dice", 0) >= 0.95,
    }
    return {"rows": shipped, "hu_count_auc": count, "leave_one_out_auc": loo, "targets_met": targets}


def seg_rows(summary: list, model: str) -> list[dict]:
    out = []
    for name, data, rep in summary:
        if name != model:
            continue
        for cls, m in rep["per_class"].items():
            if cls in ("background", "none"):
                continue
            d = m["dice"]
            out.append({"data": data, "class": cls, "dice_mean": _r(d["mean"]), "dice_std": _r(d["std"]),
                        "dice_pooled": _r(d.get("pooled")), "n": d.get("n")})
    return out


def coverage_entry(doc: dict, model: str = "lungs") -> dict | None:
    """The row of ``benchmarks/lung_coverage.py --json`` for the shipped ``model`` (None if it was not measured)."""
    rows = [r for r in doc["rows"] if r["model"] == model]
    if not rows:
        return None
    return {k: v for k, v in rows[0].items() if k != "model"} | {"slices": doc.get("slices")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hu", type=Path, help="benchmarks/hu_volumes.py --loo --json output")
    ap.add_argument("--seg", type=Path, help="benchmarks/seg_models.py's summary.json")
    ap.add_argument("--infnet", type=Path, help="benchmarks/segment_infnet.py --json output")
    ap.add_argument("--coverage", type=Path, help="benchmarks/lung_coverage.py --json output")
    ap.add_argument("--machine", default="", help="where it was measured (recorded beside the figures)")
    ap.add_argument("--date", default=datetime.now(UTC).strftime("%Y-%m-%d"))
    args = ap.parse_args()
    stamp = {"date": args.date, "machine": args.machine, "docs": "docs/BENCHMARKS.md"}
    updates: dict[str, dict] = {"lungs": {}, "lesions": {}, "infection": {}}
    if args.hu:
        hu = {**stamp, "command": "python benchmarks/hu_volumes.py --data ../shared/data --loo --json HU.json",
              "data": "../shared/data: covid-ct-md P001, cap001, normal001; lidc-idri LIDC-IDRI-0001 (outside the nodules); "
                      "chest-misc; each also with 2x / 3x thicker slices; lesion-free phantoms",
              **hu_summary(json.loads(args.hu.read_text()))}
        updates["lungs"]["whole_hu_volumes"] = updates["lesions"]["whole_hu_volumes"] = hu
    if args.seg:
        summary = json.loads(args.seg.read_text())
        for model in updates:
            rows = seg_rows(summary, model)
            if rows:
                updates[model]["seg_models"] = {**stamp, "command": "python benchmarks/seg_models.py", "rows": rows}
    if args.infnet:
        cli = json.loads(args.infnet.read_text())["segment_infnet"]
        updates["infection"]["segment_infnet"] = {**cli, **stamp, "runtime": "the shipped inference path (ONNX Runtime)"}
    if args.coverage:
        entry = coverage_entry(json.loads(args.coverage.read_text()))
        if entry is None:
            raise ValueError(f"{args.coverage}: no row for the shipped lungs model")
        updates["lungs"]["lung_coverage"] = {**stamp, "command": "python benchmarks/lung_coverage.py --json COVERAGE.json",
                                             "data": "medseg-ct100 / medseg-infnet test slices (full view and Inf-Net's "
                                                     "crops), Ma et al. validation cases", **entry}
    for model, entries in updates.items():
        if not entries:
            continue
        path = WEIGHTS / f"{model}.card.json"
        card = json.loads(path.read_text())
        bench = card.setdefault("metrics", {}).setdefault("benchmarks", {})
        old = bench.get("segment_infnet")
        if "segment_infnet" in entries and old and "runtime" not in old:  # the figure recorded when it was shipped
            bench["segment_infnet_at_shipping"] = old
        bench.update(entries)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(card, indent=1, default=str) + "\n")
        tmp.replace(path)
        print(f"{path.name}: {', '.join(entries)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a missing or foreign JSON: one line, no traceback
        print(f"record_card_figures: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
