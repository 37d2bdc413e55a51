"""Where each lung voxel lies, as maps on the volume's grid: depth from the chest wall, zone, AP position, dependency.

These maps are the coordinates the pattern features are measured in (covidct.pattern.features):
- ``relative_depth``: in-plane distance (mm) to the chest wall, i.e. to the outside of the thoracic
  envelope, divided by that of the deepest voxel of the same lung in the same slice. The envelope of a
  slice is the union of both lungs with each image row filled between its leftmost and rightmost lung
  voxel, so the mediastinum and hila count as inside (central), not as pleura. Relative depth is 0
  at the costal pleura, 1 at the most central (perihilar) point; the radiological "outer third" of
  the lung is ``relative_depth <= 1/3``.
- ``zone``: 0 lower, 1 middle, 2 upper third of each lung's cranio-caudal extent (z increases to the head).
- ``ap_position``: 0 at the most anterior, 1 at the most posterior lung voxel of the same lung and slice.
- ``dependent_gap``: distance (mm) to the lung voxel farthest towards the dependent side along the same line
  (covidct.volume.DEPENDENT_SIDE): for a supine patient the most posterior lung voxel of the same (slice, column),
  i.e. how far above the dependent lung edge a voxel lies; the most anterior one when prone.

Axes follow covidct.volume: (z, y, x) with z inferior -> superior, y anterior -> posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct.labels import LEFT_LUNG, RIGHT_LUNG
from covidct.preprocess import bounding_box
from covidct.volume import SUPINE


@dataclass
class LungGeometry:
    """Per-voxel position maps of a lung mask (float32, NaN outside the lungs)."""

    lungs: np.ndarray
    spacing: tuple[float, float, float]
    relative_depth: np.ndarray
    zone: np.ndarray  # int8, -1 outside the lungs
    ap_position: np.ndarray
    dependent_gap: np.ndarray

    @property
    def voxel_ml(self) -> float:
        dz, dy, dx = self.spacing
        return dz * dy * dx / 1000.0


def thoracic_envelope(lung_slice: np.ndarray) -> np.ndarray:
    """Both lungs of one slice with each row filled between its outermost lung voxels (mediastinum inside)."""
    rows = lung_slice.any(axis=1)
    if not rows.any():
        return lung_slice.copy()
    x = np.arange(lung_slice.shape[1])
    first = np.where(lung_slice, x, lung_slice.shape[1]).min(axis=1)
    last = np.where(lung_slice, x, -1).max(axis=1)
    return (x[None, :] >= first[:, None]) & (x[None, :] <= last[:, None])


def lung_geometry(lungs: np.ndarray, spacing: tuple[float, float, float],
                  dependent: tuple[int, int] = SUPINE) -> LungGeometry:
    """Compute the position maps of ``lungs`` (0 background, 1 left, 2 right) on its own grid; ``dependent``: the
    (axis, sign) of the side gravity pulls to (covidct.volume.dependent_side; supine by default)."""
    lungs = np.asarray(lungs)
    dz, dy, dx = (float(s) for s in spacing)
    inside = lungs > 0
    nan = np.float32(np.nan)
    rel = np.full(lungs.shape, nan, np.float32)
    ap = np.full(lungs.shape, nan, np.float32)
    y = np.arange(lungs.shape[1], dtype=np.float32)[:, None]
    for k in np.flatnonzero(inside.reshape(len(lungs), -1).any(axis=1)):
        # on the slice's lung box: the envelope lies within it and the padded ring around it is outside the
        # envelope, so the distances are those of the whole slice (tests/test_pattern.py checks it)
        box = bounding_box(inside[k])
        env = thoracic_envelope(inside[k][box])
        # distance of every envelope pixel to the nearest pixel outside it (the chest wall side)
        d = ndimage.distance_transform_edt(np.pad(env, 1), sampling=(dy, dx))[1:-1, 1:-1].astype(np.float32)
        yb = y[box[0]]
        for lab in (LEFT_LUNG, RIGHT_LUNG):
            m = lungs[k][box] == lab
            if not m.any():
                continue
            rel[k][box][m] = d[m] / max(float(d[m].max()), 1e-6)
            rows = np.flatnonzero(m.any(axis=1)) + box[0].start
            ap[k][box][m] = np.broadcast_to((yb - rows[0]) / max(rows[-1] - rows[0], 1), m.shape)[m]

    gap = _dependent_gap(inside, (dz, dy, dx), dependent)
    zone = np.full(lungs.shape, -1, np.int8)
    for lab in (LEFT_LUNG, RIGHT_LUNG):
        zs = np.flatnonzero((lungs == lab).reshape(len(lungs), -1).any(axis=1))
        if zs.size == 0:
            continue
        edges = np.floor(np.linspace(zs.min(), zs.max() + 1, 4)).astype(int)
        for z_idx, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            sl = zone[a:b]
            sl[lungs[a:b] == lab] = z_idx
    return LungGeometry(lungs=lungs, spacing=(dz, dy, dx), relative_depth=rel, zone=zone,
                        ap_position=ap, dependent_gap=gap)


def _dependent_gap(inside: np.ndarray, spacing: tuple[float, float, float], dependent: tuple[int, int]) -> np.ndarray:
    """Distance (mm) of each lung voxel from the farthest lung voxel towards the dependent side on its line along
    the dependent axis (NaN outside the lungs)."""
    axis, sign = dependent
    m = np.moveaxis(inside, axis, 1)  # the dependent axis second, as y is for a supine patient
    if sign < 0:
        m = m[:, ::-1]
    n = m.shape[1]
    idx = np.arange(n, dtype=np.float32)[None, :, None]
    far = n - 1 - np.argmax(m[:, ::-1, :], axis=1)  # the last lung voxel of each line
    gap = (far[:, None, :] - idx) * np.float32(spacing[axis])
    gap = np.where(m & m.any(axis=1)[:, None, :], gap, np.float32(np.nan)).astype(np.float32)
    if sign < 0:
        gap = gap[:, ::-1]
    return np.ascontiguousarray(np.moveaxis(gap, 1, axis))
