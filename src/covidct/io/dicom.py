"""DICOM input: a series folder (searched recursively), a .zip of one, or a single file.

How a folder becomes one volume:

* A .zip is checked against the archive limits before anything is extracted (``covidct.io.archive``).
* Every file is tried as DICOM (header only); non-DICOM files (.DS_Store, txt, DICOMDIR,
  SR objects without pixels) are ignored silently. A file that claims to be DICOM but cannot
  be parsed is skipped with a warning.
* Files are grouped by SeriesInstanceUID **and** geometry (ImageOrientationPatient rounded,
  Rows/Columns, PixelSpacing): de-identified data may carry empty or duplicated UIDs, so a UID
  alone never defines a series. The CT group that is axial wins (localizers rank last; single-frame series before
  a multi-frame file); of several, one whose slice spacing is 2-6 mm (what the HU lesion rule was measured on)
  and that covers at least 80 % of the widest one's extent, then the one with the most slices; a warning names it
  (and why, when a series with more slices was passed over) and lists the others. Non-CT only -> ``NotCT``.
* A series holding several acquisitions over the same positions (AcquisitionNumber: inspiration and expiration,
  before and after contrast) is one group per acquisition; the first is read, with the warning naming the others.
* One multi-frame file (Enhanced CT) is read as the series of its frames (``covidct.io.dicom_frames``).
* Slices are ordered by ImagePositionPatient projected on the slice normal
  (row x column direction cosines), never by file name or InstanceNumber.
* One SeriesInstanceUID whose slices have different orientations (more than ~1 degree apart;
  localizers aside) -> ``InconsistentSeries`` naming the planes.
* Duplicated positions: identical pixels -> the copy is dropped (warning); different pixels
  -> ``InconsistentSeries``. Mixed Rows/Columns inside one series (same UID, orientation and
  pixel spacing) -> ``InconsistentSeries`` naming the sizes.
* Missing slices (a gap > 1.5x the median spacing) are **not** filled: the volume keeps the
  slices that exist on the median spacing and a warning says "N slice(s) missing between
  z=a and z=b" (``meta["slice_gaps"]``), as dcm2niix does. Only when more than 25 % of the
  expected slices are missing is the volume considered unusable (``InconsistentSeries``):
  distances and volumes along z would then be badly wrong. Uneven spacing below the gap
  threshold only warns.
* HU = stored * RescaleSlope + RescaleIntercept (per slice), float32 (``covidct.io.dicom_volume``).
  ``load_ct`` then refuses data no CT can be (``covidct.io.sanity``). Compressed transfer
  syntaxes are decoded by pydicom's pixel handlers (pylibjpeg).
* The volume is reoriented to covidct's canonical LPS axis order; axis-aligned flips and
  permutations are exact, oblique series keep the nearest axis order (warning) and their true
  (oblique) affine.

Source layout for DICOM (``to_source_layout``): (column, row, slice) with slices ordered by
position along the slice normal, i.e. the order of ``meta["source_sop_uids"]`` /
``meta["source_files"]``; a DICOM SEG writer takes ``to_source_layout(ct, m).transpose(2, 1, 0)``
as frames in that order.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from covidct.errors import InconsistentSeries, NotCT, UnreadableInput
from covidct.io.archive import ZipLimits, open_zip, safe_extract
from covidct.io.dicom_decode import _f, _floats, _has_preamble, _int, _rel
from covidct.io.dicom_volume import _usable_orientation, build_volume
from covidct.volume import CT

__all__ = ["load_dicom_folder", "load_dicom_file", "load_dicom_zip", "_has_preamble"]

# ImageOrientationPatient cosines differing by more than this (about 1 degree) within one series: refused.
ORIENTATION_TOL = 0.02
CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
}


# ----------------------------------------------------------------------------- reading


def _starts_like_dicom(path: Path) -> bool:
    """A file without the preamble starts with a group 0002 or 0008 tag (either byte order); anything else
    is not parsed: forcing pydicom through e.g. 256 MiB of zeros took minutes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


NOT_AN_IMAGE = "not an image"  # _read_header's answer for a readable DICOM file that is no image (DICOMDIR, SR...)


def _read_header(path: Path) -> Dataset | str | None:
    """Header of a DICOM image file; :data:`NOT_AN_IMAGE` for a readable DICOM file without pixels (a DICOMDIR, a
    structured report, a presentation state); None if it is not a usable DICOM file (raises nothing)."""
    try:
        if _has_preamble(path):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        elif path.suffix.lower() in (".dcm", ".dicom", ".ima", "") and path.stat().st_size > 256 and _starts_like_dicom(path):
            # Old files without the 128-byte preamble: accept only if it parses into an image header.
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        else:
            return None
    except Exception:  # noqa: BLE001 - any parser failure means "not a usable DICOM file"
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return NOT_AN_IMAGE  # DICOMDIR, SR, presentation states...
    if _int(ds, "Rows", 0) <= 0 or _int(ds, "Columns", 0) <= 0:
        return None  # an image header without a usable size
    return ds


def _series_key(ds: Dataset) -> tuple:
    iop = _floats(_f(ds, "ImageOrientationPatient"))
    iop = iop if _usable_orientation(iop) else None
    ps = _floats(_f(ds, "PixelSpacing"))
    return (
        str(_f(ds, "SeriesInstanceUID", "")),
        None if iop is None else tuple(round(x, 3) + 0.0 for x in iop),
        _int(ds, "Rows", 0),
        _int(ds, "Columns", 0),
        None if ps is None else tuple(round(x, 4) for x in ps),
    )


def _split_acquisitions(groups: dict[tuple, list]) -> dict[tuple, list]:
    """Each group keyed once more by acquisition: a series that holds several acquisitions over the same positions
    (AcquisitionNumber: inspiration and expiration, or before and after contrast) becomes one group per acquisition,
    since its repeated positions with other pixels cannot be stacked; any other group stays whole (acquisition None;
    a sequential scan numbers each table position's slices as an acquisition, with no position repeated)."""
    out: dict[tuple, list] = {}
    for key, items in groups.items():
        by_acq: dict[int | None, list] = defaultdict(list)
        for p, ds in items:
            by_acq[_int(ds, "AcquisitionNumber", -1) if "AcquisitionNumber" in ds else None].append((p, ds))
        if len(by_acq) > 1 and None not in by_acq and _positions_repeat(key, items) and not any(
                _positions_repeat(key, it) for it in by_acq.values()):
            out.update({(*key, acq): it for acq, it in sorted(by_acq.items())})
        else:
            out[(*key, None)] = items
    return out


def _positions(key: tuple, items: list) -> np.ndarray | None:
    """Each slice's position along the slice normal, in mm, from a group's headers; None without geometry."""
    iop = key[1]
    if iop is None:
        return None
    pos = []
    for _, ds in items:
        ipp = _floats(_f(ds, "ImagePositionPatient"))
        if ipp is None or len(ipp) != 3:
            return None
        pos.append(float(np.dot(ipp, _normal(iop))))
    return np.asarray(pos)


def _positions_repeat(key: tuple, items: list) -> bool:
    """Whether two slices of a group lie at the same position along the slice normal (within 0.01 mm)."""
    pos = _positions(key, items)
    return pos is not None and len(set(np.round(pos * 100).tolist())) < len(pos)


def _normal(iop: tuple[float, ...]) -> np.ndarray:
    r, c = np.array(iop[:3]), np.array(iop[3:6])
    return np.cross(r, c)


def _is_axial(key: tuple) -> bool:
    iop = key[1]
    if iop is None:
        return True  # no geometry: assume the usual axial stack
    n = np.abs(_normal(iop))
    return bool(n[2] >= n.max())


def _plane_name(key: tuple) -> str:
    iop = key[1]
    if iop is None:
        return "unknown orientation"
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(_normal(iop))))]


def _is_ct(ds: Dataset) -> bool:
    mod = str(_f(ds, "Modality", "")).upper()
    if mod:
        return mod == "CT"
    return str(_f(ds, "SOPClassUID", "")) in CT_SOP_CLASSES


def _is_localizer(ds: Dataset) -> bool:
    it = _f(ds, "ImageType", [])
    it = [it] if isinstance(it, str) else list(it)
    return any(str(x).upper() == "LOCALIZER" for x in it)


# Slice spacings (mm) of the whole series the HU lesion rule was chosen and measured on (2-6 mm; thinner series,
# simulated, read healthy lungs' vessel shells as GGO: docs/BENCHMARKS.md). Of a study's several reconstructions,
# one in this range that covers the lungs as far as the others is read first; --series takes any other.
MEASURED_SPACING_MM = (2.0, 6.0)
COVERAGE_SHARE = 0.8


def _axial_ct(key: tuple, items: list) -> bool:
    """An axial CT series, not a localizer."""
    return _is_ct(items[0][1]) and _is_axial(key) and not _is_localizer(items[0][1])


def _z_extent(key: tuple, items: list) -> tuple[float, float] | None:
    """(extent along the slice normal, median slice spacing) in mm of a series' headers; None without geometry."""
    pos = _positions(key, items) if len(items) >= 2 else None
    if pos is None:
        return None
    pos = np.sort(pos)
    steps = np.diff(pos)
    steps = steps[steps > 1e-3]
    return (float(pos[-1] - pos[0]), float(np.median(steps))) if steps.size else None


def _measured_spacing(extent: tuple[float, float] | None, widest: float) -> bool:
    """Whether a series' slice spacing is in :data:`MEASURED_SPACING_MM` and it covers at least
    :data:`COVERAGE_SHARE` of the widest series' extent."""
    if extent is None:
        return False
    lo, hi = MEASURED_SPACING_MM
    return lo <= extent[1] <= hi and extent[0] >= COVERAGE_SHARE * widest


def _describe(key: tuple, items: list) -> str:
    ds = items[0][1]
    mod = str(_f(ds, "Modality", "?"))
    desc = str(_f(ds, "SeriesDescription", "")).strip()
    uid = key[0] or "<no SeriesInstanceUID>"
    name = f"'{desc}' " if desc else ""
    acq = "" if key[5] is None else f", acquisition {key[5]}"
    return f"{mod} series {name}({uid}{acq}, {len(items)} slice(s) {key[3]}x{key[2]}, {_plane_name(key)})"


# ----------------------------------------------------------------------------- entry points


def load_dicom_folder(root: Path, *, display_path: str | None = None, series: str | None = None) -> CT:
    """Load the best CT series found (recursively) under ``root``, or the series whose SeriesInstanceUID is
    ``series``."""
    shown = display_path or str(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise UnreadableInput(f"{shown}: folder is empty (no files)")
    warnings: list[str] = []
    headers: list[tuple[Path, Dataset]] = []
    for p in files:
        if not os.access(p, os.R_OK):
            warnings.append(f"skipped {_rel(p, root)}: permission denied")
            continue
        ds = _read_header(p)
        if not isinstance(ds, Dataset):
            if ds is None and _has_preamble(p):
                warnings.append(f"skipped unreadable DICOM file {_rel(p, root)}")
            continue  # a DICOMDIR (a CD's index) and the like: the images beside it are what is read
        headers.append((p, ds))
    if not headers:
        exts = sorted({p.suffix.lower() for p in files if p.suffix})
        hint = f" (found {len(files)} file(s): {', '.join(exts[:5]) or 'no extensions'})"
        raise UnreadableInput(f"{shown}: no readable DICOM image files in folder{hint}")
    groups: dict[tuple, list[tuple[Path, Dataset]]] = defaultdict(list)
    for p, ds in headers:
        groups[_series_key(ds)].append((p, ds))
    groups = _split_acquisitions(groups)
    if series is not None:
        chosen = {k: it for k, it in groups.items() if k[0] == series.strip()}
        if not chosen:
            found = ", ".join(sorted({k[0] or "<no SeriesInstanceUID>" for k in groups})[:6])
            raise UnreadableInput(f"{shown}: no series {series} here; found {len(groups)}: {found}")
        groups = chosen
    extents = {k: _z_extent(k, it) for k, it in groups.items()}
    # the widest axial CT series (a sagittal or coronal reformat's extent is across the body, not along it)
    widest = max((extents[k][0] for k, it in groups.items() if extents[k] is not None and _axial_ct(k, it)),
                 default=0.0)
    ranked = sorted(
        groups.items(),
        key=lambda kv: (
            _is_ct(kv[1][0][1]),
            not _is_localizer(kv[1][0][1]),
            _int(kv[1][0][1], "NumberOfFrames", 1) == 1,
            _is_axial(kv[0]),
            _measured_spacing(extents[kv[0]], widest),
            len(kv[1]),
            -(kv[0][5] or 0),  # of a series' acquisitions over the same positions, alike otherwise: the first
        ),
        reverse=True,
    )
    key, items = ranked[0]
    first = items[0][1]
    if not _is_ct(first):
        mods = sorted({str(_f(it[0][1], "Modality", "unknown")) for _, it in ranked})
        raise NotCT(f"{shown}: {'/'.join(mods)} series: covidct analyses CT only")
    # Same series (UID), same orientation and pixel spacing but another matrix size: one series
    # with mixed slice sizes, which cannot be stacked.
    if key[0]:
        others = [(k, it) for k, it in groups.items() if k != key and k[0] == key[0] and k[1] == key[1]
                  and k[4] == key[4] and (k[2], k[3]) != (key[2], key[3])]
        if others:
            sizes = ", ".join(f"{k[3]}x{k[2]} ({len(it)} slice(s))" for k, it in [(key, items), *others])
            raise InconsistentSeries(f"{shown}: series {key[0]} mixes slice sizes (columns x rows): {sizes}")
    _refuse_mixed_orientations(shown, key, items, groups)
    if len(ranked) > 1:
        rest = "; ".join(_describe(k, it) for k, it in ranked[1:6])
        more = f" and {len(ranked) - 6} more" if len(ranked) > 6 else ""
        why = ""
        if any(len(it) > len(items) and _axial_ct(k, it) for k, it in ranked[1:]) and _measured_spacing(
                extents[key], widest):
            lo, hi = MEASURED_SPACING_MM
            why = (f" (for its {extents[key][1]:.3g} mm slice spacing: covidct's HU lesion rule was measured on "
                   f"{lo:g}-{hi:g} mm series)")
        acqs = "; of one series' acquisitions over the same positions the first is read" if key[5] is not None else ""
        warnings.append(f"folder holds {len(ranked)} series; picked {_describe(key, items)}{why}; also found: {rest}"
                        f"{more} (choose one with --series UID{acqs})")
    return build_volume([p for p, _ in items], root, shown, warnings, single_file=False, headers=dict(items))


def _refuse_mixed_orientations(shown: str, key: tuple, items: list, groups: dict) -> None:
    """One SeriesInstanceUID whose image slices point different ways (beyond rounding, > ~1 degree):
    stacking any part of it would silently drop or mis-place slices. Localizers are their own thing."""
    if not key[0] or key[1] is None:
        return  # no UID (de-identified) or no geometry: the groups cannot be told apart as one series
    mixed = [(k, it) for k, it in groups.items() if k[0] == key[0] and k[1] is not None
             and not _is_localizer(it[0][1]) and np.max(np.abs(np.subtract(k[1], key[1]))) > ORIENTATION_TOL]
    if mixed:
        planes = ", ".join(f"{_plane_name(k)} {tuple(round(v, 2) + 0.0 for v in k[1])} ({len(it)} slice(s))"
                           for k, it in [(key, items), *mixed])
        raise InconsistentSeries(f"{shown}: series {key[0]} mixes slice orientations: {planes}")


def load_dicom_file(path: Path) -> CT:
    """A single DICOM file: a one-slice volume, or for a multi-frame file (Enhanced CT) the volume of its frames."""
    preamble = _has_preamble(path)
    if not preamble and not _starts_like_dicom(path):
        raise UnreadableInput(f"{path}: not a DICOM file (no DICOM preamble or header)")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble)
    except PermissionError as e:
        raise UnreadableInput(f"{path}: permission denied") from e
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise many types
        raise UnreadableInput(f"{path}: not a readable DICOM file ({type(e).__name__})") from e
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableInput(f"{path}: not a DICOM image file")
    if _int(ds, "Rows", 0) <= 0 or _int(ds, "Columns", 0) <= 0:
        raise UnreadableInput(f"{path}: DICOM image without a usable Rows/Columns size")
    if not _is_ct(ds):
        raise NotCT(f"{path}: {_f(ds, 'Modality', 'non-CT')} image: covidct analyses CT only")
    return build_volume([path], path.parent, str(path), [], single_file=True, headers={path: ds})


def load_dicom_zip(path: Path, *, series: str | None = None, limits: ZipLimits | None = None) -> CT:
    """Check a .zip against the archive limits (``covidct.io.archive``), extract it into a temp folder and
    load the series inside (``series``: by its UID)."""
    zf = open_zip(path, limits=limits)
    with zf, tempfile.TemporaryDirectory(prefix="covidct_zip_") as tmp:
        root = Path(tmp).resolve()
        safe_extract(zf, root, path, limits)
        entries = [p for p in root.iterdir() if p.name != "__MACOSX"]
        # A zip of a folder holds one top-level folder: treat that as the series folder.
        series_root = entries[0] if len(entries) == 1 and entries[0].is_dir() else root
        try:
            ct = load_dicom_folder(series_root, display_path=str(path), series=series)
        except UnreadableInput:
            if series is not None:
                raise
            # A zip holding one NIfTI volume instead of a DICOM series.
            niftis = [p for p in root.rglob("*") if p.name.lower().endswith((".nii", ".nii.gz"))]
            if len(niftis) != 1:
                raise
            from covidct.io.nifti import load_nifti

            ct = load_nifti(niftis[0])
            ct.path = str(path)
            return ct
    ct.meta["source_files"] = None  # the temp folder is gone; file names stay in ct.slices
    return ct
