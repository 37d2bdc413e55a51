"""Lesion-probability heatmaps and uncertainty figures (covidct.report.heatmap): exact sizes and grids,
hand-computed figures, the warning."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covidct.report import heatmap as hm


def test_infection_probability_prefers_the_infection_model():
    lesion = np.zeros((2, 4, 3, 3), np.float32)
    lesion[:, 0], lesion[:, 1], lesion[:, 2], lesion[:, 3] = 0.1, 0.2, 0.3, 0.4
    assert np.allclose(hm.infection_probability(lesion, None), 0.5)  # P(GGO) + P(consolidation)
    inf = np.full((2, 3, 3), 0.9, np.float32)
    assert np.allclose(hm.infection_probability(lesion, inf), 0.9)
    binary = np.stack([np.full((2, 3, 3), 0.25), np.full((2, 3, 3), 0.75)], axis=1)
    assert np.allclose(hm.infection_probability(binary, None), 0.75)
    assert hm.infection_probability(None, None) is None


def test_probability_volume_and_upsampling_keep_the_grid():
    p = hm.probability_volume((5, 4, 6), np.array([1, 3]), np.full((2, 4, 6), 0.5))
    assert p.dtype == np.uint8 and p.shape == (5, 4, 6)
    assert p[0].max() == 0 and (p[1] == 128).all()
    up = hm.upsample_probability(p, (5, 8, 12))
    assert up.shape == (5, 8, 12) and (up[1] == 128).all() and up[0].max() == 0
    with pytest.raises(ValueError):
        hm.upsample_probability(p, (4, 8, 12))


def test_uncertainty_figures_by_hand():
    lungs = np.zeros((3, 10, 10), np.uint8)
    lungs[1:, :, :5] = 1  # 50 lung pixels on slices 1 and 2
    prob = np.zeros((3, 10, 10), np.float32)
    prob[1, :2, :5] = 0.5  # 10 pixels in the band on slice 1: entropy 1 bit each
    prob[2, :, :5] = 1.0  # certain lesion
    prob[0] = 0.5  # no lungs on slice 0: not counted
    summary, per_slice = hm.uncertainty(prob, lungs, voxel_mm3=2.0, pixel_mm2=0.5)
    assert summary["uncertain_percent_of_lungs"] == pytest.approx(10.0)  # 10 of 100 lung voxels
    assert summary["uncertain_ml"] == pytest.approx(10 * 2.0 / 1000, abs=0.01)
    assert summary["mean_entropy_bits"] == pytest.approx(0.1, abs=1e-3)
    assert summary["high"] is True and hm.uncertainty_warning(summary).startswith("uncertain lesion boundaries: 10.0 %")
    assert per_slice[0] == {"uncertain_mm2": 0.0, "lesion_entropy_bits": None}
    assert per_slice[1]["uncertain_mm2"] == pytest.approx(5.0)
    assert per_slice[1]["lesion_entropy_bits"] == pytest.approx(0.2, abs=1e-3)
    assert per_slice[2]["uncertain_mm2"] == 0.0 and per_slice[2]["lesion_entropy_bits"] < 1e-4
    # uint8 input gives the same figures; no spacing: areas null, percentages kept
    s8, ps8 = hm.uncertainty(hm.to_u8(prob), lungs, None, None)
    assert s8["uncertain_percent_of_lungs"] == pytest.approx(10.0) and s8["uncertain_ml"] is None
    assert ps8[1]["uncertain_mm2"] is None and ps8[1]["lesion_entropy_bits"] == pytest.approx(0.2, abs=1e-3)


def test_low_uncertainty_and_no_model():
    lungs = np.ones((2, 8, 8), np.uint8)
    summary, _ = hm.uncertainty(np.full((2, 8, 8), 0.02), lungs, 1.0, 1.0)
    assert summary["high"] is False and hm.uncertainty_warning(summary) is None
    none, per_slice = hm.uncertainty(None, lungs, 1.0, 1.0)
    assert none["uncertain_percent_of_lungs"] is None and none["method"].startswith("none")
    assert per_slice == [{"uncertain_mm2": None, "lesion_entropy_bits": None}] * 2


def test_heatmap_overlays_have_the_input_size(tmp_path):
    from covidct.io import load_ct
    from covidct.phantom import make_phantom, write_phantom

    path = write_phantom(make_phantom(shape=(6, 40, 52), seed=1), tmp_path / "ph", fmt="nifti")
    ct = load_ct(path)
    lungs = np.zeros(ct.shape, np.uint8)
    lungs[2:4, 10:30, 10:40] = 1
    prob = np.zeros(ct.shape, np.uint8)
    prob[2, 12:20, 12:20] = 200
    paths = hm.save_heatmap_pngs(ct, prob, lungs, tmp_path / "heat")
    assert [p.name for p in paths] == ["heatmap_0002.png", "heatmap_0003.png"]
    for p in paths:
        im = Image.open(p)
        assert im.mode == "RGB" and im.size == (ct.shape[2], ct.shape[1])
    rgb = np.asarray(Image.open(paths[0])).astype(int)
    assert rgb[15, 15, 0] - rgb[15, 15, 2] > 40  # p = 0.78: inferno's orange over the grey CT
    assert rgb[35, 45, 0] == rgb[35, 45, 1] == rgb[35, 45, 2]  # p = 0: the grey CT unchanged
    # the NIfTI of probabilities lies on the input's exact grid and reads back as 0..1
    out = hm.save_probability_nifti(prob, ct, tmp_path / "lesion_probability.nii.gz")
    src, img = nib.load(str(path)), nib.load(str(out))
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    data = img.get_fdata()
    assert data.max() == pytest.approx(200 / 255, abs=1e-3) and data.min() == 0.0


def test_heatmap_rgba_is_transparent_where_probability_is_low():
    p = np.array([[0.0, 0.01, 0.5, 1.0]], np.float32)
    rgba = hm.heatmap_rgba(p)
    assert rgba.shape == (1, 4, 4)
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0 and 0 < rgba[0, 2, 3] < rgba[0, 3, 3]
