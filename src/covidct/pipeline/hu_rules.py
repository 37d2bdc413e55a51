"""HU-consistent lungs and infection lesions for whole HU volumes (no learning in the lesion rule).

Why: every labelled slice covidct's lesion models learned from is an 8-bit, mid-chest, infected slice;
on whole HU volumes they mark vessels, dependent lung bases and lung-mask leaks as lesions. This
module keeps to what the physics of CT says about infection (its few settings were chosen on the
HU-volume table by a rule written beforehand, leave-one-volume-out: docs/BENCHMARKS.md, "HU volumes"):
- GGO is lung denser than aerated parenchyma but not solid (from −700 HU); consolidation is solid
  (up to +150 HU; denser is calcium or contrast); typed at −300 HU;
- the lung's own border (pleura, mediastinum, diaphragm) is partial volume: a 3 mm in-plane rim is
  not scored, then lesions touching it regrow into it;
- vessels are thin tubes: 3-D openings remove structures narrower than the element, dense survivors
  shaped like a tube, or only a small share of the dense tissue around them (a vessel going on), are dropped, and
  what is left must be at least ``min_lesion_ml``.
``hu_lungs`` cleans a lung mask of leaks with the same physics: a lung voxel is air-filled lung or
lies within reach of it (lesions inside the lung are kept).

Used by the lungs and lesions stages on whole HU volumes (:func:`applies`); scored by
``benchmarks/hu_volumes.py`` (docs/BENCHMARKS.md, "HU volumes" and "HU volumes, second candidate").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidct import components
from covidct.labels import CONSOLIDATION, GGO
from covidct.pipeline.morphology import binary_3d, in_plane  # scipy's binary ops, same voxels, OpenCV speed
from covidct.preprocess import (
    IN_PLANE,
    body_plane_box,
    bounding_box,
    component_sizes,
    inner_components,
    off_corner_components,
)


@dataclass(frozen=True)
class HULesionSettings:
    ggo_hu: tuple[float, float] = (-700.0, -200.0)
    consolidation_hu: tuple[float, float] = (-200.0, 150.0)
    rim_mm: float = 3.0  # lung border not scored (partial volume with pleura/mediastinum)
    ggo_open_mm: float = 1.0  # opening of the GGO range: drops vessels and their partial-volume shells
    ggo_open_3d: bool = True  # ... in 3-D (one slice up and down), whatever the slice thickness
    consolidation_open_mm: float = 4.0  # 3-D opening of the dense range: drops vessels thinner than ~8 mm
    max_elongation: float = 3.0  # a dense component longer than 3x its width is a vessel segment
    vessel_share: float = 0.35  # a dense survivor under this share of the dense tissue near it is a vessel piece ...
    vessel_reach_mm: float = 20.0  # ... "near": within this distance
    min_lesion_ml: float = 0.2
    # opt-in: the GGO floor rises by as much as the best-aerated lung (its 1st percentile) is denser than in any volume
    # the settings were measured on (DENSEST_BEST_AERATED_HU), since after a shallow breath healthy lung is denser and
    # is not GGO. Off by default: disease over most of the lung raises that percentile too, and faint diffuse GGO was
    # then lost (simulated, 90-95 % of normal001's lung: 25-49 %; docs/BENCHMARKS.md, twentieth session)
    ggo_follows_aerated: bool = False


# The noisiest lung (lung_noise, on the working grid) among the series the settings were chosen on: cap001 23.5 HU
# (P001 21.7, normal001 22.2, LIDC-IDRI-0001 21.1; Siemens D40s and GE STANDARD kernels). A sharper kernel's noise
# breaks faint GGO into specks that the openings remove (docs/BENCHMARKS.md, eighteenth session).
SOFT_KERNEL_NOISE_HU = 24.0
# The densest best-aerated lung (aerated_lung_hu, the 10th percentile of the lung mask on the working grid) among the
# volumes the rule was measured on, rounded up to 10 HU: normal001 averaged to 6 mm slices -875.0 HU (normal001 -883.5,
# P001 -906.5, cap001 -923.8, LIDC-IDRI-0001 -923.0; phantoms -880.6 to -890.4, 50 % burden included). A shallower
# breath makes healthy lung denser and the GGO range then takes it in (docs/BENCHMARKS.md, nineteenth session).
INSPIRED_LUNG_HU = -870.0
DENSEST_AERATED_HU = -875.0  # that highest figure itself
# Where the GGO floor starts to rise (HULesionSettings.ggo_follows_aerated, off by default): the highest 1st percentile
# of the lung among the same volumes, exactly:
# normal001 averaged to 6 mm slices -900.25 HU (normal001 -912.2, P001 -935.8, cap001 -974.8, LIDC-IDRI-0001 -960.0;
# phantoms -916.3 to -919.8, 50 % burden -912.1). Not the 10th: once disease covers about 90 % of the lung the 10th
# percentile lies inside it, and a floor following it lost simulated diffuse GGO entirely (normal001, 90 % of the
# lung at about -600 HU: 3019 mL -> 0.6 mL, read normal). Following the 1st, the floor still rose 15-29 HU at 90-95 %
# cover and lost 25-49 % of the faintest GGO, so the rise is an opt-in (docs/BENCHMARKS.md, twentieth session).
BEST_AERATED_PERCENTILE = 1.0
DENSEST_BEST_AERATED_HU = -900.25
# GGO / consolidation typing (not detection): the usual -300 HU boundary between them
TYPE_BOUNDARY_HU = -300.0
# the settings chosen by issue 17's rule on the HU-volume table (docs/BENCHMARKS.md, "HU volumes")
DEFAULT = HULesionSettings()


def _sampled_lung_slices(lungs: np.ndarray, every: int) -> np.ndarray:
    """Every ``every``-th slice index that holds lung (the lung statistics need not read every slice)."""
    return np.flatnonzero((lungs > 0).reshape(len(lungs), -1).any(1))[::every]


def lung_noise(hu: np.ndarray, lungs: np.ndarray, every: int = 4) -> float | None:
    """Noise of aerated lung in HU, robust to its vessels: the spread (median absolute deviation, as a standard
    deviation) of each voxel against the mean of its in-plane 3x3 neighbourhood, over the lung (eroded two voxels
    in-plane) below -750 HU, on every ``every``-th lung slice; None with too few such voxels. For white noise the
    figure is the voxels' own noise (a voxel minus its 3x3 mean keeps 8/9 of the variance)."""
    zs = _sampled_lung_slices(lungs, every)
    if zs.size == 0:
        return None
    h = hu[zs].astype(np.float32, copy=False)
    core = in_plane("erode", lungs[zs] > 0, IN_PLANE[1], iterations=2) & (h < -750)
    if np.count_nonzero(core) < 1000:
        return None
    return local_spread(h, core)


def local_spread(h: np.ndarray, core: np.ndarray) -> float:
    """Robust spread of (z, y, x) ``h`` against its in-plane 3x3 mean over ``core``: the median absolute deviation as
    a standard deviation, scaled so that white noise gives its own (a voxel minus its 3x3 mean keeps 8/9 of the
    variance)."""
    r = (h - ndimage.uniform_filter(h, size=(1, 3, 3)))[core]
    return float(1.4826 * np.median(np.abs(r - np.median(r))) * np.sqrt(9 / 8))


def aerated_lung_hu(hu: np.ndarray, lungs: np.ndarray, every: int = 4,
                    percentile: float | tuple[float, ...] = 10.0) -> float | tuple[float, ...] | None:
    """How dense the aerated lung is: the ``percentile`` (one or several) of HU inside ``lungs`` (> 0), on every
    ``every``-th lung slice; None with too few lung voxels. A shallow breath (or an expiratory scan) makes all of the
    lung denser; disease leaves much of its most aerated part as it is, and the lower the percentile, the more of the
    lung it must cover to move it (simulated faint GGO over 90 % of normal001's lung: 10th percentile +156 HU, 1st +27 HU)."""
    zs = _sampled_lung_slices(lungs, every)
    if zs.size == 0:
        return None
    v = hu[zs][lungs[zs] > 0]
    if v.size < 1000:
        return None
    if isinstance(percentile, tuple):
        return tuple(float(np.percentile(v, q)) for q in percentile)  # one by one: the same float as alone
    return float(np.percentile(v, percentile))


def applies(is_hu: bool, n_slices: int) -> bool:
    """Whether GGO/consolidation come from the HU rule (and the lung mask is made HU-consistent): a whole
    volume in Hounsfield units. 8-bit display slices and single images keep the lesion models."""
    return is_hu and n_slices >= 3


def ellipsoid(spacing: Sequence[float], mm: float, in_plane: bool = False, min_vox: int = 0,
              min_vox_z: int = 0) -> np.ndarray:
    """Boolean ball of radius ``mm`` on an anisotropic grid (a disc in one slice when ``in_plane``). In-plane
    radii are rounded and at least ``min_vox`` (a coarse grid still gets an element that does something);
    the slice radius is never more than ``mm`` and at least ``min_vox_z``."""
    rz = 0 if in_plane else max(int(mm / spacing[0]), min_vox_z)
    ry, rx = (max(int(round(mm / s)), min_vox) for s in spacing[1:])
    zz, yy, xx = np.mgrid[-rz:rz + 1, -ry:ry + 1, -rx:rx + 1].astype(float)
    d = sum((a / max(r, 1e-9)) ** 2 if r else a * 0.0 for a, r in ((zz, rz), (yy, ry), (xx, rx)))
    return d <= 1.0 + 1e-6


def elongation(coords_mm: np.ndarray) -> float:
    """sqrt(largest / second principal variance) of a point cloud: about 1 for a blob or a sheet, large for a tube."""
    if len(coords_mm) < 4:
        return 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(coords_mm.T)))[::-1]
    return float(np.sqrt(ev[0] / max(ev[1], 1e-6)))


def drop_tubes(mask: np.ndarray, spacing: Sequence[float], max_elongation: float) -> np.ndarray:
    """Remove the 3-D components of ``mask`` shaped like a tube (vessel segments survive an opening as tubes)."""
    lbl, n = components.label(mask)
    if n == 0:
        return mask
    keep = np.zeros(n + 1, bool)
    for i, sl in enumerate(ndimage.find_objects(lbl), start=1):
        pts = np.argwhere(lbl[sl] == i) * np.asarray(spacing, float)
        keep[i] = elongation(pts) <= max_elongation
    return keep[lbl]


def drop_vessel_pieces(opened: np.ndarray, dense: np.ndarray, spacing: Sequence[float], min_share: float,
                       reach_mm: float) -> np.ndarray:
    """``opened`` (the opening of ``dense``) without components that are less than ``min_share`` of the ``dense``
    tissue within ``reach_mm`` of them. Why: as a reader scrolling through slices tells a vessel (it goes on) from a
    lesion (it starts and ends), a thick vessel's piece that survives the opening, at a bifurcation or a bend, has
    the vessel going on around it; a consolidation or a nodule is most of the dense tissue near it, however many
    vessels enter it (only the neighbourhood counts, so a lesion on a large vessel tree is not measured against
    the whole tree)."""
    if min_share <= 0 or not opened.any():
        return opened
    parts, n = components.label(opened)
    ball = ellipsoid(spacing, reach_mm)
    pad = [b // 2 for b in ball.shape]
    keep = np.zeros(n + 1, bool)
    for i, sl in enumerate(ndimage.find_objects(parts), 1):
        box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(sl, pad, strict=True))
        part = parts[box] == i
        near = binary_3d("dilate", part, ball) & dense[box]
        keep[i] = part.sum() >= min_share * max(int(near.sum()), 1)
    return keep[parts]


def drop_small_components(mask: np.ndarray, spacing: Sequence[float], min_ml: float) -> np.ndarray:
    """``mask`` without its connected components smaller than ``min_ml`` mL."""
    lbl, n = components.label(mask)
    if n == 0:
        return mask
    sizes = component_sizes(lbl, mask, n) * float(np.prod(spacing)) / 1000.0
    keep = sizes >= min_ml
    keep[0] = False
    return keep[lbl]


def hu_lesions(hu: np.ndarray, spacing: Sequence[float], lungs: np.ndarray,
               settings: HULesionSettings = DEFAULT, *, notes: dict | None = None) -> np.ndarray:
    """(z, y, x) uint8 lesion labels (0 none, 1 GGO, 2 consolidation) inside ``lungs`` (> 0) of an HU volume.
    ``notes`` (optional) receives ``lung_noise_hu`` (:func:`lung_noise`), ``aerated_lung_hu`` and
    ``best_aerated_lung_hu`` (:func:`aerated_lung_hu`, the 10th and the 1st percentile; each None where it cannot be
    measured) and ``ggo_floor_lift_hu`` (how far the GGO floor rose above ``settings.ggo_hu[0]``)."""
    out = np.zeros(hu.shape, np.uint8)
    box = bounding_box(lungs > 0, margin=2)
    if box is None:
        return out
    s = settings
    aerated, best = aerated_lung_hu(hu, lungs, percentile=(10.0, BEST_AERATED_PERCENTILE)) or (None, None)
    lift = max(0.0, best - DENSEST_BEST_AERATED_HU) if s.ggo_follows_aerated and best is not None else 0.0
    if notes is not None:
        notes.update(lung_noise_hu=lung_noise(hu, lungs), aerated_lung_hu=aerated, best_aerated_lung_hu=best,
                     ggo_floor_lift_hu=lift)
    floor = s.ggo_hu[0] + lift
    v, lung = hu[box], lungs[box] > 0
    # the border is partial volume with pleura, mediastinum and (through-plane) the diaphragm dome
    core = binary_3d("erode", lung, ellipsoid(spacing, s.rim_mm, min_vox=1, min_vox_z=1))
    ggo = core & (v > floor) & (v <= s.ggo_hu[1])
    # in 3-D also on thick slices: in-plane only, the partial volume of vessels crossing a 4-6 mm slice reads
    # as GGO (normal001 averaged to 4 / 6 mm slices: 45 / 66 mL in-plane, 3.1 / 6.7 mL in 3-D); the cost is
    # small GGO seen on fewer than three thick slices (docs/BENCHMARKS.md, "HU volumes, second candidate")
    ggo = binary_3d("open", ggo, ellipsoid(spacing, s.ggo_open_mm, in_plane=not s.ggo_open_3d, min_vox=1, min_vox_z=1))
    dense_all = core & (v > s.consolidation_hu[0]) & (v < s.consolidation_hu[1])
    dense = binary_3d("open", dense_all, ellipsoid(spacing, s.consolidation_open_mm, min_vox=1))
    dense = drop_tubes(dense, spacing, s.max_elongation)
    dense = drop_vessel_pieces(dense, dense_all, spacing, s.vessel_share, s.vessel_reach_mm)
    lesion = drop_small_components(ggo | dense, spacing, s.min_lesion_ml)
    # regrow into the unscored rim: lung voxels in the lesion density range next to a lesion
    if s.rim_mm > 0 and lesion.any():
        dense_any = lung & (v > floor) & (v < s.consolidation_hu[1])
        reach = binary_3d("dilate", lesion, ellipsoid(spacing, s.rim_mm + 1.0, min_vox=1, min_vox_z=1))
        lesion |= dense_any & reach & ~core
    sub = np.zeros(v.shape, np.uint8)
    sub[lesion & (v < TYPE_BOUNDARY_HU)] = GGO
    sub[lesion & (v >= TYPE_BOUNDARY_HU)] = CONSOLIDATION
    out[box] = sub
    return out


def _enclosed_holes(lung: np.ndarray, allowed: np.ndarray, spacing: Sequence[float], max_cm2: float) -> np.ndarray:
    """Holes of ``lung`` (within ``allowed``) that a lesion could be: enclosed in their slice, at most ``max_cm2``
    there, and enclosed in 3-D as well (the diaphragm dome or the heart, cut by a slice, are in-slice holes
    too, but they join the body outside the lung above or below)."""
    holes = inner_components(~lung) & allowed
    hl, nh = ndimage.label(holes, structure=IN_PLANE)
    if not nh:
        return holes
    small = component_sizes(hl, holes, nh) * spacing[1] * spacing[2] / 100.0 <= max_cm2
    small[0] = False
    holes = small[hl]
    outside, n3 = components.label(~lung)
    if n3:  # the largest non-lung region is the body around the lungs
        body = np.argmax(np.bincount(outside.ravel())[1:]) + 1
        holes &= outside != body
    return holes


def hu_lungs(hu: np.ndarray, spacing: Sequence[float], lungs: np.ndarray, reach_mm: float = 7.0,
             air_hu: float = -500.0, lung_hu: float = -320.0, max_hole_cm2: float = 10.0,
             max_airway_cm2: float = 10.0) -> np.ndarray:
    """(z, y, x) bool lung mask from a model's lung mask, made consistent with the HU image:

    - added: aerated lung the model missed (diseased, reticular lung and coarse or unusual scans are where
      lung models fail): air below ``lung_hu`` inside the body, in 3-D components the model partly labels
      (bowel gas is not), joins slice by slice where the model labels part of it or where it is larger
      than an airway (``max_airway_cm2``: the trachea and main bronchi stay out), with holes up to
      ``max_hole_cm2``;
    - removed: leaks into the neck, mediastinum or abdomen: label voxels farther than ``reach_mm``
      in-plane from aerated labelled lung (dense lesions inside the lung stay: holes are filled).
    """
    m = lungs > 0
    box = bounding_box(m, margin=int(np.ceil(reach_mm / min(spacing[1:]))) + 2)
    if box is None:
        return m.copy()
    # the air search sees whole slices (in a box around the model's mask, aerated lung the model missed runs into
    # the box's edge and reads as air outside the body: cap001's lateral right base), cropped to the body: outside
    # the box of everything denser than lung in any of these slices there is only air, so air touching that box's
    # edge is air outside the body in the whole slice too
    body = body_plane_box(hu[box[0]], lung_hu)
    if body is None:
        return np.zeros(lungs.shape, bool)
    box = (box[0], *body)
    v, m = hu[box], m[box]
    # the air inside the body (reaching no image corner, so that a lung a tight field of view cuts counts), of which
    # the 3-D components the model calls lung in part (not bowel gas, not the air in a CT table); one labelling
    # serves both tests
    air = off_corner_components(v < lung_hu)
    l3, n3 = components.label(air)
    if n3:
        size = component_sizes(l3, air, n3)
        part = (size >= max(size.max() * 0.05, 1)) & (np.bincount(l3[m], minlength=n3 + 1) >= 0.1 * size)
        part[0] = False
        air = part[l3]
    # then each slice's pieces of them that the model partly labels or that are too big for an airway (the
    # trachea and main bronchi stay out)
    lbl, n = ndimage.label(air, structure=IN_PLANE)
    if n:
        overlap = np.bincount(lbl[m], minlength=n + 1)
        size = component_sizes(lbl, air, n)
        join = (overlap >= 0.1 * size) | (size * spacing[1] * spacing[2] / 100.0 >= max_airway_cm2)
        join[0] = False
        m = m | join[lbl]
    # the rest works in a box around the lungs found so far
    inner = bounding_box(m, margin=int(np.ceil(reach_mm / min(spacing[1:]))) + 2)
    if inner is None:
        return np.zeros(lungs.shape, bool)
    box = (box[0], *(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box[1:], inner[1:], strict=True)))
    v, m = v[(slice(None), *inner[1:])], m[(slice(None), *inner[1:])]
    m = m | _enclosed_holes(m, np.ones(m.shape, bool), spacing, max_hole_cm2)
    aerated = binary_3d("open", m & (v < air_hu), ellipsoid(spacing, 1.5, in_plane=True, min_vox=1))
    near = binary_3d("dilate", aerated, ellipsoid(spacing, reach_mm, in_plane=True))
    keep = m & near
    keep = keep | _enclosed_holes(keep, m, spacing, max_hole_cm2)  # lesions enclosed by kept lung stay
    out = np.zeros(lungs.shape, bool)
    out[box] = keep
    return out


def trim_lung_border(lungs: np.ndarray, lesions: np.ndarray, hu: np.ndarray, spacing: Sequence[float],
                     band_mm: float = 2.0, lung_hu: float = -320.0) -> np.ndarray:
    """``lungs`` (labels) without the soft tissue along their border: voxels within ``band_mm`` in-plane of the
    mask's edge that are denser than aerated lung (``lung_hu``, as in :func:`hu_lungs`) and are not a lesion.

    Why: the lung mask comes from a ~1.4 mm working grid and its border is uncertain by a working voxel; on the
    input's grid it wraps the pleura, the tracheal wall and the diaphragm in a 1-2 voxel rim that reads as lung
    in the neck, mediastinum and below the base (normal001: 10.6 mL below the base, 5.5 mL mediastinum). Lesions
    against the pleura stay (they are labelled), as does everything deeper than the band."""
    box = bounding_box(lungs > 0, margin=1)
    if box is None:
        return lungs
    m = lungs[box] > 0
    r = max(1, int(round(band_mm / min(spacing[1:]))))
    band = m & ~in_plane("erode", m, IN_PLANE[1], iterations=r)
    trim = band & (hu[box] > lung_hu) & (lesions[box] == 0)
    out = lungs.copy()
    out[box][trim] = 0
    return out
