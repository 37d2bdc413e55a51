"""The working grid: the models run on the CT block-averaged to about 256² in-plane, and their label maps
come back to the input's own grid (exactly; tests/test_pipeline_exact.py checks the fast paths)."""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct.preprocess import bounding_box, threshold_lung_mask
from covidct.volume import CT

WORKING_SIZE = 256

# The scale of the anatomy at the networks' 256² input follows the reconstruction field of view. The lesion network
# learnt mostly on MedSeg slices, whose lungs span a median 82 % of the width (IQR 73-88 %), and on phantoms (63-68 %).
# The four real series here, brought to other fields (docs/BENCHMARKS.md, twenty-ninth session), read right wherever
# their lungs spanned 80-90 %; at 60-75 % the lesion network marked up to 43 mL of "effusion" beside the spine and the
# pneumonia cap001 read COVID-19. Where the lungs span less than ``NARROW_LUNG_FRACTION`` (fields much wider than the
# body: large patients, arms down), the networks see a square box centred on the lungs in which they span
# ``TRAINED_LUNG_FRACTION``, as nnU-Net brings every case to the scale it learnt; the masks outside it are empty.
# Not above 60 %: the phantoms, boxed the same way, lost their effusion (Dice 0.55 -> 0.14) and lesion-free ones gained
# 17-22 mL of it; the networks learnt them at their own scale. At 60-80 % the false effusion is caught by anatomical
# checks instead (covidct.pipeline.lesions._in_one_pleural_base); a retraining with scale augmentation is the fix.
TRAINED_LUNG_FRACTION = 0.85
NARROW_LUNG_FRACTION = 0.60


def working_grid(ct: CT, target: int = WORKING_SIZE) -> tuple[CT, int]:
    """The CT block-averaged in-plane by an integer factor so that its smaller side is about ``target``."""
    h, w = ct.shape[1:]
    f = max(1, int(round(min(h, w) / target)))
    if f == 1:
        return ct, 1
    if f == 2 and h % 2 == 0 and w % 2 == 0 and ct.array.dtype == np.float32:
        # The common 512² case without skimage's strided np.mean (several times slower): the same float32
        # sums in the same order, each row's pair then the two rows (tests/test_pipeline_exact.py checks it).
        a = ct.array.reshape(len(ct.array), h // 2, 2, w // 2, 2)
        arr = ((a[:, :, 0, :, 0] + a[:, :, 0, :, 1]) + (a[:, :, 1, :, 0] + a[:, :, 1, :, 1])) / np.float32(4)
    else:
        from skimage.transform import downscale_local_mean

        arr = downscale_local_mean(ct.array, (1, f, f), cval=float(np.median(ct.array[:, 0, :]))).astype(np.float32)
    dz, dy, dx = ct.spacing
    work = CT(array=arr, spacing=(dz, dy * f, dx * f), affine=ct.affine, is_hu=ct.is_hu, kind=ct.kind,
              path=ct.path, spacing_known=ct.spacing_known, meta=ct.meta)  # fmt: skip
    return work, f


def upsample_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Label map to a finer in-plane grid with smooth edges (bilinear per class, then argmax)."""
    import cv2

    present = [int(c) for c in np.unique(labels)]
    out = np.zeros(shape, np.uint8)
    if len(present) == 1:
        out[:] = present[0]
        return out
    h0, w0 = labels.shape[1:]
    # block-averaged grids may have cut a remainder: resize to the covered part, pad the rest
    f = int(round(shape[1] / h0)) if shape[1] >= h0 else 1
    hh, ww = min(h0 * f, shape[1]), min(w0 * f, shape[2])
    values = np.asarray(present, np.uint8)
    # An exact 2x upsampling is done on each slice's labelled box grown by 2 pixels only: outside it every
    # output pixel interpolates background, and inside the weights (1/4, 3/4) and 0/1 maps make every
    # product and sum exact, so the block gives the same maps as the whole slice.
    crop = f == 2 and (hh, ww) == (2 * h0, 2 * w0)
    for k in np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1)):
        ys, xs = bounding_box(labels[k] > 0, margin=2) if crop else (slice(0, h0), slice(0, w0))
        sub = labels[k, ys, xs]
        size = (sub.shape[1] * 2, sub.shape[0] * 2) if crop else (ww, hh)
        maps = [cv2.resize((sub == c).astype(np.float32), size, interpolation=cv2.INTER_LINEAR) for c in present]
        out[k, 2 * ys.start : 2 * ys.start + size[1], 2 * xs.start : 2 * xs.start + size[0]] = values[first_argmax(maps)]
    return out


def first_argmax(arrays: list[np.ndarray]) -> np.ndarray:
    """uint8 index of the largest of equally shaped arrays, the first one on ties: ``np.argmax`` of their
    stack along a new axis 0, without the stack and several times faster than numpy's strided reduction."""
    best = np.array(arrays[0], copy=True)
    idx = np.zeros(best.shape, np.uint8)
    for i, a in enumerate(arrays[1:], start=1):
        better = a > best  # strictly greater: an earlier index keeps a tie, as in np.argmax
        idx[better] = i
        np.maximum(best, a, out=best)
    return idx


def lung_field(ct: CT) -> tuple[slice, slice] | None:
    """The in-plane (y, x) box of a whole HU volume's lung field on about 16 of its slices, every other pixel of a
    512² series, widened to be symmetric about the body's midline (so that an airless lung, which is not in that field,
    is in the box); None where it has none, and for 2-D and display inputs.

    The lung field: air below -400 HU enclosed, in its slice, by what is above -500 HU eroded by 3 mm (the
    components of :func:`covidct.preprocess.threshold_lung_mask`). The erosion opens the scanner table, whose shell is
    a few mm thick: a wide field shows the whole table, and the air inside it would be taken for lung as wide as the
    table. A chest wall is thicker than the 6 mm the erosion takes from it."""
    z, h, w = ct.shape
    if not ct.is_hu or z < 3 or not ct.spacing_known:
        return None
    step = max(1, min(h, w) // WORKING_SIZE)
    sample = np.ascontiguousarray(ct.array[:: max(1, z // 16), ::step, ::step])
    body = _eroded(sample > -500, 3.0 / (min(ct.spacing[1:]) * step))
    field = threshold_lung_mask(np.where(body, np.float32(0.0), np.float32(-1000.0))) & (sample < -400)
    box = bounding_box(field.any(0))
    if box is None:
        return None
    # the midline: the mean column of the body in the lung field's rows
    columns = body[:, box[0], :].sum((0, 1))
    mid = float(np.arange(len(columns)) @ columns / max(columns.sum(), 1)) + 0.5
    half = max(mid - box[1].start, box[1].stop - mid)
    xs = slice(max(int(np.floor(mid - half)), 0) * step, min(int(np.ceil(mid + half)) * step, w))
    return slice(box[0].start * step, min(box[0].stop * step, h)), xs


def _eroded(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """(k, y, x) bool ``mask`` eroded slice by slice by a disc of ``radius_px`` (at least one pixel)."""
    import cv2

    r = max(1, int(round(radius_px)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return np.stack([cv2.erode(m, kernel) for m in mask.astype(np.uint8)]).astype(bool)


def box_around(field: tuple[slice, slice], shape: tuple[int, int], spacing_yx: tuple[float, float],
               fraction: float) -> tuple[slice, slice]:
    """The square (in mm) in-plane box centred on the lung ``field`` in which it spans ``fraction`` of the width (or
    of the height, where that is larger), moved inside an image of ``shape``; an axis it would overflow is kept whole."""
    (dy, dx), out = spacing_yx, []
    side_mm = max((field[1].stop - field[1].start) * dx, (field[0].stop - field[0].start) * dy) / fraction
    for b, n, d in ((field[0], shape[0], dy), (field[1], shape[1], dx)):
        side = int(round(side_mm / d))
        if side >= n:
            out.append(slice(0, n))
            continue
        start = min(max(int(round((b.start + b.stop) / 2 - side / 2)), 0), n - side)
        out.append(slice(start, start + side))
    return out[0], out[1]


def lung_field_box(ct: CT) -> tuple[slice, slice] | None:
    """The in-plane (y, x) box the networks should see for a whole HU volume whose lungs are narrow in its field
    (see ``NARROW_LUNG_FRACTION``), or None to analyse the whole field (most series; 2-D and display inputs).
    Finding the lung field (:func:`lung_field`) costs about 0.03 s of CPU for a 512² series."""
    field = lung_field(ct)
    if field is None or (field[1].stop - field[1].start) >= NARROW_LUNG_FRACTION * ct.shape[2]:
        return None
    return box_around(field, ct.shape[1:], ct.spacing[1:], TRAINED_LUNG_FRACTION)


def crop_in_plane(ct: CT, box: tuple[slice, slice]) -> CT:
    """``ct`` cut to the in-plane ``box`` (a view of its array), its affine moved to the box's first voxel."""
    affine = np.array(ct.affine, copy=True)
    affine[:3, 3] += affine[:3, 0] * box[1].start + affine[:3, 1] * box[0].start  # affine indices are (x, y, z)
    return dataclasses.replace(ct, array=ct.array[:, box[0], box[1]], affine=affine, source_shape=None)


def paste_in_plane(part: np.ndarray, shape: tuple[int, int, int], box: tuple[slice, slice]) -> np.ndarray:
    """A (z, y, x) map of ``shape``, zero outside ``box``, ``part`` inside it."""
    out = np.zeros(shape, part.dtype)
    out[:, box[0], box[1]] = part
    return out
