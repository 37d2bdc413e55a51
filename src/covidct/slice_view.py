"""Inputs stored transposed or cut tight, found from the lungs: slice images are analysed in the radiological view
(and tight crops by the models that learnt such crops), volumes warned.

A 2-D image carries no geometry, so covidct takes it to be in the radiological view (the patient's left-right axis
along the image's columns). A volume saved slice by slice without reorienting comes out transposed: its rows run
left-right and the two lungs lie one above the other (Inf-Net distributes its MedSeg test slices so). The networks
were trained mostly in the radiological view: on those 48 slices as distributed the shipped infection model scores
0.399 per-image Dice, transposed back 0.479 (docs/BENCHMARKS.md, "Slice images stored transposed").

Rule (:func:`lungs_one_above_the_other`), chosen on training and validation slices in both layouts: the lung
network's mask of the slice; its two largest 4-connected components, the smaller at least a fifth of the larger; the
slice is transposed when their centroids lie further apart along the rows than along the columns. Undecided (one
lung, or one much smaller, as at the apices and bases) counts as not transposed: the slice is analysed as given.
A left-right or up-down flip is not looked for: the networks read those nearly as well (flip augmentation).

A slice image whose lungs fill it (:func:`cut_tight`, from the same mask) is read by the lesion models' crop
versions, where their cards name one (``crops_model``; see ``CROP_SPAN``).

A volume is not turned (its geometry gives its orientation): :func:`transposed_volume_warnings` only warns when its
lungs lie one above the other on most slices, and :func:`flipped_volume_warnings` when its lung bases (the dorsal
costophrenic recesses, whichever way the patient lay: the lungs' end furthest back) lie at its top or in front of the
lungs' middle, or its right lung's inner edge lies further from the middle than the left's behind the heart.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct import components
from covidct.volume import CT

VIEWS = ("auto", "as-is")  # the --view choices: turn a slice image stored transposed, or read every one as given
MIN_SECOND_LUNG = 0.2  # the smaller of the two largest lung components, as a fraction of the larger
TRANSPOSED_NOTE = ("the slice looked transposed (its two lungs lie one above the other, not side by side): it was "
                   "analysed in the radiological view and its masks put back in the image's own layout")


def lungs_one_above_the_other(lung_mask: np.ndarray) -> bool | None:
    """True when the two largest lung components of a 2-D mask lie further apart along the rows than along the
    columns, False when side by side, None when there are not two lungs of comparable size to tell by."""
    labels, n = components.label(np.asarray(lung_mask, bool))
    if n < 2:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    first, second = np.argsort(sizes)[::-1][:2]
    if sizes[second] < MIN_SECOND_LUNG * sizes[first]:
        return None
    (y1, x1), (y2, x2) = (np.nonzero(labels == k) for k in (first, second))
    return bool(abs(y1.mean() - y2.mean()) > abs(x1.mean() - x2.mean()))


# A slice image cut tight around the lungs (Inf-Net's MedSeg crops, most COVID-CT images) shows the lungs about 1.3x
# larger than a full slice and, in Inf-Net's labels, with more generous lesion outlines: models fine-tuned with such
# crops read them better (Inf-Net training crops of the models' validation groups: infection 0.498 -> 0.653) and full
# slices worse (Ma validation 0.678 -> 0.659), so covidct reads only such crops with them (a shipped model's card
# names its ``crops_model``). The lung network's box spans at least this share of the width or height on 49 of Inf-Net's
# 50 training crops (0.935 and more; one 0.859), on 2 of MedSeg's 100 full slices (0.949, 0.951) and on none of 300 Ma
# slices (at most 0.809) (docs/BENCHMARKS.md, "Slice images cut tight around the lungs: read by crop models").
CROP_SPAN = 0.93


def crops_note(*models: str) -> str:
    """What a user is told when a slice cut tight around its lungs is read by ``models`` (their names)."""
    names = ", ".join(f"'{m}'" for m in models)
    return (f"the slice is cut tight around the lungs (they fill {CROP_SPAN:.0%} or more of it): its lesions were read "
            f"by the model{'s' if len(models) > 1 else ''} {names}, which learnt such crops")


@dataclasses.dataclass(frozen=True)
class SliceLayout:
    """How a 2-D slice image is laid out, from the lung network's mask of it as given."""

    transposed: bool  # its two lungs lie one above the other (:func:`lungs_one_above_the_other`)
    cut_tight: bool  # its lungs fill the image (:func:`cut_tight`)


def cut_tight(lung_mask: np.ndarray) -> bool:
    """True when the lungs' bounding box spans at least ``CROP_SPAN`` of a 2-D mask's width or height."""
    mask = np.asarray(lung_mask, bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return False
    return bool(max((rows[-1] - rows[0] + 1) / mask.shape[0], (cols[-1] - cols[0] + 1) / mask.shape[1]) >= CROP_SPAN)


def slice_layout(image: np.ndarray, is_hu: bool, lungs_model: tuple) -> SliceLayout:
    """:class:`SliceLayout` of a 2-D slice from the mask that ``lungs_model`` (``(net, info)`` from
    :func:`covidct.models.runtime.load`) gives it as it is (one pass of the lung network)."""
    from covidct.models import runtime

    net, info = lungs_model
    prob = runtime.predict_slices(net, info, [np.asarray(image, np.float32)], is_hu, batch_size=1, bf16=False)
    mask = runtime.labels_for_task(prob, info, "lungs")[0] > 0
    return SliceLayout(transposed=bool(lungs_one_above_the_other(mask)), cut_tight=cut_tight(mask))


def transposed(ct: CT) -> CT:
    """``ct`` (a slice image) with its rows and columns swapped: the radiological view of a transposed slice."""
    affine = np.array(ct.affine, copy=True)
    affine[:, [0, 1]] = affine[:, [1, 0]]  # affine columns are (x, y, z) index directions
    return dataclasses.replace(ct, array=np.ascontiguousarray(ct.array.transpose(0, 2, 1)),
                               spacing=(ct.spacing[0], ct.spacing[2], ct.spacing[1]), affine=affine,
                               source_shape=None)


def _sampled(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every 4th voxel in-plane of a (z, y, x) lung mask, as bool, and its lung area per slice: the volume checks
    below look at the lungs' layout, not their edges (a few ms instead of ~0.2 s at full resolution)."""
    mask = np.asarray(lungs)[:, ::4, ::4] > 0
    return mask, mask.reshape(len(mask), -1).sum(1)


# A volume is read as stored: its orientation comes from its geometry. Its lungs lying one above the other on most
# slices means rows and columns swapped in the file (an array written with the wrong axis order or affine). Measured
# on the final lung masks of all 45 volumes of benchmarks/hu_volumes.py: 0 % of decided slices as stored, 100 %
# transposed (docs/BENCHMARKS.md, "Volumes stored transposed").
TRANSPOSED_VOLUME_SHARE = 2 / 3
MIN_DECIDED_SLICES = 5


def transposed_volume_warnings(lungs: np.ndarray) -> list[str]:
    """A warning when the lungs of a (z, y, x) lung mask lie one above the other on at least two thirds of the
    decided slices (at least 5) among those with a fifth or more of the largest slice's lung area (sampled: at most 40
    of them, every 4th voxel in-plane)."""
    mask, area = _sampled(lungs)
    if not area.any():
        return []
    slices = np.nonzero(area >= 0.2 * area.max())[0]
    slices = slices[:: int(np.ceil(len(slices) / 40))]
    decided = [d for k in slices if (d := lungs_one_above_the_other(mask[k])) is not None]
    above = sum(decided)
    if len(decided) < MIN_DECIDED_SLICES or above < TRANSPOSED_VOLUME_SHARE * len(decided):
        return []
    return [f"the two lungs lie one above the other, not side by side, on {above} of {len(decided)} slices: the "
            "volume's rows and columns look swapped (an array written with the wrong axis order or orientation?), so "
            "its left and right lung figures describe front and back halves, and the pattern's left-right and "
            "front-back features are unreliable; write the volume with its true orientation and analyse it again"]


# The lowest part of the lungs is the dorsal costophrenic recesses, behind the diaphragm's dome, in any patient position;
# the apices sit near the middle front to back. On the lowest 15 % of the slices with lung, the lung's mean row lies
# behind the middle of the lungs' front-back extent by +0.105 to +0.359 of that extent on all 45 volumes of
# benchmarks/hu_volumes.py as stored (cap001 the least), and on the highest 15 % by +0.009 to +0.087 (44 volumes; the
# TotalSegmentator example has no apices), always nearer the middle than at the bases (by 0.091 to 0.343). So the end
# further from the middle is the bases (at the top: flipped head to feet), and bases in front of the middle mean
# flipped front to back (docs/BENCHMARKS.md, "Volumes stored flipped"). An end the scan cuts off (lung on its first or
# last slice) is not judged.
END_SLICES_SHARE = 0.15
# lung on an end slice, as a share of the largest slice's: that end of the lungs is cut off (the share
# covidct.pipeline.diagnosis.CUT_LUNG_SHARE warns at; not imported: the pipeline sits above this module)
END_CUT_SHARE = 0.10


def lung_end_offsets(lungs: np.ndarray) -> tuple[float | None, float | None]:
    """Where the lung bases and apices lie front to back in a canonical (z feet to head, y front to back) mask: the
    mean row of the lung on the lowest and on the highest ``END_SLICES_SHARE`` of the slices with lung, minus the
    middle of the lungs' row extent, as a share of that extent (positive: behind the middle); None for an end the scan
    cuts off, and for both under 5 slices with lung. Every 4th voxel in-plane (a few ms)."""
    mask, area = _sampled(lungs)
    zs = np.flatnonzero(area)
    if zs.size < 5:
        return None, None
    rows = np.flatnonzero(mask.any((0, 2)))
    top, bottom = rows[0], rows[-1] + 1
    n = max(1, int(round(END_SLICES_SHARE * zs.size)))

    def offset(end: np.ndarray, cut: bool) -> float | None:
        if cut:
            return None
        return float((np.nonzero(mask[end])[1].mean() + 0.5 - (top + bottom) / 2) / (bottom - top))

    return (offset(zs[:n], area[0] >= END_CUT_SHARE * area.max()),
            offset(zs[-n:], area[-1] >= END_CUT_SHARE * area.max()))


# Below the carina the descending aorta runs left of the spine and the right lung reaches behind the oesophagus (the
# azygo-oesophageal recess), so behind the lungs' middle front to back the left lung's medial edge lies further from
# the middle than the right's. Measured on the final masks of the five real chest volumes (P001, cap001, normal001,
# LIDC-IDRI-0001, cip-ct-64), rows 0.55-0.85 of each slice's lung front-back extent on the slices 0.2-0.6 of the way up
# the two lungs: median +0.019 to +0.094 of the lungs' width; all 45 volumes of benchmarks/hu_volumes.py as stored
# positive (docs/BENCHMARKS.md, "Volumes stored flipped left to right"). Mirror-image anatomy (situs inversus, a
# right-sided descending aorta) reads as a flip.
MEDIAL_ROWS = (0.55, 0.85)
MEDIAL_SLICES = (0.2, 0.6)
MEDIAL_FLIP_BELOW = -0.01
MEDIAL_MIN_ROWS = 20
WALL_MIN_HU = -500.0  # chest wall (muscle, fat, rib) lies outside the lungs' outer edge unless the field of view cuts them


def medial_edge_offset(lungs: np.ndarray, front_back: bool = False, head_feet: bool = False,
                       hu: np.ndarray | None = None) -> float | None:
    """How much further the left lung's (label 1) medial edge lies from the middle than the right's (label 2), as a
    share of the lungs' width: the median over the rows ``MEDIAL_ROWS`` of each slice's lung front-back extent (behind
    the middle) on the slices ``MEDIAL_SLICES`` of the way up those with both lungs; the middle is the midpoint of the
    lungs' outer edges. ``front_back`` / ``head_feet``: the volume is flipped so, and the rows / slices are taken
    mirrored. A slice whose lungs a tight field of view cuts (they reach the image's side, or, with the HU volume
    ``hu``, no chest wall lies outside their outer edge) moves the middle and is left out. None under
    ``MEDIAL_MIN_ROWS`` rows with both lungs. At most 40 slices (a few ms)."""
    lungs = np.asarray(lungs)
    sampled = np.ascontiguousarray(lungs[:, ::4, ::4])  # which slices hold both lungs, and each one's side
    per_column = [(sampled == label).sum(1) for label in (1, 2)]  # (z, x) voxel counts of each lung
    both = np.flatnonzero(per_column[0].any(1) & per_column[1].any(1))
    if both.size < 5:
        return None
    lo, hi = (1 - MEDIAL_SLICES[1], 1 - MEDIAL_SLICES[0]) if head_feet else MEDIAL_SLICES
    z0, z1 = both[0], both[-1]
    zs = both[(both >= z0 + lo * (z1 - z0)) & (both <= z0 + hi * (z1 - z0))]
    zs = zs[:: int(np.ceil(len(zs) / 40))] if zs.size else zs
    r_lo, r_hi = (1 - MEDIAL_ROWS[1], 1 - MEDIAL_ROWS[0]) if front_back else MEDIAL_ROWS
    x = np.arange(sampled.shape[2])
    left_at_high_x = np.average(x, weights=per_column[0].sum(0)) > np.average(x, weights=per_column[1].sum(0))
    width = lungs.shape[2]
    offsets = []
    for z in zs:
        lung = lungs[z] > 0
        rows, cols = np.flatnonzero(lung.any(1)), np.flatnonzero(lung.any(0))
        if not _walled(lung, cols[0], -1, hu, z) or not _walled(lung, cols[-1], 1, hu, z):
            continue
        top, bottom = rows[0], rows[-1]
        band = slice(int(top + r_lo * (bottom - top)), int(top + r_hi * (bottom - top)) + 1)
        a, b = lungs[z, band] == 1, lungs[z, band] == 2
        keep = a.any(1) & b.any(1)
        first_a, last_a = a.argmax(1), width - 1 - a[:, ::-1].argmax(1)
        first_b, last_b = b.argmax(1), width - 1 - b[:, ::-1].argmax(1)
        medial_a, medial_b = (first_a, last_b) if left_at_high_x else (last_a, first_b)
        middle = (cols[0] + cols[-1]) / 2
        offsets.append(((np.abs(medial_a - middle) - np.abs(medial_b - middle)) / max(cols[-1] - cols[0], 1))[keep])
    offsets = np.concatenate(offsets) if offsets else np.zeros(0)
    return float(np.median(offsets)) if offsets.size >= MEDIAL_MIN_ROWS else None


def _walled(lung: np.ndarray, edge: int, step: int, hu: np.ndarray | None, z: int) -> bool:
    """Whether the chest wall lies beyond a slice's lungs at their outer column ``edge`` (``step``: outwards): not at
    the image's side, and with ``hu`` denser than -500 HU 3 pixels further out on the rows that reach that column
    (outside a cut field of view lie air or the scanner's padding)."""
    probe = edge + 3 * step
    if not 0 <= probe < lung.shape[1]:
        return False
    return hu is None or float(np.median(hu[z, lung[:, edge], probe])) > WALL_MIN_HU


def flipped_volume_warnings(lungs: np.ndarray, hu: np.ndarray | None = None) -> list[str]:
    """A warning when a volume looks flipped head to feet (its highest lung lies further from the middle, front to back,
    than its lowest: those are its bases) and/or front to back (its bases in front of the middle):
    :func:`lung_end_offsets`; with only the bases in the scan, only the second is judged. And/or left to right: the
    right lung's medial edge behind the heart further from the middle than the left's (:func:`medial_edge_offset`; ``hu``:
    the HU volume, which tells the slices whose lungs a tight field of view cuts)."""
    base, apex = lung_end_offsets(lungs)
    head_feet = base is not None and apex is not None and abs(apex) > abs(base)
    bases = apex if head_feet else base
    front_back = bases is not None and bases < 0
    medial = medial_edge_offset(lungs, front_back, head_feet, hu)
    left_right = medial is not None and medial < MEDIAL_FLIP_BELOW
    flips = [(name, unreliable) for name, unreliable, flipped in (
        ("head to feet", "the upper and lower zones, the cranio-caudal pattern features and which end a cut scan misses",
         head_feet),
        ("front to back", "the front-back and dependent-side figures (pattern, effusion check)", front_back),
        ("left to right", "the left and right lung figures", left_right)) if flipped]
    if not flips:
        return []
    evidence = []
    if head_feet or front_back:
        end, side = ("top" if head_feet else "bottom"), ("in front of" if front_back else "behind")
        evidence.append(f"the lung bases (the lungs' end that reaches furthest back in every patient, whichever way "
                        f"they lay) lie at the {end} of the volume, {side} the lungs' middle")
    if left_right:
        evidence.append("behind the heart the right lung's inner edge lies further from the middle than the left's (the "
                        "descending aorta runs left of the spine in almost everyone; mirror-image anatomy reads so too)")
    return [f"{'; '.join(evidence)}: the volume looks flipped {' and '.join(n for n, _ in flips)} (a wrong orientation "
            f"in its header?), so {' and '.join(u for _, u in flips)} are unreliable; write the volume with its true "
            "orientation and analyse it again"]
