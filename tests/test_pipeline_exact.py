"""The fast paths of analyze's post-processing give exactly what the straightforward code gave."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidct.pipeline import working_grid
from covidct.pipeline.grid import first_argmax
from covidct.pipeline.morphology import dilate_mm
from covidct.preprocess import bounding_box, component_sizes, fill_holes_in_plane, inner_components
from covidct.volume import CT


def test_working_grid_matches_skimage_block_mean():
    from skimage.transform import downscale_local_mean

    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 64, 96)) * 500).astype(np.float32)  # non-integer: the order of sums shows
    ct = CT(array=arr, spacing=(2.0, 0.7, 0.7), affine=np.eye(4), is_hu=True, kind="nifti")
    work, f = working_grid(ct, target=32)
    assert f == 2 and work.array.dtype == np.float32 and work.spacing == (2.0, 1.4, 1.4)
    np.testing.assert_array_equal(work.array, downscale_local_mean(arr, (1, 2, 2)).astype(np.float32))


def test_first_argmax_is_numpy_argmax():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 3, size=(4, 5, 30, 30)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(first_argmax(list(stack)), np.argmax(stack, axis=0))


def _dilate_full(mask, spacing, mm):
    r = tuple(max(int(round(mm / s)), 0) for s in spacing)
    out = mask
    for axis, ri in enumerate(r):
        if ri:
            size = [1, 1, 1]
            size[axis] = 2 * ri + 1
            out = ndimage.maximum_filter(out.astype(np.uint8), size=tuple(size)).astype(bool)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_dilation_on_the_bounding_box_is_exact(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((12, 40, 40), bool)
    mask[tuple(rng.integers(0, s, 6) for s in mask.shape)] = True  # some near the edges
    spacing = (2.0, 0.8, 1.3)
    np.testing.assert_array_equal(dilate_mm(mask, spacing, 5.0), _dilate_full(mask, spacing, 5.0))


@pytest.mark.parametrize("seed", range(12))
def test_dilation_by_opencv_is_scipys_box_filter(seed):
    # OpenCV's rectangle per slice and its column pass along z: the voxels of scipy's maximum filter, for any
    # radius (0 along an axis included), a single slice, masks dense or sparse
    rng = np.random.default_rng(100 + seed)
    shape = (1 if seed % 4 == 0 else int(rng.integers(2, 15)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
    mask = rng.random(shape) < rng.choice([0.01, 0.1, 0.5])
    spacing = tuple(float(v) for v in rng.uniform(0.4, 6.0, 3))
    mm = float(rng.uniform(0.0, 9.0))
    np.testing.assert_array_equal(dilate_mm(mask, spacing, mm), _dilate_full(mask, spacing, mm) if shape[0] > 1
                                  else _dilate_full(mask, (np.inf, *spacing[1:]), mm))


def test_bounding_box_and_in_plane_components():
    rng = np.random.default_rng(2)
    mask = rng.random((4, 20, 25)) < 0.4
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, mask.shape)
    assert bounding_box(mask, margin=2) == tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    assert bounding_box(np.zeros((2, 3, 3), bool)) is None
    filled = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    np.testing.assert_array_equal(fill_holes_in_plane(mask), filled)
    # inner components (OpenCV flood fill from a frame) against labelling each slice: densities around the
    # percolation threshold, thin and degenerate shapes
    masks = [mask] + [rng.random(shape) < p for shape in ((3, 31, 17), (2, 1, 9), (2, 9, 1), (2, 2, 2))
                      for p in (0.2, 0.55, 0.7)] + [np.ones((2, 5, 6), bool), np.zeros((2, 5, 6), bool)]
    for m in masks:
        inner = np.zeros_like(m)
        for k, s in enumerate(m):
            lbl, _ = ndimage.label(s)
            border = np.unique(np.concatenate([lbl[0], lbl[-1], lbl[:, 0], lbl[:, -1]]))
            inner[k] = ~np.isin(lbl, border) & (lbl > 0)
        np.testing.assert_array_equal(inner_components(m), inner)


def _upsample_whole_slices(labels, shape):
    import cv2

    present = [int(c) for c in np.unique(labels)]
    out = np.zeros(shape, np.uint8)
    for k in np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1)):
        maps = np.stack([cv2.resize((labels[k] == c).astype(np.float32), shape[:0:-1], interpolation=cv2.INTER_LINEAR)
                         for c in present])
        out[k] = np.asarray(present, np.uint8)[np.argmax(maps, axis=0)]
    return out


def test_upsample_labels_on_labelled_boxes_is_exact():
    from covidct.pipeline import upsample_labels

    rng = np.random.default_rng(3)
    labels = np.zeros((3, 30, 34), np.uint8)
    labels[0, 2:12, 0:9] = 1
    labels[0, 8:20, 6:30] = 2
    labels[1][rng.random((30, 34)) < 0.1] = 3  # scattered, up to the edges
    np.testing.assert_array_equal(upsample_labels(labels, (3, 60, 68)), _upsample_whole_slices(labels, (3, 60, 68)))


def _nearest_full(labels, where):
    idx = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return labels[tuple(i[where] for i in idx)]


@pytest.mark.parametrize("seed", range(6))
def test_nearest_labels_on_boxes_is_the_whole_feature_transform(seed):
    from covidct.pipeline.morphology import nearest_labels

    rng = np.random.default_rng(seed)
    labels = np.zeros((10, 36, 40), np.uint8)
    # two "lungs" of a few blocks each, and sparse voxels (many equidistant pairs of labels 1 and 2)
    for lab in (1, 2):
        for _ in range(3):
            z, y, x = (int(rng.integers(0, s - 4)) for s in labels.shape)
            labels[z : z + 4, y : y + 6, x : x + 5] = lab
    labels[tuple(rng.integers(0, s, 8) for s in labels.shape)] = rng.integers(1, 3, 8)
    where = (rng.random(labels.shape) < 0.03) & (labels == 0)
    where[0, 0, :3] = True  # at the volume's edge, far from anything
    where &= labels == 0
    np.testing.assert_array_equal(nearest_labels(labels, where, grow=1), _nearest_full(labels, where))
    np.testing.assert_array_equal(nearest_labels(labels, where), _nearest_full(labels, where))


@pytest.mark.parametrize("touching", [True, False])
def test_split_left_right_per_component_with_inert_seeds_left_out_is_the_plain_watershed(touching):
    """Seeds of one side only: the component is that side; the watershed only where the lungs touch."""
    from skimage.segmentation import watershed

    from covidct.pipeline.lungs import _split_left_right, _two_seeds

    rng = np.random.default_rng(3)
    mask = np.zeros((8, 40, 60), bool)
    mask[1:7, 5:35, 6:28] = True
    mask[1:7, 5:35, 32:56] = True
    if touching:
        mask[2:6, 15:25, 26:34] = True  # a bridge: the lungs touch
    mask[3:5, 36:39, 10:13] = True  # a piece without seeds: unlabelled, as the flood leaves it
    mask &= rng.random(mask.shape) > 0.02
    spacing = (2.0, 0.8, 0.8)
    a, b = _two_seeds(mask)
    markers = np.zeros(mask.shape, np.int32)
    left, right = (a, b) if np.nonzero(a)[2].mean() > np.nonzero(b)[2].mean() else (b, a)
    markers[left], markers[right] = 1, 2
    in_plane = np.stack([ndimage.distance_transform_edt(m, sampling=spacing[1:]) for m in mask])
    plain = watershed(-in_plane, markers, mask=mask)
    np.testing.assert_array_equal(_split_left_right(mask, spacing), plain.astype(np.uint8))


@pytest.mark.parametrize("seed", range(4))
def test_in_plane_morphology_is_scipys(seed):
    from covidct.pipeline.morphology import in_plane, in_plane_opening
    from covidct.preprocess import IN_PLANE

    rng = np.random.default_rng(seed)
    mask = rng.random((3, 30, 41)) < rng.uniform(0.3, 0.9)  # touches every edge
    r = int(rng.integers(1, 4))
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    for kernel in (yy**2 + xx**2 <= r * r, np.ones((3, 3), bool), IN_PLANE[1]):
        it = int(rng.integers(1, 4))
        s = kernel[None]
        np.testing.assert_array_equal(in_plane("erode", mask, kernel, it), ndimage.binary_erosion(mask, s, iterations=it))
        np.testing.assert_array_equal(in_plane("dilate", mask, kernel, it), ndimage.binary_dilation(mask, s, iterations=it))
        np.testing.assert_array_equal(in_plane_opening(mask, kernel), ndimage.binary_opening(mask, s))


@pytest.mark.parametrize("seed", range(4))
def test_binary_3d_is_scipys_3d_morphology(seed):
    from covidct.pipeline.hu_rules import ellipsoid
    from covidct.pipeline.morphology import binary_3d

    rng = np.random.default_rng(seed)
    for _ in range(8):
        shape = (int(rng.integers(1, 7)), int(rng.integers(5, 30)), int(rng.integers(5, 30)))
        mask = rng.random(shape) < rng.uniform(0.2, 0.95)
        spacing = (float(rng.choice([0.8, 2.0, 5.0])), 1.5, 1.5)
        s = ellipsoid(spacing, float(rng.uniform(1, 6)), in_plane=bool(rng.integers(0, 2)), min_vox=1,
                      min_vox_z=int(rng.integers(0, 2)))
        for op, scipy_op in (("erode", ndimage.binary_erosion), ("dilate", ndimage.binary_dilation),
                             ("open", ndimage.binary_opening)):
            np.testing.assert_array_equal(binary_3d(op, mask, s), scipy_op(mask, structure=s))


@pytest.mark.parametrize("sampling", [(5.0, 0.7, 0.7), (1.0, 1.0, 1.0), (2.5, 1.37, 1.41)])
def test_distance_in_plane_is_scipys_per_slice(sampling):
    from covidct.pipeline.morphology import distance_in_plane

    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((19, 40, 33)) > 0.3)
    mask[:, 1:-1, 1:-1] |= rng.random((19, 38, 31)) > 0.97  # isolated voxels: distance one pixel
    want = np.stack([ndimage.distance_transform_edt(m, sampling=sampling[1:]) for m in mask])
    np.testing.assert_allclose(distance_in_plane(mask, sampling), want, rtol=1e-5, atol=1e-5)


def test_component_sizes_and_mean_x_are_the_plain_numbers():
    """``component_sizes`` (the mask's voxels only) and the lungs stage's ``_mean_x`` (column counts) give exactly
    ``np.bincount(labels.ravel())`` without the background and ``np.nonzero(mask)[2].mean()``."""
    from covidct.pipeline.lungs import _mean_x

    rng = np.random.default_rng(5)
    for p in (0.1, 0.5, 0.9):
        mask = rng.random((5, 30, 41)) < p
        lbl, n = ndimage.label(mask)
        plain = np.bincount(lbl.ravel(), minlength=n + 1)
        plain[0] = 0
        np.testing.assert_array_equal(component_sizes(lbl, mask, n), plain)
        for i in range(1, min(n, 5) + 1):
            assert _mean_x(lbl == i) == np.nonzero(lbl == i)[2].mean()
    assert component_sizes(np.zeros((2, 3, 3), np.int32), np.zeros((2, 3, 3), bool), 0).tolist() == [0]
