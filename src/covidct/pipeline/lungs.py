"""Lungs stage: the lung model (or the HU / k-means fallback), 3-D cleaning, and the left/right split.

The shipped ``lungs`` model runs on every slice that can contain lung (for HU input, slices whose
HU-threshold lung field is not empty, ± a margin; on thin HU series every other one of them, the probability
between interpolated: :func:`covidct.pipeline.predict.network_slices`); the mask is then cleaned in 3-D (airways
and gut gas removed, small components dropped, holes filled slice by slice so that dense lesions at the lung
border stay inside; on HU volumes also the trachea, traced down from the neck) and split into left and right,
also when the two lungs touch (erosion until two seeds separate, then a watershed).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covidct import components
from covidct.labels import LEFT_LUNG, RIGHT_LUNG
from covidct.pipeline import hu_rules
from covidct.pipeline.morphology import dilate_mm, grow_box, in_plane, in_plane_opening, radius_vox
from covidct.pipeline.predict import ModelRunner, interpolate_slices, network_slices
from covidct.pipeline.types import LoadedModel
from covidct.preprocess import (
    IN_PLANE,
    body_plane_box,
    bounding_box,
    component_sizes,
    cut_lung_beyond,
    fill_holes_in_plane,
    inner_components,
    threshold_lung_mask,
)
from covidct.volume import CT


def segment_lungs(ct: CT, model: LoadedModel | None, runner: ModelRunner) -> np.ndarray:
    """(z, y, x) uint8: 0 background, 1 left lung, 2 right lung."""
    vol = ct.array
    if ct.is_hu:
        field_mask = threshold_lung_mask(vol)
        counts = field_mask.reshape(len(vol), -1).sum(1)
        candidates = np.flatnonzero(counts > 0.002 * vol[0].size)
        if candidates.size == 0:
            return np.zeros(vol.shape, np.uint8)
        lo, hi = _beyond_the_cut(vol, field_mask, int(candidates.min()), int(candidates.max()))
        lo, hi = max(lo - 2, 0), min(hi + 2, len(vol) - 1)
        idx = np.arange(lo, hi + 1)
    else:
        field_mask = None
        idx = np.arange(len(vol))
    mask = np.zeros(vol.shape, bool)
    if model is not None:
        run = network_slices(idx, ct)
        prob = runner.probabilities(model, vol, run, ct.is_hu, ct.spacing, "lungs", channel=1, ahead_zs=idx)
        if len(run) < len(idx):
            prob = interpolate_slices(prob, run, idx)
        thr = (model.info.get("thresholds") or {}).get("foreground", 0.5)
        mask[idx] = prob >= thr
        del prob  # 39 MB for P001, not needed during the post-processing (the lesion network may be running beside it)
        if ct.is_hu:  # lungs are air-filled: nothing denser than soft tissue at the lung edge
            mask &= vol < 200
    elif field_mask is not None:
        mask = field_mask
    else:  # display intensities and no model: the papers' k-means lung field, slice by slice
        from covidct.preprocess import kmeans_lung_mask

        mask = np.stack([kmeans_lung_mask(s, erosion=1, dilation=1) for s in vol])
    if ct.is_hu:
        mask = remove_air_pockets(mask, vol, ct.spacing)
    mask = clean_lung_mask(mask, ct.spacing)
    if model is not None and hu_rules.applies(ct.is_hu, ct.n_slices):
        # the model's mask made consistent with the HU image: aerated lung it missed added, leaks into the
        # neck, mediastinum and abdomen removed. Holes are not filled slice by slice again: where the lungs
        # (or a leak) enclose the mediastinum in a slice, that fill put it back (P001: 3.4 -> 18.1 mL);
        # hu_lungs fills only holes enclosed in 3-D as well.
        mask = keep_lung_components(hu_rules.hu_lungs(vol, ct.spacing, mask))
    if hu_rules.applies(ct.is_hu, ct.n_slices):  # a whole HU volume: there may be a neck to trace it from
        mask = drop_trachea(mask, vol, ct.spacing)
    return split_left_right(mask, ct.spacing, vol if ct.is_hu else None)


AIR_HU = -920.0  # pure air after partial-volume averaging on the working grid


def _beyond_the_cut(vol: np.ndarray, field: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """The lung slices ``lo``..``hi`` of the HU lung field, extended over the slices where a tight field of view cuts
    the lungs (:func:`covidct.preprocess.cut_lung_beyond`): there the field finds no lung (P001 cropped 12 % each
    side: only slices 68-147 of 148, so 43 % of its lung went unanalysed)."""
    least = 0.002 * vol[0].size
    if lo > 0:
        below = np.flatnonzero(cut_lung_beyond(vol, field, lo, -1).reshape(lo, -1).sum(1) > least)
        lo = int(below.min()) if below.size else lo
    if hi < len(vol) - 1:
        above = np.flatnonzero(cut_lung_beyond(vol, field, hi, 1).reshape(len(vol) - 1 - hi, -1).sum(1) > least)
        hi = hi + 1 + int(above.max()) if above.size else hi
    return lo, hi


def remove_air_pockets(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], min_mm: float = 6.0) -> np.ndarray:
    """Drop what a lung model may mistake for lung: airways, gut gas, small airless blobs.

    Lung parenchyma is about -850 HU with vessels running through it; the trachea, main bronchi and
    gas in the stomach or bowel are homogeneous air (below about -920 HU even after block averaging). Air regions that survive an
    in-plane opening of about ``min_mm`` are removed with a ~3 mm rim (their partial-volume walls).
    Small in-plane pieces (< 10 cm²) that are mostly airless (under 25 % of voxels below -600 HU)
    are soft tissue next to the lung (e.g. around the trachea) and are dropped too; large airless
    pieces are kept, since a consolidated lobe is airless and still lung. Bullae enclosed by lung
    come back with the hole filling of :func:`clean_lung_mask`.
    """
    r = max(1, int(round(min_mm / 2 / min(spacing[1], spacing[2]))))
    rim = max(1, int(round(3.0 / min(spacing[1], spacing[2]))))
    # Everything below stays within the mask's bounding box grown by the 10 mm of the air search plus the
    # in-plane reach of the opening and the rim: work on that block (exact, as in dilate_mm).
    box = bounding_box(mask)
    if box is None:
        return np.zeros(mask.shape, bool)
    grow = np.add(radius_vox(mask.shape, spacing, 10.0), (0, max(r, rim, 1), max(r, rim, 1)))
    box = grow_box(box, grow, mask.shape)
    result = np.zeros(mask.shape, bool)
    result[box] = _remove_air_pockets(mask[box], hu[box], spacing, r, rim)
    return result


TRACHEA_HU = -800.0  # the tracheal lumen on the working grid (streaks at the thoracic inlet lift it to about -900)
TRACHEA_CM2 = (0.5, 6.0)  # its cross-section: an adult trachea is 1.3-2.5 cm across


def trachea_from_neck(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The trachea traced down from the slice above the lung mask to the carina: (z, y, x) bool.

    Seeds: air inside the body (below ``TRACHEA_HU``, not touching the slice's edge) of a trachea's cross-section
    near the lungs' midline in the slice just above the mask. Each seed goes down one slice at a time while exactly
    one such air region of a trachea's size overlaps it; it stops where it divides (the carina), grows (it has met
    lung) or ends. Nothing is traced without a slice above the mask (a scan that starts below the apex)."""
    out = np.zeros(mask.shape, bool)
    zs = np.flatnonzero(mask.reshape(len(mask), -1).any(1))
    if zs.size == 0 or zs[-1] + 1 >= len(mask):
        return out
    px_cm2 = spacing[1] * spacing[2] / 100.0
    plane = body_plane_box(hu[zs[0]:zs[-1] + 2], TRACHEA_HU)  # each slice is labelled on the body's box only
    if plane is None:
        return out
    xs = np.flatnonzero(mask[:, plane[0], plane[1]].any(axis=(0, 1)))
    if xs.size == 0:
        return out
    mid, half = 0.5 * (xs[0] + xs[-1]), 0.5 * (xs[-1] - xs[0])
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def regions(z: int) -> tuple[np.ndarray, np.ndarray]:
        if z not in seen:  # each slice labelled once, whichever seed comes down to it
            lbl, n = components.label(inner_components((hu[z][plane] < TRACHEA_HU)[None])[0])
            seen[z] = lbl, np.bincount(lbl.ravel(), minlength=n + 1) * px_cm2
        return seen[z]

    lbl, area = regions(int(zs[-1]) + 1)
    for i in np.flatnonzero((area[1:] >= TRACHEA_CM2[0]) & (area[1:] <= TRACHEA_CM2[1])) + 1:
        cur = lbl == i
        if abs(np.flatnonzero(cur.any(0)).mean() - mid) > 0.25 * half:
            continue
        for z in range(int(zs[-1]), int(zs[0]) - 1, -1):
            below, size = regions(z)
            hit = np.unique(below[cur])
            hit = hit[hit > 0]
            if len(hit) != 1 or not TRACHEA_CM2[0] <= size[hit[0]] <= TRACHEA_CM2[1]:
                break
            cur = below == hit[0]
            out[z][plane] |= cur
    return out


def drop_trachea(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], wall_mm: float = 3.0) -> np.ndarray:
    """``mask`` without the trachea traced from the neck (:func:`trachea_from_neck`) and its ``wall_mm`` wall.

    Why: the air of the trachea is not always dark enough to be taken out as an air pocket (normal001 at the
    thoracic inlet: -900 to -930 HU), and where its wall reads below -320 HU beside the lung (partial volume on the
    working grid) the HU-consistent lungs join its lumen to the lung as aerated lung (P001, cap001, LIDC-IDRI-0001:
    12-15 slices of it, 6-9 mL). The neck's air tube, followed down, is the trachea whatever its density."""
    trachea = trachea_from_neck(mask, hu, spacing)
    if not trachea.any():
        return mask
    wall = max(1, int(round(wall_mm / min(spacing[1], spacing[2]))))
    return mask & ~in_plane("dilate", trachea, np.ones((3, 3), bool), iterations=wall)


def _remove_air_pockets(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], r: int, rim: int) -> np.ndarray:
    out = mask.copy()
    # all air of the slice: a lumen the model left out still has a wall the model may have kept
    air = (hu < AIR_HU) & dilate_mm(mask, spacing, 10.0)
    if air.any():
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        solid_air = in_plane_opening(air, yy**2 + xx**2 <= r * r)  # slice by slice, as scipy's with (1, k, k)
        if solid_air.any():
            out &= ~in_plane("dilate", solid_air, np.ones((3, 3), bool), iterations=rim)
    px_cm2 = spacing[1] * spacing[2] / 100.0
    lbl, n = ndimage.label(out, structure=IN_PLANE)  # each slice's pieces, numbered across the volume
    if n:
        count = component_sizes(lbl, out, n)
        frac = np.bincount(lbl[out], weights=hu[out] < -600, minlength=n + 1) / np.maximum(count, 1)
        bad = (count * px_cm2 < 10.0) & (frac < 0.25)
        bad[0] = False
        out[bad[lbl]] = False
    return in_plane_opening(out, np.ones((3, 3), bool))


def clean_lung_mask(mask: np.ndarray, spacing: tuple[float, float, float], min_fraction: float = 0.05) -> np.ndarray:
    """Keep the large 3-D components (the lungs), fill holes slice by slice (keeps dense border lesions)."""
    return keep_lung_components(mask, min_fraction, fill_in_plane=True)


def keep_lung_components(mask: np.ndarray, min_fraction: float = 0.05, fill_in_plane: bool = False) -> np.ndarray:
    """The 3-D components of ``mask`` of at least ``min_fraction`` of the largest (the lungs), holes filled
    slice by slice when ``fill_in_plane``."""
    box = bounding_box(mask, margin=1)
    if box is None:
        return mask
    lbl, n = components.label(mask[box])
    sizes = component_sizes(lbl, mask[box], n)
    keep = sizes >= max(sizes.max() * min_fraction, 1)
    sub = keep[lbl]
    out = np.zeros_like(mask)
    out[box] = fill_holes_in_plane(sub) if fill_in_plane else sub
    return out


def split_left_right(mask: np.ndarray, spacing: tuple[float, float, float], hu: np.ndarray | None = None) -> np.ndarray:
    """Label a lung mask 1 (patient's left = larger x) / 2 (right), also when the lungs touch. With the HU volume
    (``hu``), a mask that is one lung (the other removed, collapsed or airless) is labelled by the side of the body's
    midline it lies on, rather than cut in half."""
    out = np.zeros(mask.shape, np.uint8)
    box = bounding_box(mask, margin=1)
    if box is None:
        return out
    mid = None if hu is None else _body_midline(hu, mask)
    out[box] = _split_left_right(mask[box], spacing, None if mid is None else mid - box[2].start)
    return out


ONE_SIDE_SHARE = 0.8  # a lung mask this much on one side of the body's midline is one lung


def _body_midline(hu: np.ndarray, mask: np.ndarray) -> float | None:
    """The x of the body's midline: the median over the lung slices of the centroid column of tissue denser than
    -500 HU (body, table, arms: left-right symmetric about the patient, unlike a lung mask of one lung)."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    mids = []
    for z in zs[:: max(1, len(zs) // 16)]:  # a few slices are enough for a centroid
        counts = np.count_nonzero(hu[z] > -500.0, axis=0)
        if counts.sum():
            mids.append(float(np.dot(counts, np.arange(len(counts))) / counts.sum()))
    return float(np.median(mids)) if mids else None


def _side_of(mask: np.ndarray, mid: float) -> int:
    """LEFT_LUNG / RIGHT_LUNG when ``mask`` lies at least ``ONE_SIDE_SHARE`` on that side of column ``mid`` (x runs to
    the patient's left), else 0."""
    counts = np.count_nonzero(mask, axis=(0, 1))
    left = float(counts[np.arange(len(counts)) > mid].sum()) / max(float(counts.sum()), 1.0)
    return LEFT_LUNG if left >= ONE_SIDE_SHARE else RIGHT_LUNG if left <= 1.0 - ONE_SIDE_SHARE else 0


def _split_left_right(mask: np.ndarray, spacing: tuple[float, float, float], mid: float | None = None) -> np.ndarray:
    out = np.zeros(mask.shape, np.uint8)
    seeds = _two_seeds(mask)
    if seeds is not None and mid is not None and (_mean_x(seeds[0]) > mid) == (_mean_x(seeds[1]) > mid):
        seeds = None  # two pieces of one lung, both on one side of the body
    side = _side_of(mask, mid) if seeds is None and mid is not None else 0
    if side:  # one lung
        out[mask] = side
        return out
    if seeds is None:  # one blob that erosion could not split: cut at the midline of each slice
        xs = np.nonzero(mask)[2]
        mid = 0.5 * (xs.min() + xs.max())
        xx = np.arange(mask.shape[2])[None, None, :]
        out[mask & (xx >= mid)] = LEFT_LUNG
        out[mask & (xx < mid)] = RIGHT_LUNG
        return out
    a, b = seeds
    left, right = (a, b) if _mean_x(a) > _mean_x(b) else (b, a)
    # A 3-D component of the mask that holds seeds of one side only is all that side: the watershed floods it
    # from them and nothing else reaches it (it floods along the same 6-connectivity as ndimage.label). Only a
    # component holding both sides' seeds (lungs touching) needs the distance transform and the watershed, on
    # its own bounding box. Its distances are the same there: the voxel beside any of its voxels towards
    # another component is background. Lungs apart after the HU rule removed the airways then cost a labelling;
    # P001's touch, and still need the watershed. Same labels on every case of benchmarks/exact_outputs.py.
    lbl, n = components.label(mask)
    has_left = np.bincount(lbl[left], minlength=n + 1) > 0  # the seeds lie in the mask: label 0 never counts
    has_right = np.bincount(lbl[right], minlength=n + 1) > 0
    side = np.where(has_left & ~has_right, LEFT_LUNG, np.where(has_right & ~has_left, RIGHT_LUNG, 0))
    out = side.astype(np.uint8)[lbl]
    both = has_left & has_right
    if both.any():
        region = both[lbl]
        box = bounding_box(region, margin=1)
        out[box] = np.where(region[box], _watershed(region[box], left[box] & region[box], right[box] & region[box],
                                                    spacing), out[box])
    return out


def _watershed(mask: np.ndarray, left: np.ndarray, right: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Left/right labels of ``mask`` flooded from the two seeds along the distance to the background."""
    from skimage.segmentation import watershed

    from covidct.pipeline.morphology import distance_in_plane

    markers = np.zeros(mask.shape, np.int32)
    markers[left] = LEFT_LUNG
    markers[right] = RIGHT_LUNG
    # in-plane distance, as the seeds come from in-plane erosion: where the lungs touch (the junction lines) it is
    # the slice that separates them; 3-D distances gave the same sides to within 0.03 % of the voxels, in 1.0 s
    # against 0.6 s on P001's working grid (docs/BENCHMARKS.md, thirteenth session)
    dist = distance_in_plane(mask, spacing)
    # Seed voxels whose 6 neighbours are all seed voxels never label anything (the flood only spreads to
    # unlabelled neighbours): left out of the flood and labelled directly, they spare the watershed
    # about 60 % of its heap (P001: 0.50 -> 0.15 s). Same labels on every case of benchmarks/exact_outputs.py;
    # only two seed voxels of equal depth competing for one voxel could pop in another order (ties of the heap)
    inert = ndimage.binary_erosion(markers > 0, border_value=1)
    markers[inert] = 0
    lab = watershed(-dist, markers, mask=mask & ~inert)
    lab[inert] = np.where(left[inert], LEFT_LUNG, RIGHT_LUNG)
    return lab.astype(np.uint8)


def _mean_x(mask: np.ndarray) -> float:
    """Mean x index of the voxels of a (z, y, x) mask: ``np.nonzero(mask)[2].mean()`` from column counts (the
    same number: integer sums are exact in float64), without the index arrays."""
    counts = np.count_nonzero(mask, axis=(0, 1))
    return float(np.dot(counts, np.arange(len(counts))) / counts.sum())


def _two_seeds(mask: np.ndarray, max_iter: int = 12) -> tuple[np.ndarray, np.ndarray] | None:
    """Two big components of the mask, eroding (in-plane) until the lungs separate."""
    structure = IN_PLANE  # erode within each slice only
    cur = mask
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    spread = int(cols[-1] - cols[0]) + 1 if cols.size else 1  # the mask's x extent
    for _ in range(max_iter + 1):
        lbl, n = components.label(cur)
        if n >= 2:
            sizes = component_sizes(lbl, cur, n)
            order = np.argsort(sizes)[::-1]
            if sizes[order[1]] >= 0.15 * sizes[order[0]]:
                a, b = lbl == order[0], lbl == order[1]
                if abs(_mean_x(a) - _mean_x(b)) > 0.15 * spread:
                    return a, b
        cur = in_plane("erode", cur, structure[1])
        if not cur.any():
            return None
    return None
