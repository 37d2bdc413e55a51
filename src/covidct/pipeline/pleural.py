"""Free pleural fluid on whole HU volumes: water-dense tissue between a lung and the inside of the rib cage.

The lesion network learnt effusion from 8-bit slices and finds little of it on whole HU series; density, thickness
and contact with the lung alone do not tell fluid from the back muscles, which on coarse voxels mix with fat to water
density and lie within a voxel of the lung (docs/BENCHMARKS.md, "Pleural fluid from Hounsfield units", thirty-seventh
session). The rib cage does: free fluid lies inside it, the muscles outside. Per slice, rays from each lung's centroid
find the lung's outer border and, beyond it, the first bone; the ribs run obliquely, so the bone of the slices within
``RIB_REACH_MM`` above and below closes the intercostal gaps, short gaps left are filled from the neighbouring rays, and
a low percentile over the neighbours drops rays that passed a gap to the scapula or an arm. Only the lateral half-plane
and the back up to ``MEDIAL_DEG`` towards the spine are searched: the heart, aorta and oesophagus lie medially.
Fluid is a pixel whose 3x3 median is water-dense (a thin layer's pixels beside the lung keep their density); an
in-plane opening of ``OPEN_MM`` (measured in mm, whatever the pixel size) decides where fluid is, and the candidates it
touches come back whole (opening by reconstruction: a layer's thin ends and rims). The candidates then pass the
effusion checks of covidct.pipeline.lesions (size, contact, dependent, lower half, one side). The same rays find the
denser tissue there (up to ``DENSE_HU``: airless lung or a dense effusion), which the lesion stage measures for a
warning only. Measured in docs/BENCHMARKS.md, "Pleural fluid inside the rib cage" (forty-first session) and "Small
pleural effusions" (forty-second).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covidct.pipeline.morphology import in_plane_opening
from covidct.preprocess import bounding_box

BONE_HU = 200.0  # rib cortex; partial volume on 3-4 mm voxels keeps ribs above it
# simple and parapneumonic effusions 0-25 HU, skeletal muscle 40-60 HU: above 30 HU is denser than fluid (the line
# covidct.pipeline.lesions.EFFUSION_DENSE_HU takes from here)
FLUID_HU = (-20.0, 30.0)
# above the fluid range up to this: consolidated or collapsed lung (unenhanced 20-50 HU, more with contrast) or a dense
# effusion (exudate, blood); below liver and enhanced vessels' usual density
DENSE_HU = 80.0
RIB_REACH_MM = 10.0  # the bone of the slices this far above and below closes the intercostal gaps
MEDIAL_DEG = 45.0  # the back is searched up to this angle from straight back towards the spine
MAX_DEPTH_MM = 80.0  # the first bone beyond the lung border at most this far (a very large effusion's depth)
STEP_DEG, STEP_MM, REACH_MM = 3.0, 1.25, 200.0  # the rays
N_RAYS = int(round(360.0 / STEP_DEG))
GAP_DEG = 21.0  # rays without bone filled from neighbours at most this far apart
SPIKE_DEG, SPIKE_PERCENTILE, SPIKE_TOL_MM = 12.0, 20.0, 3.0  # a ray's bone at most this beyond its neighbours'
OPEN_MM = 2.0  # in-plane opening: the pleura and thin muscle between lung and rib are thinner
MIN_LUNG_MM2 = 200.0  # a lung section smaller than this on a slice casts no rays
CHUNK_SLICES = 16  # slices whose rays are cast together
# 4-connectivity within a slice only (no neighbours above or below): the opening and its reconstruction are in-plane
IN_PLANE_4 = np.pad(ndimage.generate_binary_structure(2, 1)[None], ((1, 1), (0, 0), (0, 0)))


def rib_bounded_fluid(hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(z, y, x) bool: water-dense voxels outside the lungs between each lung's outer border and the rib cage, in
    canonical orientation (x to the patient's left, y to the back) of a supine patient. ``lungs``: 1 left, 2 right."""
    return rib_bounded_tissue(hu, lungs, spacing)[0]


def rib_bounded_tissue(hu: np.ndarray, lungs: np.ndarray,
                       spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(fluid, dense), each (z, y, x) bool: the voxels outside the lungs between each lung's outer border and the rib
    cage (see :func:`rib_bounded_fluid`) that are water-dense, and those denser, up to ``DENSE_HU`` (airless lung or
    a dense effusion, which the lung mask leaves out)."""
    import cv2

    fluid_out, dense_out = np.zeros(hu.shape, bool), np.zeros(hu.shape, bool)
    zs = np.flatnonzero(lungs.reshape(len(lungs), -1).any(1))
    if zs.size == 0:
        return fluid_out, dense_out
    dz, dy, dx = spacing
    lo, hi = int(zs[0]), int(zs[-1]) + 1
    reach = int(round(RIB_REACH_MM / dz))
    b0, b1 = max(lo - reach, 0), min(hi + reach, len(hu))
    # bone within ``reach`` slices: OpenCV's dilation of the (z, y*x) view by a column (columns never mix)
    bone = (hu[b0:b1] > BONE_HU).view(np.uint8)
    bone = cv2.dilate(bone.reshape(len(bone), -1), np.ones((2 * reach + 1, 1), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0).reshape(bone.shape)[lo - b0 : hi - b0]
    bone = bone.view(bool)
    sub_hu, sub_lungs = hu[lo:hi], lungs[lo:hi]
    lung = sub_lungs > 0
    # what a ray needs, one byte per voxel (one gather per ray sample): the lung label, bone, air outside the lungs
    outside_air = (sub_hu < -500.0) & ~lung
    code = np.minimum(sub_lungs, 3).astype(np.uint8) | (bone.view(np.uint8) << 2) | (outside_air.view(np.uint8) << 3)
    # a 3x3 median in [FLUID_HU], slice by slice (no float volume kept): noise averages out, while a pixel beside the
    # lung or a rib keeps its own density (a mean mixed the pixels of a thin layer with the lung's)
    fluid = np.empty(sub_hu.shape, bool)
    dense = np.empty(sub_hu.shape, bool)
    for i, sl in enumerate(sub_hu):
        median = cv2.medianBlur(np.clip(sl, -200.0, 200.0).astype(np.float32), 3)
        fluid[i] = (median >= FLUID_HU[0]) & (median <= FLUID_HU[1])
        dense[i] = (median > FLUID_HU[1]) & (median <= DENSE_HU)
    fluid &= ~lung
    dense &= ~lung
    cand = np.zeros(fluid.shape, bool)  # each pixel is tested on its own: both kinds in one pass
    tables = _offset_tables(fluid.shape[1:], (dy, dx))
    for label, medial in ((1, -1.0), (2, 1.0)):  # the left lung's spine side is smaller x, the right's larger
        _cast(code, label, fluid | dense, (dy, dx), medial, tables, cand)
    disk = _disk(OPEN_MM, (dy, dx))
    fluid_out[lo:hi] = _opened_by_reconstruction(cand & fluid, disk)
    dense_out[lo:hi] = _opened_by_reconstruction(cand & dense, disk)
    return fluid_out, dense_out


def _opened_by_reconstruction(cand: np.ndarray, disk: np.ndarray) -> np.ndarray:
    """The in-plane opening of ``cand`` by ``disk`` decides where the tissue is; the candidates it touches in-plane
    then come back whole (a layer's thin ends, its rim against the lung and the ribs)."""
    out = np.zeros(cand.shape, bool)
    box = bounding_box(cand, margin=max(disk.shape) // 2 + 1)
    if box is None:
        return out
    within = cand[box]
    lbl, _ = ndimage.label(within, structure=IN_PLANE_4)
    kept = np.zeros(lbl.max() + 1, bool)
    kept[np.unique(lbl[in_plane_opening(within, disk)])] = True
    kept[0] = False
    out[box] = kept[lbl]
    return out


def _disk(radius_mm: float, pixel: tuple[float, float]) -> np.ndarray:
    """The pixels within ``radius_mm`` of the centre, measured in mm (at least the 4-neighbours): a radius rounded to
    whole pixels made the opening 2.5 mm on 1.27 mm pixels but 1.4 mm on 1.41 mm ones."""
    dy, dx = pixel
    radius = max(radius_mm, min(dy, dx))
    ry, rx = int(radius // dy), int(radius // dx)
    oy, ox = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return np.hypot(oy * dy, ox * dx) <= radius


def _offset_tables(shape: tuple[int, int], pixel: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """For every in-plane offset (dy, dx) from -(size - 1) to size - 1 pixels: the ray it lies on and its radius (mm)."""
    (h, w), (dy, dx) = shape, pixel
    oy, ox = np.mgrid[-h + 1 : h, -w + 1 : w]
    oy, ox = oy * dy, ox * dx
    ray_of = (np.rint(np.degrees(np.arctan2(oy, ox)) / STEP_DEG).astype(np.intp) % N_RAYS).astype(np.int16)
    return ray_of, np.hypot(oy, ox).astype(np.float32)


def _cast(code: np.ndarray, label: int, fluid: np.ndarray, pixel: tuple[float, float], medial: float,
          tables: tuple[np.ndarray, np.ndarray], cand: np.ndarray) -> None:
    """Mark in ``cand`` the ``fluid`` pixels between lung ``label`` and the ribs (``code``: the lung label in bits
    0-1, bone in bit 2, air outside the lungs in bit 3; ``tables``: :func:`_offset_tables`), a few slices at a time
    (the rays' arrays stay small)."""
    dy, dx = pixel
    ray_of, radius_of = tables
    side = (code & 3) == label
    count = side.sum(axis=(1, 2))
    zs = np.flatnonzero(count * dy * dx >= MIN_LUNG_MM2)
    if zs.size == 0:
        return
    h, w = side.shape[1:]
    n = count[zs].astype(float)
    # each slice's centroid, to the nearest voxel: every pixel's ray and radius then come from one table of offsets
    cy = np.rint((side.sum(axis=2)[zs] * np.arange(h)).sum(axis=1) / n).astype(np.int32)
    cx = np.rint((side.sum(axis=1)[zs] * np.arange(w)).sum(axis=1) / n).astype(np.int32)
    ang = np.deg2rad(np.arange(N_RAYS) * STEP_DEG)
    ux, uy = np.cos(ang), np.sin(ang)
    wedge = (ux * medial <= 0) | ((uy > 0) & (np.degrees(np.arctan2(ux * medial, uy)) <= MEDIAL_DEG))
    radii = np.arange(0.0, REACH_MM, STEP_MM)
    ray_dy = np.rint(radii[None] * uy[:, None] / dy).astype(np.int32)  # (ray, step) offsets from the centroid
    ray_dx = np.rint(radii[None] * ux[:, None] / dx).astype(np.int32)
    box = bounding_box(side.any(axis=0))  # the fluid pixels near this lung only
    my, mx = int(MAX_DEPTH_MM / dy) + 1, int(MAX_DEPTH_MM / dx) + 1
    y0, x0 = max(box[0].start - my, 0), max(box[1].start - mx, 0)
    near = fluid[:, y0 : box[0].stop + my, x0 : box[1].stop + mx]
    flat_code = code.reshape(len(code), -1)
    for at in range(0, len(zs), CHUNK_SLICES):
        z, y, x = zs[at : at + CHUNK_SLICES], cy[at : at + CHUNK_SLICES], cx[at : at + CHUNK_SLICES]
        ys = y[:, None, None] + ray_dy[None]  # (slice, ray, step)
        xs = x[:, None, None] + ray_dx[None]
        inside = (ys.view(np.uint32) < h) & (xs.view(np.uint32) < w)  # negative offsets wrap to large values
        sample = np.take_along_axis(flat_code[z], (np.clip(ys, 0, h - 1) * w + np.clip(xs, 0, w - 1)).reshape(len(z), -1),
                                    axis=1).reshape(ys.shape)
        on_lung = ((sample & 3) == label) & inside
        r_lung, r_bone = _bounds(on_lung, (sample & 4).astype(bool) & inside, (sample & 8).astype(bool) | ~inside)
        r_bone = np.where(wedge[None], _fit_ribs(r_bone, on_lung.any(axis=2)), np.nan)
        zi, py, px = np.nonzero(near[z])  # each fluid pixel against its slice's ray towards it
        off = (py + y0 - y[zi] + h - 1, px + x0 - x[zi] + w - 1)
        ray, rr = ray_of[off], radius_of[off]
        with np.errstate(invalid="ignore"):
            hit = (rr > r_lung[zi, ray]) & (rr < r_bone[zi, ray] - STEP_MM)
        cand[z[zi[hit]], py[hit] + y0, px[hit] + x0] = True


def _bounds(on_lung: np.ndarray, on_bone: np.ndarray, on_air: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ray (samples STEP_MM apart along the last axis): the radius of the lung's last sample, and of the first
    bone beyond it where bone comes before air (outside the body) and within MAX_DEPTH_MM (else NaN)."""
    n = on_lung.shape[-1]
    has_lung = on_lung.any(axis=-1)
    last = np.where(has_lung, n - 1 - np.argmax(on_lung[..., ::-1], axis=-1), -1)
    beyond = np.arange(n) > last[..., None]
    bone, air = on_bone & beyond, on_air & beyond
    first_bone = np.where(bone.any(axis=-1), np.argmax(bone, axis=-1), n)
    first_air = np.where(air.any(axis=-1), np.argmax(air, axis=-1), n)
    ok = has_lung & (first_bone < first_air) & ((first_bone - last) * STEP_MM <= MAX_DEPTH_MM)
    return np.where(has_lung, last * STEP_MM, np.nan), np.where(ok, first_bone * STEP_MM, np.nan)


def _fit_ribs(r_bone: np.ndarray, has_lung: np.ndarray) -> np.ndarray:
    """The rib cage's inner radius per ray (last axis, circular): gaps of at most GAP_DEG filled linearly from the
    nearest rays with bone, and a ray whose bone lies beyond its neighbours' (a gap to the scapula or an arm) brought
    back to them."""
    k = r_bone.shape[-1]
    tiled = np.concatenate([r_bone] * 3, axis=-1)  # circular: the middle copy sees both neighbours
    idx = np.arange(3 * k)
    valid = ~np.isnan(tiled)
    prev = np.maximum.accumulate(np.where(valid, idx, -1), axis=-1)
    nxt = np.minimum.accumulate(np.where(valid, idx, 3 * k)[..., ::-1], axis=-1)[..., ::-1]
    mid = slice(k, 2 * k)
    prev, nxt = prev[..., mid], nxt[..., mid]
    found = (prev >= 0) & (nxt < 3 * k)
    p, q = np.clip(prev, 0, 3 * k - 1), np.clip(nxt, 0, 3 * k - 1)
    rp, rq = np.take_along_axis(tiled, p, axis=-1), np.take_along_axis(tiled, q, axis=-1)
    span = np.maximum(q - p, 1)
    filled = rp + (rq - rp) * (idx[mid] - p) / span
    fit = np.where(np.isnan(r_bone) & found & ((q - p) * STEP_DEG <= GAP_DEG) & has_lung, filled, r_bone)
    w = int(round(SPIKE_DEG / STEP_DEG))
    window = np.sort(np.stack([np.roll(fit, s, axis=-1) for s in range(-w, w + 1)]), axis=0)  # NaN sorts last
    count = np.count_nonzero(~np.isnan(window), axis=0)
    at = np.floor(SPIKE_PERCENTILE / 100.0 * np.maximum(count - 1, 0)).astype(np.intp)
    low = np.take_along_axis(window, at[None], axis=0)[0]  # the lower of the two order statistics
    return np.where(np.isnan(fit), fit, np.fmin(fit, low + SPIKE_TOL_MM))
