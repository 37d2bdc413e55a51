"""NIfTI input, plus the orientation helpers every reader shares.

Reorientation uses nibabel's orientation tools: the input's voxel axes are matched to the
nearest world axes (``io_orientation``), then permuted/flipped into covidct's canonical
LPS axis order (x -> patient left, y -> posterior, z -> superior). The inverse permutation
is stored on the CT (``source_axes``/``source_flips``) so masks go back to the file's layout.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.volume import CT, SliceRef

CANONICAL_AXCODES = ("L", "P", "S")
_CANON_ORNT = axcodes2ornt(CANONICAL_AXCODES)
# Direction cosines further than this from an axis make a volume "oblique" (warned about).
OBLIQUE_TOL = 1e-3
# the end of the loaders' note on a volume that is not in HU (dropped once the analysis maps it to HU)
NOT_HU = "treated as non-HU"


def reorient_xyz(data_xyz: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Permute/flip a 3-D array (file axis order) into canonical LPS order.

    Returns ``(canonical_xyz, canonical_affine_ras, info)`` where ``info`` holds
    ``source_axes``, ``source_flips`` (the inverse, as documented on ``CT``), ``forward``
    (nibabel ornt from file to canonical) and ``oblique`` (bool).
    """
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    try:
        src_ornt = io_orientation(affine_ras)
    except (np.linalg.LinAlgError, ValueError) as e:  # NaN/Inf in the affine
        raise UnsupportedInput("the volume's affine is not finite; cannot orient it") from e
    if np.isnan(src_ornt).any():
        # io_orientation returns NaN rows for degenerate (zero/collinear) axes.
        raise UnsupportedInput("the volume's affine is degenerate (axes collapse); cannot orient it")
    fwd = ornt_transform(src_ornt, _CANON_ORNT)
    canon = apply_orientation(data_xyz, fwd)
    canon_aff = affine_ras @ inv_ornt_aff(fwd, data_xyz.shape)
    back = ornt_transform(_CANON_ORNT, src_ornt)
    # apply_orientation flips input axes first, then transposes by argsort(ornt[:, 0]).
    info = {
        "source_axes": tuple(int(a) for a in np.argsort(back[:, 0])),
        "source_flips": tuple(bool(f == -1) for f in back[:, 1]),
        "forward": fwd,
        "oblique": is_oblique(affine_ras),
    }
    # Not made contiguous here: callers transpose to (z, y, x) and make *that* contiguous.
    return canon, canon_aff, info


def check_affine(affine: np.ndarray, shown: str) -> None:
    """Refuse an affine with NaN/Inf or a zero-length axis (a header with pixdim 0 or NaN): ``UnsupportedInput``."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise UnsupportedInput(f"{shown}: the voxel-to-patient affine holds NaN/Inf (damaged pixdim/qform/sform)")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if not (norms > 1e-6).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UnsupportedInput(f"{shown}: the voxel-to-patient affine is degenerate (a voxel size of 0?)")


def is_oblique(affine: np.ndarray) -> bool:
    """True if any voxel axis is not parallel to a world axis."""
    rzs = np.asarray(affine)[:3, :3]
    cos = np.abs(rzs) / np.maximum(np.linalg.norm(rzs, axis=0), 1e-12)
    return bool(np.any((cos > OBLIQUE_TOL) & (cos < 1 - OBLIQUE_TOL)))


# A slice axis further than this from the normal of the slice planes is a sheared grid (a gantry tilt): 0.1 degree
# is 0.5 mm of drift across a 300 mm scan, far above the rounding of the positions DICOM headers give.
SHEAR_MIN_DEG = 0.1


def shear_degrees(affine_canon: np.ndarray) -> float:
    """The angle between a canonical affine's slice axis (z) and the normal of its slice planes (x, y): 0 for
    an orthogonal grid, the gantry tilt for a series acquired with a tilted gantry."""
    a = np.asarray(affine_canon, dtype=np.float64)[:3, :3]
    normal = np.cross(a[:, 0], a[:, 1])
    nn, nz = float(np.linalg.norm(normal)), float(np.linalg.norm(a[:, 2]))
    if nn == 0 or nz == 0:
        return 0.0
    return float(np.degrees(np.arccos(min(1.0, abs(float(a[:, 2] @ normal)) / (nn * nz)))))


def spacing_from_affine(affine_canon: np.ndarray) -> tuple[float, float, float]:
    """(dz, dy, dx) voxel sizes of a canonical affine: its column norms, except on a sheared grid (a gantry tilt,
    :func:`shear_degrees`), whose dz is the distance between the slice planes, so that dz · dy · dx is the voxel's
    volume (the step from slice to slice is longer, by 1 / cos(tilt))."""
    dx, dy, dz = (float(v) for v in np.linalg.norm(np.asarray(affine_canon, dtype=np.float64)[:3, :3], axis=0))
    tilt = shear_degrees(affine_canon)
    if tilt >= SHEAR_MIN_DEG:
        dz *= float(np.cos(np.radians(tilt)))  # the step's component along the slice planes' normal
    return (dz, dy, dx)


OBLIQUE_WARNING = "oblique volume: axes were matched to the nearest patient axes (affine kept exact)"


DICOM_OBLIQUE_WARNING = "oblique series: kept the nearest axis-aligned orientation (affine stays exact)"


def orientation_warnings(canon_aff: np.ndarray, oblique: bool, dicom: bool = False) -> list[str]:
    """The warning a grid's orientation gets: a gantry tilt (a sheared grid, :func:`shear_degrees`) says so (for a
    DICOM series also why its NIfTI masks' qform and sform differ: a volume file's masks keep its own header); an
    oblique grid (``reorient_xyz``'s ``oblique``) says that."""
    tilt = shear_degrees(canon_aff)
    if tilt >= SHEAR_MIN_DEG:
        masks = ("and the NIfTI masks carry the shear in their sform (their qform stacks the slices along the normal, "
                 "as ITK-based viewers read such a series)" if dicom else "and the masks are written on the input's own grid")
        return [f"gantry tilt {tilt:.1f}°: the slices are sheared against each other; they are analysed as acquired "
                f"(volumes measured between the slice planes), {masks}"]
    if not oblique:
        return []
    return [DICOM_OBLIQUE_WARNING if dicom else OBLIQUE_WARNING]


def looks_like_hu(arr: np.ndarray) -> bool:
    """HU volumes contain air (about -1000) and tissue/bone (> 100); display images do not."""
    if arr.size == 0:
        return False
    return bool(float(np.nanmin(arr)) < -500 and float(np.nanmax(arr)) > 100)


@contextmanager
def _quiet_nibabel():
    """nibabel logs its header fix-ups to stderr; covidct's one-line error (or the CT's warnings) says what
    matters, so nothing else reaches the user's terminal."""
    log = logging.getLogger("nibabel.global")
    old = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(old)


def load_nifti(path: Path) -> CT:
    """Load a .nii/.nii.gz CT into canonical orientation.

    4-D volumes are refused (``UnsupportedInput``) unless the 4th dimension is 1; 2-D NIfTI
    becomes a one-slice volume. The original header is kept (``meta["nifti_header_hex"]``)
    so masks are written with exactly the input's shape, affine and qform/sform codes.
    """
    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged header fails nibabel in many ways (HeaderDataError, OverflowError...)
        raise UnreadableInput(f"{path}: not a readable NIfTI file ({_one_line(e)})") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableInput(f"{path}: not a NIfTI-1/NIfTI-2 image")
    warnings: list[str] = []
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        pass  # singleton time/vector dims: squeezed below, restored when writing
    elif len(shape) > 3:
        raise UnsupportedInput(f"{path}: 4-D NIfTI of shape {shape}; covidct needs a single 3-D CT volume")
    if len(shape) < 2:
        raise UnsupportedInput(f"{path}: NIfTI of shape {shape} is not an image")
    from covidct.io.sanity import check_size

    check_size(shape, str(path))  # before reading: a header may declare more voxels than memory holds
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a quaternion of NaNs
        raise UnsupportedInput(f"{path}: the NIfTI's orientation (qform/sform) is unusable ({_one_line(e)})") from e
    check_affine(affine, str(path))
    try:
        with np.errstate(all="ignore"), _quiet_nibabel():  # overflow to Inf is handled (refused or filled) below
            data = np.asarray(img.get_fdata(dtype=np.float32))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated, bad data type code, bad offset...
        raise UnreadableInput(f"{path}: NIfTI pixel data unreadable (truncated?) ({_one_line(e)})") from e
    data = data.reshape(shape[:3] if len(shape) >= 3 else (*shape, 1))
    from covidct.io.sanity import finite_or_refuse

    data = finite_or_refuse(data, str(path), warnings)  # all/most NaN: refused; a few: set to the minimum
    canon_xyz, canon_aff, info = reorient_xyz(data, affine)
    warnings.extend(orientation_warnings(canon_aff, info["oblique"]))
    arr = np.ascontiguousarray(canon_xyz.transpose(2, 1, 0), dtype=np.float32)
    is_hu = looks_like_hu(arr)
    lo, hi = float(arr.min()), float(arr.max())
    if not is_hu:
        warnings.append(
            f"intensities {lo:g}..{hi:g} do not look like Hounsfield units (display image?); {NOT_HU}"
        )
    hdr = img.header
    try:
        qform, qcode = img.get_qform(coded=False), int(hdr["qform_code"])
        sform, scode = img.get_sform(coded=False), int(hdr["sform_code"])
    except (ValueError, OverflowError, np.linalg.LinAlgError) as e:  # e.g. a quaternion of Inf
        raise UnsupportedInput(f"{path}: the NIfTI's qform/sform is unusable ({_one_line(e)})") from e
    if qcode == 0 and scode == 0:
        zooms = " × ".join(f"{float(z):g}" for z in hdr.get_zooms()[:3])
        warnings.append(
            "the NIfTI header gives no orientation (qform_code and sform_code 0): its axes are read as NIfTI's "
            "fallback for that case (the first from the patient's right to left, the second from back to front, the "
            f"third from feet to head) with voxel sizes from pixdim ({zooms} mm); if the file was written otherwise, "
            "the left/right labels, zones and volumes are wrong"
        )
    meta = {
        "modality": "CT" if is_hu else None,
        "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
        "nifti_header_hex": hdr.binaryblock.hex(),
        "qform": np.asarray(qform).tolist(),
        "qform_code": qcode,
        "sform": np.asarray(sform).tolist(),
        "sform_code": scode,
        "source_dtype": str(hdr.get_data_dtype()),
        "orientation_source": "".join(nib.aff2axcodes(affine)),
        "intensity_range": [lo, hi],
    }
    nz = arr.shape[0]
    slices = [SliceRef(index=k, z_mm=float((canon_aff @ [0, 0, k, 1])[2])) for k in range(nz)]
    return CT(
        array=arr,
        spacing=spacing_from_affine(canon_aff),
        affine=canon_aff,
        is_hu=is_hu,
        kind="nifti",
        path=str(path),
        spacing_known=True,
        slices=slices,
        meta=meta,
        warnings=warnings,
        source_affine=affine,
        source_axes=info["source_axes"],
        source_flips=info["source_flips"],
        source_shape=shape,
    )


def volume_ct(data_xyz: np.ndarray, affine: np.ndarray, path: Path, kind: str, warnings: list[str],
              meta: dict | None = None, source_shape: tuple[int, ...] | None = None) -> CT:
    """The CT of a 3-D array (x, y, z) whose voxel-to-RAS+ ``affine`` a NRRD or MetaImage header gave: non-finite
    voxels handled as for every input (``covidct.io.sanity.finite_or_refuse``), reoriented to the canonical (z, y, x)
    layout, the orientation and HU checks added to ``warnings``."""
    from covidct.io.sanity import finite_or_refuse

    data_xyz = finite_or_refuse(np.asarray(data_xyz, dtype=np.float32), str(path), warnings)
    canon_xyz, canon_aff, info = reorient_xyz(data_xyz, affine)
    warnings.extend(orientation_warnings(canon_aff, info["oblique"]))
    arr = np.ascontiguousarray(canon_xyz.transpose(2, 1, 0), dtype=np.float32)
    is_hu = looks_like_hu(arr)
    if not is_hu:
        warnings.append(f"intensities do not look like Hounsfield units; {NOT_HU}")
    return CT(
        array=arr, spacing=spacing_from_affine(canon_aff), affine=canon_aff, is_hu=is_hu, kind=kind, path=str(path),
        slices=[SliceRef(k, float((canon_aff @ [0, 0, k, 1])[2])) for k in range(arr.shape[0])],
        meta={"modality": "CT" if is_hu else None, **(meta or {})}, warnings=warnings, source_affine=affine,
        source_axes=info["source_axes"], source_flips=info["source_flips"],
        source_shape=tuple(int(v) for v in (source_shape or data_xyz.shape)),
    )


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]
