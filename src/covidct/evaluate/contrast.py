"""Contrast enhancement simulated on a whole HU series (a model of CT pulmonary angiography, not one).

COVID-19 patients are very often scanned as CT pulmonary angiography (CTPA: pulmonary arteries at 250-500 HU) to rule
out embolism. Inside the lung the enhanced vessels' partial-volume shells are denser than in an unenhanced scan, which
an HU lesion rule could take for ground glass. No CTPA series is in ../shared, so this simulation stands in: within the
HU lung field each voxel moves towards ``contrast_hu`` by its share of blood, read from the in-plane smoothed image (so
that the noise is not amplified) between aerated lung and unenhanced blood.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from covidct.evaluate.hu_volumes import hu_lung_reference

AERATED_HU = -870.0


def contrast_enhanced_simulated(ct, contrast_hu: float, blood_hu: float = 40.0):
    """``ct`` with the blood inside its lung field at ``contrast_hu`` instead of ``blood_hu`` (the series' own blood
    pool: about 40 HU unenhanced); a voxel with a share s of blood (s from its in-plane Gaussian-smoothed value, σ one
    voxel, between -870 HU aerated lung and ``blood_hu``) gains s · (contrast_hu − blood_hu). Voxels above 150 HU
    (bone, calcium, vessels enhanced already) and everything outside the lung field stay."""
    hu = ct.array
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), (0.0, 1.0, 1.0))
    share = np.clip((smooth - AERATED_HU) / (blood_hu - AERATED_HU), 0.0, 1.0)
    inside = hu_lung_reference(hu, ct.spacing) & (hu <= 150.0)
    out = hu.astype(np.float32, copy=True)
    out[inside] += share[inside] * np.float32(contrast_hu - blood_hu)
    return dataclasses.replace(ct, array=out, path=f"{ct.path}@contrast{contrast_hu:g}")
