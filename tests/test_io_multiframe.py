"""A multi-frame CT in one file (Enhanced CT / Legacy Converted Enhanced CT) reads as the series it was made from,
and its DICOM SEG references its frames.

The multi-frame files are made here from the phantom's DICOM series by highdicom's legacy conversion (frames in a
shuffled order, so that the loader's ordering is exercised)."""

from __future__ import annotations

import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage

from covidct.errors import CovidCTError
from covidct.io import load_ct
from covidct.phantom import make_phantom, write_phantom
from covidct.report.dicomseg import write_dicom_seg


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(10, 64, 64), spacing=(4.0, 5.0, 5.0), seed=5, lesion_burden=0.2)


@pytest.fixture(scope="module")
def series_and_multiframe(phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("mf")
    folder = write_phantom(phantom, root / "series", fmt="dicom")
    datasets = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    order = np.random.default_rng(0).permutation(len(datasets))  # frames not in position order
    image = LegacyConvertedEnhancedCTImage([datasets[i] for i in order], series_instance_uid=hd.UID(),
                                           series_number=7, sop_instance_uid=hd.UID(), instance_number=1)
    path = root / "enhanced.dcm"
    image.save_as(path)
    return folder, path


def test_a_multiframe_file_reads_as_its_series(series_and_multiframe):
    folder, path = series_and_multiframe
    series, multi = load_ct(folder), load_ct(path)
    np.testing.assert_array_equal(multi.array, series.array)
    np.testing.assert_allclose(multi.affine, series.affine)
    assert multi.spacing == series.spacing and multi.kind == "dicom" and not multi.warnings
    for key in ("iop", "ipp_first", "patient_position", "slice_thickness", "modality"):
        assert multi.meta[key] == series.meta[key], key
    frames = multi.meta["source_frames"]
    assert sorted(frames) == list(range(1, series.n_slices + 1)) and frames != sorted(frames)
    assert [s.z_mm for s in multi.slices] == [s.z_mm for s in series.slices]
    # a folder holding only the multi-frame file reads the same
    lone = path.parent / "lone"
    lone.mkdir(exist_ok=True)
    shutil.copy(path, lone / path.name)
    np.testing.assert_array_equal(load_ct(lone).array, series.array)


def test_the_seg_of_a_multiframe_source_references_its_frames(phantom, series_and_multiframe, tmp_path):
    # dciodvfy checks every SEG the tests write (conftest); here: both SEGs decode to the same masks and geometry
    folder, path = series_and_multiframe
    segs = [hd.seg.segread(write_dicom_seg(load_ct(src), phantom.lungs, phantom.lesions, tmp_path / f"{k}.dcm"))
            for k, src in enumerate((folder, path))]
    assert segs[1].NumberOfFrames == segs[0].NumberOfFrames
    assert len(segs[1].SourceImageSequence if "SourceImageSequence" in segs[1] else segs[1].ReferencedSeriesSequence
               [0].ReferencedInstanceSequence) == 1  # one source image
    a, b = (s.get_volume() for s in segs)
    np.testing.assert_array_equal(b.array, a.array)
    np.testing.assert_allclose(b.affine, a.affine)
    assert a.array[..., 0].any() and a.array[..., 1].any()  # both lungs are in it


def test_a_damaged_multiframe_file_is_one_clear_error(series_and_multiframe, tmp_path):
    folder, path = series_and_multiframe
    cut = tmp_path / "cut.dcm"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) - len(data) // 3])  # pixel data truncated
    with pytest.raises(CovidCTError) as err:
        load_ct(cut)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(cut))
    # the multi-frame file beside the single-frame slices it was made from, under their Series UID: the slices
    # are read, and the warning says what else is there
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = pydicom.dcmread(next(folder.glob("*.dcm"))).SeriesInstanceUID
    ds.save_as(mixed / "enhanced.dcm")
    ct = load_ct(mixed)
    assert "source_frames" not in ct.meta and any("2 series" in w for w in ct.warnings)


def test_info_says_the_slices_are_the_frames_of_one_file(series_and_multiframe):
    import json

    from typer.testing import CliRunner

    from covidct.cli import app

    folder, path = series_and_multiframe
    res = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["frames"].startswith("10 slices from the frames of one multi-frame file")
    assert "frames" not in json.loads(CliRunner().invoke(app, ["info", str(folder), "--json"]).output)


def test_a_series_of_several_multiframe_files_is_one_clear_error(series_and_multiframe, tmp_path):
    _, path = series_and_multiframe
    two = tmp_path / "two"
    two.mkdir()
    for k in range(2):  # one series split over two multi-frame files: not read
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        ds.save_as(two / f"part{k}.dcm")
    with pytest.raises(CovidCTError, match="multi-frame file on its own") as err:
        load_ct(two)
    assert "\n" not in str(err.value)
