"""Whole display-range CT volumes (windowed to 0..255 or similar) mapped back to approximate Hounsfield units.

Many public COVID-19 volumes are distributed already windowed (e.g. the Radiopaedia cases of Ma et al.'s
COVID-19-CT-Seg, stacks converted from JPEG), and some converters store CT values without the rescale intercept
(HU + 1024, so that air is near 0 and nothing looks like HU). covidct's HU rules (lung field, the GGO/consolidation rule, the leak
checks) are what keeps healthy whole volumes clean; without HU a whole volume falls back to the lesion network alone,
which marks vessels and dependent lung as lesions (docs/BENCHMARKS.md: normal001 windowed W1500/L-600 read as
pneumonia with 441 mL of "lesions").

A linear window (display = clip(a·HU + b)) is undone from two anchors found in the volume itself:
- **outside air = −1000 HU**: the commonest value of the image border, not counting the clipped minimum (padding
  outside a circular field of view, or air itself when the window clips it; then nothing is mapped);
- **subcutaneous fat = -100 HU**: a clear histogram peak within 60 HU of where the two anchors above (air and soft
  tissue) put -100 HU; where none is seen, **soft tissue = +40 HU** (muscle, blood, heart): the highest clear peak
  of the histogram below the clipped top. Fat is preferred: the soft-tissue peak moves with contrast enhancement and
  between patients (33-61 HU on the four real series here; their fat peaks -105 to -115 HU).
Where the window's top clips soft tissue itself (a top at or below about +100 HU, as in the common W1200/L-600 lung
window), the highest clear peak may be fat: it is then taken as fat, with outside air, when that map puts the top
between -40 HU (fat at least ``FAT_SEARCH_HU`` below it) and +200 HU (a higher top would have shown soft tissue as a
clear peak), and the voxels between the peak's band and the top are at least ``FAT_ONLY_MIN_SHOULDER`` of those in
the band (right above soft tissue's own peak lies only its upper tail; above fat lie the fat/soft-tissue gap and the
soft tissue below the top). ``tissue_value`` is then None.
The map is refused (``analyze`` then stops with an error; ``segment`` goes on with display intensities) when the
anchors are not trustworthy:
- the border's air is not one sharp value (< 25 % of the unclipped border within ±3 of its commonest value), as when a
  mediastinal window clips air and lung together;
- the map would put the volume's top above +4000 HU (the peak taken for soft tissue is lung: the window clips
  soft tissue and fat) and the peak cannot be fat either;
- the window may clip soft tissue itself (its top near +40 HU, so that the highest visible peak may be fat): more
  voxels at the clipped top than 0.3× those within ±3 % of the peak, unless the fat peak is seen, the peak can be fat,
  or the peak is soft tissue seen whole (the top at least 20 HU above it on the soft-tissue map, and fewer voxels
  than ``FAT_ONLY_MIN_SHOULDER`` × those in its band between the band and the top: only its upper tail; the many
  voxels at the top are then bone and contrast).
A refused window that clips the lungs to its minimum (a mediastinal window: everything below -160 HU is one value)
leaves nothing of the lung's density to read: :func:`clipped_lung_share` finds it and ``analyze`` stops with an error.
These thresholds were set on four real series under 13 windows (docs/BENCHMARKS.md, twenty-second to twenty-fourth
sessions); what they accept came within a few HU of the true values there. A non-linear map (gamma, per-slice
stretching) is not detected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

AIR_HU = -1000.0
SOFT_TISSUE_HU = 40.0
FAT_HU = -100.0
MIN_AIR_SHARPNESS = 0.25
MAX_TOP_HU = 4000.0  # CT's usual range ends at +3071 HU; a higher top means the soft-tissue anchor is wrong
MAX_CLIP_RATIO = 0.3
FAT_SEARCH_HU = 60.0
FAT_ONLY_MAX_TOP_HU = 200.0
FAT_ONLY_MIN_SHOULDER = 0.3  # the voxels above a peak's band over those in it: fat at or above, soft tissue below
# a soft-tissue peak under a top that clips many voxels (bone, contrast) is accepted when the top lies at least this
# far above it (about the peak's half-width at these noise levels): the peak is then seen whole, not cut by the top
SOFT_TISSUE_HEADROOM_HU = 20.0
# How far a mapped HU value may be from the truth near soft tissue: the map puts each patient's own soft-tissue peak
# at +40 HU, and the four real series' peaks lie at 33, 39, 45 and 61 HU. Checks that compare a density with a
# threshold near soft tissue widen their margin by this much on a mapped volume (pipeline.lesions' effusion check).
MAPPED_HU_UNCERTAINTY = 20.0


@dataclass(frozen=True)
class DisplayWindow:
    """The linear map found: ``HU = hu_per_unit * (value - air_value) + AIR_HU`` (through the fat peak where one was
    seen, else through the soft-tissue peak); the HU of the volume's minimum and maximum values (``lo_hu``, ``hi_hu``)
    and the evidence. ``tissue_value`` is None where the window's top clips soft tissue (air and fat alone)."""

    air_value: float
    tissue_value: float | None
    fat_value: float | None
    hu_per_unit: float
    lo_hu: float
    hi_hu: float
    air_sharpness: float
    clip_ratio: float
    fat_seen: bool

    def as_dict(self) -> dict:
        return {k: v if v is None or isinstance(v, bool) else round(float(v), 3) for k, v in asdict(self).items()}


def _border(vol: np.ndarray) -> np.ndarray:
    """The values of each slice's outer band (2 % of the smaller side, at least 2 pixels)."""
    b = max(2, int(0.02 * min(vol.shape[1:])))
    return np.concatenate([vol[:, :b].ravel(), vol[:, -b:].ravel(), vol[:, b:-b, :b].ravel(), vol[:, b:-b, -b:].ravel()])


def _peaks(vol: np.ndarray, lo: float, hi: float, unit: float) -> np.ndarray:
    """The centres of the clear peaks of ``vol``'s histogram strictly between ``lo`` and ``hi`` (bins of ``unit``,
    smoothed)."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    inside = vol[(vol > lo + unit) & (vol < hi - 0.5 * unit)]
    edges = np.arange(lo + unit, hi, unit)
    if inside.size == 0 or len(edges) < 8:
        return np.empty(0)
    hist, edges = np.histogram(inside, bins=edges)
    smooth = gaussian_filter1d(hist.astype(float), 1.5)
    at, _ = find_peaks(smooth, prominence=0.1 * smooth.max())
    return edges[at] + 0.5 * unit


def _fat_peak(centres: np.ndarray, air: float, tissue: float, per_unit: float) -> float | None:
    """The histogram peak taken for fat: within ``FAT_SEARCH_HU`` of -100 HU on the air / soft-tissue map and at
    least ``FAT_SEARCH_HU`` below soft tissue (the nearest to -100 HU), or None."""
    hu = AIR_HU + (np.asarray(centres) - air) * per_unit
    ok = (np.abs(hu - FAT_HU) <= FAT_SEARCH_HU) & (hu <= SOFT_TISSUE_HU - FAT_SEARCH_HU) & (centres < tissue)
    if not ok.any():
        return None
    return float(centres[ok][np.argmin(np.abs(hu[ok] - FAT_HU))])


def estimate_window(vol: np.ndarray) -> DisplayWindow | str:
    """The linear display window of a whole volume (z, y, x), or why it cannot be trusted (a sentence)."""
    vol = np.asarray(vol)
    vmin, vmax = float(np.min(vol)), float(np.max(vol))
    if not vmax > vmin or vol.ndim != 3:
        return "the volume has no intensity range"
    # one grey level of an 8-bit display, whatever the stored range (bone and metal's sparse tail left out)
    unit = max((min(vmax, float(np.percentile(vol, 99.9))) - vmin) / 255.0, 1e-6)
    border = _border(vol)
    free = border[(border > vmin + 0.5 * unit) & (border < vmax - 0.5 * unit)]
    if free.size < 0.01 * border.size:
        return "no air at the image border above the window's minimum (air clipped, or no border air)"
    levels = np.rint((free - vmin) / unit)
    values, counts = np.unique(levels, return_counts=True)
    air = vmin + float(values[np.argmax(counts)]) * unit
    sharpness = float(np.mean(np.abs(free - air) <= 3 * unit))
    if sharpness < MIN_AIR_SHARPNESS:
        return f"the border's air is not one value ({sharpness:.0%} within 3 grey levels of its commonest value)"
    centres = _peaks(vol, air, vmax, unit)
    if centres.size == 0:
        return "no soft-tissue peak in the histogram"
    tissue = float(centres.max())
    width = 0.03 * (tissue - air)  # the peak's band
    near_peak = int(np.count_nonzero((vol >= tissue - width) & (vol <= tissue + width)))
    at_top = int(np.count_nonzero(vol >= vmax - 0.5 * unit))
    per_unit = (SOFT_TISSUE_HU - AIR_HU) / (tissue - air)  # HU per unit on the air / soft-tissue map
    if AIR_HU + (vmax - air) * per_unit > MAX_TOP_HU:
        shoulder = _shoulder(vol, air, tissue, vmax, unit)
        return (_fat_only(air, tissue, near_peak, at_top, shoulder, vmin, vmax, sharpness)
                or "the highest histogram peak is too close to air to be soft tissue (the window clips soft tissue?)")
    fat = _fat_peak(centres, air, tissue, per_unit)
    clip_ratio = at_top / max(near_peak, 1)
    if clip_ratio > MAX_CLIP_RATIO and fat is None:
        shoulder = _shoulder(vol, air, tissue, vmax, unit)  # counted once for both readings of the peak
        fat_map = _fat_only(air, tissue, near_peak, at_top, shoulder, vmin, vmax, sharpness)
        if fat_map is not None:
            return fat_map
        if not _soft_tissue_whole(air, near_peak, shoulder, vmax, per_unit):
            return (f"the window's top may clip soft tissue ({clip_ratio:.2f}x the soft-tissue peak's voxels at the "
                    "top value, no fat peak where expected)")
    # fat is the steadier anchor: soft tissue's peak moves with contrast enhancement and between patients
    hu_per_unit = per_unit if fat is None else (FAT_HU - AIR_HU) / (fat - air)
    return DisplayWindow(air_value=air, tissue_value=tissue, fat_value=fat, hu_per_unit=hu_per_unit,
                         lo_hu=AIR_HU + (vmin - air) * hu_per_unit, hi_hu=AIR_HU + (vmax - air) * hu_per_unit,
                         air_sharpness=sharpness, clip_ratio=clip_ratio, fat_seen=fat is not None)


def _shoulder(vol: np.ndarray, air: float, peak: float, vmax: float, unit: float) -> int:
    """The voxels between the peak's +-3 % band and the clipped top value."""
    return int(np.count_nonzero((vol > peak + 0.03 * (peak - air)) & (vol < vmax - 0.5 * unit)))


def _soft_tissue_whole(air: float, near: int, shoulder: int, vmax: float, per_unit: float) -> bool:
    """Whether the highest clear peak is soft tissue seen whole although many voxels sit at the top value (bone and
    contrast clipped): the air / soft-tissue map puts the top at least ``SOFT_TISSUE_HEADROOM_HU`` above soft tissue,
    and fewer voxels than ``FAT_ONLY_MIN_SHOULDER`` x ``near`` (those in the peak's band) lie between the band and the
    top: above soft tissue's own peak lies only its upper tail, above fat the fat/soft-tissue gap and the soft tissue
    below the top (the same boundary as :func:`_fat_only`'s, the other way)."""
    if AIR_HU + (vmax - air) * per_unit < SOFT_TISSUE_HU + SOFT_TISSUE_HEADROOM_HU:
        return False
    return shoulder < FAT_ONLY_MIN_SHOULDER * near


def _fat_only(air: float, peak: float, near: int, at_top: int, shoulder: int, vmin: float, vmax: float,
              sharpness: float) -> DisplayWindow | None:
    """The map through outside air and the highest clear peak taken as fat, for a window whose top clips soft tissue
    (``near``, ``at_top``, ``shoulder``: the voxels in the peak's ±3 % band, at the top value and between the two);
    None where the peak cannot be fat
    (the top would map outside (-40, +200] HU, or too few voxels lie above the peak's band for soft tissue to be
    clipped above it)."""
    hu_per_unit = (FAT_HU - AIR_HU) / (peak - air)
    top = AIR_HU + (vmax - air) * hu_per_unit
    if not FAT_HU + FAT_SEARCH_HU < top <= FAT_ONLY_MAX_TOP_HU:
        return None
    if shoulder < FAT_ONLY_MIN_SHOULDER * near:
        return None
    return DisplayWindow(air_value=air, tissue_value=None, fat_value=peak, hu_per_unit=hu_per_unit,
                         lo_hu=AIR_HU + (vmin - air) * hu_per_unit, hi_hu=top, air_sharpness=sharpness,
                         clip_ratio=at_top / max(near, 1), fat_seen=True)


# A refused window whose minimum swallows this share of the body (in-plane components of the minimum value, enclosed by
# the body, of at least CLIPPED_MIN_CM2) hides the lungs: a mediastinal window (W400/L40) puts everything below -160 HU
# at its minimum, aerated lung, GGO and emphysema alike (0.16-0.41 on the four real series here; lung windows 0.0001)
CLIPPED_LUNG_SHARE = 0.05
CLIPPED_MIN_CM2 = 1.0  # smaller holes at the minimum are speckle (outside air clamped at -1024 HU by some scanners)


def clipped_lung_share(vol: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The share of the body (each slice's region above the volume's minimum, holes filled) taken by enclosed regions
    at the minimum value of at least ``CLIPPED_MIN_CM2`` in their slice: the lungs, where a window clips them."""
    from scipy import ndimage

    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    above = np.asarray(vol) > np.min(vol)
    body = np.stack([ndimage.binary_fill_holes(s) for s in above])
    holes = body & ~above
    lbl, n = ndimage.label(holes, structure=in_plane)
    if n:
        big = np.bincount(lbl.ravel()) * (spacing[1] * spacing[2] / 100.0) >= CLIPPED_MIN_CM2
        big[0] = False
        holes = big[lbl]
    return float(np.count_nonzero(holes)) / max(float(np.count_nonzero(body)), 1.0)


def to_hu(vol: np.ndarray, window: DisplayWindow) -> np.ndarray:
    """float32 approximate HU of a display-range volume under ``window``."""
    out = np.asarray(vol, np.float32) - np.float32(window.air_value)
    out *= np.float32(window.hu_per_unit)
    out += np.float32(AIR_HU)
    return out
