"""DICOM SR (TID 1500 measurement report): content, codes, references, dciodvfy, parsed back by highdicom."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from covidct.io import load_ct
from covidct.phantom import make_phantom, write_phantom
from covidct.report.dicomseg import write_dicom_seg
from covidct.report.sr import PRIVATE_SCHEME, build_measurement_report, stable_uid, write_dicom_sr


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small DICOM phantom, its SEG (from the truth masks, no consolidation) and a report dict."""
    ph = make_phantom(shape=(12, 64, 64), spacing=(5.0, 3.0, 3.0), seed=1)
    folder = write_phantom(ph, tmp_path_factory.mktemp("ph"), fmt="dicom")
    ct = load_ct(folder)
    lesions = np.where(ph.lesions == 2, 0, ph.lesions).astype(np.uint8)
    seg_path = write_dicom_seg(ct, ph.lungs, lesions, tmp_path_factory.mktemp("seg") / "segmentation.dcm")
    zones = {f"{s}_{z}": 10.0 + i for i, (s, z) in enumerate(
        (s, z) for s in ("left", "right") for z in ("upper", "middle", "lower"))}
    side = {"ggo_ml": 1.5, "consolidation_ml": 0.0, "effusion_ml": 0.0, "total_ml": 1.5}
    report = {
        "mode": "volume",
        "diagnosis": {"label": "covid19", "probabilities": {"covid19": 0.7, "pneumonia": 0.2, "normal": 0.1}},
        "lungs": {"left_ml": 120.5, "right_ml": 130.25, "total_ml": 250.75},
        "lesions": {"ggo_ml": 3.0, "consolidation_ml": 0.0, "effusion_ml": 0.0, "total_ml": 3.0,
                    "left": side, "right": side},
        "involvement_percent": {"left": 12.5, "right": 7.25, "total": 9.8, "zones": zones},
        "severity": {"score": 7, "max": 25},
        "densitometry": {side: {"mean_hu": -810.5 + k, "perc15_hu": -905.0 + k, "laa950_percent": 0.75 + k,
                                "affected_percent": 15.5 + k} for k, side in enumerate(("left", "right", "total"))},
    }
    return ct, pydicom.dcmread(seg_path), report


def _items(sr) -> list:
    """Every content item, depth first."""
    out, todo = [], list(sr.ContentSequence)
    while todo:
        it = todo.pop(0)
        out.append(it)
        todo[:0] = list(it.get("ContentSequence", []))
    return out


def _numbers(sr, code: str) -> list[float]:
    return [float(it.MeasuredValueSequence[0].NumericValue) for it in _items(sr)
            if it.ValueType == "NUM" and it.ConceptNameCodeSequence[0].CodeValue == code]


def test_sr_content_codes_and_references(case, tmp_path):
    ct, seg, report = case
    sources = ct.meta["_source_headers"]
    path = write_dicom_sr(report, sources, seg, tmp_path / "report.sr.dcm")
    assert path.is_file() and not list(tmp_path.glob(".*tmp"))
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == seg.StudyInstanceUID and ds.PatientID == seg.PatientID
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    # evidence: every CT image and the SEG
    evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {str(s.SOPInstanceUID) for s in sources} | {str(seg.SOPInstanceUID)}

    # parsed back by highdicom: lung and lesion groups referencing the SEG's segments and the CT series
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    labels = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    by_id = {g.tracking_identifier: g for g in groups}
    assert {"Left lung", "Right lung", "ggo"} <= set(by_id) <= {"Left lung", "Right lung", "ggo", "effusion"}
    for name, label in (("Left lung", "Left lung"), ("Right lung", "Right lung"), ("ggo", "Ground-glass opacity")):
        ref = by_id[name].referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [labels[label]]
        assert ref.source_series_for_segmentation.value == ct.meta["series_uid"]
    left = by_id["Left lung"]
    assert left.finding_type.value == "39607008"
    vol = left.get_measurements(name=pydicom.sr.codedict.codes.SCT.Volume)[0]
    assert vol.value == pytest.approx(120.5) and vol.unit.value == "mL"
    # values: lung volumes, per-lung and per-zone involvement, severity, probabilities, diagnosis
    assert sorted(_numbers(ds, "118565006"))[-2:] == [120.5, 130.25]
    inv = _numbers(ds, "LUNGINV")
    assert {12.5, 7.25, 9.8} <= set(inv) and set(report["involvement_percent"]["zones"].values()) <= set(inv)
    assert _numbers(ds, "CTSS") == [7.0]
    # the lung's density per lung and for both: mean attenuation (DCM code, derivation mean, HU), the private rest
    means = [it for it in _items(ds) if it.ValueType == "NUM" and it.ConceptNameCodeSequence[0].CodeValue == "112031"]
    assert sorted(float(it.MeasuredValueSequence[0].NumericValue) for it in means) == [-810.5, -809.5, -808.5]
    assert means[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"
    assert sorted(_numbers(ds, "PERC15")) == [-905.0, -904.0, -903.0]
    assert sorted(_numbers(ds, "LAA950")) == [0.75, 1.75, 2.75] and sorted(_numbers(ds, "LCTAAFF")) == [15.5, 16.5, 17.5]
    assert _numbers(ds, "PCOVID") == [0.7]
    finding = [it for it in _items(ds) if it.ValueType == "CODE" and it.ConceptNameCodeSequence[0].CodeValue == "121073"]
    assert finding[0].ConceptCodeSequence[0].CodeValue == "840539006"  # SNOMED CT COVID-19
    # consolidation is not in the SEG: reported as 0 mL at study level, without a segment reference
    assert "consolidation" not in by_id
    assert not [it for it in _items(ds) if it.ValueType == "CODE" and it.ConceptCodeSequence[0].CodeValue == "RSNACAT"]

    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not installed (apt-get install -y dicom3tools)")
    res = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, errors


def test_sr_pattern_category_when_present_and_stable_uids(case):
    ct, seg, report = case
    with_pattern = {**report, "pattern": {"rsna_category": "typical", "co_rads": 5}}
    a = build_measurement_report(with_pattern, ct.meta["_source_headers"], seg)
    b = build_measurement_report(report, ct.meta["_source_headers"], seg)
    values = {it.ConceptCodeSequence[0].CodeValue for it in _items(a) if it.ValueType == "CODE"}
    assert {"RSNA-TYP", "CORADS5"} <= values
    assert a.SOPInstanceUID == b.SOPInstanceUID == stable_uid(str(seg.SOPInstanceUID), "sr")  # same SEG: same SR UID
    with pytest.raises(ValueError, match="volume"):
        build_measurement_report({**report, "mode": "slice"}, ct.meta["_source_headers"], seg)
