"""Breathing during the scan, simulated on a whole HU series (a model, not a scan).

Breathless patients, many with COVID-19 pneumonia among them, cannot hold their breath through a chest CT. While the
tube turns, the diaphragm and the lung bases move along the body's axis, so the views of one slice see different
anatomy and filtered back-projection mixes them: doubled vessels and diaphragm contours, streaks at their edges, a
smear of partial volume that an HU lesion rule could read as ground glass. No series with motion is in ../shared, so
:func:`breathing_motion_simulated` adds it to a series, slice by slice (2-D parallel beam, 360 views over 180°, on a grid
of about 256²: :mod:`covidct.evaluate.projection`, the change brought back to the series' grid bilinearly):

- each slice's views are taken of the anatomy moving steadily up by ``shift`` mm over the rotation (``"linear"``:
  inspiration moves the lung bases down, so a fixed slice sees what lay above it), or with the second half of the views
  moved by the whole ``shift`` at once (``"step"``, the harshest case), linearly interpolated between the series'
  slices;
- ``shift`` grows from 0 at the lung apex to ``amplitude_mm`` at the lowest lung slice and below (the apex hardly
  moves, the bases most; the diaphragm moves about 10-20 mm over a quiet breath, and a rotation lasts 0.3-1 s);
- the change added is the filtered back-projection of the difference between those views and the series' own, so the
  series keeps its own noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct.evaluate.projection import MU_WATER, VIEWS, fbp_error, working_size

PROFILES = ("linear", "step")


def breathing_motion_simulated(ct, amplitude_mm: float = 10.0, profile: str = "linear"):
    """``ct`` as if the patient breathed during each slice's rotation (module docstring); canonical orientation
    (z superior). ``profile``: ``"linear"`` (the anatomy moves steadily by the slice's shift over its views) or
    ``"step"`` (the first half of the views sees it still, the second half moved by the whole shift: the harshest
    case). ``amplitude_mm`` 0 gives the series back unchanged."""
    from covidct.evaluate.hu_volumes import hu_lung_reference

    if profile not in PROFILES:
        raise ValueError(f"unknown motion profile {profile!r}; choose from {', '.join(PROFILES)}")
    hu = np.asarray(ct.array, np.float32)
    if amplitude_mm <= 0:
        return dataclasses.replace(ct, array=hu.copy())
    lung = hu_lung_reference(hu, ct.spacing)
    zs = np.flatnonzero(lung.any((1, 2)))
    if zs.size < 3:
        raise ValueError("no lung field found to move")
    z_lo, z_hi = int(zs.min()), int(zs.max())
    n = len(VIEWS)
    views = np.arange(n) / n if profile == "linear" else (np.arange(n) >= n // 2).astype(float)
    sinograms = _Sinograms(hu)
    out = hu.copy()
    for k in range(z_hi + 1):
        share = 1.0 if k <= z_lo else (z_hi - k) / max(z_hi - z_lo, 1)
        up = share * amplitude_mm / float(ct.spacing[0])  # in slices; canonical z runs to the head
        if up > 0:
            out[k] += sinograms.motion_error(k, up * views)
    return dataclasses.replace(ct, array=out, path=f"{ct.path}@breathing-{profile}{amplitude_mm:g}mm")


class _Sinograms:
    """Each slice's sinogram at the working size (about 256², :mod:`covidct.evaluate.projection`), made when first
    needed: a slice's moved views are read from its neighbours' sinograms, linearly between them."""

    def __init__(self, hu: np.ndarray) -> None:
        self.hu = hu
        self.small = working_size(hu.shape[1:])[1]  # (columns, rows), as OpenCV takes sizes
        self.theta = VIEWS
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, k: int) -> np.ndarray:
        import cv2
        from skimage.transform import radon

        k = min(max(k, 0), len(self.hu) - 1)  # beyond the series: its last slice
        if k not in self._cache:
            mu = MU_WATER * cv2.resize(self.hu[k], self.small, interpolation=cv2.INTER_AREA) / 1000.0
            self._cache[k] = radon(mu, self.theta, circle=False)  # line integrals per pixel (water's share cancels)
        return self._cache[k]

    def motion_error(self, k: int, shift: np.ndarray) -> np.ndarray:
        """HU change of slice ``k`` when view j sees the anatomy ``shift[j]`` slices further up."""
        import cv2

        for old in [i for i in self._cache if i < k]:  # slices are visited upwards and read only at or above k
            del self._cache[old]
        own = self[k]
        moved = np.empty_like(own)
        for j, d in enumerate(shift):
            k0, t = k + int(np.floor(d)), d - np.floor(d)
            moved[:, j] = (1.0 - t) * self[k0][:, j] + t * self[k0 + 1][:, j]
        d_hu = fbp_error(moved - own, self.theta, (self.small[1], self.small[0]))
        return cv2.resize(d_hu, self.hu.shape[:0:-1], interpolation=cv2.INTER_LINEAR)
