"""A copy of a source CT series with fresh, consistent UIDs, for a DICOM SEG to reference (opt-in).

When a de-identified series cannot be referenced (blank or duplicated SOP Instance UIDs, no Frame of
Reference), ``analyze --seg-new-uids`` (or ``COVIDCT_SEG_NEW_UIDS=1``) writes the series again beside the
outputs, in ``ct_new_uids/``: same pixels and attributes, but a new Series Instance UID, a new SOP Instance
UID per image, and a new Frame of Reference (and Study) UID where the source's is missing, invalid or
inconsistent; missing Series/Instance numbers and Type 2 attributes (present, empty) are filled in. The SEG then references that copy, which a
PACS can import together with it. The source files are never changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from covidct.report.dicomseg import value_obeys_vr
from covidct.volume import CT

NEW_UIDS_DIR = "ct_new_uids"
NEW_UIDS_ENV = "COVIDCT_SEG_NEW_UIDS"
COPY_SERIES_NUMBER = 9002
COPY_NOTE = "covidct copy, new UIDs"
# Type 2 attributes of the CT Image IOD's modules (Patient, General Study, General Series, Frame of Reference,
# General Equipment, CT Image) that de-identified sources often lack.
TYPE2_FILLED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator", "Manufacturer",
                "AcquisitionNumber", "KVP", "SliceThickness")


def _one_valid(sources: list, kw: str) -> str | None:
    """The one valid UID all ``sources`` share for ``kw``, else None."""
    from pydicom.uid import UID

    values = {str(ds.get(kw, "") or "").strip() for ds in sources}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if value and UID(value).is_valid else None


def write_series_copy(ct: CT, files: list[Path], folder: Path) -> CT:
    """Write ``files`` (the source slices in ``ct``'s source order) into ``folder`` with fresh UIDs; returns
    ``ct`` with its source references (files, SOP Instance UIDs, headers) pointing at the copy."""
    import pydicom
    from pydicom.uid import generate_uid

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    study = _one_valid(headers, "StudyInstanceUID") or generate_uid()
    frame = _one_valid(headers, "FrameOfReferenceUID") or generate_uid()
    series = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths, sops, kept = [], [], []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber = COPY_SERIES_NUMBER
        if not str(ds.get("InstanceNumber", "") or "").strip():
            ds.InstanceNumber = k + 1
        for kw in TYPE2_FILLED:  # a written image must be valid: Type 2 attributes present (empty allowed)
            if kw not in ds or not value_obeys_vr(ds, kw):
                setattr(ds, kw, "" if kw != "AcquisitionNumber" else None)
        desc = str(ds.get("SeriesDescription", "") or "").strip()
        ds.SeriesDescription = (f"{desc} ({COPY_NOTE})" if desc else COPY_NOTE)[-64:]
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(sop)
        kept.append(pydicom.dcmread(path, stop_before_pixels=True))
    meta = {**ct.meta, "source_files": [str(p) for p in paths], "source_sop_uids": sops, "_source_headers": kept,
            "series_uid": series, "study_uid": study, "frame_of_reference_uid": frame}
    return dataclasses.replace(ct, meta=meta)
