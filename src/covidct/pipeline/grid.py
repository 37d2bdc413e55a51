"""The working grid: the models run on the CT block-averaged to about 256² in-plane, and their label maps
come back to the input's own grid (exactly; tests/test_pipeline_exact.py checks the fast paths)."""

from __future__ import annotations

import numpy as np

from covidct.preprocess import bounding_box
from covidct.volume import CT

WORKING_SIZE = 256


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
