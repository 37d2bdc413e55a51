"""`covidct segment` on the 48 Inf-Net test images, scored against their ground truth, beside the model card.

    python benchmarks/segment_infnet.py [--model infection] [--json out.json]

Runs the command a user runs, ``covidct segment <Imgs folder> -o OUT --task infection [--model M]``, on the
files exactly as distributed (``medseg-infnet/TestingSet/LungInfection-Test/Imgs``, 48 JPGs, stored
transposed relative to the radiological view; the command reads the slices it finds transposed in that view,
``covidct.slice_view``), and again with ``--view as-is`` (every file as stored), reads the label PNGs it writes and scores them against
``GT/`` (per-image Dice, mean ± std over the 48, and pooled). Beside it: ``covidct.evaluate`` on the same
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
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from covidct.data import data_root, load_source, read_binary
    from covidct.evaluate import evaluate
    from covidct.io import read_label_png
    from covidct.models import zoo

    root = data_root()
    test = None if root is None else root / "medseg-infnet" / "TestingSet" / "LungInfection-Test"
    if test is None or not (test / "Imgs").is_dir():
        print("skip: ../shared/data/medseg-infnet not found")
        return 0
    def run(view: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "covidct", "segment", str(test / "Imgs"), "-o", tmp, "--task", "infection",
                   "--model", args.model] + ([] if view == "auto" else ["--view", view])
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            stems = sorted(p.stem for p in (test / "Imgs").glob("*.jpg"))
            pairs = [(read_label_png(Path(tmp) / f"{s}.png"), read_binary(test / "GT" / f"{s}.png")) for s in stems]
        per_image = np.array([dice(p, g) for p, g in pairs])
        inter = sum(int(((p > 0) & (g > 0)).sum()) for p, g in pairs)
        pooled = 2.0 * inter / sum(int((p > 0).sum() + (g > 0).sum()) for p, g in pairs)
        return {"n_images": len(pairs), "dice_mean": float(per_image.mean()), "dice_std": float(per_image.std()),
                "dice_pooled": float(pooled), "n_turned": done.stderr.count("looked transposed"),
                "command": f"covidct segment Imgs -o OUT --task infection --model {args.model}"
                           + ("" if view == "auto" else f" --view {view}"),
                "wall_s_incl_start": round(wall, 2)}

    cli, as_is = run("auto"), run("as-is")
    weights, _ = zoo.resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        ev = evaluate(weights, load_source("medseg-infnet", split="test"), "infection", tmp)
    inf = ev["per_class"]["infection"]["dice"]
    card = (zoo.load(args.model)[1].get("card") or {}).get("metrics", {}).get("benchmarks", {}).get("segment_infnet")
    print(f"model {args.model}: covidct segment on the 48 Inf-Net test files as distributed")
    print("| measure | per-image Dice (mean ± std) | pooled Dice |")
    print("|---|---|---|")
    print(f"| `covidct segment` (this run; {cli['n_turned']} slices read transposed back) | {cli['dice_mean']:.3f} ± "
          f"{cli['dice_std']:.3f} | {cli['dice_pooled']:.3f} |")
    print(f"| `covidct segment --view as-is` (this run) | {as_is['dice_mean']:.3f} ± {as_is['dice_std']:.3f} | "
          f"{as_is['dice_pooled']:.3f} |")
    if card:
        print(f"| model card (recorded) | {card['dice_mean']:.3f} ± {card['dice_std']:.3f} | {card['dice_pooled']:.3f} |")
    else:
        print("| model card (recorded) | none recorded | |")
    print(f"| `covidct.evaluate`, view-corrected slices, fp32 | {inf['mean']:.3f} ± {inf['std']:.3f} | {inf['pooled']:.3f} |")
    print(f"\nwall time of the command (48 images, interpreter start included): {cli['wall_s_incl_start']:.1f} s")
    if card:
        same = abs(card["dice_mean"] - cli["dice_mean"]) < 5e-4
        print("reproduces the card" if same else f"DIFFERS from the card by {cli['dice_mean'] - card['dice_mean']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"segment_infnet": cli, "segment_infnet_as_is": as_is}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
