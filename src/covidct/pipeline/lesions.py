"""Lesions stage: the lesion and infection models (or the HU rule), typing, HU checks and effusion.

The shipped ``lesions`` model (GGO / consolidation / effusion) runs on the lung slices; the binary
``infection`` model, when shipped, gives the extent and the lesion model the type (on display slices, where its
card asks for it, GGO against consolidation is decided by density: :func:`covidct.preprocess.lesion_types_by_density`).
On whole HU volumes
GGO and consolidation come from the HU rule of :mod:`covidct.pipeline.hu_rules` instead (the models
learned from 8-bit, mid-chest, infected slices only, and mark vessels, lung bases and mask leaks on whole
volumes: docs/BENCHMARKS.md, "HU volumes"), the infection model is not run, and the lesion model gives
the pleural effusion, joined on supine volumes by water-dense tissue inside the rib cage
(:func:`covidct.pipeline.pleural.rib_bounded_tissue`; the denser tissue found there, airless lung that the lung mask
leaves out, is measured into the HU rule's notes, not labelled). For HU input two
physical checks follow: GGO/consolidation must lie in the (slightly dilated) lungs and be denser than
``lesion_min_hu``; effusion must lie in the pleural space next to a lung, at water density, reach the lower half of
the lungs and stay on one side of the midline, and is kept out of the lung label (as in covidct's phantom and
MedSeg's labels). :func:`final_masks` then brings both
label maps back to the input's grid (and, for whole HU volumes, trims the soft-tissue rim along the lung border:
:func:`covidct.pipeline.hu_rules.trim_lung_border`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covidct import components
from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.models.runtime import density_typing
from covidct.pipeline import hu_rules
from covidct.pipeline.background import beside
from covidct.pipeline.grid import first_argmax, upsample_labels
from covidct.pipeline.morphology import dilate_mm, nearest_labels
from covidct.pipeline.pleural import FLUID_HU, rib_bounded_tissue
from covidct.pipeline.predict import ModelRunner
from covidct.pipeline.types import LoadedModel, Masks
from covidct.preprocess import bounding_box, component_sizes, lesion_types_by_density
from covidct.report.heatmap import (
    infection_probability,
    probability_volume,
    uncertainty,
    upsample_probability,
)
from covidct.volume import CT, SUPINE, dependent_side


def segment_lesions(ct: CT, lungs: np.ndarray, runner: ModelRunner, lesions_model: LoadedModel | None = None,
                    infection_model: LoadedModel | None = None, lesion_min_hu: float = -800.0,
                    min_lesion_mm3: float = 20.0, probability: dict | None = None,
                    hu_settings: hu_rules.HULesionSettings = hu_rules.DEFAULT, hu_uncertainty: float = 0.0,
                    within_lungs: bool = True) -> np.ndarray:
    """(z, y, x) uint8: 0 none, 1 GGO, 2 consolidation, 3 pleural effusion (``hu_settings``: the HU rule's;
    ``hu_uncertainty``: how far the HU values may be off near soft tissue, e.g. a display-range volume mapped to HU;
    ``within_lungs``: GGO and consolidation only within 3 mm of ``lungs``; off for a slice image cut tight around its
    lungs, whose lesions the lung network leaves largely outside its mask while the crop models find them).

    ``probability`` (optional): receives ``"lesion"``, the models' infection probability on ``ct``'s grid
    (uint8 p x 255, see covidct.report.heatmap), or None when no lesion model ran (no model shipped: HU thresholds
    alone); and for whole HU volumes ``"hu_rule"``, the HU rule's notes (lung noise and density:
    :func:`covidct.pipeline.hu_rules.hu_lesions`)."""
    vol = ct.array
    lung = lungs > 0
    out = np.zeros(vol.shape, np.uint8)
    zs = np.flatnonzero(lung.reshape(len(vol), -1).any(1))
    if zs.size == 0:
        return out
    dz, dy, dx = ct.spacing
    near_lung = dilate_mm(lung, (dz, dy, dx), 3.0) if within_lungs else None
    binary = False
    prob = p_inf = None
    if lesions_model is not None:
        if lesions_model.is_3d:  # one contiguous block of slices for a volume model
            zs = np.arange(zs.min(), zs.max() + 1)
        prob = runner.probabilities(lesions_model, vol, zs, ct.is_hu, ct.spacing, "lesions")
        binary = prob.shape[1] == 2
    hu_volume = hu_rules.applies(ct.is_hu, ct.n_slices)
    # the HU rule needs only the HU image and the lungs: it runs beside the typing and effusion checks below
    notes: dict = {}
    hu_rule = beside(hu_rules.hu_lesions, vol, ct.spacing, lungs, hu_settings, notes=notes) if hu_volume else None
    if infection_model is not None and not infection_model.is_3d and not hu_volume:
        p_inf = runner.probabilities(infection_model, vol, zs, ct.is_hu, ct.spacing, "infection", channel=1)
    if probability is not None:
        probability["lesion"] = probability_volume(vol.shape, zs, infection_probability(prob, p_inf))
    if p_inf is not None:
        # extent from the binary infection model (trained on the most labelled slices); type from the
        # lesion model (its most likely lesion class) or, without one, from density below
        thr = (infection_model.info.get("thresholds") or {}).get("foreground", 0.5)
        infected = p_inf >= thr
        if prob is not None and not binary:
            labels = first_argmax([prob[:, c] for c in range(prob.shape[1])])
            typed = first_argmax([prob[:, c] for c in range(1, prob.shape[1])]) + np.uint8(1)
            out[zs] = np.where(infected, typed, np.where(labels == EFFUSION, EFFUSION, 0))
        else:
            out[zs] = infected.astype(np.uint8)
            binary = True
    elif prob is not None:
        out[zs] = first_argmax([prob[:, c] for c in range(prob.shape[1])])
    elif ct.is_hu:
        sub = vol[zs]
        rule = np.zeros(sub.shape, np.uint8)
        rule[(sub > -700) & (sub < -300)] = GGO
        # dense and filled-in: vessels are thin, so an opening keeps consolidation only
        dense = ndimage.binary_opening((sub >= -300) & (sub < 100), structure=np.ones((1, 5, 5), bool))
        rule[dense] = CONSOLIDATION
        out[zs] = rule
    if binary:  # infected / not only: GGO below -300 HU, consolidation above (HU input)
        infected = out > 0
        out[:] = 0
        if ct.is_hu:
            out[infected & (vol < -300)] = GGO
            out[infected & (vol >= -300)] = CONSOLIDATION
        else:
            out[infected] = GGO
    typing = None if ct.is_hu or binary or lesions_model is None else density_typing(lesions_model.info)
    if typing is not None:  # display slices: GGO / consolidation from density, as `segment` types them
        for z in zs:
            out[z] = lesion_types_by_density(out[z], vol[z], **typing)
    effusion = out == EFFUSION
    if ct.is_hu:
        pleural = dilate_mm(lung, (dz, dy, dx), 30.0) & ~lung
        effusion &= pleural & (vol > -50) & (vol < 80)
        if hu_volume and dependent_side(ct) == SUPINE:  # free fluid inside the rib cage, which the network misses
            fluid, dense = rib_bounded_tissue(vol, lungs, ct.spacing)
            effusion |= fluid
            # denser tissue there is airless lung (or a dense effusion) that the lung mask leaves out: measured, told
            dense = _plausible_effusion(dense, lung, ct.spacing, dependent=SUPINE)  # size, touching, dependent
            notes["airless_outside_lungs_ml"] = float(np.count_nonzero(dense)) * ct.voxel_volume_ml
    else:
        effusion &= ~lung
    if effusion.any() and ct.n_slices > 1:
        effusion = _plausible_effusion(effusion, lung, ct.spacing, hu=vol if ct.is_hu else None,
                                       dense_hu=EFFUSION_DENSE_HU - hu_uncertainty, dependent=dependent_side(ct),
                                       lung_labels=lungs)
    if hu_rule is not None:
        out = np.where(out == EFFUSION, EFFUSION, hu_rule.result()).astype(np.uint8)
        if probability is not None:
            probability["hu_rule"] = notes
    infection = (out == GGO) | (out == CONSOLIDATION)
    if within_lungs:
        infection &= near_lung
    if ct.is_hu:
        infection &= vol >= lesion_min_hu
    result = np.zeros_like(out)
    result[infection] = out[infection]
    result[effusion] = EFFUSION
    return _drop_small(result, ct.spacing, min_lesion_mm3)

# --- the whole analysis --------------------------------------------------------------------


def final_masks(ct: CT, lungs: np.ndarray, lesions: np.ndarray, factor: int,
                probability: np.ndarray | None = None, work_spacing: tuple[float, float, float] | None = None,
                keep_probability: bool = True) -> Masks:
    """The working grid's masks (``factor``: its in-plane block size) as the final masks on ``ct``'s grid.

    ``probability``: the lesion probability on the working grid (spacing ``work_spacing``); its uncertainty
    figures are measured there, inside the lungs, and (``keep_probability``) it is brought to ``ct``'s grid too."""
    # GGO/consolidation are part of the lung they lie in (the lung label includes its lesions)
    lungs = _absorb_lesions(lungs, lesions)
    dz, dy, dx = work_spacing or ct.spacing
    summary, per_slice = uncertainty(probability, lungs, dz * dy * dx if ct.spacing_known else None, dy * dx)
    if not keep_probability:
        probability = None
    elif probability is not None and factor > 1:
        probability = upsample_probability(probability, ct.shape)
    if factor > 1:
        lungs_up = beside(upsample_labels, lungs, ct.shape)  # two independent per-slice resizes, one per core
        lesions = upsample_labels(lesions, ct.shape)
        lungs = lungs_up.result()
    trim = hu_rules.applies(ct.is_hu, ct.n_slices)
    if factor > 1 or trim:
        # slice by slice from here on: the two halves of the stack on two cores give the same voxels
        half = len(lungs) // 2
        if factor == 1:
            lungs = lungs.copy()  # the caller's array is not changed in place
        top = beside(_agree_and_trim, ct, lungs, lesions, slice(0, half), factor > 1, trim)
        _agree_and_trim(ct, lungs, lesions, slice(half, len(lungs)), factor > 1, trim)
        top.result()
    return Masks(lungs=lungs, lesions=lesions, lesion_probability=probability, uncertainty=summary,
                 slice_uncertainty=per_slice)


def _agree_and_trim(ct: CT, lungs: np.ndarray, lesions: np.ndarray, zs: slice, agree: bool, trim: bool) -> None:
    """In place on the slices ``zs``: upsampled masks made to agree (GGO/consolidation only inside the lungs,
    effusion never lung) and, for whole HU volumes, the lung border trimmed along the HU image
    (:func:`covidct.pipeline.hu_rules.trim_lung_border`, an in-plane operation)."""
    lu, le = lungs[zs], lesions[zs]
    if agree:
        le[((le == GGO) | (le == CONSOLIDATION)) & (lu == 0)] = 0  # interpolated edges must agree
        lu[le == EFFUSION] = 0
    if trim:
        lu[...] = hu_rules.trim_lung_border(lu, le, ct.array[zs], ct.spacing)


def _absorb_lesions(lungs: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """Add GGO/consolidation voxels outside the lung label to the nearest lung."""
    infection = (lesions == GGO) | (lesions == CONSOLIDATION)
    missing = infection & (lungs == 0)
    if not missing.any() or not lungs.any():
        return lungs
    out = lungs.copy()
    out[missing] = nearest_labels(lungs, missing)
    return out


# Pleural fluid is water-like: simple and parapneumonic effusions measure about 0-25 HU; skeletal muscle 40-60 HU
# unenhanced. A dense "effusion" must at least lie against the lung: the lesion network's effusion on P001 and
# LIDC-IDRI-0001 was the paraspinal muscle beside the spine (median 34-37 HU, 2-8 % of its surface against the lung;
# the phantoms' effusions 10-19 HU, 12-20 %; docs/BENCHMARKS.md, fourteenth session).
EFFUSION_DENSE_HU = FLUID_HU[1]
EFFUSION_MIN_LUNG_CONTACT = 0.1


def _plausible_effusion(effusion: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float],
                        min_ml: float = 5.0, hu: np.ndarray | None = None, dense_hu: float = EFFUSION_DENSE_HU,
                        dependent: tuple[int, int] = SUPINE, lung_labels: np.ndarray | None = None) -> np.ndarray:
    """Keep effusion components that look like one: fluid lying against the lung surface, dependent
    (centred in the dependent half of the lungs: ``dependent``, the (axis, sign) of covidct.volume.dependent_side;
    the posterior half for a supine patient) and at least ``min_ml`` in volume. Patches of
    chest-wall or paraspinal muscle, which have the same density, fail one of these. With ``hu``, a component
    denser than fluid (median above ``dense_hu``, default ``EFFUSION_DENSE_HU``) must also lie against the lung over at least
    ``EFFUSION_MIN_LUNG_CONTACT`` of its surface (within one voxel in-plane): a dense blob that only touches the
    lung's edge is muscle, while a dense effusion (exudate, blood) still lies against the lung it displaces.
    With ``hu`` (a whole HU volume, whose slices run from the feet to the head), two anatomical checks follow
    (:func:`_in_one_pleural_base`): the component reaches the lower half of the lungs, and, with ``lung_labels``,
    it lies on one side of the midline between the lungs."""
    box = bounding_box(effusion)  # labelled on its box: the same components, numbered in the same order
    if box is None:
        return effusion
    lbl, n = components.label(effusion[box])
    shell = (dilate_mm(lung, spacing, 2.0 * max(spacing[1], spacing[2])) & ~lung)[box]
    vox_ml = float(np.prod(spacing)) / 1000.0
    # Per-component sums over the effusion voxels only, added in raster order as ndimage.sum_labels and
    # center_of_mass add them (so the same floats), without their passes over the whole volume.
    where = np.nonzero(lbl)
    comp = lbl[where]
    count = np.bincount(comp, minlength=n + 1)[1:]
    size_ml = count * vox_ml
    touch = np.bincount(comp, weights=shell[where], minlength=n + 1)[1:]
    axis, sign = dependent
    centre = np.bincount(comp, weights=(where[axis] + box[axis].start).astype(float), minlength=n + 1)[1:] / count
    lines = lung.sum(axis=tuple(a for a in range(3) if a != axis))  # lung voxels per index along that axis
    lung_mid = (lines * np.arange(len(lines))).sum() / lines.sum() if lines.any() else 0.0
    keep = np.zeros(n + 1, bool)
    keep[1:] = (size_ml >= min_ml) & (touch > 0) & (centre >= lung_mid if sign > 0 else centre <= lung_mid)
    if hu is not None and keep.any():
        keep[1:] &= _in_one_pleural_base(comp, where[0] + box[0].start, where[2] + box[2].start, n, lung, lung_labels)
    dense = [] if hu is None else [i for i in np.flatnonzero(keep)
                                   if float(np.median(hu[box][lbl == i])) > dense_hu]
    if dense:  # the contact maps only when a component is denser than fluid
        near = (dilate_mm(lung, spacing, max(spacing[1], spacing[2])) & ~lung)[box]
        surface = (lbl > 0) & ~ndimage.binary_erosion(lbl > 0)  # components never touch: one erosion for all
        for i in dense:
            surf = surface & (lbl == i)
            keep[i] = np.count_nonzero(surf & near) >= EFFUSION_MIN_LUNG_CONTACT * np.count_nonzero(surf)
    out = np.zeros(effusion.shape, bool)
    out[box] = keep[lbl]
    return out


# Where free pleural fluid can be (docs/BENCHMARKS.md, "Anatomical checks on the effusion", thirtieth session). It
# settles first in the costophrenic recesses, the lowest part of each pleural space, so it reaches the lower half of the
# lungs whatever the patient's position; the false "effusion" of wide fields of view lay at the apices (the lesion
# network's scale failure). The two pleural spaces are separated by the mediastinum, so one component of fluid does not
# cross the midline between the lungs; the false one of normal001 on a 406 mm field was the back muscles behind the
# spine, from one side to the other. Known cost: a loculated effusion confined to the upper half is not kept.
EFFUSION_LOWEST_SHARE = 0.5
EFFUSION_MAX_ACROSS_MIDLINE = 0.25


def _in_one_pleural_base(comp: np.ndarray, z: np.ndarray, x: np.ndarray, n: int, lung: np.ndarray,
                         lung_labels: np.ndarray | None) -> np.ndarray:
    """(n,) bool for the components numbered 1..n, whose voxels, at slices ``z`` and columns ``x`` of the whole
    volume in raster order, carry the numbers ``comp``: True where the component's lowest slice lies in the lower
    ``EFFUSION_LOWEST_SHARE`` of the lungs' cranio-caudal extent and (with ``lung_labels``) at most
    ``EFFUSION_MAX_ACROSS_MIDLINE`` of its voxels, on the slices that show both lungs, lie across the midline between
    the lungs' medial edges from the side that holds most of them."""
    lung_zs = np.flatnonzero(lung.reshape(len(lung), -1).any(1))
    ids, first = np.unique(comp, return_index=True)  # raster order: a component's first voxel is on its lowest slice
    lowest = np.zeros(n + 1)
    lowest[ids] = z[first]
    ok = lowest[1:] <= lung_zs[0] + EFFUSION_LOWEST_SHARE * (lung_zs[-1] - lung_zs[0])
    if lung_labels is None or not ok.any():
        return ok
    xs = np.arange(lung_labels.shape[2])
    right_cols, left_cols = ((lung_labels == label).any(1) for label in (RIGHT_LUNG, LEFT_LUNG))  # (z, x)
    both = right_cols.any(1) & left_cols.any(1)
    # canonical x runs from the patient's right to left: the right lung's medial edge is its largest x
    midline = 0.5 * (np.where(right_cols, xs, -1).max(1) + np.where(left_cols, xs, xs.size).min(1))
    on = both[z]
    left = np.bincount(comp[on], weights=x[on] >= midline[z[on]], minlength=n + 1)[1:]
    total = np.bincount(comp[on], minlength=n + 1)[1:]
    across = np.minimum(left, total - left)
    return ok & (across <= EFFUSION_MAX_ACROSS_MIDLINE * np.maximum(total, 1))


def _drop_small(labels: np.ndarray, spacing: tuple[float, float, float], min_mm3: float) -> np.ndarray:
    vox = float(np.prod(spacing))
    min_vox = max(int(np.ceil(min_mm3 / vox)), 1)
    if min_vox <= 1:
        return labels
    fg = labels > 0
    box = bounding_box(fg)  # components counted on the labels' box only
    if box is None:
        return labels
    lbl, n = components.label(fg[box])
    sizes = component_sizes(lbl, fg[box], n)
    small = sizes < min_vox
    small[0] = False
    out = labels.copy()
    out[box][small[lbl]] = 0
    return out
