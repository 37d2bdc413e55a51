"""MetaImage input (covidct.io.metaimage): ITK's LPS geometry, axis permutations, .mha and .mhd/.raw, bad files.

The headers are written here by hand, as ITK writes them (TransformMatrix lists axis 0's direction first), so the
geometry convention is pinned independently of the reader's library."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from conftest_io_helpers import ORIGIN, SPACING_XYZ, assert_mask_written_on_the_ct_grid, phantom_hu
from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.io import load_ct
from covidct.volume import affine_from_spacing

DZ_DY_DX = (SPACING_XYZ[2], SPACING_XYZ[1], SPACING_XYZ[0])
EXPECTED_AFFINE = affine_from_spacing(DZ_DY_DX, ORIGIN)


def _header(shape_ijk, spacing, origin, axes, element="MET_SHORT", compressed_size=None, data_file="LOCAL",
            extra=""):
    matrix = " ".join(f"{v:g}" for axis in axes for v in axis)  # axis 0's unit direction first, as ITK writes it
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {compressed_size is not None}",
             *([f"CompressedDataSize = {compressed_size}"] if compressed_size is not None else []),
             f"TransformMatrix = {matrix}", f"Offset = {' '.join(f'{v:g}' for v in origin)}",
             "AnatomicalOrientation = RAI", f"ElementSpacing = {' '.join(f'{v:g}' for v in spacing)}",
             f"DimSize = {' '.join(str(int(n)) for n in shape_ijk)}", *([extra] if extra else []),
             f"ElementType = {element}", f"ElementDataFile = {data_file}"]
    return ("\n".join(lines) + "\n").encode()


def write_mha(path, data_ijk, spacing, origin, axes, compress=True, dtype=np.int16):
    raw = np.asarray(data_ijk, dtype).transpose(2, 1, 0).tobytes()  # x fastest
    body = zlib.compress(raw) if compress else raw
    element = {np.int16: "MET_SHORT", np.float32: "MET_FLOAT"}[dtype]
    path.write_bytes(_header(data_ijk.shape, spacing, origin, axes, element, len(body) if compress else None) + body)
    return path


@pytest.fixture(scope="module")
def hu():
    return phantom_hu()  # (x, y, z) in canonical LPS order


def test_mha_compressed_and_permuted_reads_as_the_canonical_volume(tmp_path, hu):
    ct = load_ct(write_mha(tmp_path / "ct.mha", hu, SPACING_XYZ, ORIGIN, np.eye(3)))
    assert ct.kind == "itk" and ct.is_hu and ct.warnings == [] and ct.name == "ct"
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(ct.affine, EXPECTED_AFFINE, atol=1e-6)
    np.testing.assert_allclose(ct.spacing, DZ_DY_DX, atol=1e-6)
    # file axes (z, x reversed, y): the same world points, so the same canonical volume
    dx, dy, dz = SPACING_XYZ
    data = np.flip(hu, axis=0).transpose(2, 0, 1)
    origin = (ORIGIN[0] + (hu.shape[0] - 1) * dx, ORIGIN[1], ORIGIN[2])
    perm = load_ct(write_mha(tmp_path / "perm.mha", data, (dz, dx, dy), origin, [(0, 0, 1), (-1, 0, 0), (0, 1, 0)]))
    np.testing.assert_array_equal(perm.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(perm.affine, EXPECTED_AFFINE, atol=1e-6)


def test_mhd_header_beside_its_raw_data_and_masks_written_back(tmp_path, hu):
    dx, dy, dz = SPACING_XYZ
    data = np.flip(hu, axis=1)  # rows run anterior in the file
    origin = (ORIGIN[0], ORIGIN[1] + (hu.shape[1] - 1) * dy, ORIGIN[2])
    (tmp_path / "scan.raw").write_bytes(data.astype(np.int16).transpose(2, 1, 0).tobytes())
    header = _header(data.shape, SPACING_XYZ, origin, [(1, 0, 0), (0, -1, 0), (0, 0, 1)], data_file="scan.raw")
    (tmp_path / "scan.mhd").write_bytes(header)
    ct = load_ct(tmp_path / "scan.mhd")
    assert ct.name == "scan"
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    assert_mask_written_on_the_ct_grid(ct, tmp_path)


def test_metaimage_few_nonfinite_voxels_are_set_to_the_lowest_value(tmp_path, hu):
    data = hu.astype(np.float32)
    data[0, 0, 0] = np.nan
    ct = load_ct(write_mha(tmp_path / "nan.mha", data, SPACING_XYZ, ORIGIN, np.eye(3), dtype=np.float32))
    assert np.isfinite(ct.array).all() and any("NaN/Inf" in w for w in ct.warnings)


def _raises(exc, path) -> str:
    with pytest.raises(exc) as ei:
        load_ct(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_metaimage_files_get_one_line_errors(tmp_path, hu):
    (tmp_path / "junk.mha").write_bytes(b"\x00\x01 not a header at all")
    assert "not a MetaImage file" in _raises(UnreadableInput, tmp_path / "junk.mha")
    # declared far larger than memory holds: refused from the header, before anything is inflated
    (tmp_path / "huge.mha").write_bytes(_header((4000, 4000, 4000), (1, 1, 1), (0, 0, 0), np.eye(3),
                                                compressed_size=10) + zlib.compress(b"\x00" * 10))
    assert "voxels" in _raises(UnsupportedInput, tmp_path / "huge.mha")
    flat = _header((8, 8), (1, 1), (0, 0), np.eye(3)).replace(b"NDims = 3", b"NDims = 2")
    (tmp_path / "flat.mha").write_bytes(flat + b"\x00" * 128)
    assert "3-D" in _raises(UnsupportedInput, tmp_path / "flat.mha")
    two = _header((4, 4, 4), (1, 1, 1), (0, 0, 0), np.eye(3), extra="ElementNumberOfChannels = 2")
    (tmp_path / "rgb.mha").write_bytes(two + b"\x00" * 256)
    assert "channel" in _raises(UnsupportedInput, tmp_path / "rgb.mha")
    (tmp_path / "lonely.mhd").write_bytes(_header((4, 4, 4), (1, 1, 1), (0, 0, 0), np.eye(3), data_file="gone.raw"))
    assert "not a readable MetaImage" in _raises(UnreadableInput, tmp_path / "lonely.mhd")
    short = write_mha(tmp_path / "short.mha", hu, SPACING_XYZ, ORIGIN, np.eye(3), compress=False)
    short.write_bytes(short.read_bytes()[:-1000])  # data cut short
    assert "not a readable MetaImage" in _raises(UnreadableInput, short)
