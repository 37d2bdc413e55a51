"""DICOM SEG validity: a SEG is valid (dciodvfy: no errors) or not written at all.

A source series whose UIDs were blanked, dropped, duplicated or made inconsistent by a de-identification
tool cannot be referenced by a SEG; covidct then writes no SEG (``SegNotWritten``) and says why, while
the NIfTI masks and the report are still written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pydicom
import pytest

from conftest import DCIODVFY, dciodvfy_errors
from covidct.io import load_ct
from covidct.phantom import make_phantom, write_phantom
from covidct.report.dicomseg import SegNotWritten, write_dicom_seg

needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(8, 48, 48), spacing=(5.0, 6.0, 6.0), seed=3, lesion_burden=0.2)


def _series(phantom, tmp_path: Path, damage=None) -> Path:
    """The phantom as a DICOM series, each file's dataset passed through ``damage(ds, index)`` first."""
    folder = write_phantom(phantom, tmp_path / "ph", fmt="dicom", shuffle_names=False)
    if damage is not None:
        for k, f in enumerate(sorted(folder.glob("*.dcm"))):
            ds = pydicom.dcmread(f)
            with warnings.catch_warnings():  # pydicom warns about the invalid values we write on purpose
                warnings.simplefilter("ignore")
                damage(ds, k)
                ds.save_as(f)
    return folder


@needs_dciodvfy
def test_seg_of_a_phantom_series_passes_dciodvfy(phantom, tmp_path):
    out = write_dicom_seg(load_ct(_series(phantom, tmp_path)), phantom.lungs, phantom.lesions, tmp_path / "seg.dcm")
    assert dciodvfy_errors(out) == []


def _blank_sop(ds, k):
    ds.SOPInstanceUID = ""
    ds.file_meta.MediaStorageSOPInstanceUID = ""


def _drop_sop(ds, k):
    del ds.SOPInstanceUID


def _blank_everything(ds, k):  # what the reported anonymiser did
    _blank_sop(ds, k)
    ds.FrameOfReferenceUID = ""
    del ds.SeriesNumber


def _blank_frame(ds, k):
    ds.FrameOfReferenceUID = ""


def _duplicate_sop(ds, k):
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4" if k < 2 else ds.SOPInstanceUID


def _frame_per_slice(ds, k):
    ds.FrameOfReferenceUID = f"1.2.3.{k + 1}"


def _invalid_uid(ds, k):
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"anon-{k}"


@pytest.mark.parametrize(
    "damage, says",
    [
        (_blank_sop, "have no SOPInstanceUID"),
        (_drop_sop, "have no SOPInstanceUID"),
        (_blank_everything, "have no SOPInstanceUID"),
        (_blank_frame, "no FrameOfReferenceUID"),
        (_duplicate_sop, "repeat another slice's SOPInstanceUID"),
        (_frame_per_slice, "different FrameOfReferenceUIDs"),
        (_invalid_uid, "invalid SOPInstanceUID"),
    ],
)
def test_unreferenceable_source_writes_no_seg(phantom, tmp_path, damage, says):
    ct = load_ct(_series(phantom, tmp_path, damage))
    target = tmp_path / "out" / "seg.dcm"
    with pytest.raises(SegNotWritten, match=says) as info:
        write_dicom_seg(ct, phantom.lungs, phantom.lesions, target)
    assert "\n" not in str(info.value)
    assert not target.exists() and not (target.parent.exists() and any(target.parent.iterdir()))


@needs_dciodvfy
def test_invalid_copied_attributes_are_emptied(phantom, tmp_path):
    """Type 2 patient/study values that break their VR would make the SEG invalid: they are emptied."""

    def damage(ds, k):
        ds.StudyDate = "2020-03-05"  # DA must be YYYYMMDD
        ds.StudyID = "STUDY-ID-FAR-TOO-LONG"  # SH: 16 characters at most
        del ds.PatientName

    folder = _series(phantom, tmp_path, damage)
    out = write_dicom_seg(load_ct(folder), phantom.lungs, phantom.lesions, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    assert seg.StudyDate == "" and seg.StudyID == ""
    if DCIODVFY is not None:
        assert dciodvfy_errors(out) == []


def test_analyze_of_a_blanked_series_keeps_niftis_and_says_why(phantom, tmp_path):
    """The pipeline: no segmentation.dcm, the reason in report.json, the masks and report still written."""
    from covidct.pipeline import analyze

    folder = _series(phantom, tmp_path, _blank_everything)
    res = analyze(folder, tmp_path / "out", html=False)
    out = tmp_path / "out"
    assert (out / "lungs.nii.gz").is_file() and (out / "lesions.nii.gz").is_file()
    assert not (out / "segmentation.dcm").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["dicom_seg"] is None
    assert any(w.startswith("no DICOM SEG written:") and "SOPInstanceUID" in w for w in report["warnings"])
    assert res.files["dicom_seg"] is None


@needs_dciodvfy
def test_the_checker_sees_the_reported_bug(phantom, tmp_path, monkeypatch):
    """Without the reference check, the blanked series gives the invalid SEG of the report (dciodvfy errors):
    the suite-wide check would catch a regression. Saved as .seg so that check does not fail this test."""
    import covidct.report.dicomseg as dicomseg

    ct = load_ct(_series(phantom, tmp_path, _blank_everything))
    monkeypatch.setattr(dicomseg, "check_source_references", lambda *a, **k: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom warns about the duplicated empty references
        out = write_dicom_seg(ct, phantom.lungs, phantom.lesions, tmp_path / "bad.seg")
    errors = dciodvfy_errors(out)
    assert any("ReferencedSOPInstanceUID" in e for e in errors) and any("FrameOfReferenceUID" in e for e in errors)


def test_opt_in_copy_with_new_uids_gives_a_valid_seg(phantom, tmp_path):
    """Opt-in: the blanked series is written again with fresh UIDs and the SEG references that copy."""
    from covidct.report.dicom_copy import NEW_UIDS_DIR

    src = _series(phantom, tmp_path, _blank_everything)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = write_dicom_seg(load_ct(src), phantom.lungs, phantom.lesions, tmp_path / "out" / "seg.dcm", new_uids=True)
    copies = sorted((tmp_path / "out" / NEW_UIDS_DIR).glob("*.dcm"))
    assert len(copies) == len(before) and before == {p.name: p.read_bytes() for p in src.iterdir()}  # source untouched
    copy_sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in copies}
    seg = pydicom.dcmread(out)
    referenced = {item.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for item in s.ReferencedInstanceSequence}
    assert referenced and referenced <= copy_sops and len(copy_sops) == len(copies)
    first = pydicom.dcmread(copies[0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID != ""
    assert load_ct(tmp_path / "out" / NEW_UIDS_DIR).shape == load_ct(src).shape
    if DCIODVFY is not None:
        assert dciodvfy_errors(out) == [] and dciodvfy_errors(copies[0]) == []


def test_analyze_seg_new_uids_flag(phantom, tmp_path, monkeypatch):
    from covidct.cli import main
    from covidct.report.dicom_copy import NEW_UIDS_DIR, NEW_UIDS_ENV

    monkeypatch.setenv(NEW_UIDS_ENV, "0")  # restored after the test: the flag sets it for the process
    src = _series(phantom, tmp_path, _blank_everything)
    out = tmp_path / "out"
    assert main(["analyze", str(src), "-o", str(out), "--no-html", "--seg-new-uids"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["dicom_seg"] == "segmentation.dcm" and (out / NEW_UIDS_DIR).is_dir()
    assert any(NEW_UIDS_DIR in w for w in report["warnings"])
