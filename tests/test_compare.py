"""``covidct compare``: two reports of one patient side by side, with each change and the warnings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from covidct.cli import main
from covidct.io.dicom_decode import scan_date
from covidct.phantom import make_phantom, write_phantom
from covidct.pipeline import Analyzer, analyze
from covidct.report.compare import compare_reports, load_report

SMALL = dict(shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))


@pytest.fixture(scope="module")
def follow_up(tmp_path_factory) -> tuple[Path, Path]:
    """One phantom patient at two lesion burdens, analysed from DICOM (so the scans carry a date)."""
    analyzer, outs = Analyzer(), []
    root = tmp_path_factory.mktemp("follow_up")
    for k, burden in enumerate((0.05, 0.3)):
        folder = write_phantom(make_phantom(seed=4, lesion_burden=burden, **SMALL), root / f"scan{k}", fmt="dicom")
        analyze(folder, root / f"out{k}", analyzer=analyzer, html=False)
        outs.append(root / f"out{k}")
    return outs[0], outs[1]


def test_compare_lines_up_two_reports(follow_up, tmp_path, capsys):
    before, after = follow_up
    out = tmp_path / "cmp" / "follow_up.json"
    assert main(["compare", str(before), str(after / "report.json"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rb, ra = (json.loads((p / "report.json").read_text()) for p in follow_up)
    rows = {r["name"]: r for r in result["rows"]}
    lesions = rows["lesions, all classes"]
    assert (lesions["before"], lesions["after"]) == (rb["lesions"]["total_ml"], ra["lesions"]["total_ml"])
    assert lesions["change"] == pytest.approx(ra["lesions"]["total_ml"] - rb["lesions"]["total_ml"], abs=1e-3)
    assert lesions["change"] > 0  # the later scan of the phantom patient has the larger burden
    lung = rows["lung volume total"]
    assert lung["change_percent"] == pytest.approx(100 * lung["change"] / lung["before"], abs=0.06)
    assert lesions["before"] >= 1.0 or lesions["change_percent"] is None  # no relative change of a sub-mL volume
    assert rows["severity score (0-25)"]["after"] == ra["severity"]["score"]
    assert rows["mean lung density"]["before"] == rb["densitometry"]["total"]["mean_hu"]
    assert rows["diagnosis"]["before"] == rb["diagnosis"]["label"]
    assert result["interval_days"] == 0 and result["before"]["study_date"] == rb["input"]["study_date"]
    assert len(rb["input"]["study_date"]) == 10  # YYYY-MM-DD from the series' StudyDate
    assert "lesions, all classes mL" in printed and f"{lesions['change']:+.2f}" in printed
    assert not list(out.parent.glob(".compare-*"))  # written through a temporary file


def test_compare_warns_when_not_comparable(follow_up):
    rb = load_report(follow_up[0])
    rb["warnings"] = []  # (the small phantom's scan cuts its lungs: that warning is checked below on AFTER)
    ra = copy.deepcopy(rb)
    rb["input"].update(patient_id="A", study_date="2020-03-10", spacing_mm=[5.0, 0.7, 0.7])
    ra["input"].update(patient_id="B", study_date="2020-03-01", spacing_mm=[1.0, 0.7, 0.7])
    ra["warnings"] = ["the scan cuts the lungs at its top slice: ..."]
    w = " | ".join(compare_reports(rb, ra)["warnings"])
    assert "patient IDs differ (A / B)" in w and "slice spacing differs (5 / 1 mm)" in w
    assert "thinner than 1.95 mm" in w and "AFTER was scanned before BEFORE" in w and "AFTER's scan cuts the lungs" in w
    assert compare_reports(rb, ra)["interval_days"] == -9
    assert compare_reports(rb, rb)["warnings"] == []


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (None, 2, "no report.json there"),
        ("{not json", 2, "not a readable covidct report"),
        ('{"schema_version": "2.0", "mode": "volume"}', 5, "not a covidct report of schema 1.x"),
        ('{"schema_version": "1.8", "mode": "slice"}', 5, "single-slice report"),
    ],
)
def test_compare_refuses_what_it_cannot_follow(follow_up, tmp_path, capsys, content, code, message):
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "report.json").write_text(content)
    assert main(["compare", str(follow_up[0]), str(bad)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covidct: error: ") and message in err[0]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_scan_date_from_dicom():
    ds = Dataset()
    assert scan_date(ds) is None
    ds.AcquisitionDate = "20200412"
    assert scan_date(ds) == "2020-04-12"
    ds.SeriesDate = "20201332"  # not a date: the next one is read
    assert scan_date(ds) == "2020-04-12"
    ds.StudyDate = "20200410"
    assert scan_date(ds) == "2020-04-10"
