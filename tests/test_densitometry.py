"""Lung densitometry (``covidct.pipeline.densitometry``): known HU in known places give known figures."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.pipeline.densitometry import LCTA_CLASSES, densitometry, lcta_affected
from covidct.volume import CT, affine_from_spacing

SPACING = (2.0, 1.0, 1.0)  # 0.002 mL per voxel


def _ct(hu: np.ndarray, is_hu: bool = True, spacing: tuple[float, float, float] = SPACING) -> CT:
    return CT(hu.astype(np.float32), spacing, affine_from_spacing(spacing), is_hu, "array")


def _volume() -> tuple[CT, np.ndarray]:
    """Left lung: front half aerated (-860 HU), back half infiltrated (-600 HU). Right lung by height: lower third
    emphysema (-1000 HU), middle aerated (-900 HU), upper third vessel density (+100 HU)."""
    hu = np.full((6, 20, 20), 40.0)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[:, 2:12, 11:19] = 1  # rows 2..11: ventral half 2..6, dorsal half 7..11
    hu[:, 2:7, 11:19], hu[:, 7:12, 11:19] = -860.0, -600.0
    lungs[:, 2:12, 1:9] = 2  # slices 0..5: lower third 0-1, middle 2-3, upper 4-5
    hu[0:2, 2:12, 1:9], hu[2:4, 2:12, 1:9], hu[4:6, 2:12, 1:9] = -1000.0, -900.0, 100.0
    return _ct(hu), lungs


def test_known_volume_gives_known_figures():
    ct, lungs = _volume()
    d = densitometry(ct, lungs)
    left, right, total = d["left"], d["right"], d["total"]
    assert left["lung_ml"] == right["lung_ml"] == pytest.approx(480 * 0.002)
    assert left["mean_hu"] == -730.0 and left["perc15_hu"] == -860.0 and left["laa950_percent"] == 0.0
    assert left["classes_ml"] == {"emphysema": 0.0, "inflated": 0.48, "infiltrated": 0.48, "collapsed": 0.0, "vessels": 0.0}
    assert left["affected_percent"] == 50.0
    assert left["regions"]["ventral"]["affected_percent"] == 0.0 and left["regions"]["dorsal"]["affected_percent"] == 100.0
    assert {left["regions"][r]["affected_percent"] for r in ("upper", "middle", "lower")} == {50.0}
    assert right["mean_hu"] == -600.0 and right["perc15_hu"] == -1000.0
    assert right["laa950_percent"] == pytest.approx(100 / 3, abs=1e-3)
    assert right["classes_ml"]["vessels"] == 0.32 and right["affected_percent"] == 0.0  # vessels are not parenchyma
    assert right["regions"]["upper"]["affected_percent"] is None  # all vessel density: no parenchyma to share
    assert right["regions"]["lower"]["classes_ml"]["emphysema"] == 0.32
    assert total["lung_ml"] == pytest.approx(0.96 * 2) and total["mean_hu"] == -665.0
    assert total["affected_percent"] == 30.0  # 240 infiltrated voxels of 800 parenchyma (vessels left out)
    assert d["classes_hu"]["infiltrated"] == [-750.0, -400.0]


def test_class_bounds_follow_lung_ct_analyzer():
    """Lower bounds included, upper excluded, fractional HU too; below -1050 and from 3000 HU in no class."""
    values = np.array([-950.5, -950.0, -750.0, -400.0, -0.5, 0.0, 2999.5, 3000.0, -1050.0, -1050.5], np.float32)
    hu = np.tile(values, (2, 1, 1))
    lungs = np.ones(hu.shape, np.uint8)
    d = densitometry(_ct(hu, spacing=(10.0, 10.0, 10.0)), lungs)["left"]  # 1 mL voxels
    vox = {name: round(ml) for name, ml in d["classes_ml"].items()}
    assert vox == {"emphysema": 4, "inflated": 2, "infiltrated": 2, "collapsed": 4, "vessels": 4}
    assert d["laa950_percent"] == 30.0  # -950.5, -1050, -1050.5: below -950 HU of all lung voxels
    affected = lcta_affected(hu, lungs)
    assert affected.sum() == vox["infiltrated"] + vox["collapsed"]
    assert [c[0] for c in LCTA_CLASSES] == list(vox)


@pytest.mark.parametrize("case", ["display values", "single slice", "no lungs"])
def test_not_measured_where_it_does_not_apply(case):
    ct, lungs = _volume()
    if case == "display values":
        ct = _ct(ct.array, is_hu=False)
    elif case == "single slice":
        ct, lungs = _ct(ct.array[:1]), lungs[:1]
    else:
        lungs = np.zeros_like(lungs)
    assert densitometry(ct, lungs) is None


def test_one_lung_only():
    ct, lungs = _volume()
    lungs[lungs == 2] = 0
    d = densitometry(ct, lungs)
    assert d["right"] is None and d["total"]["lung_ml"] == d["left"]["lung_ml"]
    assert d["total"]["affected_percent"] == d["left"]["affected_percent"]


def test_emphysema_simulated_on_a_phantom_shows_in_laa950():
    """Through the whole pipeline: low attenuation painted over 30 % of a lesion-free phantom's lung field stays in
    the lung mask and LAA-950 follows its share of the mask (the real volumes: docs/BENCHMARKS.md, fortieth session)."""
    from covidct.evaluate.hu_volumes import emphysema_simulated
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer

    analyzer = Analyzer()
    ph = make_phantom(seed=5, lesion_burden=0.0, shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))
    before = analyzer(ph.ct, None, html=False).report["densitometry"]["total"]
    ct, region = emphysema_simulated(ph.ct, 0.3)
    res = analyzer(ct, None, html=False)
    after = res.report["densitometry"]["total"]
    share = 100.0 * np.count_nonzero(region & (res.lungs > 0)) / np.count_nonzero(res.lungs)
    assert before["laa950_percent"] < 2.0 and share > 20.0
    assert after["laa950_percent"] == pytest.approx(before["laa950_percent"] + share, abs=0.1 * share)
    assert after["mean_hu"] < before["mean_hu"] and after["perc15_hu"] < before["perc15_hu"]


def test_a_volume_mapped_from_display_values_is_marked_approximate():
    import dataclasses

    ct, lungs = _volume()
    assert "approximate" not in densitometry(ct, lungs)["method"]
    mapped = dataclasses.replace(ct, meta={**ct.meta, "display_window": {"air_value": 0.0}})
    assert "mapped back to approximate HU" in densitometry(mapped, lungs)["method"]


def test_non_finite_voxels_given_to_the_api_are_left_out():
    """Files are made finite on reading, but an array handed to the API may hold NaN or Inf: those voxels are left
    out of the figures instead of breaking the analysis (they did, before this test)."""
    ct, lungs = _volume()
    arr = ct.array.copy()
    arr[0, 2, 11], arr[1, 2, 11], arr[2, 2, 11] = np.nan, np.inf, -np.inf  # three ventral left-lung voxels
    d = densitometry(_ct(arr), lungs)
    assert d["left"]["lung_ml"] == pytest.approx(477 * 0.002, abs=0.005) and d["left"]["mean_hu"] == -729.2
    assert d["right"] == densitometry(ct, lungs)["right"]
    arr[lungs == 2] = np.nan  # a lung without one finite value has no figures
    d = densitometry(_ct(arr), lungs)
    assert d["right"] is None and d["total"]["lung_ml"] == d["left"]["lung_ml"]


def test_analyze_an_array_with_nan_voxels():
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer

    ph = make_phantom(seed=1, shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))
    arr = ph.ct.array.copy()
    arr[10, 60:64, 30:34] = np.nan
    res = Analyzer()(ph.ct.with_array(arr), None, html=False)
    assert np.isfinite(res.report["densitometry"]["total"]["mean_hu"])
