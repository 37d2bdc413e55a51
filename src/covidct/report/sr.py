"""DICOM Structured Report (TID 1500 Measurement Report) of one analysis, built with highdicom.

What goes in (from report.json's dict) and how it is coded:

* One volumetric group (TID 1411) per segment of the DICOM SEG, referencing that segment and the source CT
  series: the left and right lungs (finding type SCT 39607008 "Lung", finding site lung + laterality
  SCT 7771000 / 24028007) with their volume (SCT 118565006 "Volume", UCUM mL), the percentage of the lung
  involved, and the involvement of each of its three zones (finding site lung + laterality + topographical
  modifier SCT 261183002 "Upper" / 255562008 "Mid" / 261122009 "Lower"); each lesion class present
  (the SEG's codes: DCM 112120 ground glass opacity, SCT 95436008 lung consolidation, SCT 60046008 pleural
  effusion) with its volume in total and per lung.
* Lesion classes the SEG does not hold (none found): an image-level group (TID 1501) with volume 0 mL.
* A summary group (TID 1501, finding type SCT 39607008 lung, site bilateral SCT 51440002): total
  involvement, the CT severity score, the diagnosis as a qualitative evaluation "Impression" (DCM 121073) =
  SCT 840539006 COVID-19 / SCT 233604007 pneumonia / SCT 408573005 imaging result normal, each class's
  probability, and, when report.json has them, the RSNA category and the CO-RADS score.
* Where report.json has ``densitometry``: in each lung's group and the summary, the mean lung density (DCM 112031
  "Attenuation Coefficient", derivation SCT 373098007 "Mean", UCUM [hnsf'U]), Perc15, LAA-950 and Lung CT Analyzer's
  affected percentage.
* Concepts no standard terminology defines (percentage of lung involved, the Pan CT severity score,
  per-class probabilities, RSNA / CO-RADS categories, Perc15, LAA-950, LCTA's affected share) use covidct's private
  coding scheme ``99COVIDCT``
  (a "99" designator is the standard's way to mark local codes, PS3.3 8.2), declared in the Coding Scheme
  Identification Sequence.
* Procedure reported: LN 24627-2 "CT Chest". Observer: the covidct device. Evidence: the CT images and the
  SEG, so the SR lists them in its Current Requested Procedure Evidence Sequence.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

SR_SERIES_NUMBER = 9002  # after the SEG's 9001
SR_SERIES_DESCRIPTION = "covidct measurement report (research use only)"
PRIVATE_SCHEME = "99COVIDCT"
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _codes() -> dict:
    """The concepts used, by short name (imports deferred: highdicom is slow to import)."""
    from highdicom.sr import CodedConcept as C
    from pydicom.sr.codedict import codes

    p = PRIVATE_SCHEME
    return {
        "lung": codes.SCT.Lung, "left": codes.SCT.Left, "right": codes.SCT.Right,
        "bilateral": codes.SCT.Bilateral, "volume": codes.SCT.Volume,
        "ml": C("mL", "UCUM", "milliliter"), "percent": codes.UCUM.Percent, "no_units": codes.UCUM.NoUnits,
        "upper": C("261183002", "SCT", "Upper"), "middle": C("255562008", "SCT", "Mid"),
        "lower": C("261122009", "SCT", "Lower"),
        "ggo": codes.DCM.GroundGlassOpacity, "consolidation": C("95436008", "SCT", "Lung consolidation"),
        "effusion": codes.SCT.PleuralEffusion, "abnormal": codes.SCT.MorphologicallyAbnormalStructure,
        "impression": codes.DCM.Impression,
        "covid19": C("840539006", "SCT", "COVID-19"), "pneumonia": C("233604007", "SCT", "Pneumonia"),
        "normal": C("408573005", "SCT", "Imaging result normal"),
        "involvement": C("LUNGINV", p, "Percentage of lung volume involved by lesions"),
        "severity": C("CTSS", p, "CT severity score (Pan et al. 2020, 0-25)"),
        "score_unit": C("{score}", "UCUM", "score"),
        "p_covid19": C("PCOVID", p, "Probability of COVID-19"),
        "p_pneumonia": C("PPNEU", p, "Probability of other pneumonia"),
        "p_normal": C("PNORM", p, "Probability of normal lungs"),
        "rsna": C("RSNACAT", p, "RSNA COVID-19 CT category"),
        "co_rads": C("CORADS", p, "CO-RADS category"),
        "procedure": C("24627-2", "LN", "CT Chest"),
        "attenuation": codes.DCM.AttenuationCoefficient, "mean": codes.SCT.Mean, "hu": codes.UCUM.HounsfieldUnit,
        "perc15": C("PERC15", p, "15th percentile of lung attenuation"),
        "laa950": C("LAA950", p, "Percentage of lung volume below -950 HU"),
        "lcta_affected": C("LCTAAFF", p, "Lung CT Analyzer affected percentage (-750 to 0 HU)"),
    }


# (code, meaning); codes kept within 16 characters so they fit Code Value, not Long Code Value
RSNA_CODES = {"typical": ("RSNA-TYP", "Typical appearance"), "indeterminate": ("RSNA-IND", "Indeterminate appearance"),
              "atypical": ("RSNA-ATYP", "Atypical appearance"), "negative": ("RSNA-NEG", "Negative for pneumonia")}
_CO_RADS_MEANINGS = {1: "very low", 2: "low", 3: "equivocal", 4: "high", 5: "very high"}
_LESIONS = (("ggo", "ggo_ml"), ("consolidation", "consolidation_ml"), ("effusion", "effusion_ml"))
_ZONES = (("upper", "upper"), ("middle", "middle"), ("lower", "lower"))


def stable_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (2.25 + a name-based UUID): the same inputs give the same UID, so
    re-sending a result to a PACS replaces it instead of adding a duplicate."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "covidct:" + "/".join(parts)).int)


def _segment_numbers(seg: Dataset) -> dict[str, int]:
    """SEG segment number by covidct concept name ("left", "right", "ggo", ...), from its segment labels."""
    by_label = {"left lung": "left", "right lung": "right", "ground-glass opacity": "ggo",
                "consolidation": "consolidation", "pleural effusion": "effusion"}
    out = {}
    for item in seg.SegmentSequence:
        name = by_label.get(str(item.SegmentLabel).lower())
        if name:
            out[name] = int(item.SegmentNumber)
    return out


def _filled(sources: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the headers with empty Type 2 patient/study attributes added where de-identification dropped
    them (highdicom copies them into the SR)."""
    out = []
    for ds in sources:
        ds = ds.copy()
        for kw in _TYPE2:
            if kw not in ds:
                setattr(ds, kw, "")
        out.append(ds)
    return out


def build_measurement_report(report: dict, sources: Sequence[Dataset], seg: Dataset, *,
                             series_instance_uid: str | None = None, sop_instance_uid: str | None = None):
    """The highdicom ``Comprehensive3DSR`` for ``report`` (a volume analysis) over the CT ``sources`` and its
    ``seg``. UIDs default to ones derived from the SEG's (so a rerun on the same SEG gives the same SR)."""
    import highdicom as hd
    from highdicom.sr import (
        FindingSite,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ReferencedSegment,
        SourceSeriesForSegmentation,
        TrackingIdentifier,
        VolumetricROIMeasurementsAndQualitativeEvaluations,
    )
    from pydicom.sr.codedict import codes

    from covidct import __version__

    if report.get("mode") != "volume":
        raise ValueError("a DICOM SR measurement report needs a volume analysis (this one is of a single slice)")
    if not sources:
        raise ValueError("a DICOM SR needs the source CT headers")
    c = _codes()
    series_uid = str(sources[0].SeriesInstanceUID)
    numbers = _segment_numbers(seg)
    algorithm = hd.sr.AlgorithmIdentification(name="covidct", version=str(__version__))

    def volume(ml: float | None, site=None) -> Measurement:
        return Measurement(name=c["volume"], value=float(ml or 0.0), unit=c["ml"], algorithm_id=algorithm,
                           finding_sites=[site] if site is not None else None)

    def percent(value: float | None, site) -> Measurement:
        return Measurement(name=c["involvement"], value=float(value or 0.0), unit=c["percent"],
                           algorithm_id=algorithm, finding_sites=[site])

    def referenced(name: str) -> ReferencedSegment:
        return ReferencedSegment(sop_class_uid=_SEG_SOP_CLASS, sop_instance_uid=str(seg.SOPInstanceUID),
                                 segment_number=numbers[name],
                                 source_series=SourceSeriesForSegmentation(series_uid))

    def tracking(label: str) -> TrackingIdentifier:
        return TrackingIdentifier(uid=stable_uid(str(seg.SOPInstanceUID), label), identifier=label)

    inv, zones = report["involvement_percent"], report["involvement_percent"].get("zones", {})
    groups: list = []
    for side, label in (("left", "Left lung"), ("right", "Right lung")):
        if side not in numbers:
            raise ValueError(f"the SEG has no '{label}' segment")
        site = FindingSite(c["lung"], laterality=c[side])
        measurements = [volume(report["lungs"].get(f"{side}_ml")), percent(inv.get(side), site)]
        measurements += [percent(zones.get(f"{side}_{zone}"), FindingSite(c["lung"], laterality=c[side],
                                                                          topographical_modifier=c[mod]))
                         for zone, mod in _ZONES if f"{side}_{zone}" in zones]
        measurements += _density(((report.get("densitometry") or {}).get(side)), c, algorithm, site)
        groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(label), referenced_segment=referenced(side), finding_type=c["lung"],
            finding_sites=[site], algorithm_id=algorithm, measurements=measurements))
    lesions = report["lesions"]
    for name, key in _LESIONS:
        per_side = [volume(lesions.get(side, {}).get(key), FindingSite(c["lung"], laterality=c[side]))
                    for side in ("left", "right") if side in lesions]
        common = {"tracking_identifier": tracking(name), "finding_type": c[name], "finding_category": c["abnormal"],
                  "algorithm_id": algorithm, "measurements": [volume(lesions.get(key)), *per_side]}
        if name in numbers:
            groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=referenced(name), **common))
        else:  # not found, so not in the SEG: stated as 0 mL for the whole study
            groups.append(MeasurementsAndQualitativeEvaluations(**common))
    groups.append(_summary_group(report, c, algorithm, tracking("summary")))

    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=stable_uid("device", "covidct"), name="covidct", manufacturer_name="covidct",
                model_name="covidct", serial_number="0")))
    content = MeasurementReport(observation_context=observation_context, procedure_reported=c["procedure"],
                                imaging_measurements=groups)
    sr_series = series_instance_uid or stable_uid(str(seg.SOPInstanceUID), "sr-series")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*_filled(sources), seg], content=content, series_instance_uid=sr_series,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid or stable_uid(str(seg.SOPInstanceUID), "sr"),
            instance_number=1, manufacturer="covidct", is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "covidct local codes"
    scheme.CodingSchemeResponsibleOrganization = "covidct project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _density(figures: dict | None, c: dict, algorithm, site) -> list:
    """Mean lung density, Perc15, LAA-950 and Lung CT Analyzer's affected share of one lung or both (report.json's
    ``densitometry``), as measurements; none where the report has none."""
    from highdicom.sr import Measurement

    if not figures:
        return []
    out = [Measurement(name=c["attenuation"], value=float(figures["mean_hu"]), unit=c["hu"], derivation=c["mean"],
                       algorithm_id=algorithm, finding_sites=[site]),
           Measurement(name=c["perc15"], value=float(figures["perc15_hu"]), unit=c["hu"], algorithm_id=algorithm,
                       finding_sites=[site])]
    for key, name in (("laa950_percent", "laa950"), ("affected_percent", "lcta_affected")):
        if figures.get(key) is not None:
            out.append(Measurement(name=c[name], value=float(figures[key]), unit=c["percent"], algorithm_id=algorithm,
                                   finding_sites=[site]))
    return out


def _summary_group(report: dict, c: dict, algorithm, tracking):
    """The whole-patient group: total involvement, severity, diagnosis and probabilities, pattern category."""
    from highdicom.sr import (
        CodedConcept,
        FindingSite,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
    )

    both = FindingSite(c["lung"], laterality=c["bilateral"])
    measurements = [Measurement(name=c["involvement"], value=float(report["involvement_percent"].get("total") or 0.0),
                                unit=c["percent"], algorithm_id=algorithm, finding_sites=[both])]
    measurements += _density((report.get("densitometry") or {}).get("total"), c, algorithm, both)
    severity = report.get("severity", {})
    if severity.get("score") is not None:
        measurements.append(Measurement(name=c["severity"], value=float(severity["score"]), unit=c["score_unit"],
                                        algorithm_id=algorithm))
    diagnosis = report.get("diagnosis", {})
    for label, p in diagnosis.get("probabilities", {}).items():
        if f"p_{label}" in c:
            measurements.append(Measurement(name=c[f"p_{label}"], value=float(p), unit=c["no_units"],
                                            algorithm_id=algorithm))
    evaluations = []
    if diagnosis.get("label") in ("covid19", "pneumonia", "normal"):
        evaluations.append(QualitativeEvaluation(c["impression"], c[diagnosis["label"]]))
    pattern = report.get("pattern") or {}
    category = pattern.get("rsna_category")
    if category in RSNA_CODES:
        code, meaning = RSNA_CODES[category]
        evaluations.append(QualitativeEvaluation(c["rsna"], CodedConcept(code, PRIVATE_SCHEME, meaning)))
    co_rads = pattern.get("co_rads")
    if isinstance(co_rads, int) and co_rads in _CO_RADS_MEANINGS:
        evaluations.append(QualitativeEvaluation(
            c["co_rads"], CodedConcept(f"CORADS{co_rads}", PRIVATE_SCHEME,
                                       f"CO-RADS {co_rads} ({_CO_RADS_MEANINGS[co_rads]} suspicion)")))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=c["lung"], finding_sites=[both], algorithm_id=algorithm,
        measurements=measurements, qualitative_evaluations=evaluations or None)


def write_dicom_sr(report: dict, sources: Sequence[Dataset], seg: Dataset, path: str | Path, **uids: str) -> Path:
    """Build the measurement report (see :func:`build_measurement_report`) and write it atomically to ``path``."""
    from covidct.io.writers import atomic_write

    sr = build_measurement_report(report, sources, seg, **uids)
    return atomic_write(path, lambda tmp: sr.save_as(tmp, enforce_file_format=True))
