"""The model-input normalisation and the lung-mask helpers."""

import numpy as np
import pytest

from covidct.preprocess import (
    NormalisationConfig,
    apply_window,
    bounding_box,
    crop_to_lungs,
    cut_lung_beyond,
    kmeans_lung_mask,
    lung_slices,
    off_corner_components,
    resize_slices,
    threshold_lung_mask,
    to_model_input,
    window_range,
)
from covidct.train.datasets import ToModelInputd


def _chest_slice(size: int = 96) -> np.ndarray:
    """A crude HU slice: air outside, soft-tissue body, two dark lungs."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), -1000.0, np.float32)
    body = ((yy - size / 2) / (size * 0.4)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 < 1
    img[body] = 40.0
    for cx in (size * 0.32, size * 0.68):
        lung = ((yy - size / 2) / (size * 0.25)) ** 2 + ((xx - cx) / (size * 0.12)) ** 2 < 1
        img[lung] = -850.0
    return img


def test_window_presets():
    assert window_range("papers") == (-1000.0, 400.0)
    assert window_range("lung") == (-1350.0, 150.0)
    x = apply_window(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]), "papers")
    np.testing.assert_allclose(x, [0, 0, 0.5, 1, 1])


def test_model_input_range_shape_and_stack():
    hu = _chest_slice()
    y = to_model_input(hu, is_hu=True)
    assert y.shape == hu.shape and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0
    stack = to_model_input(np.stack([hu, hu]), is_hu=True)
    np.testing.assert_array_equal(stack[0], y)


def test_display_and_hu_inputs_agree():
    """The same anatomy as HU and as any monotone 8-bit display window maps to nearly the same input."""
    hu = _chest_slice() + np.random.default_rng(0).normal(0, 15, (96, 96)).astype(np.float32)
    from_hu = to_model_input(hu, is_hu=True)
    for lo, hi in ((-1350, 150), (-1200, 600), (-1000, 0)):
        display = np.clip((hu - lo) / (hi - lo), 0, 1) * 255
        from_display = to_model_input(np.round(display), is_hu=False)
        lungs = hu < -600
        assert abs(from_display[lungs].mean() - from_hu[lungs].mean()) < 0.08
    naive_gap = abs(np.clip((hu + 1350) / 1500, 0, 1)[hu < -600].mean() - apply_window(hu, "papers")[hu < -600].mean())
    assert naive_gap > 0.05  # without the normalisation the two sources disagree


def test_blank_slice_stays_blank():
    assert not to_model_input(np.zeros((16, 16)), is_hu=False).any()


def test_config_roundtrip_and_dict_transform():
    cfg = NormalisationConfig(clahe_clip=None)
    assert NormalisationConfig.from_dict(cfg.as_dict()) == cfg
    out = ToModelInputd(keys=("image",), cfg=cfg)({"image": _chest_slice(), "is_hu": True, "label": 1})
    assert out["label"] == 1 and out["image"].max() <= 1.0


def test_bad_dims():
    with pytest.raises(ValueError):
        to_model_input(np.zeros((2, 2, 2, 2)), is_hu=True)


def test_threshold_lung_mask_finds_two_lungs():
    vol = np.stack([_chest_slice()] * 4)
    mask = threshold_lung_mask(vol)
    from scipy import ndimage

    _, n = ndimage.label(mask[1])
    assert n == 2
    assert not mask[:, 0, :].any()  # outside air excluded
    assert mask.sum() > 0.08 * mask.size


def test_lungs_cut_by_the_field_of_view_are_found_beyond_the_lung_field():
    """A tight field of view cuts the body so the lungs touch the image edge between chest wall: the lung field calls
    them outside air; ``cut_lung_beyond`` finds them in the slices beyond the field's lung where they join it in 3-D
    (higher up the lungs are narrower and enclosed), but not the air in a table that spans the image's width."""
    full = _chest_slice()[:, 22:74]  # 22 columns off each side: the lungs reach the edges
    narrow = full.copy()
    narrow[:, :6] = narrow[:, -6:] = 40.0  # higher up the lungs are narrower: enclosed by chest wall
    vol = np.stack([full, full, full, narrow, narrow])  # z from the base up
    vol[:, 87:93, :] = 40.0  # a table under the patient, from edge to edge ...
    vol[:, 89:91, :] = -900.0  # ... with air inside it
    assert vol[0, 48, 0] == -850 and vol[0, 48, -1] == -850 and vol[0, 0, 0] == -1000
    field = threshold_lung_mask(vol)
    assert not field[:3].any() and field[3:].any()  # the cut lungs: "outside the body"
    assert off_corner_components(vol < -400)[:, 89:91, :].all()  # the table's air reaches no corner ...
    below = cut_lung_beyond(vol, field, 3, -1)
    assert below.shape == (3, 96, 52)
    assert below[:, 48, 0].all() and below[:, 48, -1].all() and not below[:, 0, :].any()
    assert not below[:, 89:91, :].any()  # ... but joins no lung
    assert (cut_lung_beyond(vol, field, 3, 1) == field[4:]).all()  # above: the enclosed lung, nothing cut
    body = np.full((1, 20, 20), 40.0)
    body[0, 5:15, 0:8] = -850  # air at the edge, corners all tissue
    assert off_corner_components(body < -400)[0, 5:15, 0:8].all()


def test_kmeans_lung_mask_and_crop():
    img = (apply_window(_chest_slice(), "lung") * 255).astype(np.float32)
    mask = kmeans_lung_mask(img, erosion=1, dilation=0)
    assert mask.sum() > 0 and not mask[0].any()
    crop, box = crop_to_lungs(img, mask, margin=2)
    assert crop.shape[0] < img.shape[0] and crop.shape[1] < img.shape[1]
    assert bounding_box(np.zeros((4, 4), bool)) is None


def test_lung_slices_and_resize():
    m = np.zeros((10, 4, 4), bool)
    m[3:6, 1, 1] = True
    np.testing.assert_array_equal(lung_slices(m), [3, 4, 5])
    np.testing.assert_array_equal(lung_slices(m, margin=1), [2, 3, 4, 5, 6])
    lab = np.zeros((8, 8), np.uint8)
    lab[2:4, 2:4] = 3
    up = resize_slices(lab, (16, 16), order=0)
    assert set(np.unique(up)) == {0, 3}
