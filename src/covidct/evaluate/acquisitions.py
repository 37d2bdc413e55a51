"""Acquisitions simulated on a whole HU series (models, not scans): a CT pulmonary angiography, a gapped series and a
reconstruction field of view wider than the body.

COVID-19 patients are very often scanned as CT pulmonary angiography (CTPA: pulmonary arteries at 250-500 HU) to rule
out embolism. Inside the lung the enhanced vessels' partial-volume shells are denser than in an unenhanced scan, which
an HU lesion rule could take for ground glass (:func:`contrast_enhanced_simulated`). An incremental or sequential
acquisition, or a subset of a series' slices, gives slices thinner than their spacing (:func:`gapped_slices`). No such
series is in ../shared, so these stand in. Large patients and patients scanned with their arms down are reconstructed
on fields of 450-550 mm, where the chest is small in the image (:func:`wide_field_simulated`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from covidct.evaluate.hu_volumes import hu_lung_reference, outside_circle

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


def wide_field_simulated(ct, size: int, noise_hu: float | None = None, seed: int = 0):
    """``ct`` reconstructed on a ``size``² field at the same pixel size: its slices centred in air inside the field's
    reconstruction circle (-1000 HU with ``noise_hu`` of noise, by default the series' own in the air above the body,
    else 10 HU; clipped at -1024 HU as scanners store it), and outside the circle the series' own value for outside its
    circle (its minimum, at most -1024 HU). Pixels below -1100 HU (outside the series' own circle) become that air too.
    The affine follows."""
    z, h, w = ct.shape
    if size < max(h, w):
        raise ValueError(f"a {size}² field cannot hold {h}x{w} slices")
    hu = ct.array
    band = hu[:, 5:25, w // 4 : w - w // 4]  # above the body, where it leaves air there
    air = band[(band > -1100) & (band < -900)]
    noise = noise_hu if noise_hu is not None else float(np.std(air)) if air.size > 100 else 10.0
    rng = np.random.default_rng(seed)
    out = np.clip(rng.normal(-1000.0, noise, (z, size, size)), -1024, None).astype(np.float32)
    out[:, outside_circle(size, size)] = min(float(hu.min()), -1024.0)
    y0, x0 = (size - h) // 2, (size - w) // 2
    part = out[:, y0 : y0 + h, x0 : x0 + w]
    inside = hu >= -1100
    part[inside] = hu[inside]
    affine = ct.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([x0, y0, 0.0])  # affine indices are (x, y, z)
    return dataclasses.replace(ct, array=out, affine=affine, source_shape=None, path=f"{ct.path}@field{size}")
