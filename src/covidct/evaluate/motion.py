"""Breathing during the scan, simulated on a whole HU series (a model, not a scan).

Breathless patients, many with COVID-19 pneumonia among them, cannot hold their breath through a chest CT. While the
tube turns, the diaphragm and the lung bases move along the body's axis, so the views of one slice see different
anatomy and filtered back-projection mixes them: doubled vessels and diaphragm contours, streaks at their edges, a
smear of partial volume that an HU lesion rule could read as ground glass. No series with motion is in ../shared, so
:func:`breathing_motion_simulated` adds it to a series, slice by slice (2-D parallel beam, 360 views over 180°, on a grid
of about 256² as in :mod:`covidct.evaluate.metal`, the change brought back to the series' grid bilinearly):

- the second half of each slice's views is taken of the anatomy ``shift`` mm further up (inspiration moves the lung
  bases down, so a fixed slice then sees what lay above it), linearly interpolated between the series' slices;
- ``shift`` grows from 0 at the lung apex to ``amplitude_mm`` at the lowest lung slice and below (the apex hardly
  moves, the bases most: 10-20 mm in tidal breathing);
- the change added is the filtered back-projection of the difference between those views and the series' own, so the
  series keeps its own noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct.evaluate.metal import MU_WATER, fbp_error

ANGLES = 360  # views over 180°; the second half is moved


def breathing_motion_simulated(ct, amplitude_mm: float = 15.0):
    """``ct`` as if the patient breathed during each slice's rotation (module docstring); canonical orientation
    (z superior). ``amplitude_mm`` 0 gives the series back unchanged."""
    from covidct.evaluate.hu_volumes import hu_lung_reference

    hu = np.asarray(ct.array, np.float32)
    if amplitude_mm <= 0:
        return dataclasses.replace(ct, array=hu.copy())
    lung = hu_lung_reference(hu, ct.spacing)
    zs = np.flatnonzero(lung.any((1, 2)))
    if zs.size < 3:
        raise ValueError("no lung field found to move")
    dz = float(ct.spacing[0])
    z_lo, z_hi = int(zs.min()), int(zs.max())
    out = hu.copy()
    for k in range(z_hi + 1):
        share = 1.0 if k <= z_lo else (z_hi - k) / max(z_hi - z_lo, 1)
        up = share * amplitude_mm / dz  # in slices; canonical z runs to the head
        if up <= 0:
            continue
        moved = _slice_at(hu, k + up)
        out[k] += _motion_error(moved - hu[k])
    return dataclasses.replace(ct, array=out, path=f"{ct.path}@breathing{amplitude_mm:g}mm")


def _slice_at(hu: np.ndarray, z: float) -> np.ndarray:
    """The series at fractional slice ``z`` (linear between slices; the top slice beyond the series)."""
    z = min(z, len(hu) - 1.0)
    k0 = int(np.floor(z))
    k1 = min(k0 + 1, len(hu) - 1)
    t = np.float32(z - k0)
    return (1 - t) * hu[k0] + t * hu[k1]


def _motion_error(difference: np.ndarray) -> np.ndarray:
    """HU change of a slice whose second half of views saw ``difference`` (HU) more than the first."""
    import cv2
    from skimage.transform import radon

    h, w = difference.shape
    f = max(1, int(round(max(h, w) / 256)))
    small = (w // f, h // f)
    d_mu = MU_WATER * cv2.resize(difference, small, interpolation=cv2.INTER_AREA) / 1000.0
    theta = np.linspace(0.0, 180.0, ANGLES, endpoint=False)
    moved = radon(d_mu, theta[ANGLES // 2 :], circle=False)  # line integrals per pixel, the moved views only
    error = np.zeros((moved.shape[0], ANGLES))
    error[:, ANGLES // 2 :] = moved
    d_hu = fbp_error(error, theta, (small[1], small[0]))
    return cv2.resize(d_hu, (w, h), interpolation=cv2.INTER_LINEAR)
