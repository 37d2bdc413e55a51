"""GGO against consolidation on display slices from density: the settings' choice and its validation figures.

    python benchmarks/density_typing.py [--json OUT]

The shipped lesion cards ask for GGO and consolidation on 8-bit slices to be decided by density
(``density_typing``; :func:`covidct.preprocess.lesion_types_by_density`). This reproduces how its settings were chosen
(rule R34, docs/BENCHMARKS.md, "Lesion type from density on display slices"): `covidct segment --task lesions` on
the Inf-Net multi-class *training* crops whose group is in the ``lesions-crops`` card's train split (18 crops) and
validation split (17), as distributed; each folder's label PNGs are then re-typed in-process for every setting of
the grid (sigma 1.5 or 3 px, threshold 0.40..0.90 by 0.025). Re-typing changes no extent, so re-typing `segment`'s
own output gives what `segment` gives with that setting. The setting with the best mean of per-image GGO and
consolidation Dice on the *train* crops is chosen; the validation crops are scored with it (and with the card's),
also through the base model (``--no-crop-model``). Never the Inf-Net test crops (``benchmarks/segment_infnet.py``
scores those). Skips (exit 0) without the data.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from crops_validation import arguments_and_data, dice, segment, validation_crops  # noqa: E402  (the script's folder is on sys.path)

CROPS = Path("TrainingSet/MultiClassInfection-Train")
GRID = [(s, round(float(t), 3)) for s in (1.5, 3.0) for t in np.arange(0.40, 0.9001, 0.025)]


def segmented(infnet: Path, stems: list[str], tmp: Path, name: str, crop_model: bool = True) -> list[np.ndarray]:
    """`covidct segment --task lesions` on the crops as a user runs it: the label images it writes."""
    from covidct.io import read_label_png

    folder = tmp / f"{name}-in"
    folder.mkdir()
    for s in stems:
        (folder / f"{s}.jpg").symlink_to(infnet / CROPS / "Imgs" / f"{s}.jpg")
    out, _ = segment(folder, tmp / f"{name}-out", "lesions", crop_model)
    return [read_label_png(out / f"{s}.png") for s in stems]


def scores(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Per-image Dice of GGO and consolidation, mean over the crops with the class or a prediction of it."""
    return {name: float(np.nanmean([dice(p == c, g == c) for p, g in zip(preds, truths, strict=True)]))
            for name, c in (("ggo", 1), ("consolidation", 2))}


def main() -> int:
    args, infnet = arguments_and_data(__doc__)
    if infnet is None:
        return 0
    from covidct.data.sources import read_indices
    from covidct.io import load_ct
    from covidct.models import runtime
    from covidct.preprocess import lesion_types_by_density

    card = runtime.density_typing(runtime.load("lesions-crops")[1])
    sets = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, split, crop_model in (("train", "train", True), ("val", "val", True), ("val, --no-crop-model", "val", False)):
            stems = validation_crops("lesions-crops", split)
            images = [load_ct(infnet / CROPS / "Imgs" / f"{s}.jpg").array[0] for s in stems]
            truths = [read_indices(infnet / CROPS / "GT" / f"{s}.png") for s in stems]
            sets[name] = (segmented(infnet, stems, Path(tmp), name.split(",")[0] + str(crop_model), crop_model),
                          images, truths)

    def typed(name: str, sigma: float, t: float) -> dict[str, float]:
        preds, images, truths = sets[name]
        return scores([lesion_types_by_density(p, im, sigma, t) for p, im in zip(preds, images, strict=True)], truths)

    train = {st: typed("train", *st) for st in GRID}
    best = max(GRID, key=lambda st: (train[st]["ggo"] + train[st]["consolidation"]) / 2)
    result = {"grid": f"sigma_px {{1.5, 3}} x threshold 0.40..0.90 by 0.025 ({len(GRID)} settings)",
              "chosen_on_train": {"sigma_px": best[0], "threshold": best[1], "train": train[best],
                                  "n_crops": len(sets["train"][0])},
              "card": card}
    for name in ("val", "val, --no-crop-model"):
        result[name] = {"chosen": typed(name, *best), "n_crops": len(sets[name][0])}
        if card:
            result[name]["card"] = typed(name, card["sigma_px"], card["threshold"])
    print(f"chosen on the {len(sets['train'][0])} train crops: sigma {best[0]} px, threshold {best[1]} "
          f"(train GGO {train[best]['ggo']:.4f}, consolidation {train[best]['consolidation']:.4f}); card: {card}")
    print("| crops | GGO | consolidation |\n|---|---|---|")
    for name in ("val", "val, --no-crop-model"):
        r = result[name]["chosen"]
        print(f"| {name} ({result[name]['n_crops']}), chosen setting | {r['ggo']:.4f} | {r['consolidation']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
