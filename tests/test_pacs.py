"""PACS round trip against a real, private Orthanc (DICOMweb plugin, authentication on): upload a phantom with
STOW-RS, ``analyze --pacs --push``, read the SEG and SR back with WADO-RS, parse them with highdicom, dciodvfy;
plus the one-line errors. Skips, saying why, where Orthanc is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from covidct.cli import main
from covidct.errors import EXIT_CODES
from covidct.pacs.orthanc import PrivateOrthanc, orthanc_missing

pytestmark = pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or "")


@pytest.fixture(scope="module")
def orthanc():
    with PrivateOrthanc() as pacs:
        yield pacs


@pytest.fixture
def pacs_env(orthanc, monkeypatch):
    monkeypatch.setenv("COVIDCT_PACS_USER", orthanc.user)
    monkeypatch.setenv("COVIDCT_PACS_PASSWORD", orthanc.password)
    for var in ("COVIDCT_PACS_TOKEN", "COVIDCT_PACS_AUTH_FILE"):
        monkeypatch.delenv(var, raising=False)
    return orthanc


def settings(orthanc):
    from covidct.pacs.client import settings_from

    return settings_from(orthanc.url, environ={"COVIDCT_PACS_USER": orthanc.user,
                                               "COVIDCT_PACS_PASSWORD": orthanc.password})


def upload_phantom(orthanc, folder: Path, seed: int = 0, slices: int = 16, size: int = 96) -> str:
    """A small DICOM phantom written to ``folder`` and stored in the PACS; returns its study UID."""
    from covidct.pacs.transfer import upload_folder
    from covidct.phantom import make_phantom, write_phantom

    ph = make_phantom(shape=(slices, size, size), seed=seed, lesion_burden=0.15)
    return upload_folder(settings(orthanc), write_phantom(ph, folder, fmt="dicom"))


def series_of(orthanc, study: str) -> dict[str, list[dict]]:
    """Modality -> that study's series (QIDO-RS)."""
    from covidct.pacs.client import connect
    from covidct.pacs.transfer import list_series

    s = settings(orthanc)
    out: dict[str, list[dict]] = {}
    for item in list_series(connect(s), s, study):
        out.setdefault(item["modality"], []).append(item)
    return out


def dciodvfy_errors(path: Path) -> list[str]:
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(scope="module")
def pushed(orthanc, tmp_path_factory):
    """One phantom study analysed from the PACS with --push, twice (the second must not duplicate)."""
    import os

    tmp = tmp_path_factory.mktemp("pacs")
    study = upload_phantom(orthanc, tmp / "ph")
    env = {"COVIDCT_PACS_USER": orthanc.user, "COVIDCT_PACS_PASSWORD": orthanc.password}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        codes = [main(["analyze", "--pacs", orthanc.url, "--study", study, "-o", str(tmp / f"out{i}"), "--push",
                       "--no-html"]) for i in range(2)]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return study, tmp, codes


def test_analyze_from_pacs_pushes_seg_and_sr_into_the_study(orthanc, pushed, tmp_path):
    from covidct.pacs.client import connect

    study, tmp, codes = pushed
    assert codes == [0, 0]
    out = tmp / "out0"
    for name in ("report.json", "segmentation.dcm", "report.sr.dcm", "lungs.nii.gz"):
        assert (out / name).is_file(), name
    found = series_of(orthanc, study)
    # both runs stored the same UIDs: one SEG and one SR series, one instance each (no duplicates)
    assert sorted(found) == ["CT", "SEG", "SR"]
    assert [s["instances"] for s in found["SEG"] + found["SR"]] == [1, 1]
    ct_uid = found["CT"][0]["uid"]

    s = settings(orthanc)
    client = connect(s)
    seg_ds = client.retrieve_series(study, found["SEG"][0]["uid"])[0]
    sr_ds = client.retrieve_series(study, found["SR"][0]["uid"])[0]
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.StudyInstanceUID == study and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
    assert seg.SOPInstanceUID == pydicom.dcmread(out / "segmentation.dcm").SOPInstanceUID
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert sr.StudyInstanceUID == study
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert {g.tracking_identifier for g in groups} >= {"Left lung", "Right lung"}
    for g in groups:
        assert g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert g.referenced_segment.source_series_for_segmentation.value == ct_uid
    report = json.loads((out / "report.json").read_text())
    local_sr = pydicom.dcmread(out / "report.sr.dcm")  # (highdicom's from_dataset converted sr_ds in place)
    assert local_sr.SOPInstanceUID == sr.SOPInstanceUID
    coded = {str(it.ConceptCodeSequence[0].CodeValue) for it in _items(local_sr) if it.ValueType == "CODE"}
    category = (report.get("pattern") or {}).get("rsna_category")
    if category:  # the pattern's RSNA category and CO-RADS score travel in the SR too
        from covidct.report.sr import RSNA_CODES

        assert {RSNA_CODES[category][0], f"CORADS{report['pattern']['co_rads']}"} <= coded
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    left = next(g for g in groups if g.tracking_identifier == "Left lung")
    assert labels[left.referenced_segment.referenced_segment_numbers[0]] == "Left lung"

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install -y dicom3tools)")
    for name, ds in (("seg.dcm", seg_ds), ("sr.dcm", sr_ds)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        assert not dciodvfy_errors(tmp_path / name), name


def _items(ds) -> list:
    out, todo = [], list(ds.ContentSequence)
    while todo:
        item = todo.pop(0)
        out.append(item)
        todo[:0] = list(item.get("ContentSequence", []))
    return out


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_pacs_errors_are_one_line(pacs_env, pushed, tmp_path, capsys, monkeypatch):
    orthanc = pacs_env
    study = pushed[0]
    out = str(tmp_path / "o")
    # refused: wrong password
    monkeypatch.setenv("COVIDCT_PACS_PASSWORD", "Wr0ngPassw0rd")
    code, err = _run(["analyze", "--pacs", orthanc.url, "--study", study, "-o", out], capsys)
    assert code == EXIT_CODES["PacsError"] and "HTTP 401" in err and "Wr0ngPassw0rd" not in err and len(err.splitlines()) == 1
    monkeypatch.setenv("COVIDCT_PACS_PASSWORD", orthanc.password)
    # unreachable
    from covidct.pacs.orthanc import _free_port

    code, err = _run(["analyze", "--pacs", f"http://127.0.0.1:{_free_port()}/dicom-web", "--study", study,
                      "-o", out, "--timeout", "2"], capsys)
    assert code == EXIT_CODES["PacsError"] and "cannot reach" in err and len(err.splitlines()) == 1
    # unknown study, not a UID, credentials in the URL
    code, err = _run(["analyze", "--pacs", orthanc.url, "--study", "1.2.3.4", "-o", out], capsys)
    assert code == EXIT_CODES["PacsError"] and "not in the PACS" in err
    code, err = _run(["analyze", "--pacs", orthanc.url, "--study", "P001/../x", "-o", out], capsys)
    assert code == EXIT_CODES["PacsError"] and "not a DICOM UID" in err
    url = orthanc.url.replace("http://", f"http://{orthanc.user}:{orthanc.password}@")
    code, err = _run(["analyze", "--pacs", url, "--study", study, "-o", out], capsys)
    assert code == EXIT_CODES["PacsError"] and orthanc.password not in err
    # usage: --pacs without --study
    code, err = _run(["analyze", "--pacs", orthanc.url, "-o", out], capsys)
    assert code == 64 and "--study" in err
    assert not Path(out).exists()


def test_study_without_ct_is_refused(pacs_env, tmp_path, capsys):
    """A study holding only a non-CT series (an MR relabelled phantom slice): exit 3, the modalities named."""
    from covidct.pacs.client import connect
    from covidct.phantom import make_phantom, write_phantom

    folder = write_phantom(make_phantom(shape=(4, 32, 32), seed=3), tmp_path / "ph", fmt="dicom")
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    connect(settings(pacs_env)).store_instances([ds])
    code, err = _run(["analyze", "--pacs", pacs_env.url, "--study", ds.StudyInstanceUID, "-o", str(tmp_path / "o")],
                     capsys)
    assert code == EXIT_CODES["NotCT"] and "holds no CT series (found: MR)" in err


def test_credentials_from_a_file_and_token(tmp_path):
    from covidct.errors import PacsError
    from covidct.pacs.client import connect, settings_from

    f = tmp_path / "auth.json"
    f.write_text('{"token": "s3cret"}')
    s = settings_from("https://pacs.example/dicom-web", auth_file=f, environ={})
    assert s.auth == ("bearer", "s3cret") and s.verify is True and "s3cret" not in repr(s)
    assert connect(s)._session.headers["Authorization"] == "Bearer s3cret"
    s = settings_from("https://pacs.example/dicom-web", environ={"COVIDCT_PACS_USER": "u", "COVIDCT_PACS_PASSWORD": "p"},
                      insecure=True)
    assert s.auth == ("basic", "u", "p") and s.verify is False
    f.write_text("{}")
    with pytest.raises(PacsError, match="neither"):
        settings_from("https://pacs.example/dicom-web", auth_file=f, environ={})
    with pytest.raises(PacsError, match="DICOMweb root URL"):
        settings_from("pacs.example", environ={})
