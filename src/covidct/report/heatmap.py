"""Lesion-probability heatmaps and the lesion models' uncertainty (report.json ``uncertainty``).

The lesion probability of a voxel is the models' probability that it is infection (GGO or
consolidation): the binary ``infection`` model's when it ran (it sets the lesion extent), else the
lesion model's P(GGO) + P(consolidation). It is the raw model output, before the physical checks of the
lesion stage (HU range, nearness to the lungs, small-component removal), so a heatmap can show
probability where the final mask has none. Probabilities are kept as uint8 (p x 255): 1/255 resolution
is far below what a heatmap or the 0.3-0.7 band can tell apart, and a 512x512x300 series then takes
75 MB instead of 300.

Uncertainty, measured inside the lungs: the fraction of the lung volume whose lesion probability lies
in the band 0.3-0.7 (neither clearly lesion nor clearly not), and the mean binary entropy
``H(p) = -p log2 p - (1-p) log2 (1-p)`` in bits (0 = certain, 1 = p of 0.5 everywhere). Per slice the
report gives the band's area and the mean entropy. A band above ``HIGH_UNCERTAINTY_PERCENT`` of the
lungs adds a warning (the threshold and the figures it was set from are in docs/report.md).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from covidct.labels import CONSOLIDATION, GGO
from covidct.volume import CT

UNCERTAIN_BAND = (0.3, 0.7)
HIGH_UNCERTAINTY_PERCENT = 10.0  # of the lung volume in the band; above every real series measured (docs/BENCHMARKS.md)
METHOD = "lesion probability in 0.3-0.7 and mean binary entropy, inside the lungs"
HEATMAP_FLOOR = 0.05  # probabilities below this are left uncoloured (the grey CT shows through)
# The report's models[] entry of the HU rule where it drew GGO and consolidation (whole HU volumes). The lesion
# probability is then the lesion model's own view, which those masks do not follow: on whole HU volumes the model
# marks vessels and lung bases as well (why the HU rule draws them there).
HU_RULE_MODEL = "hu-rule-lesions (GGO, consolidation)"
MODEL_ONLY_NOTE = ("the lesion model's probability, not the drawn lesions: on a whole HU volume the HU rule draws GGO and "
                   "consolidation, and the model marks vessels and lung bases as well (the healthy series normal001 and "
                   "LIDC-IDRI-0001: 130 and 180 mL at p >= 0.5 against 2.7 and 1.6 mL of lesion; docs/BENCHMARKS.md)")


def probability_drew_lesions(report: dict) -> bool:
    """Whether the report's GGO and consolidation came from the models whose probability a heatmap shows (False
    where the HU rule drew them: :data:`MODEL_ONLY_NOTE`)."""
    return not any(m.get("name") == HU_RULE_MODEL for m in report.get("models") or [])


def infection_probability(lesion_prob: np.ndarray | None, infection_prob: np.ndarray | None) -> np.ndarray | None:
    """(N, H, W) float32 P(GGO or consolidation) from the infection model's foreground probability
    (N, H, W), else from the lesion model's class probabilities (N, C, H, W); None without either."""
    if infection_prob is not None:
        return np.asarray(infection_prob, np.float32)
    if lesion_prob is None:
        return None
    p = np.asarray(lesion_prob, np.float32)
    if p.shape[1] == 2:
        return p[:, 1]
    return p[:, GGO] + p[:, CONSOLIDATION]


def to_u8(p: np.ndarray) -> np.ndarray:
    """Probabilities [0, 1] as uint8 0..255."""
    return np.clip(np.rint(np.asarray(p, np.float32) * 255.0), 0, 255).astype(np.uint8)


def probability_volume(shape: tuple[int, int, int], zs: np.ndarray, p: np.ndarray | None) -> np.ndarray | None:
    """The uint8 probability volume of ``shape`` with slices ``zs`` from ``p`` (N, H, W); 0 elsewhere."""
    if p is None:
        return None
    out = np.zeros(shape, np.uint8)
    zs = np.asarray(zs)
    for k in range(0, len(zs), 16):  # a few slices at a time: to_u8's float temporaries stay small
        out[zs[k : k + 16]] = to_u8(p[k : k + 16])
    return out


def upsample_probability(p_u8: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A uint8 probability volume resized in-plane to ``shape`` (bilinear, pixel centres aligned as
    block averaging defines them), e.g. from the analysis working grid back to the input's grid."""
    import cv2

    p_u8 = np.asarray(p_u8, np.uint8)
    if p_u8.shape == tuple(shape):
        return p_u8
    if p_u8.shape[0] != shape[0]:
        raise ValueError(f"probability volume {p_u8.shape} and target {shape} have different slice counts")
    out = np.empty(shape, np.uint8)
    for k, s in enumerate(p_u8):
        out[k] = cv2.resize(s, (shape[2], shape[1]), interpolation=cv2.INTER_LINEAR) if s.any() else 0
    return out


def binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """H(p) in bits, 0 at p = 0 or 1, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _as_float(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p)
    return p.astype(np.float32) / 255.0 if p.dtype == np.uint8 else p.astype(np.float32)


def uncertainty(prob: np.ndarray | None, lungs: np.ndarray, voxel_mm3: float | None,
                pixel_mm2: float | None) -> tuple[dict, list[dict]]:
    """(summary for report.json ``uncertainty``, one {uncertain_mm2, lesion_entropy_bits} per slice).

    ``prob``: lesion probability (z, y, x), uint8 (x 255) or float, on the grid of ``lungs`` (z, y, x);
    None when no lesion model ran (every figure is then null). ``voxel_mm3`` / ``pixel_mm2``: None when
    the spacing is unknown (a 2-D image): the areas and volumes are then null, the percentages stay."""
    n = len(lungs)
    none_slice = {"uncertain_mm2": None, "lesion_entropy_bits": None}
    summary = {"method": METHOD, "band": list(UNCERTAIN_BAND), "threshold_percent": HIGH_UNCERTAINTY_PERCENT,
               "uncertain_ml": None, "uncertain_percent_of_lungs": None, "mean_entropy_bits": None,
               "high": False}
    if prob is None:
        summary["method"] = "none: no lesion model ran (HU thresholds only)"
        return summary, [dict(none_slice) for _ in range(n)]
    if prob.shape != lungs.shape:
        raise ValueError(f"probability {prob.shape} and lungs {lungs.shape} differ in shape")
    lo, hi = UNCERTAIN_BAND
    per_slice, band_total, lung_total, entropy_total = [], 0, 0, 0.0
    for k in range(n):
        inside = np.asarray(lungs[k]) > 0
        n_lung = int(inside.sum())
        if not n_lung:
            per_slice.append(dict(none_slice) if pixel_mm2 is None else {"uncertain_mm2": 0.0, "lesion_entropy_bits": None})
            continue
        p = _as_float(prob[k][inside])
        n_band = int(((p >= lo) & (p <= hi)).sum())
        h = float(binary_entropy_bits(p).sum())
        band_total, lung_total, entropy_total = band_total + n_band, lung_total + n_lung, entropy_total + h
        per_slice.append({"uncertain_mm2": None if pixel_mm2 is None else round(n_band * pixel_mm2, 2),
                          "lesion_entropy_bits": round(h / n_lung, 4)})
    if lung_total:
        pct = 100.0 * band_total / lung_total
        summary.update(uncertain_percent_of_lungs=round(pct, 3), mean_entropy_bits=round(entropy_total / lung_total, 4),
                       uncertain_ml=None if voxel_mm3 is None else round(band_total * voxel_mm3 / 1000.0, 2),
                       high=bool(pct > HIGH_UNCERTAINTY_PERCENT))
    return summary, per_slice


def uncertainty_warning(summary: dict) -> str | None:
    """The report warning for a high uncertainty, or None."""
    if not summary.get("high"):
        return None
    return (f"uncertain lesion boundaries: {summary['uncertain_percent_of_lungs']:.1f} % of the lung volume has a "
            f"lesion probability between {UNCERTAIN_BAND[0]} and {UNCERTAIN_BAND[1]} (above "
            f"{HIGH_UNCERTAINTY_PERCENT:g} %); check the lesion masks against the heatmap")


# --- pictures --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """(256, 3) uint8 colours of matplotlib's 'inferno' map for probabilities 0..255."""
    import matplotlib

    return (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def heatmap_rgba(p_hw: np.ndarray, opacity: float = 0.75) -> np.ndarray:
    """(H, W, 4) uint8 overlay: probability colour, alpha rising with the probability, transparent
    below ``HEATMAP_FLOOR`` (what the web viewer draws over the CT)."""
    p8 = np.asarray(p_hw) if np.asarray(p_hw).dtype == np.uint8 else to_u8(p_hw)
    out = np.zeros((*p8.shape, 4), np.uint8)
    out[..., :3] = _lut()[p8]
    alpha = np.clip(0.35 + 0.65 * p8.astype(np.float32) / 255.0, 0, 1) * opacity
    out[..., 3] = np.where(p8 >= round(HEATMAP_FLOOR * 255), np.rint(alpha * 255), 0).astype(np.uint8)
    return out


def heatmap_rgb(image_hw: np.ndarray, p_hw: np.ndarray, is_hu: bool) -> np.ndarray:
    """(H, W, 3) uint8: the slice in grey (lung window for HU) with the heatmap blended over it; the
    image's exact size."""
    from covidct.report.figures import to_grey

    grey = to_grey(image_hw, is_hu).astype(np.float32)[..., None]
    over = heatmap_rgba(p_hw).astype(np.float32)
    a = over[..., 3:] / 255.0
    return np.clip(np.rint((1 - a) * grey + a * over[..., :3]), 0, 255).astype(np.uint8)


def heatmap_slices(prob_u8: np.ndarray, lungs: np.ndarray) -> list[int]:
    """The slices worth a heatmap picture: those with lungs or with any coloured probability."""
    floor = round(HEATMAP_FLOOR * 255)
    has = (np.asarray(lungs) > 0).reshape(len(lungs), -1).any(1) | (np.asarray(prob_u8) >= floor).reshape(len(lungs), -1).any(1)
    return [int(k) for k in np.flatnonzero(has)]


def save_heatmap_pngs(ct: CT, prob_u8: np.ndarray, lungs: np.ndarray, outdir: str | Path) -> list[Path]:
    """``heatmap_NNNN.png`` (canonical slice index) for each slice with lungs or probability, at the
    slice's exact size; the folder is written by the caller's staging, so no atomic write per file."""
    from PIL import Image

    if prob_u8.shape != ct.shape:
        raise ValueError(f"probability {prob_u8.shape} does not match the CT {ct.shape}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in heatmap_slices(prob_u8, lungs):
        p = outdir / f"heatmap_{k:04d}.png"
        Image.fromarray(heatmap_rgb(ct.array[k], prob_u8[k], ct.is_hu)).save(p, format="PNG", compress_level=3)
        paths.append(p)
    return paths


def save_probability_nifti(prob_u8: np.ndarray, ct: CT, path: str | Path) -> Path:
    """The lesion probability on the input's exact grid as a NIfTI: uint8 data with scale 1/255, so
    readers (nibabel, 3D Slicer, ITK-SNAP) show probabilities 0..1."""
    import nibabel as nib

    from covidct.io.writers import atomic_write, nifti_like_input

    img = nifti_like_input(ct, np.asarray(prob_u8, np.uint8), np.uint8)
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    return atomic_write(path, lambda p: nib.save(img, str(p)))


def save_probability_png(prob_u8: np.ndarray, path: str | Path) -> Path:
    """A 2-D input's lesion probability as an 8-bit grey PNG (value = p x 255), the image's exact size."""
    from PIL import Image

    from covidct.io.writers import atomic_write

    im = Image.fromarray(np.ascontiguousarray(np.asarray(prob_u8, np.uint8)))
    return atomic_write(path, lambda p: im.save(p, format="PNG"))
