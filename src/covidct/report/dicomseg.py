"""DICOM Segmentation (SEG) export of the lung and lesion masks, referencing the source CT series.

Coded concepts (verified; sources in the comments):

* Segmented Property Category "Anatomical Structure" SCT 91723000 and
  "Morphologically Abnormal Structure" SCT 49755003 -- pydicom ``codes.SCT`` (DICOM PS3.16
  CID 7150 Segmentation Property Categories).
* "Left lung" SCT 44029006, "Right lung" SCT 3341006 -- SNOMED CT body structures
  ("Left lung structure" / "Right lung structure"; the same codes are used for lung
  segments by public DICOM SEG/SR exporters and HL7 FHIR/CDA examples).
* "Ground glass opacity" DCM 112120 -- pydicom ``codes.DCM.GroundGlassOpacity`` (PS3.16 CID
  6102/6104, Fraser and Pare terms); used because no SNOMED code is listed in the standard's
  chest finding context groups.
* "Lung consolidation" SCT 95436008 -- SNOMED CT (OMOP concept 4318404 "Lung consolidation").
* "Pleural effusion" SCT 60046008 -- pydicom ``codes.SCT.PleuralEffusion``.
* Algorithm family "Artificial Intelligence" DCM 123110 -- pydicom ``codes.DCM.ArtificialIntelligence``.

Valid or not written: a SEG locates its frames by the SOP Instance UIDs and the Frame of Reference UID of
the source images. De-identification tools often blank or drop those; a SEG built on them would reference
nothing (or the wrong images, when a PACS matches the empty UID), so :func:`check_source_references` refuses
such a source with :class:`SegNotWritten` (one line naming the problem) and no SEG is written; the NIfTI
masks and reports are unaffected (the pipeline records the reason in report.json's warnings). Opt-in
alternative: a copy of the series with fresh UIDs, referenced by the SEG (``covidct.report.dicom_copy``). Copied
Type 2 patient/study attributes whose values break their VR (e.g. a date "2020-03-05") are emptied.
Every SEG the test suite writes is checked with ``dciodvfy`` (tests/conftest.py).
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from covidct.io.dicom_frames import frame_count
from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, LESION_COLORS, LUNG_COLORS, RIGHT_LUNG
from covidct.volume import CT

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SERIES_NUMBER = 9001  # high, so viewers list the SEG after the scanner's own series
SERIES_DESCRIPTION = "covidct lungs and lesions (research use only)"
# Type 2 (required, may be empty) attributes of the Patient and General Study modules.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


class SegNotWritten(ValueError):
    """The source series cannot be referenced unambiguously by a DICOM SEG, so none is written (one line why)."""


def _uid(ds, kw: str) -> str:
    v = ds.get(kw, None)
    return "" if v is None else str(v).strip()


def check_source_references(sources: list, shown: str = "") -> None:
    """Raise :class:`SegNotWritten` unless every source image has its own valid SOP Instance UID and the
    series one valid Frame of Reference, Series and Study Instance UID (what a SEG must reference)."""
    from pydicom.uid import UID

    where = f"{shown}: " if shown else ""
    hint = "the source was probably de-identified by blanking UIDs; the NIfTI masks are written"
    n = len(sources)
    sops = [_uid(ds, "SOPInstanceUID") for ds in sources]
    empty = sum(not u for u in sops)
    if empty:
        raise SegNotWritten(f"{where}{empty} of {n} source slice(s) have no SOPInstanceUID, so a DICOM SEG "
                            f"could not reference them ({hint})")
    bad = [u for u in sops if not UID(u).is_valid]
    if bad:
        raise SegNotWritten(f"{where}{len(bad)} of {n} source slice(s) have an invalid SOPInstanceUID "
                            f"(e.g. {bad[0][:70]!r}); a DICOM SEG could not reference them")
    if len(set(sops)) != n:
        dup = n - len(set(sops))
        raise SegNotWritten(f"{where}{dup} source slice(s) repeat another slice's SOPInstanceUID; a DICOM SEG "
                            f"referencing them would be ambiguous ({hint})")
    for kw in ("FrameOfReferenceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"):
        values = {_uid(ds, kw) for ds in sources}
        if "" in values:
            raise SegNotWritten(f"{where}the source series has no {kw}, which a DICOM SEG must reference ({hint})")
        if len(values) > 1:
            raise SegNotWritten(f"{where}the source slices carry {len(values)} different {kw}s; a DICOM SEG "
                                "must reference one")
        value = values.pop()
        if not UID(value).is_valid:
            raise SegNotWritten(f"{where}the source {kw} {value[:70]!r} is not a valid UID; a DICOM SEG must "
                                "reference it")


def _segments() -> list[tuple[str, object, object, tuple[int, int, int], str, int]]:
    """(label, category, type, rgb, mask name, mask value) for every possible segment."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    anatomy = codes.SCT.AnatomicalStructure  # SCT 91723000
    abnormal = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
    return [
        (
            "Left lung",
            anatomy,
            CodedConcept("44029006", "SCT", "Left lung"),
            LUNG_COLORS[LEFT_LUNG],
            "lungs",
            LEFT_LUNG,
        ),
        (
            "Right lung",
            anatomy,
            CodedConcept("3341006", "SCT", "Right lung"),
            LUNG_COLORS[RIGHT_LUNG],
            "lungs",
            RIGHT_LUNG,
        ),
        ("Ground-glass opacity", abnormal, codes.DCM.GroundGlassOpacity, LESION_COLORS[GGO], "lesions", GGO),
        (
            "Consolidation",
            abnormal,
            CodedConcept("95436008", "SCT", "Lung consolidation"),
            LESION_COLORS[CONSOLIDATION],
            "lesions",
            CONSOLIDATION,
        ),
        (
            "Pleural effusion",
            abnormal,
            codes.SCT.PleuralEffusion,
            LESION_COLORS[EFFUSION],
            "lesions",
            EFFUSION,
        ),
    ]


def _source_files(ct: CT) -> list[Path]:
    """The source DICOM files in the order of ``to_source_layout``'s slice axis."""
    files = ct.meta.get("source_files")
    if not files:
        rel = ct.meta.get("source_rel_files")
        if rel and ct.path and Path(ct.path).is_dir():
            files = [str(Path(ct.path) / r) for r in rel]
    if not files:
        raise ValueError(
            f"{ct.path}: the source DICOM files are no longer available (e.g. a .zip input); "
            "a DICOM SEG needs them: extract the series and analyse the folder"
        )
    paths = [Path(f) for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{ct.path}: source DICOM file {missing[0]} is missing; cannot write a DICOM SEG")
    return paths


def _nibble(labels: np.ndarray) -> np.ndarray:
    """uint8 label map with values 0..15 kept and any other value (no segment's) set to 0 (may be ``labels``)."""
    if labels.dtype == np.uint8 and (labels.size == 0 or labels.max() < 16):  # covidct's own masks: as they are
        return labels
    small = labels.astype(np.uint8)
    return np.where((small == labels) & (small < 16), small, np.uint8(0))


def _segmentation(sources: list, pixel_array: np.ndarray, segments: list) -> object:
    """The highdicom Segmentation of ``pixel_array`` (frames, rows, cols, segments) over ``sources``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from covidct import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="covidct", family=codes.DCM.ArtificialIntelligence, version=str(__version__)
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,  # highdicom wants segment numbers 1..N without gaps
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=label,
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )
        for number, (label, category, prop_type, rgb, _, _) in enumerate(segments, start=1)
    ]
    with warnings.catch_warnings():
        # Single-component patient names ("PHANTOM") are legal DICOM; highdicom only warns.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="covidct",
            manufacturer_model_name="covidct",
            software_versions=str(__version__),
            device_serial_number="0",
            content_label="COVIDCT",
            content_description="Lungs and COVID-19 lesions (research use only)",
        )
    seg.SeriesDescription = SERIES_DESCRIPTION
    return seg


def _source_headers(ct: CT, files: list[Path]) -> list:
    """The source headers (geometry, UIDs, patient/study) with empty Type 2 attributes filled in (one for the frames of
    a multi-frame image)."""
    import pydicom

    # The loader's (read without pixel data, as here) when it kept them, else read again.
    sources = ct.meta.get("_source_headers")
    if ct.meta.get("source_frames"):  # the frames of one multi-frame image: its one header
        sources, files = (sources or [])[:1], files[:1]
    if not sources or len(sources) != len(files):
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    for ds in sources:
        # De-identified series often drop Type 2 patient/study attributes that highdicom copies
        # into the SEG; DICOM allows them empty, so fill the in-memory headers with empty values
        # (idempotent, so the loader's kept headers may be filled too).
        for kw in _TYPE2_COPIED:
            if kw not in ds or not value_obeys_vr(ds, kw):
                setattr(ds, kw, "")  # a value its VR forbids would make the SEG invalid; Type 2 may be empty
    return sources


def value_obeys_vr(ds, kw: str) -> bool:
    """Whether ``ds``'s value for ``kw`` obeys its VR (length, characters, date format)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    elem = ds[kw]
    values = elem.value if elem.VM > 1 else [elem.value]
    try:
        for v in values:
            if v is not None:  # the validators check text: DS/IS numbers and person names as written
                validate_value(elem.VR, v if isinstance(v, str | bytes) else str(v), config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _checked_slices(ct: CT, files: list[Path], sources: list, path: str | Path, new_uids: bool | None, rows: int,
                    cols: int) -> list:
    """A series' source headers once they can be referenced (else, with ``new_uids``, those of a copy of the series
    with fresh UIDs written beside ``path``) and still match the loaded series."""
    try:
        check_source_references(sources, ct.path)
    except SegNotWritten:
        from covidct.report.dicom_copy import NEW_UIDS_DIR, NEW_UIDS_ENV, write_series_copy

        if not (new_uids if new_uids is not None else os.environ.get(NEW_UIDS_ENV) == "1"):
            raise
        # opt-in: reference a copy of the series with fresh UIDs, written beside the SEG
        ct = write_series_copy(ct, files, Path(path).parent / NEW_UIDS_DIR)
        files = _source_files(ct)
        sources = _source_headers(ct, files)
        check_source_references(sources, ct.path)
    uids = ct.meta.get("source_sop_uids") or []
    for i, ds in enumerate(sources):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ValueError(f"{files[i].name}: {ds.Rows}x{ds.Columns} pixels, masks are {rows}x{cols}")
        if uids and str(ds.SOPInstanceUID) != uids[i]:
            raise ValueError(
                f"{files[i].name}: SOP Instance UID differs from the loaded series (file changed?)"
            )
    return sources


def _frames_of_one_image(ct: CT, header, masks: dict[str, np.ndarray]) -> tuple[list, dict[str, np.ndarray]]:
    """For a multi-frame source image: ``[header]`` once it can be referenced, and the masks (slice, row, col) in
    the image's frame order, one per frame (empty for a frame the loader dropped as a duplicate)."""
    check_source_references([header], ct.path)
    n = frame_count(header)
    frames = np.asarray(ct.meta["source_frames"]) - 1
    rows, cols = masks["lungs"].shape[1:]
    if (int(header.Rows), int(header.Columns)) != (rows, cols) or frames.max(initial=-1) >= n:
        raise ValueError(f"{ct.path}: the multi-frame source ({n} frames of {header.Rows}x{header.Columns}) no "
                         f"longer matches the loaded volume (file changed?)")
    out = {}
    for name, m in masks.items():
        full = np.zeros((n, rows, cols), m.dtype)
        full[frames] = m
        out[name] = full
    return [header], out


def prepare_dicom_seg(ct: CT) -> None:
    """Build and encode, in memory, a one-frame SEG of ``ct``'s first slice, and discard it.

    A process's first SEG pays about a second of one-off costs (highdicom reads its tables of the
    standard, pydicom sets up its encoders); a helper process that will write the SEG pays them while
    the models run. Raises ValueError where :func:`write_dicom_seg` would.
    """
    import io

    files = _source_files(ct)
    sources = _source_headers(ct, files)
    check_source_references(sources, ct.path)
    sources = sources[:1]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    # a multi-frame source needs one frame of the SEG per frame it has
    pixel_array = np.zeros((frame_count(sources[0]) if ct.meta.get("source_frames") else 1, rows, cols, 1), bool)
    pixel_array[0, rows // 2, cols // 2, 0] = True
    _segmentation(sources, pixel_array, _segments()[:1]).save_as(io.BytesIO(), enforce_file_format=True)


def write_dicom_seg(ct: CT, lungs: np.ndarray, lesions: np.ndarray, path: str | Path, *,
                    new_uids: bool | None = None) -> Path:
    """Write a BINARY DICOM SEG of the lungs and non-empty lesion classes for a DICOM input.

    Segments: left lung, right lung (always), then ground-glass opacity, consolidation and
    pleural effusion when present. Frames reference the source CT images (one per slice), in
    the source pixel layout, so the SEG overlays the series in any DICOM viewer. Raises
    ValueError for a non-DICOM input or when the source files cannot be read, and its subclass
    :class:`SegNotWritten` when the source's UIDs cannot be referenced (blank, invalid, duplicated) --
    unless ``new_uids`` (default: ``COVIDCT_SEG_NEW_UIDS=1``), which writes a copy of the series with fresh
    UIDs into ``ct_new_uids/`` beside ``path`` and references that (``covidct.report.dicom_copy``).
    """
    from covidct.io import to_source_layout

    if ct.kind != "dicom":
        raise ValueError(f"a DICOM SEG can only be written for DICOM input (this input is {ct.kind!r})")
    lungs = np.asarray(lungs)
    lesions = np.asarray(lesions)
    if lungs.shape != ct.shape or lesions.shape != ct.shape:
        raise ValueError(f"mask shapes {lungs.shape}/{lesions.shape} do not match the CT {ct.shape}")
    files = _source_files(ct)
    # to_source_layout gives (column, row, slice) in the source files' order; frames are (slice, row, col).
    masks = {name: np.ascontiguousarray(to_source_layout(ct, m).transpose(2, 1, 0))
             for name, m in (("lungs", lungs), ("lesions", lesions))}
    n_frames, rows, cols = masks["lungs"].shape
    if n_frames != len(files):
        raise ValueError(f"{ct.path}: {len(files)} source files for {n_frames} slices")

    sources = _source_headers(ct, files)
    if ct.meta.get("source_frames"):  # one multi-frame image (Enhanced CT): one SEG frame per source frame
        sources, masks = _frames_of_one_image(ct, sources[0], masks)
        n_frames = len(masks["lungs"])
    else:
        sources = _checked_slices(ct, files, sources, path, new_uids, rows, cols)
    present = np.zeros(256, dtype=bool)
    present[_nibble(lesions).ravel()] = True  # the lesion classes in use (no int64 copy, unlike bincount)
    # only lesion classes that are present; the lungs are always written
    segments = [s for s in _segments() if s[4] == "lungs" or present[s[5]]]
    # bool (frames, rows, cols, segments), filled segment by segment and laid out so in memory: highdicom's
    # overlap test sums over the segment axis and its encoder takes one segment's frames at a time, both
    # several times faster on this layout than on a C-contiguous stack (P001: 0.78 s -> ~0.1 s for the sum).
    stack = np.empty((len(segments), n_frames, rows, cols), dtype=bool)
    for plane, (*_, mask_name, value) in zip(stack, segments, strict=True):
        np.equal(masks[mask_name], value, out=plane)
    pixel_array = stack.transpose(1, 2, 3, 0)
    seg = _segmentation(sources, pixel_array, segments)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        seg.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)  # atomic: no half-written SEG if interrupted
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
