"""Dice per class of a 3-D segmentation run on its own validation and test volumes, with and without
test-time mirroring.

Rebuilds the run's volumes from the config stored in its checkpoint (phantoms are regenerated from their
seeds; NIfTI sources are read again), takes the case split from ``split.json``, and scores the best
checkpoint by sliding-window inference exactly as training does (pooled Dice over the volumes of a split).
Mirroring is a choice to make on validation: compare the two rows of the validation split first.

    python benchmarks/seg3d_eval.py runs/unet3d_phantom_wide_ft --mirror 0,1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a seg3d run folder (best.pt, split.json)")
    ap.add_argument("--mirror", default="0,1", help="axes to mirror for the second row (0 z, 1 y, 2 x); '' for none")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    run = Path(a.run)
    if not (run / "best.pt").is_file():
        print(f"seg3d_eval: {run}/best.pt not found (train the config first); skipping")
        return 0
    import dataclasses

    from covidct.models.checkpoint import load_model
    from covidct.train.seg3d import evaluate_volumes, preprocessed_volumes
    from covidct.train.volumes import load_seg3d_config, load_volume_records

    model, info = load_model(run / "best.pt")
    cfg, shared = load_seg3d_config(info["config"])
    split = json.loads((run / "split.json").read_text())["splits"]
    records = {r["id"]: r for r in load_volume_records(shared["data"].sources)}
    mirror = [int(v) for v in a.mirror.split(",") if v.strip()]
    classes = cfg.classes
    out: dict = {"run": str(run), "classes": classes, "mirror_axes": mirror, "splits": {}}
    print("| split | mirroring | n | " + " | ".join(classes[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(classes) - 1))
    for part in ("val", "test"):
        recs = [records[i] for i in split.get(part, []) if i in records]
        if not recs:
            continue
        samples = preprocessed_volumes(recs, cfg.task, cfg.volume)
        for axes in ([], mirror) if mirror else ([],):
            vcfg = dataclasses.replace(cfg.volume, mirror_axes=list(axes))
            res = evaluate_volumes(model, samples, vcfg, len(classes))
            dice = dict(zip(classes, map(float, res["pooled"]), strict=True))
            out["splits"].setdefault(part, {})["mirror" if axes else "plain"] = dice
            print(f"| {part} | {','.join(map(str, axes)) or 'none'} | {len(recs)} | "
                  + " | ".join(f"{dice[c]:.4f}" for c in classes[1:]) + " |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
