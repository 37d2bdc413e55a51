"""Arms down: a patient scanned with the arms beside the chest, simulated on a whole HU series (a model, not a scan).

Patients in intensive care, many of those with severe COVID-19 among them, are scanned with their arms down. Every
lateral X-ray then crosses both arms as well as the chest: fewer photons reach the detector (photon starvation) and
the humeri harden the beam, so filtered back-projection adds streaks and noise across the slice, mostly left to
right, in the lung too. The real series here were all scanned with the arms raised, and their fields of view end at or
inside the chest wall, so :func:`arms_down_simulated` builds each slice's projections on a canvas wide enough for the
arms and adds to the series what the arms change in its reconstruction:

- the arms: ellipses 80 mm wide and 100 mm deep (8 mm of fat around muscle), each with a humerus 22 mm across (4 mm
  of cortical bone), at the lungs' mid-depth, ``gap_mm`` beside the body where it is widest (or beside the image's
  edge, where the body reaches it), on every slice from the lowest to the lung apex;
- photon starvation: on each ray the variance the arms add, ``(exp(p_with) − exp(p_without)) / photons`` (``p``: the
  line integral; at least one count), as Gaussian noise: the series keeps its own noise, and only the extra is added;
- beam hardening in the humeri's cortex, measured as p / (1 + 0.1 p) as for metal (:mod:`covidct.evaluate.projection`);
  the scanner's own water correction is taken as exact for the soft tissue.

What it leaves out: the body outside a field of view that cuts it (its attenuation is unknown, so lateral rays are
under-attenuated and the noise under-estimated), tube-current modulation (which raises the dose of the lateral views
and lowers their noise), and the arms' own scatter.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct.evaluate.metal import body_of_slice
from covidct.evaluate.projection import BEAM_HARDENING, MU_WATER, VIEWS, fbp_error, working_size

ARM_HALF_WIDTH_MM, ARM_HALF_DEPTH_MM, ARM_FAT_MM = 40.0, 50.0, 8.0
HUMERUS_RADIUS_MM, CORTEX_MM = 11.0, 4.0
MUSCLE_HU, FAT_HU, CORTEX_HU, MARROW_HU = 50.0, -100.0, 1200.0, -50.0


def arms_down_simulated(ct, photons: float = 1e5, gap_mm: float = 10.0, seed: int = 0):
    """``(ct with both arms down and what they add to its reconstruction, arms mask)`` (the mask: the arms' voxels
    inside the image, often none: fields of view end at the chest wall). Canonical orientation (x to the patient's
    left, y posterior, z superior)."""
    from covidct.evaluate.hu_volumes import hu_lung_reference

    hu = np.asarray(ct.array, np.float32)
    lung = hu_lung_reference(hu, ct.spacing)
    zs = np.flatnonzero(lung.any((1, 2)))
    if zs.size < 3:
        raise ValueError("no lung field found to place the arms beside")
    centres = _arm_centres(hu, lung, zs, ct.spacing, gap_mm)
    _, dy, dx = ct.spacing
    h, w = hu.shape[1:]
    yy, xx = np.ogrid[:h, :w]
    arm_hu, _ = _arms(yy * dy, xx * dx, centres)
    arms = np.isfinite(arm_hu)
    canvas = _canvas((h, w), (dy, dx), centres)
    rng = np.random.default_rng(seed)
    out = hu.copy()
    for k in range(int(zs.max()) + 1):
        out[k] += _arm_error(hu[k], canvas, photons, rng)
        out[k][arms] = arm_hu[arms]
    mask = np.zeros(hu.shape, bool)
    mask[: int(zs.max()) + 1] = arms
    return dataclasses.replace(ct, array=out, path=f"{ct.path}@arms-down"), mask


def _arm_centres(hu, lung, zs, spacing, gap_mm) -> list[tuple[float, float]]:
    """(y, x) in mm of the two arms' centres, at the lungs' mid-depth on the mid-lung slice, ``gap_mm`` beside the body
    where it is widest within the arms' depth on any slice up to the apex (so an arm never overlaps the body)."""
    _, dy, dx = spacing
    rows = np.flatnonzero(lung[int(round(zs.mean()))].any(1))
    yc = float(rows.mean()) if rows.size else hu.shape[1] / 2.0
    band = slice(max(0, int(yc - ARM_HALF_DEPTH_MM / dy)), int(yc + ARM_HALF_DEPTH_MM / dy) + 1)
    cols = np.zeros(hu.shape[2], bool)
    for k in range(int(zs.max()) + 1):
        cols |= body_of_slice(hu[k])[band].any(0)
    x = np.flatnonzero(cols)
    right_edge, left_edge = (float(x.min()), float(x.max())) if x.size else (0.0, hu.shape[2] - 1.0)
    reach = gap_mm + ARM_HALF_WIDTH_MM  # the patient's right is low x
    return [(yc * dy, right_edge * dx - reach), (yc * dy, left_edge * dx + reach)]


def _arms(y_mm: np.ndarray, x_mm: np.ndarray, centres) -> tuple[np.ndarray, np.ndarray]:
    """(HU of the arms, NaN elsewhere; the cortex's mask) on the grid of points ``y_mm``, ``x_mm`` (broadcast)."""
    shape = np.broadcast(y_mm, x_mm).shape
    arm_hu = np.full(shape, np.nan, np.float32)
    cortex = np.zeros(shape, bool)
    for cy, cx in centres:
        ey, ex = (y_mm - cy), (x_mm - cx)
        outer = (ey / ARM_HALF_DEPTH_MM) ** 2 + (ex / ARM_HALF_WIDTH_MM) ** 2
        inner = (ey / (ARM_HALF_DEPTH_MM - ARM_FAT_MM)) ** 2 + (ex / (ARM_HALF_WIDTH_MM - ARM_FAT_MM)) ** 2
        r = np.hypot(ey, ex)
        arm_hu[np.broadcast_to(outer <= 1.0, shape)] = FAT_HU
        arm_hu[np.broadcast_to(inner <= 1.0, shape)] = MUSCLE_HU
        bone = np.broadcast_to(r <= HUMERUS_RADIUS_MM, shape)
        arm_hu[bone] = CORTEX_HU
        cortex |= bone & np.broadcast_to(r > HUMERUS_RADIUS_MM - CORTEX_MM, shape)
        arm_hu[bone & ~cortex] = MARROW_HU
    return arm_hu, cortex


@dataclasses.dataclass
class _Canvas:
    """A slice's working grid (about 256², :mod:`covidct.evaluate.projection`) widened to hold both arms, with the
    arms' own line integrals (the same on every slice)."""

    small: tuple[int, int]  # the slice's working size, (columns, rows) as OpenCV takes sizes
    pad: tuple[int, int]  # columns added on the patient's right (low x) and left
    px: float  # mm per working pixel along x
    theta: np.ndarray
    p_arm: np.ndarray  # the arms' soft tissue and marrow
    p_cortex: np.ndarray  # the humeri's cortex


def _canvas(shape: tuple[int, int], pixel_mm: tuple[float, float], centres) -> _Canvas:
    from skimage.transform import radon

    f, small = working_size(shape)
    py, px = pixel_mm[0] * f, pixel_mm[1] * f
    lo = int(np.ceil(max(0.0, ARM_HALF_WIDTH_MM - min(c[1] for c in centres)) / px)) + 2
    hi = int(np.ceil(max(0.0, max(c[1] for c in centres) + ARM_HALF_WIDTH_MM - small[0] * px) / px)) + 2
    yy = (np.arange(small[1]) + 0.5)[:, None] * py
    xx = (np.arange(small[0] + lo + hi) - lo + 0.5)[None, :] * px
    arm_hu, cortex = _arms(yy, xx, centres)
    soft = np.isfinite(arm_hu) & ~cortex
    mu_arm = np.where(soft, MU_WATER * (1.0 + np.nan_to_num(arm_hu) / 1000.0), 0.0)
    mu_cortex = np.where(cortex, MU_WATER * (1.0 + CORTEX_HU / 1000.0), 0.0)
    return _Canvas(small, (lo, hi), px, VIEWS, radon(mu_arm, VIEWS, circle=False) * px,
                   radon(mu_cortex, VIEWS, circle=False) * px)


def _arm_error(hu_slice: np.ndarray, canvas: _Canvas, photons: float, rng: np.random.Generator) -> np.ndarray:
    """HU the arms add to one slice's reconstruction (module docstring)."""
    import cv2
    from skimage.transform import radon

    (cols, rows), (lo, hi), px = canvas.small, canvas.pad, canvas.px
    base = np.full((rows, cols + lo + hi), -1000.0, np.float32)  # air beside the field of view
    base[:, lo : lo + cols] = cv2.resize(hu_slice, canvas.small, interpolation=cv2.INTER_AREA)
    p_base = radon(np.clip(MU_WATER * (1.0 + base / 1000.0), 0, None), canvas.theta, circle=False) * px
    ceiling = np.log(photons)  # at least one count
    p_with = np.minimum(p_base + canvas.p_arm + canvas.p_cortex, ceiling)
    extra_var = np.maximum(np.exp(p_with) - np.exp(np.minimum(p_base, ceiling)), 0.0) / photons
    error = canvas.p_cortex / (1.0 + BEAM_HARDENING * canvas.p_cortex) - canvas.p_cortex
    error = error + np.sqrt(extra_var) * rng.standard_normal(error.shape)
    d_hu = fbp_error(error / px, canvas.theta, base.shape)[:, lo : lo + cols]
    return cv2.resize(d_hu, hu_slice.shape[::-1], interpolation=cv2.INTER_LINEAR)
