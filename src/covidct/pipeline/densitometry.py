"""Lung densitometry of a whole HU volume: what quantitative CT reports from the lung's Hounsfield units.

Per lung and for both lungs: the mean lung density, the 15th percentile (Perc15) and the share below −950 HU
(LAA-950, the emphysema index), and the five Hounsfield-unit classes of 3D Slicer's Lung CT Analyzer at its
default ranges, with its "affected" share (infiltrated + collapsed of the four parenchymal classes), whole and per
region: ventral / dorsal halves and upper / middle / lower thirds. These read only the HU inside the lung mask; they
are not the lesion masks, and a healthy lung is not 0 % affected (vessels' partial volume, dependent density).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from covidct.labels import LEFT_LUNG, RIGHT_LUNG
from covidct.pipeline.background import beside
from covidct.preprocess import bounding_box
from covidct.volume import CT

# Lung CT Analyzer's default ranges (HU, lower bound included): its "Emphysema" (bulla), "Inflated",
# "Infiltration", "Collapsed" and "Vessels" segments; its lung volume is the first four, "affected" the middle two.
LCTA_CLASSES: tuple[tuple[str, float, float], ...] = (
    ("emphysema", -1050.0, -950.0),
    ("inflated", -950.0, -750.0),
    ("infiltrated", -750.0, -400.0),
    ("collapsed", -400.0, 0.0),
    ("vessels", 0.0, 3000.0),
)
CLASS_NAMES = tuple(c[0] for c in LCTA_CLASSES)
PARENCHYMA = ("emphysema", "inflated", "infiltrated", "collapsed")
AFFECTED = ("infiltrated", "collapsed")
REGIONS = ("ventral", "dorsal", "upper", "middle", "lower")
LAA_HU = -950.0  # LAA-950: low-attenuation areas, the usual emphysema index on inspiratory CT
PERCENTILE = 15.0  # Perc15
_HIST_LO, _HIST_HI = -1100, 3000  # 1-HU bins; values outside are clipped to the end bins (outside every class)
_N_HU = _HIST_HI - _HIST_LO + 1

METHOD = (
    "HU inside the final lung mask (airless lung that the mask leaves out is not counted). Mean lung density, Perc15 "
    "(the 15th percentile, to 1 HU) and LAA-950 (% of lung voxels below -950 HU). Classes: 3D Slicer Lung CT "
    "Analyzer's default ranges (emphysema -1050..-950, inflated -950..-750, infiltrated -750..-400, collapsed "
    "-400..0, vessels 0..3000 HU); affected = (infiltrated + collapsed) / (emphysema + inflated + infiltrated + "
    "collapsed), as Lung CT Analyzer reports it. Ventral/dorsal: each lung's front and back halves between its "
    "most anterior and most posterior voxel; upper/middle/lower: thirds of its cranio-caudal extent"
)

# measured: benchmarks/lung_density.py --windowed (docs/BENCHMARKS.md, fortieth session)
MAPPED_NOTE = (
    ". This volume was given in display values and mapped back to approximate HU: its figures are approximate (four "
    "series shown in two lung windows and mapped back: mean lung density 0.4-20.5 HU and LAA-950 up to 2.2 points "
    "from the HU original's)"
)


def lcta_affected(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Lung CT Analyzer's "affected" voxels (its infiltrated and collapsed classes at their default ranges) inside
    ``lungs``: the threshold floor the lesion masks are compared with (``benchmarks/hu_volumes.py``)."""
    lo = next(c[1] for c in LCTA_CLASSES if c[0] == AFFECTED[0])
    hi = next(c[2] for c in LCTA_CLASSES if c[0] == AFFECTED[-1])
    return (lungs > 0) & (hu >= lo) & (hu < hi)


def _pct(a: float, b: float) -> float | None:
    return None if b <= 0 else round(100.0 * a / b, 3)


def _class_counts(hist: np.ndarray) -> np.ndarray:
    """Voxels per class from a 1-HU histogram (bin k holds floor(HU) = k + _HIST_LO; the classes' integer lower
    bounds are included, so floor(HU) >= t exactly when HU >= t)."""
    return np.array([hist[int(lo) - _HIST_LO:int(hi) - _HIST_LO].sum() for _, lo, hi in LCTA_CLASSES], np.float64)


def _summary(hist: np.ndarray, vml: float) -> dict:
    """Class volumes (mL) and the affected share of one region's 1-HU histogram."""
    counts = dict(zip(CLASS_NAMES, _class_counts(hist).tolist(), strict=True))
    parenchyma = sum(counts[n] for n in PARENCHYMA)
    return {"classes_ml": {n: round(c * vml, 2) for n, c in counts.items()},
            "affected_percent": _pct(sum(counts[n] for n in AFFECTED), parenchyma)}


def _side(hist: np.ndarray, hu_sum: float, vml: float) -> dict:
    """One lung's (or both lungs') figures from its histogram per region, shape (3 thirds, 2 halves, _N_HU)."""
    whole = hist.sum((0, 1))
    n = int(whole.sum())
    k = int(np.searchsorted(np.cumsum(whole), PERCENTILE / 100.0 * n))  # the first HU bin reaching 15 %
    out = {
        "lung_ml": round(n * vml, 2),
        "mean_hu": round(hu_sum / n, 1),
        "perc15_hu": float(k + _HIST_LO),
        "laa950_percent": _pct(float(whole[: int(LAA_HU) - _HIST_LO].sum()), n),
        **_summary(whole, vml),
    }
    by_region = {"ventral": hist[:, 0].sum(0), "dorsal": hist[:, 1].sum(0), "lower": hist[0].sum(0),
                 "middle": hist[1].sum(0), "upper": hist[2].sum(0)}
    out["regions"] = {r: _summary(by_region[r], vml) for r in REGIONS}
    return out


def _histograms(hu: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, float]:
    """One lung's 1-HU histograms per region, shape (3 thirds, 2 halves, _N_HU), and its HU sum; ``lung``: its
    boolean mask over ``hu``. Regions: thirds of its cranio-caudal extent (z grows towards the head) and halves of
    its front-back extent (y grows towards the back), as the six zones of the involvement figures."""
    nz, ny = lung.shape[:2]
    per_row = np.count_nonzero(lung, axis=2)  # (z, y): the lung's voxels come row by row in this order
    zs, ys = np.flatnonzero(per_row.any(1)), np.flatnonzero(per_row.any(0))
    third = np.zeros(nz, np.int32)
    edges = np.floor(np.linspace(zs.min(), zs.max() + 1, 4)).astype(int)
    for t, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        third[a:b] = t
    dorsal = (np.arange(ny) >= 0.5 * (ys.min() + ys.max() + 1)).astype(np.int32)
    region = np.repeat((third[:, None] * 2 + dorsal[None, :]).ravel(), per_row.ravel())
    values = hu[lung]
    finite = np.isfinite(values)
    if not finite.all():  # files are made finite on reading; an array given to the API may not be: those voxels left out
        values, region = values[finite], region[finite]
    hu_bin = np.clip(np.floor(values), _HIST_LO, _HIST_HI).astype(np.int32) - _HIST_LO
    hist = np.bincount(region * _N_HU + hu_bin, minlength=6 * _N_HU).reshape(3, 2, _N_HU)
    return hist, float(values.sum(dtype=np.float64))


def start_densitometry(ct: CT, lungs: np.ndarray, mode: str) -> Callable[[], dict | None]:
    """:func:`densitometry` of a volume started on the other core (it reads only the final masks and the volume, so it
    runs beside the measures and diagnosis); call the result to get it (None in slice mode)."""
    if mode != "volume":
        return lambda: None
    return beside(densitometry, ct, lungs).result


def densitometry(ct: CT, lungs: np.ndarray) -> dict | None:
    """The ``densitometry`` object of report.json for a whole HU volume (None for a 2-D image, display values, no
    voxel size, or no lungs)."""
    if not (ct.is_hu and ct.spacing_known and ct.n_slices >= 2):
        return None
    box = bounding_box(lungs > 0)
    if box is None:
        return None
    lab, hu = lungs[box], ct.array[box]
    vml = ct.voxel_volume_ml
    method = METHOD + (MAPPED_NOTE if ct.meta.get("display_window") else "")
    out: dict = {"method": method, "classes_hu": {name: [lo, hi] for name, lo, hi in LCTA_CLASSES}}
    hists, sums = [], []
    for name, label in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
        lung = lab == label
        if not lung.any():
            out[name] = None
            continue
        hist, hu_sum = _histograms(hu, lung)
        if not hist.any():  # no finite value in this lung
            out[name] = None
            continue
        out[name] = _side(hist, hu_sum, vml)
        hists.append(hist)
        sums.append(hu_sum)
    if not hists:
        return None
    out["total"] = _side(sum(hists), sum(sums), vml)
    return out
