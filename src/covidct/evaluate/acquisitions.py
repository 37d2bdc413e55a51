"""Acquisitions simulated on a whole HU series (models, not scans): a CT pulmonary angiography and a gapped series.

COVID-19 patients are very often scanned as CT pulmonary angiography (CTPA: pulmonary arteries at 250-500 HU) to rule
out embolism. Inside the lung the enhanced vessels' partial-volume shells are denser than in an unenhanced scan, which
an HU lesion rule could take for ground glass (:func:`contrast_enhanced_simulated`). An incremental or sequential
acquisition, or a subset of a series' slices, gives slices thinner than their spacing (:func:`gapped_slices`). No such
series is in ../shared, so these stand in.
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


def gapped_slices(ct, k: int, start: int = 0):
    """Every ``k``-th slice of ``ct`` from ``start``: slices as thick as before (``meta["slice_thickness"]``) but ``k``
    times as far apart, each keeping its own reference (file, position), so slice labels by file name still apply.
    The affine follows, so the slices keep their place."""
    affine = ct.affine.copy()
    affine[:3, 3] += ct.affine[:3, 2] * start
    affine[:3, 2] *= k
    dz, dy, dx = ct.spacing
    slices = [dataclasses.replace(s, index=i) for i, s in enumerate(ct.slices[start::k])]
    return dataclasses.replace(ct, array=np.ascontiguousarray(ct.array[start::k]), slices=slices, affine=affine,
                               spacing=(dz * k, dy, dx), source_shape=None, path=f"{ct.path}@every{k}from{start}")
