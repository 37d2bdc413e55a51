"""Refusing data no CT can be, for every reader (``load_ct`` runs :func:`check_plausible` last).

Rules (each refusal is :class:`covidct.errors.ImplausibleImage`, exit code 11, one line naming the problem):

* non-finite voxels (NaN/Inf): more than ``MAX_NONFINITE_FRACTION`` of the volume -> refused; fewer (e.g. a
  converter's NaN padding outside the scan circle) -> set to the lowest finite value, with a warning;
* a constant volume (every voxel one value): nothing to analyse;
* a header declaring more than ``MAX_VOXELS`` voxels (or none) is refused before reading
  (:func:`check_size`, ``UnsupportedInput``, exit 5);
* intensities no CT scale has: when more than ``MAX_OUTLIER_FRACTION`` of the voxels lie outside
  ``PLAUSIBLE_RANGE`` (HU scales span about -1024..3071, extended scales about -10000..30000; 8/16-bit
  display images 0..65535), the data are not a CT image (wrong rescale, raw floats, corrupt header).
"""

from __future__ import annotations

import math
import os

import numpy as np

from covidct.errors import ImplausibleImage, UnsupportedInput
from covidct.volume import CT

MAX_NONFINITE_FRACTION = 0.5
PLAUSIBLE_RANGE = (-1.0e4, 1.0e5)
MAX_OUTLIER_FRACTION = 0.01
# Largest volume read (voxels; 4 bytes each in memory): 1024^3 ~ 4 GiB; a chest CT is ~0.1-0.3 G voxels.
MAX_VOXELS_ENV = "COVIDCT_MAX_VOXELS"
MAX_VOXELS = 1024**3


def check_size(shape: tuple[int, ...], shown: str) -> None:
    """Refuse, before reading, a volume whose header declares a non-positive size or more than
    ``MAX_VOXELS`` voxels (``COVIDCT_MAX_VOXELS`` overrides): ``UnsupportedInput``."""
    if any(int(s) <= 0 for s in shape):
        raise UnsupportedInput(f"{shown}: the header declares an empty volume of shape {tuple(shape)}")
    limit = int(float(os.environ.get(MAX_VOXELS_ENV) or MAX_VOXELS))
    n = math.prod(int(s) for s in shape)
    if n > limit:
        raise UnsupportedInput(f"{shown}: the header declares {n:,} voxels {tuple(shape)}, more than the limit "
                               f"{limit:,} ({MAX_VOXELS_ENV})")


def finite_or_refuse(data: np.ndarray, shown: str, warnings: list[str]) -> np.ndarray:
    """``data`` with its few non-finite voxels set to the lowest finite value (warned about); raises
    ``ImplausibleImage`` when most voxels are NaN/Inf. May modify ``data`` in place."""
    bad = ~np.isfinite(data)
    n_bad = int(np.count_nonzero(bad))
    if not n_bad:
        return data
    frac = n_bad / data.size
    if frac > MAX_NONFINITE_FRACTION:
        what = "every voxel is" if n_bad == data.size else f"{100 * frac:.0f} % of the voxels are"
        raise ImplausibleImage(f"{shown}: {what} NaN or infinite; not a CT image")
    low = float(np.min(data[~bad]))
    if not data.flags.writeable:
        data = data.copy()
    data[bad] = low
    warnings.append(f"{n_bad} NaN/Inf voxel(s) ({100 * frac:.2g} %) were set to the lowest value {low:g}")
    return data


def check_plausible(ct: CT) -> CT:
    """Refuse a loaded volume no CT can be (see the module docstring); returns ``ct`` (fixed in place when a
    few voxels were NaN/Inf)."""
    shown = ct.path or "input"
    arr = finite_or_refuse(ct.array, shown, ct.warnings)
    ct.array = arr
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise ImplausibleImage(f"{shown}: every voxel has the same value {lo:g}; an empty or blank image, not a CT")
    if lo < PLAUSIBLE_RANGE[0] or hi > PLAUSIBLE_RANGE[1]:
        outside = int(np.count_nonzero((arr < PLAUSIBLE_RANGE[0]) | (arr > PLAUSIBLE_RANGE[1])))
        frac = outside / arr.size
        if frac > MAX_OUTLIER_FRACTION:
            raise ImplausibleImage(
                f"{shown}: {100 * frac:.0f} % of the voxels lie outside {PLAUSIBLE_RANGE[0]:g}..{PLAUSIBLE_RANGE[1]:g} "
                f"(range {lo:.3g}..{hi:.3g}): intensities no CT has (wrong rescale slope/intercept or not an image)"
            )
        ct.warnings.append(f"{outside} voxel(s) lie outside any CT scale ({lo:.3g}..{hi:.3g}); check the input")
    return ct
