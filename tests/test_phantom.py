"""Tests for the synthetic chest phantom (covidct.phantom): anatomy, labels, truth, writers."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.phantom import Phantom, make_phantom, write_phantom
from covidct.volume import affine_from_spacing

SMALL = dict(shape=(24, 96, 96), spacing=(10.0, 3.6, 3.6))


@pytest.fixture(scope="module")
def ph() -> Phantom:
    return make_phantom(**SMALL, seed=1, lesion_burden=0.2)


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory, ph):
    out = tmp_path_factory.mktemp("ph_dicom")
    return write_phantom(ph, out, fmt="dicom")


def test_default_is_fast_and_well_formed():
    t0 = time.perf_counter()
    p = make_phantom()
    dt = time.perf_counter() - t0
    assert dt < 3.0, f"default phantom took {dt:.2f} s"  # ~0.4 s when the machine is idle
    assert p.ct.shape == (48, 192, 192)
    assert p.ct.array.dtype == np.float32
    assert p.ct.is_hu and p.ct.kind == "array"
    assert p.ct.spacing == (5.0, 1.8, 1.8)
    assert p.lungs.dtype == np.uint8 and p.lesions.dtype == np.uint8 and p.body.dtype == bool
    assert p.lungs.shape == p.lesions.shape == p.body.shape == p.ct.shape
    # Affine = canonical (LPS-ordered) RAS affine, volume centred in x and y.
    origin = (-(191 / 2) * 1.8, -(191 / 2) * 1.8, -(47 / 2) * 5.0)
    np.testing.assert_allclose(p.ct.affine, affine_from_spacing((5.0, 1.8, 1.8), origin), atol=1e-6)
    assert p.ct.array.min() >= -1024 and p.ct.array.max() <= 3071


def test_deterministic_per_seed():
    a = make_phantom(**SMALL, seed=7)
    b = make_phantom(**SMALL, seed=7)
    c = make_phantom(**SMALL, seed=8)
    np.testing.assert_array_equal(a.ct.array, b.ct.array)
    np.testing.assert_array_equal(a.lungs, b.lungs)
    np.testing.assert_array_equal(a.lesions, b.lesions)
    assert a.truth == b.truth
    assert not np.array_equal(a.lesions, c.lesions)


def test_hu_ranges_per_tissue(ph):
    clean, noisy = ph.clean, ph.ct.array
    parenchyma = (ph.lungs > 0) & (ph.lesions == 0)
    assert -900 <= np.median(noisy[parenchyma]) <= -780
    assert -900 <= np.median(clean[parenchyma]) <= -780
    # Exact ranges hold on the noiseless volume; the noisy one is checked by medians.
    for lab, lo, hi in ((GGO, -750, -250), (CONSOLIDATION, -150, 150), (EFFUSION, -20, 60)):
        v = clean[ph.lesions == lab]
        assert v.size > 0, f"no voxels of lesion class {lab}"
        assert v.min() >= lo and v.max() <= hi, (lab, v.min(), v.max())
        assert lo <= np.median(noisy[ph.lesions == lab]) <= hi
    # Air outside the body, soft tissue and bone inside it.
    assert np.median(noisy[~ph.body & (noisy < -500)]) < -950
    assert (clean[ph.body] >= 600).any()  # cortical bone (ribs, spine)
    soft = clean[ph.body & (ph.lungs == 0) & (ph.lesions == 0)]
    assert np.median(soft) > -150


def test_left_lung_is_at_larger_x(ph):
    _, _, xl = np.nonzero(ph.lungs == LEFT_LUNG)
    _, _, xr = np.nonzero(ph.lungs == RIGHT_LUNG)
    assert xl.size > 0 and xr.size > 0
    assert xr.max() < xl.min()  # separated by the mediastinum
    # Right lung slightly larger in a normal chest (the heart sits on the left).
    n = make_phantom(**SMALL, seed=1, lesions=False)
    assert n.truth["lung_volume_ml"]["right"] > n.truth["lung_volume_ml"]["left"]


def test_anatomy_orientation(ph):
    nz, ny, nx = ph.ct.shape
    area = (ph.lungs > 0).sum(axis=(1, 2))
    top = np.nonzero(area)[0].max()
    assert area[top] < 0.3 * area.max()  # tapering apex at the top (high z)
    # Spine posterior (high y): dense bone behind the centre.
    zb, yb, xb = np.nonzero(ph.clean > 200)
    assert np.median(yb) > ny / 2
    # Trachea: air in the midline above the carina, outside the lung label.
    k = nz - 2
    air = (ph.clean[k] < -950) & ph.body[k] & (ph.lungs[k] == 0)
    ys, xs = np.nonzero(air)
    assert xs.size > 0 and abs(np.median(xs) - (nx - 1) / 2) < 4


def test_lesions_inside_lungs_and_body(ph):
    les, lungs = ph.lesions, ph.lungs
    infection = (les == GGO) | (les == CONSOLIDATION)
    assert infection.any()
    assert np.all(lungs[infection] > 0)  # GGO/consolidation are part of the lung label
    eff = les == EFFUSION
    assert eff.any() and np.all(lungs[eff] == 0)  # effusion takes pleural space, not lung
    assert np.all(ph.body[les > 0])
    # Both lungs involved; effusion dependent (posterior half) and in the lower chest.
    assert all(np.any(infection & (lungs == s)) for s in (LEFT_LUNG, RIGHT_LUNG))
    ze, ye, _ = np.nonzero(eff)
    assert np.median(ye) > ph.ct.shape[1] / 2
    assert np.median(ze) < ph.ct.shape[0] / 2
    # Effusion touches the lung of its side.
    side = LEFT_LUNG if ph.truth["effusion_side"] == "left" else RIGHT_LUNG
    from scipy import ndimage as ndi

    assert np.any(ndi.binary_dilation(eff) & (lungs == side))


def test_truth_matches_labels(ph):
    t = ph.truth
    v = ph.ct.voxel_volume_ml
    assert t["voxel_volume_ml"] == pytest.approx(v)
    for name, lab in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
        lung = ph.lungs == lab
        assert t["lung_volume_ml"][name] == pytest.approx(lung.sum() * v)
        per = t["lesion_volume_ml_per_lung"][name]
        assert per["ggo"] == pytest.approx((lung & (ph.lesions == GGO)).sum() * v)
        assert per["consolidation"] == pytest.approx((lung & (ph.lesions == CONSOLIDATION)).sum() * v)
        inf = (lung & np.isin(ph.lesions, (GGO, CONSOLIDATION))).sum()
        assert t["involvement_percent"][name] == pytest.approx(100 * inf / lung.sum())
    assert t["lung_volume_ml"]["total"] == pytest.approx((ph.lungs > 0).sum() * v)
    for key, lab in (("ggo", GGO), ("consolidation", CONSOLIDATION), ("effusion", EFFUSION)):
        assert t["lesion_volume_ml"][key] == pytest.approx((ph.lesions == lab).sum() * v)
    # Requested burden met (GGO leaves out the vessels crossing it, so slightly under).
    assert 17.0 <= t["involvement_percent"]["total"] <= 20.5


def test_normal_chest_has_no_lesions():
    p = make_phantom(**SMALL, seed=2, lesions=False)
    assert not p.lesions.any()
    assert p.truth["lesion_volume_ml"]["infection"] == 0.0
    assert p.truth["effusion_side"] is None
    assert p.lungs.any()
    q = make_phantom(**SMALL, seed=2, lesion_burden=0.1, effusion=False)
    assert not (q.lesions == EFFUSION).any() and (q.lesions == GGO).any()


def test_no_lungs_body_has_no_air():
    p = make_phantom(**SMALL, seed=3, lungs=False, margin_slices=2)
    assert not p.lungs.any() and not p.lesions.any()
    assert p.truth["lung_volume_ml"]["total"] == 0.0
    assert p.body.any()
    assert not (p.ct.array[p.body] < -500).any()


def test_margin_slices_add_lung_free_slices_with_gas():
    p = make_phantom(**SMALL, seed=4, margin_slices=3)
    assert p.ct.shape == (24 + 6, 96, 96)
    area = (p.lungs > 0).sum(axis=(1, 2))
    assert area[:3].sum() == 0 and area[-3:].sum() == 0 and area[3:-3].sum() > 0
    assert p.truth["lung_slices"] == (3, 27)
    # Upper abdomen: liver-dense tissue and gas pockets outside the lungs (hard negatives).
    low = p.clean[:3]
    assert ((low > 50) & (low < 70) & p.body[:3]).sum() > 100
    assert ((low < -850) & p.body[:3]).sum() > 10


@pytest.mark.parametrize("bad", [dict(shape=(2, 96, 96)), dict(spacing=(0, 1, 1)), dict(lesion_burden=1.5)])
def test_bad_arguments(bad):
    kw = dict(SMALL)
    kw.update(bad)
    with pytest.raises(ValueError):
        make_phantom(**kw)


def test_write_nifti(tmp_path, ph):
    path = write_phantom(ph, tmp_path, fmt="nifti")
    assert path == tmp_path / "phantom.nii.gz"
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, ph.ct.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), np.rint(ph.ct.array))
    for name, arr in (("phantom_lungs.nii.gz", ph.lungs), ("phantom_lesions.nii.gz", ph.lesions)):
        m = nib.load(tmp_path / name)
        assert m.get_data_dtype() == np.uint8
        np.testing.assert_allclose(m.affine, ph.ct.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(m.dataobj).transpose(2, 1, 0), arr)
    with pytest.raises(ValueError):
        write_phantom(ph, tmp_path, fmt="png")


def test_write_dicom_series(dicom_dir, ph):
    files = sorted(dicom_dir.glob("*.dcm"))
    nz, ny, nx = ph.ct.shape
    dz, dy, dx = ph.ct.spacing
    assert len(files) == nz
    assert all(f.name.startswith("IMG_") and len(f.stem) == 4 + 16 for f in files)  # random hex names
    assert (dicom_dir.parent / "phantom_lungs.nii.gz").exists()
    assert (dicom_dir.parent / "phantom_lesions.nii.gz").exists()
    origin_lps = -ph.ct.affine[0, 3], -ph.ct.affine[1, 3], ph.ct.affine[2, 3]
    sops, slices = set(), []
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and ds.PatientID == "PHANTOM"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([dy, dx])
        assert float(ds.SliceThickness) == pytest.approx(dz)
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (ny, nx, 16)
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        sops.add(ds.SOPInstanceUID)
        slices.append(ds)
    assert len(sops) == nz
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    for k, ds in enumerate(slices):
        ipp = [float(v) for v in ds.ImagePositionPatient]
        assert ipp == pytest.approx([origin_lps[0], origin_lps[1], origin_lps[2] + k * dz], abs=1e-4)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, np.rint(ph.ct.array[k]))
    # InstanceNumber runs from the top of the chest down.
    assert slices[-1].InstanceNumber == 1 and slices[0].InstanceNumber == nz


def test_dicom_ordered_names(tmp_path):
    p = make_phantom(shape=(4, 48, 48), spacing=(5.0, 4.0, 4.0), seed=0)
    d = write_phantom(p, tmp_path, fmt="dicom", shuffle_names=False)
    assert sorted(f.name for f in d.glob("*.dcm")) == [f"IMG_{i:04d}.dcm" for i in range(1, 5)]


@pytest.mark.skipif(importlib.util.find_spec("covidct.io") is None, reason="covidct.io not available")
def test_dicom_and_nifti_round_trip_through_load_ct(tmp_path, dicom_dir, ph):
    from covidct.io import load_ct

    nifti = write_phantom(ph, tmp_path, fmt="nifti")
    for path in (dicom_dir, nifti):
        ct = load_ct(path)
        assert ct.is_hu and ct.shape == ph.ct.shape
        np.testing.assert_array_equal(ct.array, np.rint(ph.ct.array))
        assert ct.spacing == pytest.approx(ph.ct.spacing)
        np.testing.assert_allclose(ct.affine, ph.ct.affine, atol=1e-4)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_accepts_series(dicom_dir):
    for f in sorted(dicom_dir.glob("*.dcm"))[:3]:
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr
        assert "Error" not in out and "Warning" not in out, out


def test_write_is_all_or_nothing(tmp_path, monkeypatch):
    """Interrupted mid-series, nothing is left (no partial series, no masks, no temp folder); a re-write
    with fewer slices leaves no stale slices."""
    import covidct.phantom.writers as phantom_module

    out = tmp_path / "out"
    big = make_phantom(seed=1, shape=(10, 64, 64), spacing=(6.0, 4.0, 4.0))
    small = make_phantom(seed=1, shape=(6, 64, 64), spacing=(6.0, 4.0, 4.0))
    real = phantom_module._write_dicom

    def interrupted(hu, ct, folder, shuffle):
        real(hu[:3], ct, folder, shuffle)
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom_module, "_write_dicom", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_phantom(big, out, fmt="dicom")
    assert list(out.iterdir()) == []
    monkeypatch.setattr(phantom_module, "_write_dicom", real)
    write_phantom(big, out, fmt="dicom")
    folder = write_phantom(small, out, fmt="dicom")
    assert len(list(folder.glob("*.dcm"))) == 6
    assert sorted(p.name for p in out.iterdir()) == ["dicom", "phantom_lesions.nii.gz", "phantom_lungs.nii.gz"]


def test_lesion_spec_default_is_make_phantoms_own_pattern():
    from covidct.phantom import LesionSpec

    a = make_phantom(**SMALL, seed=3, lesion_burden=0.2)
    b = make_phantom(**SMALL, seed=3, lesion_spec=LesionSpec(burden=0.2))
    np.testing.assert_array_equal(a.ct.array, b.ct.array)
    np.testing.assert_array_equal(a.lesions, b.lesions)
    assert a.truth == b.truth


def test_lesion_spec_places_the_pattern_asked_for():
    from covidct.phantom import LesionSpec

    spec = LesionSpec(burden=0.2, sides=("right",), consolidation_fraction=0.0, effusion_side="left")
    p = make_phantom(**SMALL, seed=3, lesion_spec=spec)
    infection = np.isin(p.lesions, (GGO, CONSOLIDATION))
    assert not (infection & (p.lungs == LEFT_LUNG)).any()  # unilateral: right lung only
    right = p.lungs == RIGHT_LUNG
    assert (infection & right).sum() / right.sum() == pytest.approx(0.2, abs=0.03)  # GGO under vessels left out
    assert not (p.lesions == CONSOLIDATION).any()  # pure GGO
    assert p.truth["effusion_side"] == "left" and (p.lesions == EFFUSION).any()
    # A band of heights: the upper half of the lungs only, no effusion.
    upper = make_phantom(**SMALL, seed=3, lesion_spec=LesionSpec(burden=0.1, z_range=(0.5, 1.0), effusion=False))
    z = np.nonzero(np.isin(upper.lesions, (GGO, CONSOLIDATION)).any(axis=(1, 2)))[0]
    assert z.size and z.min() >= SMALL["shape"][0] // 2 - 1
    assert not (upper.lesions == EFFUSION).any() and upper.truth["effusion_side"] is None


@pytest.mark.parametrize("bad", [dict(burden=0.95), dict(sides=("middle",)), dict(effusion_side="up"),
                                 dict(consolidation_fraction=1.5), dict(z_range=(0.8, 0.2))])
def test_lesion_spec_rejects_bad_values(bad):
    from covidct.phantom import LesionSpec

    with pytest.raises(ValueError):
        LesionSpec(**bad)


def test_vessel_tree_of_a_tiny_lung_is_empty():
    """A lung too small for any branch to be drawn gives no vessels (not an error)."""
    from covidct.phantom.vessels import vessel_tree

    lung = np.zeros((10, 10, 10), bool)
    lung[2:8, 2:8, 2:8] = True
    out = vessel_tree(np.random.default_rng(0), lung, np.array([5.0, 5.0, 5.0]), np.array([0.5, 0.5, 0.5]))
    assert out.shape == lung.shape and not out.any()
