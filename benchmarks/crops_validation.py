"""The crop models' validation figures: `covidct segment` on Inf-Net's training crops of each base card's validation
groups, with and without the crop model, scored against their labels.

    python benchmarks/crops_validation.py [--json OUT]

What the rules that adopted the crop models (docs/BENCHMARKS.md, thirty-fourth session) and their test-time mirror
(thirty-sixth session) were judged on, reproducible from the repository: the Inf-Net MedSeg *training* crops whose
patient group is in the ``infection`` / ``lesions`` card's validation split (14 / 17 crops; never the Inf-Net test
crops). Each folder of crops, as distributed (stored transposed; ``segment`` reads them in the radiological view and
writes the masks back in the files' layout), goes through ``covidct segment --task infection`` or ``--task lesions``,
then again with ``--no-crop-model``; the label PNGs are scored against the files' own labels (per-image Dice, mean
over the crops; GGO and consolidation over the crops with the class or a prediction of it). The crop cards record
these figures (``metrics.benchmarks.routing_rule_validation``, ``test_time_mirror_validation``; since the
thirty-eighth session the lesions rows type GGO and consolidation by density, the cards' ``density_typing_validation``,
``benchmarks/density_typing.py``). Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN = Path("TrainingSet/LungInfection-Train/Doctor-label")
MULTICLASS_GT = Path("TrainingSet/MultiClassInfection-Train/GT")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    den = int(pred.sum() + gt.sum())
    return float("nan") if den == 0 else 2.0 * int((pred & gt).sum()) / den


def validation_crops(task: str, split: str = "val") -> list[str]:
    """File stems of the Inf-Net training crops whose group is in the shipped ``task`` card's ``split`` (validation)."""
    from covidct.data.sources import load_medseg_infnet
    from covidct.models import zoo

    val = set(zoo.shipped_models()[task]["split"][split])
    return sorted((r["id"] for r in load_medseg_infnet(None, "train") if r["group"] in val), key=lambda s: (len(s), s))


def segment(folder: Path, out: Path, task: str, crop_model: bool) -> tuple[Path, int]:
    """`covidct segment` as a user runs it; the label folder and how many crops it says it read with a crop model."""
    cmd = [sys.executable, "-m", "covidct", "segment", str(folder), "-o", str(out), "--task", task]
    run = subprocess.run(cmd + ([] if crop_model else ["--no-crop-model"]), capture_output=True, text=True, cwd=REPO)
    if run.returncode != 0:
        raise SystemExit(f"covidct segment failed: {run.stderr.strip().splitlines()[-1:]}")
    return out, run.stderr.count("cut tight")


def arguments_and_data(doc: str) -> tuple[argparse.Namespace, Path | None]:
    """A crop benchmark's arguments (``--json OUT``) and ``../shared/data/medseg-infnet`` with its training crops, or
    None after printing why the benchmark skips."""
    from covidct.data import data_root

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = data_root()
    infnet = None if root is None else root / "medseg-infnet"
    if infnet is None or not (infnet / TRAIN / "Imgs").is_dir():
        print("skip: ../shared/data/medseg-infnet not found")
        return args, None
    return args, infnet


def main() -> int:
    args, infnet = arguments_and_data(__doc__)
    if infnet is None:
        return 0
    from covidct.data import read_binary
    from covidct.data.sources import read_indices
    from covidct.io import read_label_png

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in ("infection", "lesions"):
            stems = validation_crops(task)
            folder = Path(tmp) / f"{task}-crops"
            folder.mkdir()
            for s in stems:
                (folder / f"{s}.jpg").symlink_to(infnet / TRAIN / "Imgs" / f"{s}.jpg")
            for crop_model in (True, False):
                out, routed = segment(folder, Path(tmp) / f"{task}-{crop_model}", task, crop_model)
                key = f"{task}, {'crop model (default)' if crop_model else '--no-crop-model'}"
                preds = [read_label_png(out / f"{s}.png") for s in stems]
                if task == "infection":
                    gts = [read_binary(infnet / TRAIN / "GT" / f"{s}.png") > 0 for s in stems]
                    result[key] = {"dice": float(np.nanmean([dice(p > 0, g) for p, g in zip(preds, gts, strict=True)]))}
                else:
                    gts = [read_indices(infnet / MULTICLASS_GT / f"{s}.png") for s in stems]
                    result[key] = {name: float(np.nanmean([dice(p == c, g == c) for p, g in zip(preds, gts, strict=True)]))
                                   for name, c in (("ggo", 1), ("consolidation", 2))}
                result[key].update(n_crops=len(stems), n_read_by_crop_model=routed)
    print("| task, models | per-image Dice | crops (read by the crop model) |\n|---|---|---|")
    for key, r in result.items():
        figures = " / ".join(f"{k} {v:.4f}" for k, v in r.items() if not k.startswith("n_"))
        print(f"| {key} | {figures} | {r['n_crops']} ({r['n_read_by_crop_model']}) |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
