"""`covidct segment` on the 48 Inf-Net test images, scored against their ground truth, beside the model card.

    python benchmarks/segment_infnet.py [--model infection] [--json out.json]

Runs the command a user runs, ``covidct segment <Imgs folder> -o OUT --task infection [--model M]``, on the
files exactly as distributed (``medseg-infnet/TestingSet/LungInfection-Test/Imgs``, 48 JPGs, stored
transposed relative to the radiological view; the command reads the slices it finds transposed in that view,
``covidct.slice_view``; slices cut tight around the lungs are read by the model's crop version where its card names
one), again with ``--view as-is`` (every file as stored) and with ``--no-crop-model`` (every file by the model
itself), reads the label PNGs it writes and scores them against ``GT/`` (per-image Dice, mean ± std over the 48, and
pooled). Beside it: ``covidct.evaluate`` on the same
slices through the data adapter (view-corrected, fp32) and the figure recorded in the model card
(``metrics.benchmarks.segment_infnet``), so that a user can check that the command reproduces the card.
``--json`` writes the result for ``scripts/ship_model.py --metrics``. Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred > 0, gt > 0
    den = int(p.sum() + g.sum())
    return 1.0 if den == 0 else 2.0 * int((p & g).sum()) / den


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="infection", help="shipped name, checkpoint or run folder")
    ap.add_argument("--lesions-model", default="lesions", help="the lesions model scored on Inf-Net's multi-class test "
                    "labels (1 GGO, 2 consolidation)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from covidct.data import data_root, load_source, read_binary
    from covidct.data.sources import read_indices
    from covidct.evaluate import evaluate
    from covidct.io import read_label_png
    from covidct.models import runtime, zoo

    root = data_root()
    test = None if root is None else root / "medseg-infnet" / "TestingSet" / "LungInfection-Test"
    if test is None or not (test / "Imgs").is_dir():
        print("skip: ../shared/data/medseg-infnet not found")
        return 0
    stems = sorted(p.stem for p in (test / "Imgs").glob("*.jpg"))

    def run(task: str, model: str, view: str) -> tuple[list[np.ndarray], dict]:
        """`covidct segment` of the 48 files: the label images it writes, and how it ran (``view``: auto, as-is, or
        no-crop-model: auto without the crop model)."""
        options = {"auto": [], "as-is": ["--view", "as-is"], "no-crop-model": ["--no-crop-model"]}[view]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "covidct", "segment", str(test / "Imgs"), "-o", tmp, "--task", task,
                   "--model", model, *options]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            preds = [read_label_png(Path(tmp) / f"{s}.png") for s in stems]
        return preds, {"n_turned": done.stderr.count("looked transposed"),
                       "n_crop_model": done.stderr.count("cut tight around the lungs"),
                       "command": " ".join(["covidct segment Imgs -o OUT --task", task, "--model", model, *options]),
                       "wall_s_incl_start": round(wall, 2)}

    def scored(preds: list[np.ndarray], truths: list[np.ndarray], value: int | None) -> dict:
        """Per-image Dice (mean ± std; images where class and prediction are both empty left out, as `covidct
        evaluate` does) and pooled Dice of one class (``value``; None: any non-zero label)."""
        pairs = [((p > 0, g > 0) if value is None else (p == value, g == value)) for p, g in zip(preds, truths, strict=True)]
        per_image = np.array([dice(p, g) if p.any() or g.any() else np.nan for p, g in pairs])
        inter = sum(int((p & g).sum()) for p, g in pairs)
        pooled = 2.0 * inter / max(sum(int(p.sum() + g.sum()) for p, g in pairs), 1)
        return {"n_images": len(pairs), "n_scored": int(np.isfinite(per_image).sum()),
                "dice_mean": float(np.nanmean(per_image)), "dice_std": float(np.nanstd(per_image)),
                "dice_pooled": float(pooled)}

    infection_truth = [read_binary(test / "GT" / f"{s}.png") for s in stems]
    lesion_truth = [read_indices(test.parent / "MultiClassInfection-Test" / "GT" / f"{s}.png") for s in stems]

    def infection(view: str) -> dict:
        preds, how = run("infection", args.model, view)
        return {**scored(preds, infection_truth, None), **how}

    def lesions(view: str) -> dict:
        preds, how = run("lesions", args.lesions_model, view)
        return {"ggo": scored(preds, lesion_truth, 1), "consolidation": scored(preds, lesion_truth, 2), **how}

    cli, as_is, own = infection("auto"), infection("as-is"), infection("no-crop-model")
    les, les_as_is, les_own = lesions("auto"), lesions("as-is"), lesions("no-crop-model")
    weights, _ = zoo.resolve_model_path(args.model)
    crops = runtime.crops_model_name(runtime.load(args.model)[1].get("card"))
    with tempfile.TemporaryDirectory() as tmp:
        ev = evaluate(weights, load_source("medseg-infnet", split="test"), "infection", tmp, crops_model=crops)
    inf = ev["per_class"]["infection"]["dice"]
    card = (zoo.load(args.model)[1].get("card") or {}).get("metrics", {}).get("benchmarks", {}).get("segment_infnet")
    print(f"model {args.model}: covidct segment on the 48 Inf-Net test files as distributed")
    print("| measure | per-image Dice (mean ± std) | pooled Dice |")
    print("|---|---|---|")
    print(f"| `covidct segment` (this run; {cli['n_turned']} slices read transposed back, {cli['n_crop_model']} by the "
          f"crop model) | {cli['dice_mean']:.3f} ± {cli['dice_std']:.3f} | {cli['dice_pooled']:.3f} |")
    print(f"| `covidct segment --view as-is` (this run; {as_is['n_crop_model']} by the crop model) | "
          f"{as_is['dice_mean']:.3f} ± {as_is['dice_std']:.3f} | {as_is['dice_pooled']:.3f} |")
    print(f"| `covidct segment --no-crop-model` (this run) | {own['dice_mean']:.3f} ± {own['dice_std']:.3f} | "
          f"{own['dice_pooled']:.3f} |")
    if card:
        print(f"| model card (recorded) | {card['dice_mean']:.3f} ± {card['dice_std']:.3f} | {card['dice_pooled']:.3f} |")
    else:
        print("| model card (recorded) | none recorded | |")
    print(f"| `covidct.evaluate`, view-corrected slices, fp32 ({len(ev.get('read_by_crops_model', []))} by the crop "
          f"model) | {inf['mean']:.3f} ± {inf['std']:.3f} | {inf['pooled']:.3f} |")
    print(f"\nwall time of the command (48 images, interpreter start included): {cli['wall_s_incl_start']:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        ev_les = evaluate(zoo.resolve_model_path(args.lesions_model)[0],
                          load_source("medseg-infnet", split="test", multiclass=True), "lesions", tmp,
                          crops_model=runtime.crops_model_name(runtime.load(args.lesions_model)[1].get("card")))["per_class"]
    print(f"\nmodel {args.lesions_model}: covidct segment --task lesions on the same files, against Inf-Net's multi-class "
          "labels (per-image Dice over the images with the class or a prediction of it; pooled)")
    print("| measure | GGO | consolidation |")
    print("|---|---|---|")
    for name, r in ((f"`covidct segment` (this run; {les['n_turned']} slices read transposed back, "
                     f"{les['n_crop_model']} by the crop model)", les),
                    (f"`covidct segment --view as-is` (this run; {les_as_is['n_crop_model']} by the crop model)", les_as_is),
                    ("`covidct segment --no-crop-model` (this run)", les_own)):
        g, c = r["ggo"], r["consolidation"]
        print(f"| {name} | {g['dice_mean']:.3f} ± {g['dice_std']:.3f} ({g['dice_pooled']:.3f}) | "
              f"{c['dice_mean']:.3f} ± {c['dice_std']:.3f} ({c['dice_pooled']:.3f}) |")
    g, c = ev_les["ggo"]["dice"], ev_les["consolidation"]["dice"]
    print(f"| `covidct.evaluate`, view-corrected slices, fp32 | {g['mean']:.3f} ± {g['std']:.3f} ({g['pooled']:.3f}) | "
          f"{c['mean']:.3f} ± {c['std']:.3f} ({c['pooled']:.3f}) |")
    if card:
        same = abs(card["dice_mean"] - cli["dice_mean"]) < 5e-4
        print("reproduces the card" if same else f"DIFFERS from the card by {cli['dice_mean'] - card['dice_mean']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"segment_infnet": cli, "segment_infnet_as_is": as_is,
                                         "segment_infnet_no_crop_model": own,
                                         "segment_infnet_lesions": les, "segment_infnet_lesions_as_is": les_as_is,
                                         "segment_infnet_lesions_no_crop_model": les_own},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
