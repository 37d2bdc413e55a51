"""A stand-in for covidct.interactive.refine, shared by the service and browser tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StandinClick:
    x: int
    y: int
    positive: bool


def standin_refine(image_hw, mask_hw, clicks, *, is_hu):
    """Disks of radius 5 added at positive clicks, the connected region under each negative click removed."""
    from scipy import ndimage

    m = np.zeros(image_hw.shape, bool) if mask_hw is None else np.asarray(mask_hw) > 0
    yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
    for c in clicks:
        if c.positive:
            m |= (yy - c.y) ** 2 + (xx - c.x) ** 2 <= 25
    for c in clicks:
        if not c.positive and m[c.y, c.x]:
            lbl, _ = ndimage.label(m)
            m &= lbl != lbl[c.y, c.x]
    return m.astype(np.uint8)
