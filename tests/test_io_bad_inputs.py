"""covidct.io on bad input: each case raises the documented covidct.errors class (one line,
naming the path) or loads with the documented warning."""

from __future__ import annotations

import os
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest_io_helpers import make_series, phantom_hu
from covidct.errors import InconsistentSeries, NotCT, UnreadableInput, UnsafeArchive, UnsupportedInput
from covidct.io import load_ct, load_image_2d, read_label_png


@pytest.fixture(scope="module")
def hu():
    return phantom_hu()


def _raises(exc, path, match_path=True):
    with pytest.raises(exc) as ei:
        load_ct(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg
    if match_path:
        assert str(path) in msg
    return msg


# ---------------------------------------------------------------------------- unreadable paths


def test_nonexistent_path(tmp_path):
    assert "no such file" in _raises(UnreadableInput, tmp_path / "nope.nii.gz")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "empty" in _raises(UnreadableInput, tmp_path / "empty")


def test_folder_without_dicom(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 400)
    (d / "readme.txt").write_text("not dicom")
    assert "no readable DICOM" in _raises(UnreadableInput, d)


@pytest.mark.parametrize("name", ["x.dcm", "x.png", "x.nii.gz", "x.zip", "x"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    assert "0 bytes" in _raises(UnreadableInput, tmp_path / name)


def test_text_renamed_png(tmp_path):
    p = tmp_path / "slice.png"
    p.write_text("this is not an image\n" * 10)
    _raises(UnreadableInput, p)
    with pytest.raises(UnreadableInput):
        load_image_2d(p)
    with pytest.raises(UnreadableInput):
        read_label_png(p)


def test_unknown_extension(tmp_path):
    p = tmp_path / "scan.xyz"
    p.write_text("hello")
    assert "unknown file type" in _raises(UnreadableInput, p)


def test_corrupt_nifti_and_zip(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(100))
    _raises(UnreadableInput, tmp_path / "bad.nii.gz")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 definitely not a zip")
    _raises(UnreadableInput, tmp_path / "bad.zip")


def test_unreadable_permissions(tmp_path, hu):
    p = tmp_path / "locked.dcm"
    make_series(tmp_path / "s", hu)
    src = sorted((tmp_path / "s").iterdir())[0]
    p.write_bytes(src.read_bytes())
    os.chmod(p, 0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as root: file permissions do not apply")
        assert "permission denied" in _raises(UnreadableInput, p)
    finally:
        os.chmod(p, 0o644)


# ---------------------------------------------------------------------------- DICOM content


def test_truncated_dicom_file(tmp_path, hu):
    src = make_series(tmp_path / "s", hu)[0]
    data = src.read_bytes()
    half = tmp_path / "half.dcm"
    half.write_bytes(data[: len(data) - 500])  # pixel data cut short
    _raises(UnreadableInput, half)
    head = tmp_path / "head.dcm"
    head.write_bytes(data[:200])  # cut inside the header
    _raises(UnreadableInput, head)


def test_truncated_slice_in_folder_is_skipped(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    paths[2].write_bytes(paths[2].read_bytes()[:-500])
    ct = load_ct(tmp_path / "s")
    assert ct.n_slices == 5
    assert any("pixel data unreadable" in w for w in ct.warnings)
    assert any("missing" in w for w in ct.warnings)


def test_mr_series_not_ct(tmp_path, hu):
    paths = make_series(tmp_path / "mr", hu, modality="MR")
    assert "MR series: covidct analyses CT only" in _raises(NotCT, tmp_path / "mr")
    assert "MR" in _raises(NotCT, paths[0])


def test_mixed_slice_sizes(tmp_path, hu):
    make_series(tmp_path / "s", hu, series_uid="1.2.3")
    odd = phantom_hu((40, 28, 1), seed=5)
    make_series(tmp_path / "s", odd, series_uid="1.2.3", prefix="ODD", origin=(-10.0, -20.0, -30.0 + 2.5 * 6))
    msg = _raises(InconsistentSeries, tmp_path / "s")
    assert "32x28" in msg and "40x28" in msg


def test_missing_slice_warns(tmp_path, hu):
    make_series(tmp_path / "s", hu, drop=(3,))
    ct = load_ct(tmp_path / "s")
    assert ct.n_slices == 5 and ct.spacing[0] == pytest.approx(2.5)
    assert any(w.startswith("1 slice(s) missing between z=-25.00 and z=-20.00") for w in ct.warnings)
    assert ct.meta["slice_gaps"][0]["n_missing"] == 1


def test_too_many_missing_slices_unusable(tmp_path):
    vol = phantom_hu((8, 8, 12))
    make_series(tmp_path / "s", vol, drop=(2, 3, 4, 5, 8, 9))
    assert "missing" in _raises(InconsistentSeries, tmp_path / "s")


def test_duplicate_identical_slice_dropped(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "copy.dcm")
    ct = load_ct(tmp_path / "s")
    assert ct.n_slices == 6
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    assert any("dropped duplicate slice" in w for w in ct.warnings)


def test_duplicate_position_different_pixels(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    ds = pydicom.dcmread(paths[1])
    px = ds.pixel_array.copy()
    px[0, 0] += 7
    ds.PixelData = px.tobytes()
    ds.save_as(tmp_path / "s" / "clash.dcm")
    assert "same position" in _raises(InconsistentSeries, tmp_path / "s")


def test_uneven_spacing_warns(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    ds = pydicom.dcmread(paths[4])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.8]
    ds.save_as(paths[4])
    ct = load_ct(tmp_path / "s")
    assert any("uneven slice spacing" in w for w in ct.warnings)


def test_oblique_series_warns(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    a = np.deg2rad(5)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [np.cos(a), np.sin(a), 0.0, -np.sin(a), np.cos(a), 0.0]
        ds.save_as(p)
    ct = load_ct(tmp_path / "s")
    assert ct.shape == (6, 28, 32)
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    assert any("oblique" in w for w in ct.warnings)


def test_zip_slip_rejected(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    zp = tmp_path / "evil.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.write(paths[0], "ok/a.dcm")
        zf.writestr("../../escaped.dcm", paths[1].read_bytes())
    assert "escape" in _raises(UnsafeArchive, zp)
    assert not (tmp_path / "escaped.dcm").exists()


def test_two_series_works_and_says_which(tmp_path, hu):
    make_series(tmp_path / "d", hu, series_uid="1.9.1", prefix="A", description="lung 1mm")
    make_series(tmp_path / "d", hu[:, :, :2], series_uid="1.9.2", prefix="B", description="scout",
                origin=(0.0, 0.0, 100.0))
    ct = load_ct(tmp_path / "d")
    assert ct.n_slices == 6
    (w,) = [w for w in ct.warnings if "picked" in w]
    assert w.index("1.9.1") < w.index("also found") < w.index("1.9.2")


# ---------------------------------------------------------------------------- NIfTI / images


def test_4d_nifti_unsupported(tmp_path):
    p = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), p)
    assert "4-D" in _raises(UnsupportedInput, p)


def test_image_modes(tmp_path):
    g = np.random.default_rng(1).integers(0, 256, (9, 13)).astype(np.uint8)
    cases = {
        "grey.png": Image.fromarray(g),
        "rgb.png": Image.fromarray(np.dstack([g, g, g])),
        "rgba.png": Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA"),
        "g16.png": Image.fromarray(g.astype(np.uint16) * 257),
        "g16small.tif": Image.fromarray(g.astype(np.uint16)),
        "la.png": Image.fromarray(g).convert("LA"),
        "bw.png": Image.fromarray(g > 128),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        ct = load_ct(tmp_path / name)
        assert ct.shape == (1, 9, 13), name
        assert ct.array.min() >= 0 and ct.array.max() <= 255 and not ct.is_hu
        if name != "bw.png":
            np.testing.assert_allclose(ct.array[0], g, atol=0.01, err_msg=name)
    # colour tint: luminance, not one channel
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert load_image_2d(tmp_path / "red.png")[0, 0] == pytest.approx(0.299 * 200, abs=0.01)
    with pytest.raises(UnsupportedInput):
        read_label_png(tmp_path / "red.png")


def test_permission_denied_path_simulated(tmp_path, monkeypatch, hu):
    # The chmod test above is skipped as root; check the code path with a denied os.access.
    p = make_series(tmp_path / "s", hu)[0]
    monkeypatch.setattr("covidct.io.os.access", lambda *a, **k: False)
    assert "permission denied" in _raises(UnreadableInput, p)
    assert "permission denied" in _raises(UnreadableInput, tmp_path / "s")


def test_multiframe_dicom_without_frame_positions_is_refused(tmp_path, hu):
    # Enhanced CT gives each frame its position (tests/test_io_multiframe.py); frames without one cannot be placed
    p = make_series(tmp_path / "s", hu)[0]
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(p)
    msg = _raises(UnsupportedInput, p)
    assert "multi-frame" in msg and "cannot be placed" in msg and msg.count(p.name) == 1


def test_label_mask_given_as_the_ct_is_refused(tmp_path):
    """lungs.nii.gz instead of the scan: a few integer values, refused in one line (exit code of NotCT)."""
    mask = np.zeros((40, 36, 12), np.uint8)
    mask[5:18, 8:30, 2:10], mask[22:35, 8:30, 2:10] = 2, 1
    path = tmp_path / "lungs.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    with pytest.raises(NotCT, match=r"3 distinct values \(0, 1, 2\): a label mask"):
        load_ct(path)
    # a display-range (non-HU) volume with real grey levels is still accepted
    grey = np.random.default_rng(0).integers(0, 256, (40, 36, 12)).astype(np.uint8)
    nib.save(nib.Nifti1Image(grey, np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / "display.nii.gz")
    assert not load_ct(tmp_path / "display.nii.gz").is_hu
