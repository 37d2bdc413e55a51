"""DICOM slices to one volume: decoding pixels to HU, ordering by position, duplicates, gaps, geometry.

:func:`build_volume` takes the files of one series (chosen by ``covidct.io.dicom``) and returns the
:class:`covidct.volume.CT` in canonical orientation, with the source layout and per-slice references a
DICOM SEG writer needs (see ``covidct.io.dicom`` for the rules).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nibabel.orientations import inv_ornt_aff
from pydicom.dataset import Dataset

from covidct.errors import InconsistentSeries, UnreadableInput, UnsupportedInput
from covidct.io import decode_split, dicom_frames
from covidct.io.dicom_decode import (
    _decode,
    _f,
    _floats,
    _int,
    _num,
    _rel,
    scan_date,
)
from covidct.io.nifti import (
    SHEAR_MIN_DEG,
    check_affine,
    orientation_warnings,
    reorient_xyz,
    spacing_from_affine,
)
from covidct.volume import CT, SliceRef

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GAP_FACTOR = 1.5
MAX_MISSING_FRACTION = 0.25
DUPLICATE_TOL_MM = 0.01


def _positive(x: float | None) -> float | None:
    return x if x is not None and x > 0 else None


def _usable_orientation(iop: tuple[float, ...] | None) -> bool:
    """Six finite cosines whose row and column directions have length and are not parallel."""
    if iop is None or len(iop) != 6:
        return False
    r, c = np.array(iop[:3]), np.array(iop[3:6])
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    return bool(nr > 1e-3 and nc > 1e-3 and np.linalg.norm(np.cross(r / nr, c / nc)) > 0.5)


MAX_SLOT_SIDE = 4096  # larger (or damaged) Rows/Columns, or a larger series: decoded and stacked as before
MAX_SLOT_BYTES = 2 << 30


def _sorted_slots(paths: list[Path], headers: dict[Path, Dataset] | None) -> tuple[np.ndarray, dict[Path, int]] | None:
    """An empty float32 volume with one row per file in the order :func:`build_volume` stacks them (position
    along the slice normal, from the headers read before decoding), and each file's row; None when the headers
    do not tell. The decoding threads fill it in place, sparing the stack's copy (P001: 155 MB, ~0.3 s); should
    the decoded series come out otherwise (a slice unreadable, a duplicate dropped), it is stacked as before."""
    if headers is None or len(paths) < 2 or any(p not in headers for p in paths):
        return None
    hs = [headers[p] for p in paths]
    iop = _floats(_f(hs[0], "ImageOrientationPatient"))
    ipps = [_floats(_f(h, "ImagePositionPatient")) for h in hs]
    rows, cols = _int(hs[0], "Rows", 0), _int(hs[0], "Columns", 0)
    if not _usable_orientation(iop) or any(p is None or len(p) != 3 for p in ipps) or not (
            0 < rows <= MAX_SLOT_SIDE and 0 < cols <= MAX_SLOT_SIDE):
        return None  # a damaged header must not make us allocate what the pixels never needed
    r_dir, c_dir = np.array(iop[:3]), np.array(iop[3:6])
    n_dir = np.cross(r_dir / np.linalg.norm(r_dir), c_dir / np.linalg.norm(c_dir))
    order = np.argsort(np.array([np.dot(p, n_dir) for p in ipps]), kind="stable")
    if len(paths) * rows * cols * 4 > MAX_SLOT_BYTES:
        return None
    try:
        vol = decode_split.empty((len(paths), rows, cols), np.float32)
    except MemoryError:
        return None
    return vol, {paths[i]: k for k, i in enumerate(order)}


def build_volume(paths: list[Path], root: Path, shown: str, warnings: list[str], *, single_file: bool,
                  headers: dict[Path, Dataset] | None = None) -> CT:
    """``headers``: the files' headers as read without pixel data, kept for writers (DICOM SEG). One multi-frame
    file (Enhanced CT) is read as the series of its frames."""
    if len(paths) == 1 and dicom_frames.frame_count((headers or {}).get(paths[0])) > 1:
        return _assemble(dicom_frames.decode_frames(paths[0], shown), root, shown, warnings, None, headers)
    slots = _sorted_slots(paths, headers)

    # Decoding holds the GIL most of the time (GDCM, pydicom): threads overlap little; analyze's scan process
    # decodes in two processes instead (covidct.io.decode_split).
    def _try(p: Path):
        try:
            ds, hu = _decode(p)
        except UnsupportedInput:
            raise
        except Exception as e:  # noqa: BLE001 - truncated pixel data, missing codec...
            return e
        if slots is not None and hu.shape == slots[0].shape[1:]:
            row = slots[0][slots[1][p]]
            row[...] = hu
            return ds, row
        return ds, hu

    try:
        results = decode_split.decode_all(paths, _try, lambda p: slots[0][slots[1][p]] if slots is not None else None)
    except UnsupportedInput as e:
        msg = str(e)  # "<file name>: why"; for a single file, shown already names it
        if single_file and msg.startswith(f"{paths[0].name}: "):
            msg = msg[len(paths[0].name) + 2:]
        raise UnsupportedInput(f"{shown}: {msg}") from e
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
    return _assemble(slices, root, shown, warnings, slots, headers)


MAX_TILT_DEG = 45.0  # gantries tilt up to about 30 degrees; a larger drift is damaged positions, not a tilt


def _tilted_step(ipps: np.ndarray, pos: np.ndarray, n_dir: np.ndarray, dz: float, pixel: float) -> np.ndarray | None:
    """The step from slice to slice of a series acquired with a tilted gantry, or None. A tilt moves every slice
    sideways in proportion to its position along the normal (a straight drift, to within half a pixel), by more than
    ``SHEAR_MIN_DEG`` and less than ``MAX_TILT_DEG``; positions that drift otherwise are damaged, and the slices are
    then stacked along their normal as before."""
    if len(pos) < 2 or pos[-1] - pos[0] <= 0:
        return None
    lateral = ipps - np.outer(pos, n_dir)  # each position's part within the slice plane
    along = pos - pos[0]
    drift = (lateral[-1] - lateral[0]) / along[-1]  # sideways mm per mm along the normal
    if np.abs(lateral - lateral[0] - np.outer(along, drift)).max() > 0.5 * pixel:
        return None
    if not SHEAR_MIN_DEG <= np.degrees(np.arctan(np.linalg.norm(drift))) <= MAX_TILT_DEG:
        return None
    return (n_dir + drift) * dz


def _assemble(slices: list[tuple[Path, Dataset, np.ndarray]], root: Path, shown: str, warnings: list[str],
              slots: tuple[np.ndarray, dict[Path, int]] | None, headers: dict[Path, Dataset] | None) -> CT:
    """The CT of decoded slices ``(path, header, HU)``: ordered along the slice normal, checked (duplicates, gaps,
    spacing), reoriented, with the provenance writers need."""
    ds0 = slices[0][1]
    rows, cols = slices[0][2].shape
    sizes = sorted({s[2].shape for s in slices})
    if len(sizes) > 1:
        raise InconsistentSeries(f"{shown}: slices of different sizes in one series: {sizes}")

    iop = _floats(_f(ds0, "ImageOrientationPatient"))
    ipps = [_floats(_f(ds, "ImagePositionPatient")) for _, ds, _ in slices]
    ps = _floats(_f(ds0, "PixelSpacing")) or _floats(_f(ds0, "ImagerPixelSpacing"))
    thick = _num(ds0, "SliceThickness")
    thick = thick if thick is not None and thick > 0 else None
    spacing_known = True
    if ps is None or len(ps) != 2 or min(ps) <= 0:
        warnings.append("no PixelSpacing: assuming 1 mm pixels")
        ps, spacing_known = (1.0, 1.0), False
    dr, dc = ps  # row spacing (between rows), column spacing (between columns)
    if not _usable_orientation(iop) or any(p is None or len(p) != 3 for p in ipps):
        if len(slices) > 1:
            warnings.append("no ImagePositionPatient/Orientation: slices ordered by InstanceNumber, axial assumed")
        slices.sort(key=lambda s: (_int(s[1], "InstanceNumber", 0), s[0].name))
        iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        dz0 = _positive(_num(ds0, "SpacingBetweenSlices")) or thick or 1.0
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
        dz = _positive(_num(ds0, "SpacingBetweenSlices")) or thick or 0.0
        if dz <= 0:
            dz = 1.0
            warnings.append("single slice without SliceThickness: assuming 1 mm")

    # Source layout (column, row, slice), LPS affine from the DICOM geometry.
    if slots is not None and len(slices) == len(slots[0]) and all(
            s[2].ctypes.data == row.ctypes.data for s, row in zip(slices, slots[0], strict=True)):
        stack = slots[0]  # decoded in place, already in this order: no copy
    else:
        stack = np.stack([s[2] for s in slices])  # (slice, row, col)
    slices = [(p, ds, None) for p, ds, _ in slices]  # the slices' own arrays go before the reorientation's copy
    lps = np.eye(4)
    lps[:3, 0] = r_dir * dc
    lps[:3, 1] = c_dir * dr
    lps[:3, 2] = n_dir * dz
    lps[:3, 3] = ipps[0]
    stacked = LPS_TO_RAS @ lps  # the slices stacked along their normal (as ITK-based readers build the volume)
    src_affine = stacked
    step = _tilted_step(np.asarray(ipps, dtype=np.float64), pos, n_dir, dz, min(dr, dc)) if geometry_known else None
    if step is not None:
        # A tilted gantry: the slices step along the table, not along their normal. The affine then takes that
        # step (its component along the normal stays dz), so that every voxel sits where its slice says.
        lps[:3, 2] = step
        src_affine = LPS_TO_RAS @ lps
    try:
        check_affine(src_affine, shown)  # e.g. positions of 1e308 mm overflow
    except UnsupportedInput as e:
        raise InconsistentSeries(str(e)) from e
    source_xyz = stack.transpose(2, 1, 0)
    canon_xyz, canon_aff, info = reorient_xyz(source_xyz, src_affine)
    arr = np.ascontiguousarray(canon_xyz.transpose(2, 1, 0), dtype=np.float32)
    warnings.extend(orientation_warnings(canon_aff, info["oblique"], dicom=True))

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
        "study_date": scan_date(ds0),
        "slice_thickness": thick,
        "series_description": str(_f(ds0, "SeriesDescription", "")) or None,
        "manufacturer": str(_f(ds0, "Manufacturer", "")) or None,
        "kvp": _num(ds0, "KVP"),
        "convolution_kernel": None if kernel is None else str(kernel),
        "patient_position": str(_f(ds0, "PatientPosition", "")).strip() or None,  # HFS, HFP, ...: the dependent side
        "rows": rows,
        "columns": cols,
        "transfer_syntax": None if tsyn is None else str(tsyn),
        "ipp_first": [float(v) for v in ipp_first],
        "iop": [float(v) for v in iop],
        "frame_of_reference_uid": str(_f(ds0, "FrameOfReferenceUID", "")) or None,
        "geometry_known": geometry_known,
        # a tilted series' NIfTI qform: its slices stacked along the normal (the sform, ``affine``, holds the shear)
        "qform_affine": None if step is None else (stacked @ inv_ornt_aff(info["forward"], source_xyz.shape)).tolist(),
        "slice_gaps": gaps,
        "source_sop_uids": [str(_f(ds, "SOPInstanceUID", "")) for _, ds, _ in slices],
        "source_files": [str(p) for p, _, _ in slices],
        "source_rel_files": [_rel(p, root) for p, _, _ in slices],
    }
    frames = [getattr(ds, dicom_frames.FRAME_ATTR, None) for _, ds, _ in slices]
    if frames[0] is not None:  # one multi-frame file: the frame behind each slice (its SEG references frames)
        meta["source_frames"] = [int(f) for f in frames]
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

