"""DICOM input: a series folder (searched recursively), a .zip of one, or a single file.

How a folder becomes one volume:

* Every file is tried as DICOM (header only); non-DICOM files (.DS_Store, txt, DICOMDIR,
  SR objects without pixels) are ignored silently. A file that claims to be DICOM but cannot
  be parsed is skipped with a warning.
* Files are grouped by SeriesInstanceUID **and** geometry (ImageOrientationPatient rounded,
  Rows/Columns, PixelSpacing): de-identified data may carry empty or duplicated UIDs, so a UID
  alone never defines a series. The CT group that is axial and has the most slices wins
  (localizers rank last); a warning names it and lists the others. Non-CT only -> ``NotCT``.
* Slices are ordered by ImagePositionPatient projected on the slice normal
  (row x column direction cosines), never by file name or InstanceNumber.
* Duplicated positions: identical pixels -> the copy is dropped (warning); different pixels
  -> ``InconsistentSeries``. Mixed Rows/Columns inside one series (same UID, orientation and
  pixel spacing) -> ``InconsistentSeries`` naming the sizes.
* Missing slices (a gap > 1.5x the median spacing) are **not** filled: the volume keeps the
  slices that exist on the median spacing and a warning says "N slice(s) missing between
  z=a and z=b" (``meta["slice_gaps"]``), as dcm2niix does. Only when more than 25 % of the
  expected slices are missing is the volume considered unusable (``InconsistentSeries``):
  distances and volumes along z would then be badly wrong. Uneven spacing below the gap
  threshold only warns.
* HU = stored * RescaleSlope + RescaleIntercept (per slice), float32. Compressed transfer
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
import stat
import tempfile
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from covidct.errors import InconsistentSeries, NotCT, UnreadableInput, UnsupportedInput
from covidct.io.nifti import reorient_xyz, spacing_from_affine
from covidct.volume import CT, SliceRef

CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GAP_FACTOR = 1.5
MAX_MISSING_FRACTION = 0.25
DUPLICATE_TOL_MM = 0.01
# Zip safety limits.
ZIP_MAX_MEMBERS = 20000
ZIP_MAX_BYTES = 4 * 1024**3


# ----------------------------------------------------------------------------- reading


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path) -> Dataset | None:
    """Header of a DICOM image file, or None if it is not one (raises nothing)."""
    try:
        if _has_preamble(path):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        elif path.suffix.lower() in (".dcm", ".dicom", ".ima", "") and path.stat().st_size > 256:
            # Old files without the 128-byte preamble: accept only if it parses into an image header.
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        else:
            return None
    except Exception:  # noqa: BLE001 - any parser failure means "not a usable DICOM file"
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return None  # DICOMDIR, SR, presentation states...
    return ds


def _f(ds: Dataset, kw: str, default=None):
    v = ds.get(kw, None)
    if v is None or v == "":
        return default
    return v


def _floats(v) -> tuple[float, ...] | None:
    try:
        return tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None


def _series_key(ds: Dataset) -> tuple:
    iop = _floats(_f(ds, "ImageOrientationPatient"))
    ps = _floats(_f(ds, "PixelSpacing"))
    return (
        str(_f(ds, "SeriesInstanceUID", "")),
        None if iop is None else tuple(round(x, 3) + 0.0 for x in iop),
        int(ds.Rows),
        int(ds.Columns),
        None if ps is None else tuple(round(x, 4) for x in ps),
    )


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


def _describe(key: tuple, items: list) -> str:
    ds = items[0][1]
    mod = str(_f(ds, "Modality", "?"))
    desc = str(_f(ds, "SeriesDescription", "")).strip()
    uid = key[0] or "<no SeriesInstanceUID>"
    name = f"'{desc}' " if desc else ""
    return f"{mod} series {name}({uid}, {len(items)} slice(s) {key[3]}x{key[2]}, {_plane_name(key)})"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


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
        if ds is None:
            if _has_preamble(p):
                warnings.append(f"skipped unreadable DICOM file {_rel(p, root)}")
            continue
        headers.append((p, ds))
    if not headers:
        exts = sorted({p.suffix.lower() for p in files if p.suffix})
        hint = f" (found {len(files)} file(s): {', '.join(exts[:5]) or 'no extensions'})"
        raise UnreadableInput(f"{shown}: no readable DICOM image files in folder{hint}")
    groups: dict[tuple, list[tuple[Path, Dataset]]] = defaultdict(list)
    for p, ds in headers:
        groups[_series_key(ds)].append((p, ds))
    if series is not None:
        chosen = {k: it for k, it in groups.items() if k[0] == series.strip()}
        if not chosen:
            found = ", ".join(sorted({k[0] or "<no SeriesInstanceUID>" for k in groups})[:6])
            raise UnreadableInput(f"{shown}: no series {series} here; found {len(groups)}: {found}")
        groups = chosen
    ranked = sorted(
        groups.items(),
        key=lambda kv: (
            _is_ct(kv[1][0][1]),
            not _is_localizer(kv[1][0][1]),
            int(_f(kv[1][0][1], "NumberOfFrames", 1) or 1) == 1,
            _is_axial(kv[0]),
            len(kv[1]),
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
    if len(ranked) > 1:
        rest = "; ".join(_describe(k, it) for k, it in ranked[1:6])
        more = f" and {len(ranked) - 6} more" if len(ranked) > 6 else ""
        warnings.append(f"folder holds {len(ranked)} series; picked {_describe(key, items)}; also found: {rest}{more}"
                        " (choose one with --series UID)")
    return _build_volume([p for p, _ in items], root, shown, warnings, single_file=False, headers=dict(items))


def load_dicom_file(path: Path) -> CT:
    """A single DICOM file as a one-slice volume (multi-frame files are not supported)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not _has_preamble(path))
    except PermissionError as e:
        raise UnreadableInput(f"{path}: permission denied") from e
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise many types
        raise UnreadableInput(f"{path}: not a readable DICOM file ({type(e).__name__})") from e
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableInput(f"{path}: not a DICOM image file")
    if not _is_ct(ds):
        raise NotCT(f"{path}: {_f(ds, 'Modality', 'non-CT')} image: covidct analyses CT only")
    return _build_volume([path], path.parent, str(path), [], single_file=True)


def load_dicom_zip(path: Path, *, series: str | None = None) -> CT:
    """Extract a .zip safely into a temp folder and load the series inside (``series``: by its UID)."""
    try:
        zf = zipfile.ZipFile(path)
    except PermissionError as e:
        raise UnreadableInput(f"{path}: permission denied") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise UnreadableInput(f"{path}: not a readable zip file") from e
    with zf, tempfile.TemporaryDirectory(prefix="covidct_zip_") as tmp:
        root = Path(tmp).resolve()
        _safe_extract(zf, root, path)
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


def _safe_extract(zf: zipfile.ZipFile, root: Path, shown: Path) -> None:
    infos = zf.infolist()
    if len(infos) > ZIP_MAX_MEMBERS:
        raise UnsupportedInput(f"{shown}: zip has {len(infos)} members (limit {ZIP_MAX_MEMBERS})")
    if sum(i.file_size for i in infos) > ZIP_MAX_BYTES:
        raise UnsupportedInput(f"{shown}: zip would extract to more than {ZIP_MAX_BYTES // 1024**3} GiB")
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise UnreadableInput(f"{shown}: unsafe zip member {name!r} (would escape the extraction folder)")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnreadableInput(f"{shown}: zip member {name!r} is a symbolic link; refused")
        target = (root / Path(*parts)).resolve() if parts else root
        if target != root and root not in target.parents:
            raise UnreadableInput(f"{shown}: unsafe zip member {name!r} (would escape the extraction folder)")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as dst:
                # Count real bytes: header sizes can lie (zip bombs).
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > ZIP_MAX_BYTES:
                        raise UnsupportedInput(f"{shown}: zip extracts to more than the size limit")
                    dst.write(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
            raise UnreadableInput(f"{shown}: zip member {name!r} is corrupt or encrypted") from e


# ----------------------------------------------------------------------------- volume


def _gdcm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gdcm") is not None


_USE_GDCM = _gdcm_available()


def _pixels(ds: Dataset) -> np.ndarray:
    """Pixel data; compressed slices go through GDCM when installed (measured about 2x faster than
    pylibjpeg on P001's JPEG-lossless slices, and it releases the GIL so threads help), else pylibjpeg."""
    if _USE_GDCM and ds.file_meta.get("TransferSyntaxUID", None) is not None and ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            ds.pixel_array_options(decoding_plugin="gdcm")
            return ds.pixel_array
        except Exception:  # noqa: BLE001 - fall back to pydicom's other decoders
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(path, force=not _has_preamble(path))
    if int(_f(ds, "SamplesPerPixel", 1)) != 1:
        raise UnsupportedInput(f"{path.name}: colour DICOM image (SamplesPerPixel {ds.SamplesPerPixel})")
    if int(_f(ds, "NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedInput(f"{path.name}: multi-frame DICOM (enhanced CT) is not supported")
    px = _pixels(ds)
    if px.ndim != 2:
        raise UnsupportedInput(f"{path.name}: pixel data of shape {px.shape} is not one 2-D slice")
    slope = float(_f(ds, "RescaleSlope", 1.0))
    inter = float(_f(ds, "RescaleIntercept", 0.0))
    hu = px.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    if inter != 0.0:
        hu += np.float32(inter)
    return ds, hu


def _build_volume(paths: list[Path], root: Path, shown: str, warnings: list[str], *, single_file: bool,
                  headers: dict[Path, Dataset] | None = None) -> CT:
    """``headers``: the files' headers as read without pixel data, kept for writers (DICOM SEG)."""
    # Decoding is mostly C (pylibjpeg/numpy) work that releases the GIL; two threads help on P001.
    def _try(p: Path):
        try:
            return _decode(p)
        except UnsupportedInput:
            raise
        except Exception as e:  # noqa: BLE001 - truncated pixel data, missing codec...
            return e

    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
            results = list(ex.map(_try, paths))
    except UnsupportedInput as e:
        raise UnsupportedInput(f"{shown}: {e}") from e
    slices: list[tuple[Path, Dataset, np.ndarray]] = []
    for p, r in zip(paths, results, strict=True):
        if isinstance(r, BaseException):
            if single_file:
                raise UnreadableInput(f"{shown}: DICOM pixel data unreadable (truncated or corrupt?)") from r
            warnings.append(f"skipped {_rel(p, root)}: pixel data unreadable ({type(r).__name__})")
            continue
        slices.append((p, r[0], r[1]))
    if not slices:
        raise UnreadableInput(f"{shown}: no DICOM slice could be decoded")
    ds0 = slices[0][1]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    sizes = sorted({s[2].shape for s in slices})
    if len(sizes) > 1:
        raise InconsistentSeries(f"{shown}: slices of different sizes in one series: {sizes}")

    iop = _floats(_f(ds0, "ImageOrientationPatient"))
    ipps = [_floats(_f(ds, "ImagePositionPatient")) for _, ds, _ in slices]
    ps = _floats(_f(ds0, "PixelSpacing")) or _floats(_f(ds0, "ImagerPixelSpacing"))
    thick = _f(ds0, "SliceThickness")
    spacing_known = True
    if ps is None or len(ps) != 2 or min(ps) <= 0:
        warnings.append("no PixelSpacing: assuming 1 mm pixels")
        ps, spacing_known = (1.0, 1.0), False
    dr, dc = ps  # row spacing (between rows), column spacing (between columns)
    if iop is None or len(iop) != 6 or any(p is None or len(p) != 3 for p in ipps):
        if len(slices) > 1:
            warnings.append("no ImagePositionPatient/Orientation: slices ordered by InstanceNumber, axial assumed")
        slices.sort(key=lambda s: (int(_f(s[1], "InstanceNumber", 0)), s[0].name))
        iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        dz0 = float(_f(ds0, "SpacingBetweenSlices", thick or 1.0))
        ipps = [(0.0, 0.0, k * dz0) for k in range(len(slices))]
        geometry_known = False
    else:
        geometry_known = True
    r_dir, c_dir = np.array(iop[:3]), np.array(iop[3:6])
    r_dir, c_dir = r_dir / np.linalg.norm(r_dir), c_dir / np.linalg.norm(c_dir)
    n_dir = np.cross(r_dir, c_dir)
    pos = np.array([np.dot(p, n_dir) for p in ipps])
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    ipps = [ipps[i] for i in order]
    pos = pos[order]

    # Duplicated positions.
    keep = [0]
    for k in range(1, len(slices)):
        if abs(pos[k] - pos[keep[-1]]) < DUPLICATE_TOL_MM:
            a, b = slices[keep[-1]], slices[k]
            if not np.array_equal(a[2], b[2]):
                raise InconsistentSeries(
                    f"{shown}: two slices at the same position {pos[k]:.2f} mm with different pixels "
                    f"({_rel(a[0], root)}, {_rel(b[0], root)})"
                )
            warnings.append(f"dropped duplicate slice {_rel(b[0], root)} (same position and pixels as "
                            f"{_rel(a[0], root)})")
            continue
        keep.append(k)
    slices = [slices[k] for k in keep]
    ipps = [ipps[k] for k in keep]
    pos = pos[keep]

    n = len(slices)
    gaps: list[dict] = []
    if n > 1:
        diffs = np.diff(pos)
        dz = float(np.median(diffs))
        missing_total = 0
        for k, d in enumerate(diffs):
            if d > GAP_FACTOR * dz:
                m = max(1, int(round(d / dz)) - 1)
                missing_total += m
                za, zb = float(ipps[k][2]), float(ipps[k + 1][2])
                gaps.append({"after_index": k, "z_from": za, "z_to": zb, "n_missing": m})
                warnings.append(f"{m} slice(s) missing between z={za:.2f} and z={zb:.2f} mm "
                                f"(gap {d:.2f} mm, spacing {dz:.2f} mm); the gap is not filled")
        if missing_total > MAX_MISSING_FRACTION * (n + missing_total):
            raise InconsistentSeries(
                f"{shown}: {missing_total} of {n + missing_total} slices are missing; the series is unusable"
            )
        regular = diffs[diffs <= GAP_FACTOR * dz]
        if regular.size and float(np.max(np.abs(regular - dz))) > max(0.05 * dz, 0.01):
            warnings.append(f"uneven slice spacing {regular.min():.3f}..{regular.max():.3f} mm; "
                            f"using the median {dz:.3f} mm")
    else:
        dz = float(_f(ds0, "SpacingBetweenSlices", 0) or thick or 0)
        if dz <= 0:
            dz = 1.0
            warnings.append("single slice without SliceThickness: assuming 1 mm")

    # Source layout (column, row, slice), LPS affine from the DICOM geometry.
    stack = np.stack([s[2] for s in slices])  # (slice, row, col)
    lps = np.eye(4)
    lps[:3, 0] = r_dir * dc
    lps[:3, 1] = c_dir * dr
    lps[:3, 2] = n_dir * dz
    lps[:3, 3] = ipps[0]
    src_affine = LPS_TO_RAS @ lps
    canon_xyz, canon_aff, info = reorient_xyz(stack.transpose(2, 1, 0), src_affine)
    arr = np.ascontiguousarray(canon_xyz.transpose(2, 1, 0), dtype=np.float32)
    if info["oblique"]:
        warnings.append("oblique series: kept the nearest axis-aligned orientation (affine stays exact)")

    fwd = info["forward"]
    slice_axis_to_z = int(fwd[2, 0]) == 2
    refs: list[SliceRef] = []
    for k in range(arr.shape[0]):
        if slice_axis_to_z:
            s = k if fwd[2, 1] == 1 else n - 1 - k
            p, ds, _ = slices[s]
            refs.append(SliceRef(index=k, z_mm=float(ipps[s][2]), file=_rel(p, root),
                                 sop_instance_uid=str(_f(ds, "SOPInstanceUID", "")) or None))
        else:
            refs.append(SliceRef(index=k, z_mm=float((canon_aff @ [0, 0, k, 1])[2])))
    ipp_first = list(ipps[(0 if fwd[2, 1] == 1 else n - 1)] if slice_axis_to_z else ipps[0])
    kernel = _f(ds0, "ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(x) for x in kernel)
    tsyn = getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", None)
    meta = {
        "modality": str(_f(ds0, "Modality", "CT")),
        "series_uid": str(_f(ds0, "SeriesInstanceUID", "")) or None,
        "study_uid": str(_f(ds0, "StudyInstanceUID", "")) or None,
        "patient_id": str(_f(ds0, "PatientID", "")) or None,
        "slice_thickness": None if thick is None else float(thick),
        "series_description": str(_f(ds0, "SeriesDescription", "")) or None,
        "manufacturer": str(_f(ds0, "Manufacturer", "")) or None,
        "kvp": None if _f(ds0, "KVP") is None else float(ds0.KVP),
        "convolution_kernel": None if kernel is None else str(kernel),
        "rows": rows,
        "columns": cols,
        "transfer_syntax": None if tsyn is None else str(tsyn),
        "ipp_first": [float(v) for v in ipp_first],
        "iop": [float(v) for v in iop],
        "frame_of_reference_uid": str(_f(ds0, "FrameOfReferenceUID", "")) or None,
        "geometry_known": geometry_known,
        "slice_gaps": gaps,
        "source_sop_uids": [str(_f(ds, "SOPInstanceUID", "")) for _, ds, _ in slices],
        "source_files": [str(p) for p, _, _ in slices],
        "source_rel_files": [_rel(p, root) for p, _, _ in slices],
    }
    if headers is not None:  # in source_files order; private ("_"): not part of the CT's description
        meta["_source_headers"] = [headers[p] for p, _, _ in slices]
    return CT(
        array=arr,
        spacing=spacing_from_affine(canon_aff),
        affine=canon_aff,
        is_hu=True,
        kind="dicom",
        path=shown,
        spacing_known=spacing_known,
        slices=refs,
        meta=meta,
        warnings=warnings,
        source_affine=src_affine,
        source_axes=info["source_axes"],
        source_flips=info["source_flips"],
        source_shape=(cols, rows, n),
    )

