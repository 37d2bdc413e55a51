"""NRRD input (covidct.io.nrrd): LPS/RAS geometry, axis permutations and masks written back aligned."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest

from conftest_io_helpers import ORIGIN, SPACING_XYZ, assert_mask_written_on_the_ct_grid, phantom_hu
from covidct.errors import NotCT, UnsupportedInput
from covidct.io import load_ct
from covidct.volume import affine_from_spacing

DZ_DY_DX = (SPACING_XYZ[2], SPACING_XYZ[1], SPACING_XYZ[0])
EXPECTED_AFFINE = affine_from_spacing(DZ_DY_DX, ORIGIN)


def _write(path, data_xyz, directions, origin, space="left-posterior-superior"):
    header = {"space": space, "space directions": np.asarray(directions, float), "space origin": np.asarray(origin, float),
              "kinds": ["domain"] * 3, "encoding": "gzip"}
    nrrd.write(str(path), data_xyz.astype(np.int16), header)
    return path


@pytest.fixture(scope="module")
def hu():
    return phantom_hu()  # (x, y, z) in canonical LPS order


def test_nrrd_lps_canonical(tmp_path, hu):
    p = _write(tmp_path / "ct.nrrd", hu, np.diag(SPACING_XYZ), ORIGIN)
    ct = load_ct(p)
    assert ct.kind == "nrrd" and ct.is_hu and ct.warnings == []
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(ct.affine, EXPECTED_AFFINE, atol=1e-6)
    np.testing.assert_allclose(ct.spacing, DZ_DY_DX, atol=1e-6)
    assert ct.name == "ct"


def test_nrrd_flipped_permuted_and_ras_space_give_the_same_volume(tmp_path, hu):
    dx, dy, dz = SPACING_XYZ
    nx, ny, nz = hu.shape
    # file axes: (z, x reversed, y); the same world points as the canonical volume
    data = np.flip(hu, axis=0).transpose(2, 0, 1)
    origin = (ORIGIN[0] + (nx - 1) * dx, ORIGIN[1], ORIGIN[2])
    dirs = [[0, 0, dz], [-dx, 0, 0], [0, dy, 0]]
    ct = load_ct(_write(tmp_path / "perm.nrrd", data, dirs, origin))
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(ct.affine, EXPECTED_AFFINE, atol=1e-6)
    # the same canonical volume described in RAS space: x and y directions and origin change sign
    ras_dirs = np.diag([-dx, -dy, dz])
    ras_origin = (-ORIGIN[0], -ORIGIN[1], ORIGIN[2])
    ct2 = load_ct(_write(tmp_path / "ras.nrrd", hu, ras_dirs, ras_origin, space="right-anterior-superior"))
    np.testing.assert_array_equal(ct2.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(ct2.affine, EXPECTED_AFFINE, atol=1e-6)


def test_nrrd_mask_written_back_on_the_same_world_grid(tmp_path, hu):
    dx, dy, dz = SPACING_XYZ
    data = np.flip(hu, axis=1)  # rows run anterior in the file
    origin = (ORIGIN[0], ORIGIN[1] + (hu.shape[1] - 1) * dy, ORIGIN[2])
    ct = load_ct(_write(tmp_path / "flip.nrrd", data, np.diag([dx, -dy, dz]), origin))
    assert_mask_written_on_the_ct_grid(ct, tmp_path)


def test_nrrd_label_map_refused_and_bad_space(tmp_path):
    labels = np.zeros((16, 16, 4), np.int16)
    labels[4:8, 4:8] = 1
    labels[9:12, 9:12] = 2
    with pytest.raises(NotCT):
        load_ct(_write(tmp_path / "lm.nrrd", labels, np.eye(3), (0, 0, 0)))
    hu = phantom_hu((8, 8, 3))
    header = {"space": "scanner-xyz", "space directions": np.eye(3), "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "odd.nrrd"), hu.astype(np.int16), header)
    with pytest.raises(UnsupportedInput, match="odd.nrrd"):
        load_ct(tmp_path / "odd.nrrd")


def test_nrrd_few_nonfinite_voxels_are_set_to_the_lowest_value_and_most_refused(tmp_path):
    from covidct.errors import ImplausibleImage

    hu = phantom_hu((16, 16, 4)).astype(np.float32)
    hu[0, 0, 0] = np.nan
    p = tmp_path / "nan.nrrd"
    nrrd.write(str(p), hu, {"space": "left-posterior-superior", "space directions": np.eye(3), "kinds": ["domain"] * 3})
    ct = load_ct(p)
    assert np.isfinite(ct.array).all() and any("NaN/Inf" in w for w in ct.warnings)
    hu[:, :, :3] = np.inf
    nrrd.write(str(p), hu, {"space": "left-posterior-superior", "space directions": np.eye(3), "kinds": ["domain"] * 3})
    with pytest.raises(ImplausibleImage, match="NaN or infinite"):
        load_ct(p)
