"""A series acquired with a tilted gantry: its slices step along the table, not along their normal.

Before: the affine stacked the slices along their normal, so slice k's voxels were placed k · dz · sin(tilt) away
from where its ImagePositionPatient says (at 20°, 1.7 mm per 5 mm slice: 66 mm over 40 slices), in every NIfTI mask
written for it, with no warning. Now the affine holds the shear (the NIfTI sform), the qform the normal stacking
(what ITK-based readers build), the slice spacing is the distance between the slice planes, and a warning says so.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest_io_helpers import SPACING_XYZ, make_series, phantom_hu
from covidct.io import load_ct, save_mask_nifti
from covidct.io.dicom_volume import LPS_TO_RAS
from covidct.io.nifti import SHEAR_MIN_DEG, shear_degrees, spacing_from_affine
from covidct.io.writers import save_ct_nifti


def _tilt(paths, degrees: float) -> None:
    """Rewrite the series' orientation as a gantry tilted by ``degrees`` about the patient's left-right axis
    (the positions, which step along the table, stay)."""
    a = np.deg2rad(degrees)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(-np.sin(a))]
        ds.GantryDetectorTilt = degrees
        ds.save_as(p)


@pytest.fixture
def tilted(tmp_path):
    paths = make_series(tmp_path / "s", phantom_hu())
    _tilt(paths, 20.0)
    return tmp_path / "s", paths


def test_every_slice_sits_where_its_position_says(tilted):
    folder, paths = tilted
    ct = load_ct(folder)
    ipps = [np.array([float(v) for v in pydicom.dcmread(p).ImagePositionPatient]) for p in paths]
    for k, ipp in enumerate(ipps):  # the first pixel of source slice k is its ImagePositionPatient
        np.testing.assert_allclose(ct.source_affine @ [0, 0, k, 1], LPS_TO_RAS @ [*ipp, 1], atol=1e-6)
    # ... and the canonical affine is the same geometry
    inv = np.linalg.inv(ct.source_affine)
    corner = inv @ ct.affine @ [0, 0, 0, 1]
    np.testing.assert_allclose(corner, np.round(corner), atol=1e-6)


def test_spacing_is_the_distance_between_slice_planes_and_a_warning_says_why(tilted):
    ct = load_ct(tilted[0])
    dz = SPACING_XYZ[2]
    assert ct.spacing[0] == pytest.approx(dz * np.cos(np.deg2rad(20.0)), abs=1e-9)
    assert ct.spacing[1:] == pytest.approx((SPACING_XYZ[1], SPACING_XYZ[0]))
    assert np.prod(ct.spacing) == pytest.approx(abs(np.linalg.det(ct.affine[:3, :3])), rel=1e-9)
    assert any(w.startswith("gantry tilt 20.0°") for w in ct.warnings), ct.warnings
    assert not any("oblique" in w for w in ct.warnings)  # one warning, the one that says why
    assert shear_degrees(ct.affine) == pytest.approx(20.0, abs=1e-6)


def test_nifti_masks_carry_the_shear_in_the_sform_and_the_normal_stacking_in_the_qform(tilted, tmp_path):
    ct = load_ct(tilted[0])
    out = save_mask_nifti(np.ones(ct.shape, np.uint8), ct, tmp_path / "m.nii.gz")
    img = nib.load(out)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), ct.affine, atol=1e-4)
    qform = img.get_qform()
    assert shear_degrees(qform) < 1e-3
    # the qform's slices lie along the normal, dz apart, starting at the same first voxel
    np.testing.assert_allclose(qform[:3, 3], ct.affine[:3, 3], atol=1e-4)
    assert spacing_from_affine(qform) == pytest.approx(ct.spacing, abs=1e-4)


def test_a_sheared_nifti_reads_back_with_the_same_geometry_and_warning(tilted, tmp_path):
    ct = load_ct(tilted[0])
    back = load_ct(save_ct_nifti(ct, tmp_path / "ct.nii.gz"))
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)
    assert back.spacing == pytest.approx(ct.spacing, abs=1e-4)
    assert any(w.startswith("gantry tilt 20.0°") for w in back.warnings), back.warnings
    np.testing.assert_array_equal(back.array, ct.array)


def test_an_untilted_series_keeps_its_orthogonal_affine_exactly(tmp_path):
    paths = make_series(tmp_path / "s", phantom_hu())
    ct = load_ct(tmp_path / "s")
    assert shear_degrees(ct.affine) == 0.0
    assert ct.meta["qform_affine"] is None
    assert ct.spacing == (SPACING_XYZ[2], SPACING_XYZ[1], SPACING_XYZ[0])
    # a drift below the tolerance (positions rounded) is not a tilt
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.001 * k, ipp[2]]
        ds.save_as(p)
    ct2 = load_ct(tmp_path / "s")
    assert np.degrees(np.arctan(0.001 / SPACING_XYZ[2])) < SHEAR_MIN_DEG
    np.testing.assert_array_equal(ct2.affine[:3, :3], ct.affine[:3, :3])
    assert not any("tilt" in w for w in ct2.warnings)


def test_analyze_a_tilted_series(tmp_path):
    """Through ``analyze``: the NIfTI masks on the sheared grid, volumes from the distance between slice planes,
    the warning in the report, and a DICOM SEG on the source slices (checked by dciodvfy in conftest's teardown)."""
    from covidct.phantom import make_phantom, write_phantom
    from covidct.pipeline import analyze

    ph = make_phantom(seed=3, lesion_burden=0.15, shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))
    folder = write_phantom(ph, tmp_path / "in", fmt="dicom")
    _tilt(sorted(folder.iterdir()), 15.0)
    res = analyze(folder, tmp_path / "out")
    assert any(w.startswith("gantry tilt 15.0°") for w in res.report["warnings"])
    lungs = nib.load(tmp_path / "out" / "lungs.nii.gz")
    np.testing.assert_allclose(lungs.get_sform(), res.ct.affine, atol=1e-4)
    voxel_ml = 6.0 * np.cos(np.deg2rad(15.0)) * 2.6 * 2.6 / 1000.0
    total = res.report["lungs"]["left_ml"] + res.report["lungs"]["right_ml"]
    assert total == pytest.approx(np.count_nonzero(np.asarray(lungs.dataobj)) * voxel_ml, rel=1e-3)
    seg = pydicom.dcmread(tmp_path / "out" / "segmentation.dcm")
    assert seg.Modality == "SEG"


def test_positions_that_do_not_drift_straight_are_not_a_tilt(tmp_path):
    """One slice moved sideways (a damaged header) or a drift far beyond any gantry's tilt: the slices are stacked
    along their normal as before, with no tilt warning (found by the damaged-series fuzz test: a division by zero)."""
    paths = make_series(tmp_path / "s", phantom_hu())
    plain = load_ct(tmp_path / "s")
    for k, p in enumerate(paths):  # a 20-degree drift, but one slice 3 mm off it (over 3 pixels)
        ds = pydicom.dcmread(p)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        off = np.tan(np.deg2rad(20.0)) * SPACING_XYZ[2] * k + (3.0 if k == 2 else 0.0)
        ds.ImagePositionPatient = [ipp[0], ipp[1] + off, ipp[2]]
        ds.save_as(p)
    ct = load_ct(tmp_path / "s")
    np.testing.assert_array_equal(ct.affine[:3, :3], plain.affine[:3, :3])
    assert not any("tilt" in w for w in ct.warnings)
    steep = make_series(tmp_path / "t", phantom_hu())
    for k, p in enumerate(steep):  # 60 degrees of straight drift
        ds = pydicom.dcmread(p)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + np.tan(np.deg2rad(60.0)) * SPACING_XYZ[2] * k, ipp[2]]
        ds.save_as(p)
    ct = load_ct(tmp_path / "t")
    np.testing.assert_array_equal(ct.affine[:3, :3], plain.affine[:3, :3])
    assert not any("tilt" in w for w in ct.warnings)
