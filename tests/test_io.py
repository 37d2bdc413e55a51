"""covidct.io: geometry/HU round trips for DICOM, NIfTI and 2-D images, and the writers."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform
from PIL import Image
from pydicom.uid import generate_uid

from conftest_io_helpers import ORIGIN, SPACING_XYZ, make_series, phantom_hu
from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.io import (
    load_ct,
    load_image_2d,
    read_label_png,
    save_ct_nifti,
    save_label_png,
    save_mask_nifti,
    save_overlay_png,
    to_source_layout,
)
from covidct.volume import affine_from_spacing

DZ_DY_DX = (SPACING_XYZ[2], SPACING_XYZ[1], SPACING_XYZ[0])
EXPECTED_AFFINE = affine_from_spacing(DZ_DY_DX, ORIGIN)

# (row_dir, col_dir): standard axial, flipped axial, transposed axial, coronal, sagittal.
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "axial_flipped": ((-1, 0, 0), (0, -1, 0)),
    "axial_transposed": ((0, 1, 0), (1, 0, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}


@pytest.fixture(scope="module")
def hu():
    return phantom_hu()


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_dicom_series_roundtrip(tmp_path, hu, name):
    r, c = ORIENTATIONS[name]
    paths = make_series(tmp_path / "s", hu, row_dir=r, col_dir=c)
    ct = load_ct(tmp_path / "s")
    assert ct.kind == "dicom" and ct.is_hu
    assert ct.array.dtype == np.float32 and ct.array.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(ct.spacing, DZ_DY_DX, atol=1e-6)
    np.testing.assert_allclose(ct.affine, EXPECTED_AFFINE, atol=1e-6)
    assert ct.warnings == []
    assert ct.meta["modality"] == "CT" and ct.meta["iop"] == [float(v) for v in (*r, *c)]
    # Back to the file layout: (column, row, slice) in slice-normal order == the stored pixels.
    src = to_source_layout(ct, ct.array).transpose(2, 1, 0)
    import pydicom

    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        np.testing.assert_array_equal(src[k], ds.pixel_array.astype(np.float32) - 1024)
    assert ct.meta["source_sop_uids"] == [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]


def test_dicom_slices_ordered_by_position_not_name(tmp_path, hu):
    make_series(tmp_path / "s", hu, row_dir=(-1, 0, 0), col_dir=(0, -1, 0))
    ct = load_ct(tmp_path / "s")
    zs = [s.z_mm for s in ct.slices]
    assert zs == sorted(zs) and len(zs) == 6
    np.testing.assert_allclose(zs, ORIGIN[2] + 2.5 * np.arange(6))
    import pydicom

    for s in ct.slices:
        ds = pydicom.dcmread(tmp_path / "s" / s.file)
        assert ds.SOPInstanceUID == s.sop_instance_uid
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(s.z_mm)
    assert ct.meta["ipp_first"][2] == pytest.approx(ORIGIN[2])


def test_dicom_single_file(tmp_path, hu):
    paths = make_series(tmp_path / "s", hu)
    ct = load_ct(paths[2])
    assert ct.shape == (1, 28, 32)
    np.testing.assert_array_equal(ct.array[0], hu[:, :, 2].T)
    np.testing.assert_allclose(ct.spacing, DZ_DY_DX)


def test_dicom_zip(tmp_path, hu):
    make_series(tmp_path / "case" / "series", hu, row_dir=(-1, 0, 0), col_dir=(0, -1, 0))
    zp = tmp_path / "case.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for p in sorted((tmp_path / "case").rglob("*.dcm")):
            zf.write(p, p.relative_to(tmp_path / "case").as_posix())
        zf.writestr("series/.DS_Store", b"\0\0\0\1Bud1junk")
    ct = load_ct(zp)
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    assert ct.path == str(zp) and ct.slices[0].file.endswith(".dcm")
    np.testing.assert_allclose(ct.affine, EXPECTED_AFFINE, atol=1e-6)


def test_two_series_picks_larger_and_warns(tmp_path, hu):
    make_series(tmp_path / "d" / "a", hu, series_uid="1.2.3.4", description="big")
    make_series(tmp_path / "d" / "b", hu[:, :, :4], series_uid="1.2.3.5", description="small")
    ct = load_ct(tmp_path / "d")
    assert ct.n_slices == 6 and ct.meta["series_uid"] == "1.2.3.4"
    w = " ".join(ct.warnings)
    assert "picked" in w and "1.2.3.4" in w and "1.2.3.5" in w and "'small'" in w


def test_series_uid_picks_another_series(tmp_path, hu):
    make_series(tmp_path / "d" / "a", hu, series_uid="1.2.3.4", description="big")
    make_series(tmp_path / "d" / "b", hu[:, :, :4], series_uid="1.2.3.5", description="small")
    assert "--series" in " ".join(load_ct(tmp_path / "d").warnings)  # the warning says how to choose
    ct = load_ct(tmp_path / "d", series="1.2.3.5")
    assert ct.n_slices == 4 and ct.meta["series_uid"] == "1.2.3.5" and ct.warnings == []
    zp = tmp_path / "d.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for p in sorted((tmp_path / "d").rglob("*.dcm")):
            zf.write(p, p.relative_to(tmp_path / "d").as_posix())
    assert load_ct(zp, series="1.2.3.5").n_slices == 4
    with pytest.raises(UnreadableInput, match=r"no series 9\.9 here; found 2: 1\.2\.3\.4, 1\.2\.3\.5"):
        load_ct(tmp_path / "d", series="9.9")
    with pytest.raises(UnreadableInput, match="no series 9.9"):
        load_ct(zp, series="9.9")
    one_file = next((tmp_path / "d" / "a").glob("*.dcm"))
    with pytest.raises(UnsupportedInput, match="single file"):
        load_ct(one_file, series="1.2.3.4")


def test_same_uid_different_geometry_is_two_series(tmp_path, hu):
    # De-identified data: both series carry an empty UID; geometry tells them apart.
    make_series(tmp_path / "d", hu, series_uid="", prefix="A")
    make_series(tmp_path / "d", hu[:, :, :3], series_uid="", prefix="B", spacing_xyz=(0.5, 0.5, 2.5))
    ct = load_ct(tmp_path / "d")
    assert ct.n_slices == 6 and any("picked" in w for w in ct.warnings)


def test_ct_preferred_over_mr(tmp_path, hu):
    make_series(tmp_path / "d" / "mr", hu, modality="MR", prefix="M")
    make_series(tmp_path / "d" / "ct", hu[:, :, :3], prefix="C")
    ct = load_ct(tmp_path / "d")
    assert ct.n_slices == 3 and ct.meta["modality"] == "CT"
    assert any("MR series" in w for w in ct.warnings)


def test_non_dicom_files_ignored(tmp_path, hu):
    make_series(tmp_path / "s", hu)
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 300)
    (tmp_path / "s" / "notes.txt").write_text("hello")
    ct = load_ct(tmp_path / "s")
    assert ct.n_slices == 6 and ct.warnings == []


def test_dicom_writers_overlay(tmp_path, hu):
    make_series(tmp_path / "s", hu, row_dir=(0, 1, 0), col_dir=(0, 0, -1))
    ct = load_ct(tmp_path / "s")
    mask = (ct.array > 0).astype(np.uint8)
    mp = save_mask_nifti(mask, ct, tmp_path / "out" / "mask.nii.gz")
    ip = save_ct_nifti(ct, tmp_path / "out" / "ct.nii.gz")
    m, i = nib.load(mp), nib.load(ip)
    assert m.get_data_dtype() == np.uint8 and i.get_data_dtype() == np.int16
    np.testing.assert_allclose(m.affine, ct.affine)
    np.testing.assert_allclose(i.affine, ct.affine)
    np.testing.assert_array_equal(np.asarray(m.dataobj), mask.transpose(2, 1, 0))
    np.testing.assert_array_equal(np.asarray(i.dataobj), hu)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.nii.gz", "mask.nii.gz"]  # no temp files


# ----------------------------------------------------------------------------- NIfTI

NIFTI_CASES = [("R", "A", "S"), ("L", "P", "I"), ("A", "S", "R"), ("L", "P", "S")]


def _nifti_in(hu, axcodes, qcode=1, scode=1):
    canon = nib.Nifti1Image(hu.astype(np.int16), EXPECTED_AFFINE)
    canon.set_qform(EXPECTED_AFFINE, code=qcode)
    canon.set_sform(EXPECTED_AFFINE, code=scode)
    src = canon.as_reoriented(ornt_transform(axcodes2ornt(("L", "P", "S")), axcodes2ornt(axcodes)))
    src.set_qform(src.affine, code=qcode)  # as_reoriented drops the qform code
    src.set_sform(src.affine, code=scode)
    return src


@pytest.mark.parametrize("axcodes", NIFTI_CASES, ids=["".join(c) for c in NIFTI_CASES])
def test_nifti_reorient_and_mask_overlay(tmp_path, hu, axcodes):
    src = _nifti_in(hu, axcodes, qcode=1, scode=2)
    assert nib.aff2axcodes(src.affine) == axcodes
    p = tmp_path / "in.nii.gz"
    nib.save(src, p)
    ct = load_ct(p)
    assert ct.kind == "nifti" and ct.is_hu and ct.warnings == []
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(ct.affine, EXPECTED_AFFINE, atol=1e-5)
    np.testing.assert_allclose(ct.spacing, DZ_DY_DX, atol=1e-5)
    mask = (ct.array > 200).astype(np.uint8)
    out = nib.load(save_mask_nifti(mask, ct, tmp_path / "mask.nii.gz"))
    ref = nib.load(p)
    assert out.shape == ref.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.get_qform(), ref.get_qform())
    np.testing.assert_array_equal(out.get_sform(), ref.get_sform())
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    np.testing.assert_array_equal(np.asarray(out.dataobj), (np.asarray(ref.dataobj) > 200).astype(np.uint8))
    img = nib.load(save_ct_nifti(ct, tmp_path / "ct.nii"))
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_array_equal(img.affine, ref.affine)


def test_nifti_no_codes_and_singleton_4d(tmp_path, hu):
    src = _nifti_in(hu, ("R", "A", "S"), qcode=0, scode=0)
    img4 = nib.Nifti1Image(np.asarray(src.dataobj)[..., None], None, header=src.header)
    p = tmp_path / "in4.nii"
    nib.save(img4, p)
    ct = load_ct(p)
    assert ct.shape == (6, 28, 32)
    out = nib.load(save_mask_nifti(np.ones(ct.shape, np.uint8), ct, tmp_path / "m.nii.gz"))
    ref = nib.load(p)
    assert out.shape == ref.shape == (32, 28, 6, 1)
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert int(out.header["sform_code"]) == 0 and int(out.header["qform_code"]) == 0


def test_nifti_display_range_not_hu(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (16, 16, 4)).astype(np.uint8)
    p = tmp_path / "disp.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    ct = load_ct(p)
    assert not ct.is_hu and any("Hounsfield" in w for w in ct.warnings)


# ----------------------------------------------------------------------------- 2-D images

def _grey(h=20, w=30):
    return np.random.default_rng(3).integers(0, 256, (h, w)).astype(np.uint8)


def test_image_grey_rgb_rgba_16bit_palette(tmp_path):
    g = _grey()
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "rgb.jpg", quality=100)
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(g).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(g).save(tmp_path / "g.tif")
    Image.fromarray(g).save(tmp_path / "g.bmp")

    ct = load_ct(tmp_path / "g.png")
    assert ct.shape == (1, 20, 30) and ct.kind == "image" and not ct.is_hu and not ct.spacing_known
    assert ct.spacing == (1.0, 1.0, 1.0) and ct.array.dtype == np.float32
    np.testing.assert_array_equal(ct.array[0], g)
    np.testing.assert_allclose(load_ct(tmp_path / "rgb.jpg").array[0], g, atol=3)
    a = load_ct(tmp_path / "rgba.png")
    assert a.array[0, 0, 0] == 0
    np.testing.assert_allclose(a.array[0, 1:], g[1:], atol=0.01)
    np.testing.assert_allclose(load_image_2d(tmp_path / "g16.png"), g, atol=0.01)
    np.testing.assert_allclose(load_image_2d(tmp_path / "pal.png"), g, atol=1)
    for n in ("g.tif", "g.bmp"):
        np.testing.assert_array_equal(load_image_2d(tmp_path / n), g)


def test_label_png_roundtrip_and_palette_indices(tmp_path):
    lab = np.zeros((12, 17), np.uint8)
    lab[2:5, 3:9] = 1
    lab[7:10, 1:4] = 2
    p = save_label_png(lab, tmp_path / "lab.png")
    np.testing.assert_array_equal(read_label_png(p), lab)
    pal = Image.fromarray(lab, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "pal.png"), lab)  # indices, not RGB
    # Image CT writers keep the exact width/height.
    Image.fromarray(_grey(12, 17)).save(tmp_path / "img.png")
    ct = load_ct(tmp_path / "img.png")
    np.testing.assert_array_equal(to_source_layout(ct, lab[None]), lab)


def test_overlay_png(tmp_path):
    g = _grey(10, 14)
    lab = np.zeros_like(g)
    lab[2:4, 2:4] = 1
    p = save_overlay_png(g, lab, tmp_path / "ov.png", {1: (255, 0, 0)}, alpha=0.5)
    ov = np.asarray(Image.open(p))
    assert ov.shape == (10, 14, 3)
    assert ov[0, 0, 0] == ov[0, 0, 1] == g[0, 0]
    assert ov[2, 2, 0] == round(0.5 * g[2, 2] + 127.5)
    hu = np.full((10, 14), -1350.0, np.float32)
    hu[0, 0] = 150
    ov2 = np.asarray(Image.open(save_overlay_png(hu, lab, tmp_path / "ov2.png", {1: (0, 255, 0)})))
    assert ov2[0, 0, 0] == 255 and ov2[0, 1, 0] == 0


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless"])
def test_compressed_transfer_syntax(tmp_path, hu, syntax):
    """Compressed series load exactly; JPEG-LS lossless is how the whole HU series in ../shared are stored (encoded
    here by pyjpegls, which highdicom brings; decoded by the loader's GDCM or pylibjpeg)."""
    import pydicom
    from pydicom import uid

    ts = getattr(uid, syntax)
    paths = make_series(tmp_path / "s", hu, row_dir=(-1, 0, 0), col_dir=(0, -1, 0))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(ts)
        ds.save_as(p)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == ts
    ct = load_ct(tmp_path / "s")
    assert ct.meta["transfer_syntax"] == ts
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))


def test_jpeg2000_lossless_series_loads_exactly(tmp_path, hu):
    """JPEG 2000 lossless, common in PACS archives: encoded here by OpenJPEG through imagecodecs (pydicom has no
    encoder for it), decoded by the loader (GDCM)."""
    import imagecodecs
    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate

    paths = make_series(tmp_path / "s", hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([imagecodecs.jpeg2k_encode(ds.pixel_array, level=0, reversible=True)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid.JPEG2000Lossless
        ds.save_as(p, enforce_file_format=True)
    ct = load_ct(tmp_path / "s")
    assert ct.meta["transfer_syntax"] == uid.JPEG2000Lossless
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))


def _jpeg_lossless(ds, bits: int) -> None:
    """Re-encode ``ds``'s pixels as JPEG lossless SV1 (libjpeg-turbo through imagecodecs: pydicom cannot encode it)."""
    import imagecodecs
    from pydicom import uid
    from pydicom.encaps import encapsulate

    raw = ds.pixel_array.view(np.uint16) & np.uint16((1 << bits) - 1)  # the stored bits, as the JPEG samples
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(raw, lossless=True, bitspersample=bits, predictor=1)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEGLosslessSV1


@pytest.mark.parametrize(("syntax", "signed", "bits"),
                         [("JPEGLosslessSV1", False, 12), ("JPEGLosslessSV1", True, 12), ("JPEGLosslessSV1", True, 16),
                          ("JPEGLSLossless", True, 16)])
def test_fast_jpeg_decoder_matches_gdcm(tmp_path, hu, syntax, signed, bits):
    """The imagecodecs plugin (lossless JPEG and JPEG-LS) gives GDCM's pixels, signed and unsigned, and is the
    loader's first choice for these syntaxes; the loaded volume is exact."""
    import pydicom
    from pydicom import uid

    from covidct.io import imagecodecs_plugin
    from covidct.io.dicom_decode import _pixels

    assert imagecodecs_plugin.register()
    paths = make_series(tmp_path / "s", hu, intercept=0.0 if signed else -1024.0)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
        if signed:  # the same HU as signed stored values (intercept 0)
            ds.PixelData = np.asarray(ds.pixel_array, np.int16).tobytes()
        if syntax == "JPEGLSLossless":
            ds.compress(uid.JPEGLSLossless)
        else:
            _jpeg_lossless(ds, bits)
        ds.save_as(p, enforce_file_format=True)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == getattr(uid, syntax)
    for p in paths[:3]:
        arrays = {}
        for plugin in ("imagecodecs", "gdcm"):
            ds = pydicom.dcmread(p)
            ds.pixel_array_options(decoding_plugin=plugin)
            arrays[plugin] = ds.pixel_array
        assert arrays["imagecodecs"].dtype == arrays["gdcm"].dtype == (np.int16 if signed else np.uint16)
        np.testing.assert_array_equal(arrays["imagecodecs"], arrays["gdcm"])
        np.testing.assert_array_equal(_pixels(pydicom.dcmread(p)), arrays["gdcm"])
    ct = load_ct(tmp_path / "s")
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    assert ct.array.min() < -500  # the signed case really holds negative stored values


def test_fast_jpeg_decoder_refusal_falls_back(tmp_path, hu, monkeypatch):
    """A frame the imagecodecs plugin refuses is decoded by the next decoder: the load does not depend on it."""
    import pydicom
    from pydicom import uid

    from covidct.io import imagecodecs_plugin

    paths = make_series(tmp_path / "s", hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(uid.JPEGLSLossless)
        ds.save_as(p)

    def refuse(src, runner):
        raise ValueError("refused")

    monkeypatch.setattr(imagecodecs_plugin, "_decode_frame", refuse)
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder(uid.JPEGLSLossless)
    monkeypatch.setitem(decoder._available, imagecodecs_plugin.LABEL, refuse)
    ds = pydicom.dcmread(paths[0])
    ds.pixel_array_options(decoding_plugin=imagecodecs_plugin.LABEL)
    with pytest.raises(RuntimeError, match="refused"):
        _ = ds.pixel_array
    np.testing.assert_array_equal(load_ct(tmp_path / "s").array, hu.transpose(2, 1, 0))


def test_zip_holding_a_nifti(tmp_path, hu):
    p = tmp_path / "vol.nii.gz"
    nib.save(_nifti_in(hu, ("R", "A", "S")), p)
    zp = tmp_path / "vol.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.write(p, "vol.nii.gz")
    ct = load_ct(zp)
    assert ct.kind == "nifti" and ct.path == str(zp)
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))


def test_staged_outputs_all_or_nothing(tmp_path):
    from covidct.io.writers import staged_outputs

    out = tmp_path / "out"
    with staged_outputs(out) as staging:
        (staging / "a.txt").write_text("1")
        (staging / "sub").mkdir()
        (staging / "sub" / "old.txt").write_text("stale")
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs(out) as staging:
            (staging / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "1" and sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]
    with staged_outputs(out) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "new.txt").write_text("fresh")
    assert sorted(p.name for p in (out / "sub").iterdir()) == ["new.txt"] and (out / "a.txt").exists()


def test_nifti_without_orientation_warns_and_reads_the_fallback(tmp_path, hu):
    # qform_code = sform_code = 0: NIfTI's fallback (pixdim, the first axis right to left); said, not silent
    img = nib.Nifti1Image(hu.astype(np.int16), None)
    img.header.set_zooms((0.7, 0.8, 5.0))
    nib.save(img, tmp_path / "noaff.nii.gz")
    ct = load_ct(tmp_path / "noaff.nii.gz")
    assert ct.spacing == pytest.approx((5.0, 0.8, 0.7))
    assert any("no orientation" in w and "0.7 × 0.8 × 5 mm" in w for w in ct.warnings)
    oriented = nib.Nifti1Image(hu.astype(np.int16), np.diag([-0.7, 0.8, 5.0, 1.0]))
    nib.save(oriented, tmp_path / "oriented.nii.gz")
    other = load_ct(tmp_path / "oriented.nii.gz")
    assert not any("no orientation" in w for w in other.warnings)
    np.testing.assert_array_equal(ct.array, other.array)  # the same axes as that fallback written out


def test_a_cd_export_with_its_dicomdir_reads_the_images_without_a_warning(tmp_path, hu):
    import pydicom
    from pydicom.fileset import FileSet

    files = make_series(tmp_path / "s", hu)
    fs = FileSet()
    for f in files:
        ds = pydicom.dcmread(f)
        for kw in ("StudyDate", "StudyTime", "StudyID", "SeriesNumber", "InstanceNumber"):  # a DICOMDIR needs them
            if kw not in ds:
                setattr(ds, kw, "1" if kw.endswith(("ID", "Number")) else "20200101" if kw == "StudyDate" else "000000")
        fs.add(ds)
    fs.write(tmp_path / "cd")  # DICOMDIR + PT*/ST*/SE*/IM* files without extensions, as on a CD
    assert (tmp_path / "cd" / "DICOMDIR").is_file()
    ct = load_ct(tmp_path / "cd")
    np.testing.assert_array_equal(ct.array, load_ct(tmp_path / "s").array)
    assert not ct.warnings  # the DICOMDIR index is not an unreadable file


def test_of_a_thin_and_a_thick_reconstruction_the_measured_spacing_is_read(tmp_path):
    # one study, two axial reconstructions over the same lungs: 1 mm (more slices) and 5 mm. The HU rule was measured
    # on 2-6 mm series, so the 5 mm one is read, and the warning says why; a thick series covering only part of
    # the lungs does not win, and --series still takes any
    thin = phantom_hu((32, 28, 40))
    thick = thin.reshape(32, 28, 8, 5).mean(axis=3)
    study = generate_uid()
    make_series(tmp_path / "study" / "thin", thin, spacing_xyz=(0.7, 0.8, 1.0), study_uid=study, prefix="T")
    make_series(tmp_path / "study" / "thick", thick, spacing_xyz=(0.7, 0.8, 5.0), study_uid=study, prefix="K",
                origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 2.0))
    # a sagittal reformat, wider across the body than the scan is long, does not set the coverage asked for
    make_series(tmp_path / "study" / "sag", phantom_hu((60, 28, 40)), row_dir=(0, 1, 0), col_dir=(0, 0, -1),
                spacing_xyz=(2.0, 0.8, 1.0), study_uid=study, prefix="S")
    ct = load_ct(tmp_path / "study")
    assert ct.n_slices == 8 and ct.spacing[0] == pytest.approx(5.0)
    assert any("picked" in w and "for its 5 mm slice spacing" in w for w in ct.warnings)
    thin_uid = next(w for w in ct.warnings if "picked" in w).split("also found: ")[1].split("(")[1].split(",")[0]
    assert load_ct(tmp_path / "study", series=thin_uid).n_slices == 40
    make_series(tmp_path / "part" / "thin", thin, spacing_xyz=(0.7, 0.8, 1.0), study_uid=study, prefix="T")
    make_series(tmp_path / "part" / "thick", thick[..., :3], spacing_xyz=(0.7, 0.8, 5.0), study_uid=study, prefix="K")
    ct = load_ct(tmp_path / "part")
    assert ct.n_slices == 40 and not any("for its" in w for w in ct.warnings)
