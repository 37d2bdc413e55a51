"""Millimetre-sized dilation on the mask's bounding box only, shared by the lung and lesion stages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from covidct.preprocess import bounding_box


def radius_vox(shape: tuple[int, ...], spacing: tuple[float, float, float], mm: float) -> tuple[int, int, int]:
    """``mm`` in whole voxels along each axis (none across the slices of a single slice)."""
    r = tuple(max(int(round(mm / s)), 0) for s in spacing)
    return (0, *r[1:]) if shape[0] == 1 else r


def grow_box(box: tuple[slice, ...], grow: Sequence[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``grow[axis]`` voxels on each side, clipped to ``shape``."""
    return tuple(slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(box, grow, shape, strict=True))


def dilate_mm(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    """Dilate by about ``mm`` millimetres (anisotropic voxels respected)."""
    r = radius_vox(mask.shape, spacing, mm)
    if not any(r):
        return mask.copy()
    # Only the mask's bounding box grown by r can change, so filter just that block (the lungs fill a
    # fraction of the volume). Exact: the block's edges are either the volume's own edges or at least r
    # voxels of background away from the mask, where the filter's reflected border sees background too.
    box = bounding_box(mask)
    if box is None:
        return np.zeros(mask.shape, bool)
    box = grow_box(box, r, mask.shape)
    # a box of rank-1 passes is cheaper than a ball and close enough for a margin
    block = mask[box].astype(np.uint8)
    for axis, ri in enumerate(r):
        if ri:
            size = [1, 1, 1]
            size[axis] = 2 * ri + 1
            block = ndimage.maximum_filter(block, size=tuple(size))
    out = np.zeros(mask.shape, bool)
    out[box] = block
    return out
