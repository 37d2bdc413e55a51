"""Lung masks for the MedSeg CT100 slices that hold diseased lung, for training a lung model that keeps it.

    python scripts/pseudo_lung_labels.py --out DIR [--model lungs]

Why: the lung models learned from Ma et al.'s slices, where infection is mostly ground glass. On the Inf-Net test
slices (severe MedSeg cases) the shipped lung model leaves 21 % of the doctors' consolidation (3 % of their GGO)
outside its mask in the full slice, and 70 % (40 %) on Inf-Net's crops: solid lung reads as chest wall
(``benchmarks/lung_coverage.py``). CT100 has infection labels but no lung labels. A doctor's infection
label lies in the lung by definition, so a lung mask for such a slice is the model's aerated lung joined with the
labelled GGO and consolidation, closed and filled in the plane, pleural effusion (not lung) taken out again.

Only CT100 slices with Inf-Net training labels whose same-patient group holds no Inf-Net test slice get a mask, so a
model trained on them can be scored on the Inf-Net test slices. Writes ``DIR/tr_lung_NNNN.png`` (0/255) and
``DIR/groups.json`` (the groups given masks and the groups left out); ``configs/lungs_diseased.yaml`` reads them
through the ``medseg-ct100`` source's ``lungs_dir`` option. Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from covidct.labels import CONSOLIDATION, EFFUSION, GGO


def pseudo_lung(model_lung: np.ndarray, lesions: np.ndarray, close_px: int = 3) -> np.ndarray:
    """(H, W) bool lung: ``model_lung`` joined with the labelled GGO and consolidation, closed by ``close_px``
    (a lesion's edge and the aerated lung beside it are a pixel or two apart), holes filled; effusion left out."""
    lung = (model_lung > 0) | np.isin(lesions, (GGO, CONSOLIDATION))
    disk = ndimage.generate_binary_structure(2, 1)
    lung = ndimage.binary_closing(lung, disk, iterations=close_px, border_value=0) | lung
    lung = ndimage.binary_fill_holes(lung)
    return lung & (lesions != EFFUSION)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for tr_lung_NNNN.png and groups.json")
    ap.add_argument("--model", default="lungs", help="lung model whose aerated lung is joined (default: shipped)")
    args = ap.parse_args()
    from covidct.data import data_root, load_source
    from covidct.models import runtime

    root = data_root()
    if root is None or not (root / "medseg-ct100").is_dir() or not (root / "medseg-infnet").is_dir():
        print("skip: ../shared/data/medseg-ct100 or medseg-infnet not found")
        return 0
    recs = load_source("medseg-ct100")
    test_groups = {r["group"] for r in recs if r["meta"]["infnet_split"] == "test"}
    use = [r for r in recs if r["meta"]["infnet_split"] == "train" and r["group"] not in test_groups
           and r["lesions"] is not None]
    model, info = runtime.load(args.model)
    probs = runtime.predict_slices(model, info, [r["image"] for r in use], False, batch_size=8, bf16=False)
    labels = runtime.labels_for_task(probs, info, "lungs")
    args.out.mkdir(parents=True, exist_ok=True)
    added = []
    for r, lab in zip(use, labels, strict=True):
        lung = pseudo_lung(lab, r["lesions"])
        infection = np.isin(r["lesions"], (GGO, CONSOLIDATION))
        added.append(float((lung & ~(lab > 0)).sum() / max(int(lung.sum()), 1)))
        if (infection & ~lung).any():  # cannot happen (the lung is a superset): a guard for later edits
            raise RuntimeError(f"CT100 slice {r['id']}: labelled infection outside its lung mask")
        Image.fromarray((lung * 255).astype(np.uint8)).save(args.out / f"tr_lung_{int(r['id']):04d}.png")
    groups = {"with_masks": sorted({r["group"] for r in use}),
              "left_out": sorted({r["group"] for r in recs} - {r["group"] for r in use}),
              "model": args.model, "n_masks": len(use)}
    (args.out / "groups.json").write_text(json.dumps(groups, indent=1))
    print(f"{len(use)} lung masks in {args.out}; the labelled lesions added {np.mean(added):.1%} of lung on average "
          f"(max {max(added):.1%}); {len(groups['with_masks'])} groups, {len(groups['left_out'])} left out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
