"""Acquisitions simulated on a whole HU series (models, not scans): a CT pulmonary angiography, a gapped series and a
reconstruction field of view wider than the body; a thin-slice acquisition of the same patient.

COVID-19 patients are very often scanned as CT pulmonary angiography (CTPA: pulmonary arteries at 250-500 HU) to rule
out embolism. Inside the lung the enhanced vessels' partial-volume shells are denser than in an unenhanced scan, which
an HU lesion rule could take for ground glass (:func:`contrast_enhanced_simulated`). An incremental or sequential
acquisition, or a subset of a series' slices, gives slices thinner than their spacing (:func:`gapped_slices`). No such
series is in ../shared, so these stand in. Large patients and patients scanned with their arms down are reconstructed
on fields of 450-550 mm, where the chest is small in the image (:func:`wide_field_simulated`). Most scanners also
reconstruct 0.6-1.25 mm slices, where a slice averages fewer photons and less tissue (:func:`thin_acquired`). Free
pleural fluid settles under gravity with a level surface (:func:`layering_effusion_simulated`).
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


def thin_acquired(ct, k: int, slice_labels: dict[str, int] | None = None, seed: int = 0):
    """``ct`` as if acquired on ``k`` times thinner slices: each slice repeated ``k`` times plus noise that is correlated
    in-plane (white noise smoothed by a Gaussian of 0.8 pixel, as a reconstruction kernel correlates it) and sums to zero
    within each group, so that the mean of a group (what a ``k`` times thicker reconstruction of the thin slices gives)
    is the original slice, and scaled so that each thin slice's lung noise (:func:`covidct.pipeline.hu_rules.lung_noise`
    on the HU lung reference) is sqrt(k) times the original's, as for a slice of 1/k the photons. A model, not a scan:
    structures keep the original slice's partial volume through-plane (a real thin slice is sharper), where
    :func:`covidct.evaluate.hu_volumes.thin_interpolated` blurs them. Returns (CT, each thin slice's label from
    ``slice_labels`` (file name -> 0/1, -1 unlabelled) or None, the original slice of each thin slice)."""
    from covidct.pipeline.hu_rules import local_spread, lung_noise
    from covidct.preprocess import IN_PLANE
    from covidct.volume import SliceRef

    z, h, w = ct.shape
    lungs = hu_lung_reference(ct.array, ct.spacing)
    noise0 = lung_noise(ct.array, lungs)
    if noise0 is None:
        raise ValueError("thin_acquired: too little aerated lung to measure the series' noise")
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((z * k, h, w), dtype=np.float32), (0.0, 0.8, 0.8))
    groups = field.reshape(z, k, h, w)
    groups -= groups.mean(1, keepdims=True)
    # the lung-noise measure of the field alone (its spread against its in-plane 3x3 mean, in the eroded lung)
    core = ndimage.binary_erosion(lungs, IN_PLANE, iterations=2)[::4]
    measured = local_spread(groups[::4, 0], core)
    out = np.repeat(ct.array.astype(np.float32, copy=False), k, axis=0)
    out += field * np.float32(noise0 * np.sqrt(k - 1) / measured)
    dz, dy, dx = ct.spacing
    affine = ct.affine.copy()
    affine[:3, 3] -= ct.affine[:3, 2] * (k - 1) / (2 * k)  # the first thin slice at the bottom of the first slice
    affine[:3, 2] /= k
    nearest = np.arange(z * k) // k
    z_mm = np.array([s.z_mm for s in ct.slices] if ct.slices else np.arange(z) * dz, float)
    step = (z_mm[1] - z_mm[0]) / k if z > 1 else dz / k
    thin_z = z_mm[nearest] + (np.arange(z * k) % k - (k - 1) / 2) * step
    thin = dataclasses.replace(ct, array=out, spacing=(dz / k, dy, dx), affine=affine, kind="array", source_shape=None,
                               meta={**ct.meta, "slice_thickness": dz / k} if "slice_thickness" in ct.meta else ct.meta,
                               slices=[SliceRef(index=i, z_mm=float(v)) for i, v in enumerate(thin_z)],
                               path=f"{ct.path}@acquired1/{k}" if ct.path else None)
    if slice_labels is None:
        return thin, None, nearest
    files = [s.file.rsplit("/", 1)[-1] if s.file else None for s in ct.slices]
    native = np.array([slice_labels.get(f, -1) if f else -1 for f in files])
    return thin, native[nearest], nearest


def layering_effusion_simulated(ct, share: float, sides: tuple[str, ...] = ("right", "left"), hu: float = 10.0,
                                seed: int = 0):
    """``ct`` with free pleural fluid in each hemithorax of ``sides`` (the patient's), and that region (the truth).

    A supine patient's free fluid settles posteriorly with a level surface, a coronal plane: in each chosen side of the
    HU lung field (split at the median column of the field) the voxels behind that plane become water (``hu``, noise
    SD 10 HU), the plane placed so that the fluid takes ``share`` of that side's field. So the fluid is deepest where
    the lung reaches farthest back (the posterior costophrenic recesses) and thins out towards the apex, where a
    small effusion leaves none. The lung in front keeps its density (real fluid also compresses it). Only a model: no
    series in ../shared has an effusion. Canonical orientation: x runs to the patient's left, y to posterior."""
    unknown = set(sides) - {"right", "left"}
    if unknown:
        raise ValueError(f"sides are 'right' and/or 'left', not {sorted(unknown)}")
    arr = ct.array.astype(np.float32, copy=True)
    field = hu_lung_reference(arr, ct.spacing)
    xs = np.nonzero(field)[2]
    middle = float(np.median(xs)) if xs.size else arr.shape[2] / 2
    cols = np.arange(arr.shape[2])
    yy = np.arange(arr.shape[1])[None, :, None]
    region = np.zeros(arr.shape, bool)
    for side in sides:
        part = field & ((cols < middle) if side == "right" else (cols >= middle))[None, None, :]
        ys = np.nonzero(part)[1]
        if ys.size:
            region |= part & (yy >= np.quantile(ys, 1.0 - share))
    arr[region] = hu + np.random.default_rng(seed).normal(0.0, 10.0, int(region.sum())).astype(np.float32)
    name = "+".join(sides)
    return dataclasses.replace(ct, array=arr, path=f"{ct.path}@layering-effusion-{name}{share:g}"), region
