"""Writing masks and volumes back so they overlay the input exactly. Every write is atomic.

Geometry convention (shared by ``save_mask_nifti`` and ``save_ct_nifti``):

* NIfTI input: the file's own voxel layout (``to_source_layout``), shape and header
  (qform/sform matrices and codes, pixdim, units) copied from the input.
* DICOM / image / other input: the canonical array transposed to (x, y, z) with the canonical
  RAS affine ``ct.affine`` (qform and sform code 1, "scanner"), which is what dcm2niix-style
  viewers expect for a DICOM series.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from covidct.volume import CT

if TYPE_CHECKING:  # nibabel (and the pydicom it imports) only where a NIfTI is written: not for PNG-only commands
    import nibabel as nib

LUNG_WINDOW = (-1350.0, 150.0)


def to_source_layout(ct: CT, array_zyx: np.ndarray) -> np.ndarray:
    """Put a canonical (z, y, x) array back into the input file's voxel layout.

    NIfTI/ITK: the file's (i, j, k) array. DICOM: (column, row, slice) with slices in
    ``ct.meta["source_sop_uids"]`` order. 2-D images: the (H, W) image. May return a view.
    """
    a = np.asarray(array_zyx)
    if a.shape != ct.shape:
        raise ValueError(f"array shape {a.shape} does not match the CT's canonical shape {ct.shape}")
    if ct.kind == "image":
        return a[0]
    xyz = a.transpose(2, 1, 0)
    for ax, flip in enumerate(ct.source_flips):
        if flip:
            xyz = np.flip(xyz, axis=ax)
    out = xyz.transpose(ct.source_axes)
    if ct.source_shape is not None and out.shape != tuple(ct.source_shape):
        out = out.reshape(ct.source_shape)  # e.g. a squeezed singleton 4th dimension
    return out


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write via a temp file in the destination folder, then os.replace (no half-written outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    ext = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{name}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """A hidden temp folder inside ``out_dir`` to write a set of outputs into. When the block ends its
    entries are moved into ``out_dir`` (replacing same-named ones); after an error or Ctrl-C it is removed.
    Either way no half-written set of outputs is left."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".covidct-staging-", dir=out_dir))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            target = out_dir / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)  # a re-write must not keep stale files (e.g. slices of an older series)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_nifti_path(path: str | Path) -> None:
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI output path must end with .nii or .nii.gz")


def _as_uint8_labels(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"{what} values {a.min()}..{a.max()} do not fit uint8 labels")
    if not np.issubdtype(a.dtype, np.integer) and a.size and not np.array_equal(a, np.round(a)):
        raise ValueError(f"{what} holds non-integer values; expected class labels")
    return a.astype(np.uint8)


def _nifti_for(ct: CT, array_zyx: np.ndarray, dtype: type) -> nib.Nifti1Image:
    """A NIfTI image of a canonical array on the input's grid (see module docstring)."""
    import nibabel as nib

    hexhdr = ct.meta.get("nifti_header_hex") if ct.kind == "nifti" else None
    if hexhdr:
        data = np.asarray(to_source_layout(ct, array_zyx), dtype=dtype)
        klass = nib.Nifti2Image if ct.meta.get("nifti_version") == 2 else nib.Nifti1Image
        hdr = klass.header_class(binaryblock=bytes.fromhex(hexhdr), check=False)
        hdr.set_data_dtype(dtype)
        hdr.set_data_shape(data.shape)
        hdr.set_slope_inter(None, None)  # raw values: no scaling
        hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
        # affine=None keeps the header's qform/sform (matrices and codes) untouched.
        return klass(data, None, header=hdr)
    data = np.asarray(array_zyx, dtype=dtype).transpose(2, 1, 0)
    img = nib.Nifti1Image(data, ct.affine)
    # a tilted series: the qform cannot hold a shear; it gets the slices stacked along their normal instead
    qform = ct.meta.get("qform_affine")
    img.set_qform(ct.affine if qform is None else np.asarray(qform, dtype=np.float64), code=1)
    img.set_sform(ct.affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def nifti_like_input(ct: CT, array_zyx: np.ndarray, dtype: type) -> nib.Nifti1Image:
    """A NIfTI image (not yet written) of a canonical array on the input's grid, for callers that set
    more of the header themselves (e.g. a scale factor for probabilities)."""
    return _nifti_for(ct, array_zyx, dtype)


def _nib_save(img, path: Path) -> None:
    import nibabel as nib

    nib.save(img, str(path))


def save_mask_nifti(mask_zyx: np.ndarray, ct: CT, path: str | Path) -> Path:
    """Write a canonical (z, y, x) label mask as a uint8 NIfTI that overlays the input exactly."""
    _check_nifti_path(path)
    m = np.asarray(mask_zyx)
    if m.shape != ct.shape:
        raise ValueError(f"mask shape {m.shape} does not match the CT's canonical shape {ct.shape}")
    img = _nifti_for(ct, _as_uint8_labels(m, "mask"), np.uint8)
    return atomic_write(path, lambda p: _nib_save(img, p))


def save_ct_nifti(ct: CT, path: str | Path) -> Path:
    """Write the volume itself (int16 HU when ``is_hu``; uint8 for 8-bit display images)."""
    _check_nifti_path(path)
    a = ct.array
    if ct.is_hu:
        data, dtype = np.clip(np.rint(a), -32768, 32767), np.int16
    elif a.size and a.min() >= 0 and a.max() <= 255 and np.array_equal(a, np.rint(a)):
        data, dtype = a, np.uint8
    else:
        data, dtype = a, np.float32
    img = _nifti_for(ct, data, dtype)
    return atomic_write(path, lambda p: _nib_save(img, p))


def _squeeze2d(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {a.shape}")
    return a


def save_label_png(label_hw: np.ndarray, path: str | Path) -> Path:
    """One-channel 8-bit PNG holding class indices (0, 1, 2...), same size as the input."""
    lab = _as_uint8_labels(_squeeze2d(label_hw, "label"), "label")
    im = Image.fromarray(np.ascontiguousarray(lab))
    return atomic_write(path, lambda p: im.save(p, format="PNG"))


def save_overlay_png(
    image_hw: np.ndarray,
    label_hw: np.ndarray,
    path: str | Path,
    colors: dict[int, tuple],
    alpha: float = 0.45,
    window: tuple[float, float] | None = None,
    *,
    is_hu: bool | None = None,
) -> Path:
    """Colour overlay for people: grey image with each label value tinted by ``colors[value]``.

    Grey levels: display images (0..255) are used as they are; HU images (``is_hu``, or
    guessed from values outside 0..255) get ``window`` or the lung window -1350..150 HU.
    """
    img = _squeeze2d(image_hw, "image").astype(np.float32)
    lab = _squeeze2d(label_hw, "label")
    if img.shape != lab.shape:
        raise ValueError(f"image {img.shape} and label {lab.shape} sizes differ")
    if window is None:
        hu = is_hu if is_hu is not None else bool(img.size and (img.min() < -100 or img.max() > 255))
        window = LUNG_WINDOW if hu else None
    if window is not None:
        lo, hi = window
        grey = (img - lo) * (255.0 / max(hi - lo, 1e-6))
    else:
        grey = img
    rgb = np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=2)
    for value, col in colors.items():
        m = lab == value
        if not m.any():
            continue
        c = np.asarray(col[:3], dtype=np.float32)
        rgb[m] = (1.0 - alpha) * rgb[m] + alpha * c
    im = Image.fromarray(np.rint(rgb).astype(np.uint8))
    return atomic_write(path, lambda p: im.save(p, format="PNG"))
