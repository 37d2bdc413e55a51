"""Check that covidct's one normalisation puts 8-bit display slices and HU slices in the same space.

Compares the distribution of *lung tissue* grey values after :func:`covidct.preprocess.to_model_input`
for: Ma et al. slices (8-bit, per-slice min-max + CLAHE; lung masks given), MedSeg CT100 slices
(8-bit display JPEG-derived; lungs from the k-means lung-field method) and the real HU series
COVID-CT-MD P001 (lungs from the HU threshold mask). Several candidate settings are scored by the
1-D Wasserstein distance between the display-source and HU-source lung histograms; the figure is
written to docs/figures/normalisation_check.png.

Usage: python benchmarks/normalisation_check.py [--data DIR] [--out docs/figures/normalisation_check.png]
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import wasserstein_distance

from covidct.preprocess import NormalisationConfig, kmeans_lung_mask, threshold_lung_mask, to_model_input

REPO = Path(__file__).resolve().parents[1]

CANDIDATES: dict[str, NormalisationConfig | None] = {
    "naive (window or /255 only)": None,
    "percentile stretch": NormalisationConfig(clahe_clip=None),
    "stretch + CLAHE 2.0": NormalisationConfig(clahe_clip=2.0),
    "stretch + CLAHE 3.0": NormalisationConfig(clahe_clip=3.0),
    "stretch + CLAHE 4.0": NormalisationConfig(clahe_clip=4.0),
    "stretch + CLAHE 7.0 (default)": NormalisationConfig(clahe_clip=7.0),
}


def _naive(image: np.ndarray, is_hu: bool) -> np.ndarray:
    from covidct.preprocess import apply_window

    return apply_window(image, "papers") if is_hu else image / 255.0


def _load_sources(data: Path, n_ma: int, n_medseg: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, bool]]]:
    rng = np.random.default_rng(0)
    out: dict[str, list[tuple[np.ndarray, np.ndarray, bool]]] = {"ma2020 (8-bit)": [], "medseg-ct100 (8-bit)": [], "P001 (HU)": []}
    ma = data / "ma2020-slices"
    files = sorted(p.name for p in (ma / "ct").glob("*.png"))
    for name in rng.choice(files, size=min(n_ma, len(files)), replace=False):
        img = np.asarray(Image.open(ma / "ct" / name).convert("L"), dtype=np.float32)
        lung = np.asarray(Image.open(ma / "lungs" / name).convert("L")) > 127
        inf = np.asarray(Image.open(ma / "infection" / name).convert("L")) > 127
        out["ma2020 (8-bit)"].append((img, lung & ~inf, False))
    ct100 = data / "medseg-ct100"
    for i in rng.choice(100, size=n_medseg, replace=False):
        img = np.asarray(Image.open(ct100 / "images" / f"tr_im_{i:04d}.png").convert("L"), dtype=np.float32)
        inf = np.asarray(Image.open(ct100 / "masks" / f"tr_mask_{i:04d}.png")) > 0
        lung = kmeans_lung_mask(img, erosion=2, dilation=0)
        out["medseg-ct100 (8-bit)"].append((img, lung & ~inf, False))
    import pydicom

    dcm = [pydicom.dcmread(p) for p in sorted((data / "covid-ct-md" / "P001").glob("*.dcm"))]
    dcm.sort(key=lambda d: float(d.SliceLocation))
    hu = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dcm])
    lungs = threshold_lung_mask(hu)
    labels = {}
    with open(data / "covid-ct-md" / "labels_slice.csv", newline="") as f:
        for row in csv.DictReader(f):
            labels[Path(row["dicom_file"]).name] = int(row["label"])
    areas = lungs.reshape(len(dcm), -1).sum(1)
    # mid-chest slices (the Ma slices are the middle 60 % of each volume), infection-free ones
    mid = np.flatnonzero(areas > 0.5 * areas.max())
    for k in mid:
        if labels.get(Path(dcm[k].filename).name, 1) == 0:
            lung = np.asarray(lungs[k])  # like the Ma masks: parenchyma with its vessels
            out["P001 (HU)"].append((hu[k], lung, True))
    return out


def _lung_values(samples, cfg: NormalisationConfig | None) -> np.ndarray:
    vals = []
    for img, lung, is_hu in samples:
        x = _naive(img, is_hu) if cfg is None else to_model_input(img, is_hu, cfg)
        vals.append(x[lung])
    return np.concatenate(vals) if vals else np.zeros(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "normalisation_check.png")
    ap.add_argument("--n-ma", type=int, default=120)
    ap.add_argument("--n-medseg", type=int, default=40)
    args = ap.parse_args()
    if not (args.data / "covid-ct-md" / "P001").is_dir():
        print(f"skip: real data not found under {args.data}")
        return 0
    sources = _load_sources(args.data, args.n_ma, args.n_medseg)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    bins = np.linspace(0, 1, 65)
    print("| setting | W1(Ma, P001) | W1(MedSeg, P001) | median lung value Ma / MedSeg / P001 |")
    print("|---|---|---|---|")
    for ax, (name, cfg) in zip(axes.ravel(), CANDIDATES.items(), strict=True):
        vals = {src: _lung_values(s, cfg) for src, s in sources.items()}
        w_ma = wasserstein_distance(vals["ma2020 (8-bit)"], vals["P001 (HU)"])
        w_ms = wasserstein_distance(vals["medseg-ct100 (8-bit)"], vals["P001 (HU)"])
        meds = " / ".join(f"{np.median(v):.3f}" for v in vals.values())
        print(f"| {name} | {w_ma:.4f} | {w_ms:.4f} | {meds} |")
        for src, v in vals.items():
            ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.6, label=src)
        ax.set_title(f"{name}\nW1 Ma–P001 {w_ma:.3f}, MedSeg–P001 {w_ms:.3f}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Lung parenchyma grey values after normalisation (display slices vs HU series P001)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print("n slices: " + ", ".join(f"{k} {len(v)}" for k, v in sources.items()))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
