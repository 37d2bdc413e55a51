"""Whole display-range volumes mapped back to approximate HU (covidct.display_hu) and analysed as HU volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from covidct.display_hu import estimate_window, to_hu
from covidct.evaluate.hu_volumes import display_windowed
from covidct.io import load_ct
from covidct.phantom import make_phantom
from covidct.pipeline import Analyzer
from covidct.pipeline.load import DISPLAY_TO_HU_ENV


def windowed(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    return display_windowed(hu, level, width).astype(np.uint8)  # as an 8-bit file stores it


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=1, lesion_burden=0.1, shape=(24, 160, 160), spacing=(5.0, 2.2, 2.2))


@pytest.mark.parametrize(("level", "width"), [(-600, 1500), (-500, 2000), (-550, 1600)])
def test_lung_windows_are_undone(phantom, level, width):
    """A lung window (its top above soft tissue) is found from outside air and soft tissue, and undone to within a
    few HU (the 8-bit step of these windows is 6-8 HU)."""
    hu = phantom.ct.array
    window = estimate_window(windowed(hu, level, width))
    assert not isinstance(window, str), window
    assert window.hu_per_unit == pytest.approx(width / 255.0, rel=0.03)
    assert window.hi_hu == pytest.approx(level + width / 2, abs=30)  # the top value is the window's (bone is clipped)
    mapped = to_hu(windowed(hu, level, width), window)
    body = (hu >= -950) & (hu <= 100)
    assert float(np.median(np.abs(mapped[body] - hu[body]))) < 15


@pytest.mark.parametrize(("level", "width", "why"), [
    (40, 400, "no air"),  # mediastinal window: air and lung clipped together
    (-700, 1000, "too close to air"),  # top at -200 HU: fat and soft tissue clipped, only air and lung left
])
def test_untrustworthy_windows_are_refused(phantom, level, width, why):
    reason = estimate_window(windowed(phantom.ct.array, level, width))
    assert isinstance(reason, str) and why in reason


@pytest.mark.parametrize(("level", "width"), [(-600, 1200), (-700, 1500)])
def test_windows_clipping_soft_tissue_are_undone_on_air_and_fat(phantom, level, width):
    """A window whose top clips soft tissue (W1200/L-600, a common lung window: top at 0 HU) shows fat as its highest
    peak: the map rests on outside air and fat, and reads like the HU original."""
    hu = phantom.ct.array
    window = estimate_window(windowed(hu, level, width))
    assert not isinstance(window, str), window
    assert window.tissue_value is None and window.fat_seen
    assert window.hi_hu == pytest.approx(level + width / 2, abs=30)
    mapped = to_hu(windowed(hu, level, width), window)
    body = (hu >= -950) & (hu <= 100)
    assert float(np.median(np.abs(mapped[body] - hu[body]))) < 15


def test_soft_tissue_peak_is_not_taken_for_fat():
    """A peak with only its own upper tail above it (soft tissue under a top near +100 HU) is not fat: taken as fat it
    would put the top below -40 HU. It is taken as soft tissue. Synthetic histogram: air, lung, soft tissue, a
    clipped top."""
    rng = np.random.default_rng(0)
    vol = np.full((8, 64, 64), 10.0, np.float32)  # outside air, the border's value
    inner = np.s_[:, 8:56, 8:56]
    body = rng.normal(200.0, 12.0, size=vol[inner].shape)  # soft tissue near the top
    body[:, 10:38, 4:20] = rng.normal(40.0, 6.0, size=(8, 28, 16))  # lung
    body[:, 40:44, 40:44] = 0.0  # the clipped minimum (not the border's air)
    vol[inner] = np.clip(np.rint(body), 0, 211)  # the top clips the upper tail of soft tissue
    window = estimate_window(vol)
    assert not isinstance(window, str), window
    assert window.tissue_value is not None and not window.fat_seen and window.hi_hu > 40.0


@pytest.mark.parametrize(("level", "width"), [(-650, 1500), (-600, 1400), (-500, 1200)])
def test_soft_tissue_seen_whole_under_a_top_clipping_bone_is_undone(phantom, level, width):
    """A lean patient (no fat peak) with much bone and contrast above a top at +100 HU: more voxels sit at the top
    value than 0.3x those in the soft-tissue peak's band, yet the peak is seen whole (only its upper tail lies
    between it and the top), so the air / soft-tissue map is kept (before: refused, cap001's three such windows)."""
    rng = np.random.default_rng(0)
    lean = phantom.ct.array.copy()
    fat = (lean > -160) & (lean < -50)
    lean[fat] = rng.normal(40.0, 12.0, int(fat.sum()))
    soft = (lean > 0) & (lean < 80)
    lean[soft & (rng.random(lean.shape) < 0.3)] = 700.0
    window = estimate_window(windowed(lean, level, width))
    assert not isinstance(window, str), window
    assert window.tissue_value is not None and not window.fat_seen and window.clip_ratio > 0.3
    assert window.hi_hu == pytest.approx(level + width / 2, abs=30)
    mapped = to_hu(windowed(lean, level, width), window)
    body = (lean >= -950) & (lean <= 100)
    assert float(np.median(np.abs(mapped[body] - lean[body]))) < 15


def test_flat_volume_is_refused():
    assert isinstance(estimate_window(np.full((4, 32, 32), 7.0)), str)


def test_display_volume_is_analysed_in_hu(phantom, tmp_path, monkeypatch):
    """A windowed NIfTI volume gets the HU analysis (HU rules) and says so; it reads like the exact inverse of its
    window (what the 8-bit values allow) and like its HU original. With the mapping turned off it is analysed as
    display values, as before."""
    ct = phantom.ct
    level, width = -600, 1500
    path = tmp_path / "display.nii.gz"
    nib.save(nib.Nifti1Image(windowed(ct.array, level, width).transpose(2, 1, 0), ct.affine), path)
    display = load_ct(path)
    assert not display.is_hu and any("treated as non-HU" in w for w in display.warnings)
    analyzer = Analyzer()
    original = analyzer(ct, None, html=False).report
    exact = ct.with_array(windowed(ct.array, level, width) * np.float32(width / 255.0) + np.float32(level - width / 2))
    inverse = analyzer(exact, None, html=False).report
    mapped = analyzer(display, tmp_path / "out", html=True).report
    assert mapped["input"]["is_hu"] is True and mapped["input"]["display_window"]["hu_per_unit"] > 0
    assert any("mapped to approximate HU" in w for w in mapped["warnings"])
    assert not any("treated as non-HU" in w for w in mapped["warnings"])
    assert mapped["diagnosis"]["label"] == original["diagnosis"]["label"] == inverse["diagnosis"]["label"]
    assert mapped["lungs"]["total_ml"] == pytest.approx(inverse["lungs"]["total_ml"], rel=0.02)
    assert mapped["lesions"]["total_ml"] == pytest.approx(inverse["lesions"]["total_ml"], rel=0.15, abs=2.0)
    assert "mapped from display values" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    saved = nib.load(tmp_path / "out" / "lungs.nii.gz")
    np.testing.assert_allclose(saved.affine, nib.load(path).affine)  # masks stay on the input's grid

    monkeypatch.setenv(DISPLAY_TO_HU_ENV, "0")
    as_display = analyzer(display, None, html=False).report
    assert as_display["input"]["is_hu"] is False and as_display["input"]["display_window"] is None
    assert any("could not be mapped to HU" in w and DISPLAY_TO_HU_ENV in w for w in as_display["warnings"])


def test_values_stored_without_the_intercept_are_undone(phantom):
    """HU + 1024 (a converter that dropped the rescale intercept): air near 0, nothing below it, bone's long tail
    above; the map found is the identity shifted by 1024 HU, within a few percent."""
    raw = np.maximum(phantom.ct.array + 1024.0, 0.0)
    window = estimate_window(raw)
    assert not isinstance(window, str), window
    assert window.hu_per_unit == pytest.approx(1.0, rel=0.03)
    mapped = to_hu(raw, window)
    body = (phantom.ct.array >= -950) & (phantom.ct.array <= 100)
    assert float(np.median(np.abs(mapped[body] - phantom.ct.array[body]))) < 15


def test_segment_maps_a_display_volume_too(phantom, tmp_path, capsys):
    """`covidct segment` on a windowed volume segments it as the HU volume it came from, and says so."""
    from covidct.cli import main

    ct = phantom.ct
    for name, arr in (("hu", ct.array), ("display", windowed(ct.array, -600, 1500))):
        nib.save(nib.Nifti1Image(np.asarray(arr).transpose(2, 1, 0), ct.affine), tmp_path / f"{name}.nii.gz")
        assert main(["segment", str(tmp_path / f"{name}.nii.gz"), "-o", str(tmp_path / name), "--task", "lungs"]) == 0
    assert "mapped to approximate HU" in capsys.readouterr().err
    hu = nib.load(next((tmp_path / "hu").glob("*.nii.gz"))).get_fdata() > 0
    shown = nib.load(next((tmp_path / "display").glob("*.nii.gz"))).get_fdata() > 0
    assert 2 * (hu & shown).sum() / (hu.sum() + shown.sum()) > 0.97


def test_window_clipping_the_lungs_stops_analyze_with_one_line(phantom, tmp_path, capsys):
    """A mediastinal window (W400/L40: everything below -160 HU is its minimum) hides the lung's density: `analyze`
    stops with a one-line error and writes nothing, rather than reading the hidden lungs as normal. A lung window of
    the same volume is not stopped (its minimum is only air outside the body)."""
    from covidct.cli import main
    from covidct.display_hu import CLIPPED_LUNG_SHARE, clipped_lung_share

    ct = phantom.ct
    assert clipped_lung_share(windowed(ct.array, 40, 400), ct.spacing) > 2 * CLIPPED_LUNG_SHARE
    assert clipped_lung_share(windowed(ct.array, -600, 1500), ct.spacing) < 0.1 * CLIPPED_LUNG_SHARE
    path = tmp_path / "mediastinal.nii.gz"
    nib.save(nib.Nifti1Image(windowed(ct.array, 40, 400).transpose(2, 1, 0), ct.affine), path)
    assert main(["analyze", str(path), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clips the lungs" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_segment_stops_on_a_window_clipping_the_lungs_for_lesions_only(phantom, tmp_path, capsys):
    """`covidct segment` of a mediastinal-window volume: lesions need the lung's density and stop with the error; the
    lung outline does not, and is still segmented (with the not-mapped warning)."""
    from covidct.cli import main

    ct = phantom.ct
    path = tmp_path / "mediastinal.nii.gz"
    nib.save(nib.Nifti1Image(windowed(ct.array, 40, 400).transpose(2, 1, 0), ct.affine), path)
    assert main(["segment", str(path), "-o", str(tmp_path / "inf"), "--task", "infection"]) != 0
    assert "clips the lungs" in capsys.readouterr().err
    assert main(["segment", str(path), "-o", str(tmp_path / "lungs"), "--task", "lungs"]) == 0
    assert "could not be mapped" in capsys.readouterr().err
    assert any((tmp_path / "lungs").glob("*.nii.gz"))


def test_unmapped_display_volume_stops_analyze_unless_asked_for(phantom, tmp_path, capsys, monkeypatch):
    """A whole display volume whose window cannot be undone (W1000/L-700: only air and lung left) is not read as
    display values by `analyze`, which would call healthy lungs diseased: one-line error, nothing written. With
    COVIDCT_DISPLAY_TO_HU=0 (display analysis asked for) it is analysed, with the warning."""
    from covidct.cli import main

    ct = phantom.ct
    path = tmp_path / "narrow.nii.gz"
    nib.save(nib.Nifti1Image(windowed(ct.array, -700, 1000).transpose(2, 1, 0), ct.affine), path)
    assert main(["analyze", str(path), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not be undone" in err[0] and "too close to air" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    monkeypatch.setenv(DISPLAY_TO_HU_ENV, "0")
    assert main(["analyze", str(path), "-o", str(tmp_path / "asked"), "--no-html"]) == 0
    assert (tmp_path / "asked" / "report.json").is_file()


def test_info_says_whether_analyze_can_undo_the_window(phantom, tmp_path, capsys):
    """`covidct info` on a whole display volume tells, before any analysis, whether its window was found (and the HU
    range it maps to) or why `analyze` would stop."""
    import json

    from covidct.cli import main

    ct = phantom.ct
    found = {}
    for level, width in ((-600, 1500), (-700, 1000)):
        path = tmp_path / f"w{width}.nii.gz"
        nib.save(nib.Nifti1Image(windowed(ct.array, level, width).transpose(2, 1, 0), ct.affine), path)
        main(["info", str(path), "--json"])
        found[width] = json.loads(capsys.readouterr().out)["hu_map"]
    assert found[1500].startswith("found from outside air") and "HU" in found[1500]
    assert found[1000].startswith("none, analyze stops") and "too close to air" in found[1000]
    hu_path = tmp_path / "hu.nii.gz"
    nib.save(nib.Nifti1Image(ct.array.transpose(2, 1, 0), ct.affine), hu_path)
    capsys.readouterr()
    main(["info", str(hu_path), "--json"])
    assert "hu_map" not in json.loads(capsys.readouterr().out)  # HU volumes need no map
