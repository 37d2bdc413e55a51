"""Does the lung mask keep diseased lung? The share of doctors' GGO and consolidation inside a lung model's mask.

    python benchmarks/lung_coverage.py [--model lungs] [--model runs/RUN ...] [--json out.json]

A lesion outside the lung mask is never scored (involvement, severity and the pattern read the lesions inside the
lungs), so a lung model must keep solid lung. Rows, per model (a shipped name, a run folder or a checkpoint):
- the 48 Inf-Net test slices in the full MedSeg CT100 view (radiological, 512²), GGO and consolidation labels of
  Inf-Net's multi-class GT put back into the slice (``covidct.data`` ``medseg-ct100``);
- the same 48 slices as Inf-Net distributes them (transposed crops, no body outline around the lungs);
- the Ma et al. cases of the shipped lung model's validation part (infection inside the lung mask; Ma's own lung
  labels include the infection: 99.999 %).
Slice by slice as ``covidct segment --task lungs`` runs them (float32). Share = labelled pixels inside the mask /
labelled pixels, pooled over the slices. Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covidct.labels import CONSOLIDATION, GGO


def inside_share(labels: list[np.ndarray], masks: list[np.ndarray], value: int | None) -> tuple[float, int]:
    """(share of the ``value`` pixels of ``labels`` (any > 0 when None) inside ``masks`` > 0, their number)."""
    hit = total = 0
    for lab, m in zip(labels, masks, strict=True):
        sel = lab > 0 if value is None else lab == value
        hit += int((sel & (m > 0)).sum())
        total += int(sel.sum())
    return (hit / total if total else float("nan")), total


def lung_masks(model: str, images: list[np.ndarray]) -> list[np.ndarray]:
    from covidct.models import runtime

    net, info = runtime.load(model)
    return runtime.labels_for_task(runtime.predict_slices(net, info, images, False, batch_size=8, bf16=False),
                                   info, "lungs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None, help="lung model(s); default: the shipped lungs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from covidct.data import data_root, load_source, read_grey, read_indices
    from covidct.models import zoo

    root = data_root()
    if root is None or not (root / "medseg-ct100").is_dir() or not (root / "medseg-infnet").is_dir():
        print("skip: ../shared/data/medseg-ct100 or medseg-infnet not found")
        return 0
    full = [r for r in load_source("medseg-ct100") if r["meta"]["infnet_split"] == "test" and r["lesions"] is not None]
    crops_dir = root / "medseg-infnet" / "TestingSet" / "MultiClassInfection-Test"
    stems = sorted(p.stem for p in (crops_dir / "Imgs").glob("*.jpg"))
    crops = [read_grey(crops_dir / "Imgs" / f"{s}.jpg") for s in stems]
    crop_gt = [read_indices(crops_dir / "GT" / f"{s}.png") for s in stems]
    val_cases = [c for c in zoo.load("lungs")[1].get("card", {}).get("split", {}).get("val", []) if c.startswith("ma-")]
    ma = [r for r in load_source("ma2020") if r["group"] in val_cases or r["case"] in val_cases]
    rows = []
    for model in args.model or ["lungs"]:
        m_full = lung_masks(model, [r["image"] for r in full])
        m_crop = lung_masks(model, crops)
        m_ma = lung_masks(model, [r["image"] for r in ma])
        row = {"model": model}
        for name, labs, masks in (("infnet_test_full", [r["lesions"] for r in full], m_full),
                                  ("infnet_test_crops", crop_gt, m_crop)):
            for cls, v in (("ggo", GGO), ("consolidation", CONSOLIDATION)):
                share, n = inside_share(labs, masks, v)
                row[f"{name}.{cls}"] = {"share": round(share, 4), "pixels": n}
        share, n = inside_share([r["infection"] for r in ma], m_ma, None)
        row["ma_val.infection"] = {"share": round(share, 4), "pixels": n, "cases": val_cases}
        rows.append(row)
        print(f"{model}: " + "; ".join(f"{k} {v['share']:.4f}" for k, v in row.items() if isinstance(v, dict)))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "slices": {"infnet_test": len(full), "ma_val": len(ma)}},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
