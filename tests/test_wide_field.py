"""A reconstruction field of view wider than the body: the simulation (covidct.evaluate.acquisitions), the box the
networks then see (covidct.pipeline.grid.lung_field_box) and `analyze` on a phantom in a wide field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidct.evaluate.acquisitions import wide_field_simulated
from covidct.phantom import make_phantom
from covidct.pipeline.grid import (
    TRAINED_LUNG_FRACTION,
    crop_in_plane,
    lung_field,
    lung_field_box,
    paste_in_plane,
)


@pytest.fixture(scope="module")
def healthy():
    return make_phantom(seed=213, lesions=False, effusion=False, shape=(16, 112, 112), spacing=(8.0, 3.5, 3.5))


def world(ct, x, y, z):
    return (ct.affine @ np.array([x, y, z, 1.0]))[:3]


def test_the_wide_field_keeps_the_chest_where_it_was(healthy):
    ct = healthy.ct
    wide = wide_field_simulated(ct, 192)
    assert wide.shape == (16, 192, 192) and wide.spacing == ct.spacing
    np.testing.assert_array_equal(wide.array[:, 40:152, 40:152], ct.array)
    outside = np.ones(wide.shape, bool)
    outside[:, 40:152, 40:152] = False
    assert wide.array[outside].min() >= -1024 and abs(np.median(wide.array[:, 20:38, 60:130]) + 1000) < 5
    assert (wide.array[:, 0, 0] == -1024).all() and wide.array[:, 96, 5].max() > -1024  # outside / inside the circle
    np.testing.assert_allclose(world(wide, 40, 40, 3), world(ct, 0, 0, 3))  # the same place in the patient
    np.testing.assert_array_equal(wide_field_simulated(ct, 192).array, wide.array)  # deterministic
    with pytest.raises(ValueError, match="cannot hold"):
        wide_field_simulated(ct, 100)


def test_the_networks_see_a_box_centred_on_narrow_lungs(healthy):
    ct = healthy.ct
    assert lung_field_box(ct) is None  # the phantom's lungs span 68 % of its width: the whole field, as before
    wide = wide_field_simulated(ct, 192)
    box = lung_field_box(wide)
    assert box is not None
    lungs = np.pad(healthy.lungs > 0, ((0, 0), (40, 40), (40, 40))).any(0)
    xs, ys = np.flatnonzero(lungs.any(0)), np.flatnonzero(lungs.any(1))
    side = box[0].stop - box[0].start
    assert side == box[1].stop - box[1].start  # square: the networks' input is
    assert abs(side * TRAINED_LUNG_FRACTION - (xs[-1] - xs[0] + 1)) <= 4  # the lungs span the trained fraction
    assert box[1].start < xs[0] and xs[-1] < box[1].stop and box[0].start < ys[0] and ys[-1] < box[0].stop
    cut = crop_in_plane(wide, box)
    np.testing.assert_allclose(world(cut, 0, 0, 5), world(wide, box[1].start, box[0].start, 5))
    back = paste_in_plane(cut.array, wide.shape, box)
    outside = np.ones(wide.shape, bool)
    outside[:, box[0], box[1]] = False
    assert np.array_equal(back[:, box[0], box[1]], wide.array[:, box[0], box[1]]) and not back[outside].any()


def test_analyze_measures_a_chest_in_a_wide_field_as_in_its_own(healthy, tmp_path):
    from covidct.pipeline import analyze

    own = analyze(healthy.ct, None).report
    wide_ct = wide_field_simulated(healthy.ct, 192)
    wide = analyze(wide_ct, tmp_path)
    assert wide.lungs.shape == wide_ct.shape
    box = lung_field_box(wide_ct)
    outside = np.ones(wide_ct.shape, bool)
    outside[:, box[0], box[1]] = False
    assert not wide.lungs[outside].any() and not wide.lesions[outside].any()
    assert wide.report["diagnosis"]["label"] == own["diagnosis"]["label"] == "normal"
    assert own["input"]["analysed_box_yx"] is None
    assert wide.report["input"]["analysed_box_yx"] == [[box[0].start, box[0].stop], [box[1].start, box[1].stop]]
    from covidct.report.schema import validate_report

    validate_report(json.loads((tmp_path / "report.json").read_text()))
    assert "a box centred on the lungs" in (tmp_path / "report.html").read_text()
    for side in ("left_ml", "right_ml"):
        a, b = own["lungs"][side], wide.report["lungs"][side]
        assert abs(a - b) < 0.03 * a, (side, a, b)


def test_segment_finds_the_same_lungs_in_a_wide_field(healthy, tmp_path):
    """`covidct segment` on a NIfTI of the chest in a wide field: its lungs where they are in its own field."""
    import nibabel as nib

    from covidct.cli import main

    for name, ct in (("own", healthy.ct), ("wide", wide_field_simulated(healthy.ct, 192))):
        nib.save(nib.Nifti1Image(ct.array.transpose(2, 1, 0), ct.affine), tmp_path / f"{name}.nii.gz")
        assert main(["segment", str(tmp_path / f"{name}.nii.gz"), "-o", str(tmp_path / name), "--task", "lungs"]) == 0
    own = nib.load(next((tmp_path / "own").glob("*.nii.gz"))).get_fdata() > 0
    wide = nib.load(next((tmp_path / "wide").glob("*.nii.gz"))).get_fdata() > 0
    assert wide.shape == (192, 192, 16)
    inside = wide[40:152, 40:152]
    assert wide.sum() == inside.sum() and 2 * (own & inside).sum() / (own.sum() + inside.sum()) > 0.95


def test_the_whole_field_where_the_lungs_fill_it(healthy):
    """Lungs spanning 60 % of the width or more (every series here), display values and single slices: no box."""
    import dataclasses

    ct = healthy.ct
    xs = np.flatnonzero((healthy.lungs > 0).any((0, 1)))
    ys = np.flatnonzero((healthy.lungs > 0).any((0, 2)))
    keep = (slice(max(ys[0] - 12, 0), ys[-1] + 12), slice(xs[0] - 5, xs[-1] + 6))  # lungs over 90 % of the width
    assert lung_field_box(crop_in_plane(ct, keep)) is None
    wide = wide_field_simulated(ct, 192)
    assert lung_field_box(dataclasses.replace(wide, is_hu=False)) is None
    assert lung_field_box(dataclasses.replace(wide, array=wide.array[8:9])) is None


def test_an_airless_lung_stays_in_the_box(healthy):
    """A lung with no air is not in the HU lung field the box is drawn around: the box is symmetric about the body's
    midline, so that it holds both sides of the chest."""
    import dataclasses

    airless = healthy.ct.array.copy()
    airless[healthy.lungs == 2] = 40.0  # the right lung all fluid or collapsed
    wide = wide_field_simulated(dataclasses.replace(healthy.ct, array=airless), 192)
    box = lung_field_box(wide)
    lungs = np.pad(healthy.lungs > 0, ((0, 0), (40, 40), (40, 40))).any(0)
    xs = np.flatnonzero(lungs.any(0))
    assert box is not None and box[1].start <= xs[0] and xs[-1] < box[1].stop


def test_the_scanner_table_is_not_taken_for_lung(healthy):
    """A wide field shows the whole table under the patient: its shell (here one 3.5 mm pixel at 200 HU) encloses
    foam at -850 HU as wide as the table, which the lung field must not take in."""
    import dataclasses

    wide = wide_field_simulated(healthy.ct, 192)
    with_table = wide.array.copy()
    with_table[:, 153:164, 30:162] = 200.0
    with_table[:, 154:163, 31:161] = -850.0
    table = dataclasses.replace(wide, array=with_table)
    assert lung_field(table) == lung_field(wide) and lung_field_box(table) == lung_field_box(wide) is not None
