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
    prob[1, :2, :5] = 0.5  # 12 pixels in the band on slice 1: entropy 1 bit each
    prob[1, 2, :2] = 0.5
    prob[2, :, :5] = 1.0  # certain lesion
    prob[0] = 0.5  # no lungs on slice 0: not counted
    summary, per_slice = hm.uncertainty(prob, lungs, voxel_mm3=2.0, pixel_mm2=0.5)
    assert summary["uncertain_percent_of_lungs"] == pytest.approx(12.0)  # 12 of 100 lung voxels
    assert summary["uncertain_ml"] == pytest.approx(12 * 2.0 / 1000, abs=0.01)
    assert summary["mean_entropy_bits"] == pytest.approx(0.12, abs=1e-3)
    assert hm.HIGH_UNCERTAINTY_PERCENT < 12.0
    assert summary["high"] is True and hm.uncertainty_warning(summary).startswith("uncertain lesion boundaries: 12.0 %")
    assert per_slice[0] == {"uncertain_mm2": 0.0, "lesion_entropy_bits": None}
    assert per_slice[1]["uncertain_mm2"] == pytest.approx(6.0)
    assert per_slice[1]["lesion_entropy_bits"] == pytest.approx(0.24, abs=1e-3)
    assert per_slice[2]["uncertain_mm2"] == 0.0 and per_slice[2]["lesion_entropy_bits"] < 1e-4
    # uint8 input gives the same figures; no spacing: areas null, percentages kept
    s8, ps8 = hm.uncertainty(hm.to_u8(prob), lungs, None, None)
    assert s8["uncertain_percent_of_lungs"] == pytest.approx(12.0) and s8["uncertain_ml"] is None
    assert ps8[1]["uncertain_mm2"] is None and ps8[1]["lesion_entropy_bits"] == pytest.approx(0.24, abs=1e-3)


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


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """``analyze --heatmap`` of a small phantom (NIfTI) and of one 2-D slice image, through the CLI."""
    from covidct.cli import main
    from covidct.phantom import make_phantom, write_phantom

    root = tmp_path_factory.mktemp("heat")
    ph = make_phantom(shape=(12, 120, 136), seed=3)
    vol = write_phantom(ph, root / "ph", fmt="nifti")
    k = int(np.argmax((ph.lesions > 0).sum(axis=(1, 2))))
    grey = np.clip((ph.ct.array[k] + 1350.0) * 255.0 / 1500.0, 0, 255).astype(np.uint8)
    img = root / "slice.png"
    Image.fromarray(grey).save(img)
    assert main(["analyze", str(vol), "-o", str(root / "vol"), "--heatmap"]) == 0
    assert main(["analyze", str(img), "-o", str(root / "img"), "--heatmap", "--no-html"]) == 0
    return root, vol, img


def test_analyze_heatmap_outputs_lie_on_the_input_grid(analysed):
    import json

    from covidct.report import validate_report

    root, vol, _ = analysed
    out = root / "vol"
    rep = json.loads((out / "report.json").read_text())
    validate_report(rep)
    assert rep["outputs"]["heatmap"] == "heatmap/" and rep["outputs"]["lesion_probability"] == "lesion_probability.nii.gz"
    src, prob = nib.load(str(vol)), nib.load(str(out / "lesion_probability.nii.gz"))
    assert prob.shape == src.shape and np.allclose(prob.affine, src.affine)
    p = prob.get_fdata()
    assert 0.0 <= p.min() and p.max() <= 1.0 + 1e-6 and p.max() > 0.5
    lesions = np.asarray(nib.load(str(out / "lesions.nii.gz")).dataobj)
    infection = (lesions == 1) | (lesions == 2)
    assert p[infection].mean() > p[~infection].mean() + 0.3  # the probability is high where lesions were found
    pngs = sorted((out / "heatmap").glob("heatmap_*.png"))
    assert pngs and all(Image.open(q).size == (136, 120) for q in pngs)
    u = rep["uncertainty"]
    assert 0 <= u["uncertain_percent_of_lungs"] <= 100 and u["uncertain_ml"] >= 0 and 0 <= u["mean_entropy_bits"] <= 1
    with_lungs = [s for s in rep["slices"] if s["lung_mm2"] > 0]
    assert with_lungs and all(s["lesion_entropy_bits"] is not None for s in with_lungs)
    dz = rep["input"]["spacing_mm"][0]
    assert sum(s["uncertain_mm2"] for s in rep["slices"]) * dz == pytest.approx(u["uncertain_ml"] * 1000, rel=0.01)
    # an HU volume: GGO/consolidation come from the HU rule, the figures are the lesion model's own view and
    # never raise the masks' uncertainty warning
    assert "HU rule" in u["method"]
    assert not any(w.startswith("uncertain lesion boundaries") for w in rep["warnings"])
    # ... and the heatmap is said to be the lesion model's own view, in report.json and on the page
    assert f"heatmap: {hm.MODEL_ONLY_NOTE}" in rep["warnings"] and not hm.probability_drew_lesions(rep)
    page = (out / "report.html").read_text()
    assert "Lesion model uncertainty (on a whole HU volume the HU rule" in page and "<p class='sub'>Model uncertainty" not in page


def test_analyze_heatmap_of_a_slice_image_has_its_exact_size(analysed):
    import json

    root, _, img = analysed
    out = root / "img"
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == "slice" and rep["outputs"]["heatmap"] == "heatmap.png"
    size = Image.open(img).size
    assert Image.open(out / "heatmap.png").size == size and Image.open(out / "lesion_probability.png").size == size
    assert rep["uncertainty"]["uncertain_ml"] is None and rep["uncertainty"]["uncertain_percent_of_lungs"] is not None
    # a slice image: the models drew its lesions, so the heatmap is theirs and carries no such note
    assert hm.probability_drew_lesions(rep) and not any(w.startswith("heatmap:") for w in rep["warnings"])


def test_no_heatmap_without_the_flag(analysed, tmp_path):
    from covidct.cli import main

    _, vol, _ = analysed
    assert main(["analyze", str(vol), "-o", str(tmp_path / "o"), "--no-html"]) == 0
    assert not (tmp_path / "o" / "heatmap").exists() and not (tmp_path / "o" / "lesion_probability.nii.gz").exists()


def test_full_grid_probability_is_made_only_when_used():
    """Bringing the probability to a large input grid costs time: plain analyses skip it, the service keeps it."""
    from covidct.phantom import make_phantom
    from covidct.pipeline import shared_analyzer

    ph = make_phantom(shape=(8, 288, 288), spacing=(5.0, 1.2, 1.2), seed=4)
    analyzer = shared_analyzer()
    plain = analyzer(ph.ct)
    assert plain.lesion_probability is None and plain.report["uncertainty"] is not None
    kept = analyzer(ph.ct, keep_probability=True).lesion_probability
    assert kept is not None and kept.shape == ph.ct.shape
