"""Reading CT input (DICOM folder/zip/file, NIfTI, 2-D images) and writing masks back.

``load_ct`` returns a :class:`covidct.volume.CT` in covidct's canonical orientation; the
writers put canonical arrays back on the input's grid. Every entry point (CLI, this API, the web
service) goes through the same safety layer: ``archive`` (zip limits, checked before extracting) and
``sanity`` (NaN/Inf, constant, impossible intensities). User errors raise ``covidct.errors``
classes with one-line messages that name the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from covidct.errors import NotCT, UnreadableInput, UnsupportedInput
from covidct.io.archive import ZipLimits
from covidct.io.image import IMAGE_EXTS, load_image_2d, load_image_ct, read_label_png
from covidct.volume import CT

__all__ = [
    "load_ct",
    "ZipLimits",
    "load_nifti",
    "load_image_2d",
    "read_label_png",
    "to_source_layout",
    "save_mask_nifti",
    "save_ct_nifti",
    "save_label_png",
    "save_overlay_png",
]

DICOM_EXTS = (".dcm", ".dicom", ".ima", "")
ITK_EXTS = (".mha", ".mhd", ".nrrd", ".nhdr")


def load_ct(path: str | Path, *, series: str | None = None, zip_limits: ZipLimits | None = None) -> CT:
    """Load a CT from a DICOM folder, .zip of one, DICOM file, NIfTI, .mha/.nrrd or 2-D image.

    ``series``: the SeriesInstanceUID to load from a DICOM folder or .zip holding several series
    (default: the best CT series, with a warning naming the others). ``zip_limits``: the archive
    limits for a .zip (default: ``ZipLimits.from_env()``, see ``covidct.io.archive``).

    The result is in canonical orientation (see ``covidct.volume``); 2-D images are one-slice,
    non-HU volumes kept exactly as displayed. Every input passes the same safety checks (archive
    limits before extraction, ``covidct.io.sanity`` after reading). Raises ``UnreadableInput``,
    ``NotCT``, ``InconsistentSeries``, ``UnsupportedInput``, ``UnsafeArchive`` or ``ImplausibleImage``
    with a one-line message.
    """
    from covidct.io.sanity import check_plausible

    return check_plausible(_read_ct(Path(path).expanduser(), series, zip_limits))


def _read_ct(p: Path, series: str | None, zip_limits: ZipLimits | None) -> CT:
    try:
        if not p.exists():
            raise UnreadableInput(f"{p}: no such file or folder")
        if p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                raise UnreadableInput(f"{p}: permission denied")
            # readers import pydicom/nibabel on first use: a one-shot command on a PNG starts faster
            from covidct.io.dicom import load_dicom_folder

            return load_dicom_folder(p, series=series)
        if not os.access(p, os.R_OK):
            raise UnreadableInput(f"{p}: permission denied")
        if p.stat().st_size == 0:
            raise UnreadableInput(f"{p}: empty file (0 bytes)")
        name = p.name.lower()
        suffix = p.suffix.lower()
        if series is not None and suffix != ".zip":
            raise UnsupportedInput(f"{p}: a series UID picks a series from a DICOM folder or .zip; this is a single file")
        if name.endswith((".nii", ".nii.gz")):
            from covidct.io.nifti import load_nifti

            return refuse_label_map(load_nifti(p))
        if suffix == ".zip":
            from covidct.io.archive import check_zip, open_zip

            with open_zip(p, limits=zip_limits) as zf:  # the archive rules first, before the readers' imports
                check_zip(zf, p, zip_limits)
            from covidct.io.dicom import load_dicom_zip

            return load_dicom_zip(p, series=series, limits=zip_limits)
        if suffix in (".nrrd", ".nhdr"):
            from covidct.io.nrrd import load_nrrd

            return refuse_label_map(load_nrrd(p))
        if suffix in ITK_EXTS:
            from covidct.io.metaimage import load_metaimage

            return refuse_label_map(load_metaimage(p))
        if suffix in IMAGE_EXTS:
            return load_image_ct(p)
        from covidct.io.dicom import _has_preamble

        if suffix in DICOM_EXTS or _has_preamble(p):
            from covidct.io.dicom import load_dicom_file

            return load_dicom_file(p)
        raise UnreadableInput(
            f"{p}: unknown file type '{suffix}' (expected a DICOM folder/file, .zip, .nii/.nii.gz or an image)"
        )
    except PermissionError as e:
        raise UnreadableInput(f"{p}: permission denied") from e
    except IsADirectoryError as e:
        raise UnreadableInput(f"{p}: unexpected folder") from e


MAX_LABEL_VALUES = 16  # a CT (HU or display) has hundreds of grey levels; a segmentation a handful


def refuse_label_map(ct: CT) -> CT:
    """Refuse a non-HU volume with only a few integer values: a label mask given where a CT is expected,
    e.g. ``lungs.nii.gz`` instead of the scan (analysing it would "find" lungs in it). A constant volume is
    left to the analysis, which reports that it finds no lungs."""
    if ct.is_hu or ct.n_slices < 2:
        return ct
    values = np.unique(ct.array[:: max(1, ct.n_slices // 16), ::4, ::4])  # a sample is enough to tell
    if 2 <= values.size <= MAX_LABEL_VALUES and np.array_equal(values, np.rint(values)):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise NotCT(f"{ct.path}: only {values.size} distinct values ({shown}): a label mask, not a CT image")
    return ct


_WRITERS = ("save_ct_nifti", "save_label_png", "save_mask_nifti", "save_overlay_png", "to_source_layout")


def __getattr__(name: str):
    # load_nifti and the writers are public but imported on first use (nibabel), like the DICOM readers
    # (pydicom): `covidct info BOMB.zip` refuses the zip before any of them is imported
    if name == "load_nifti":
        from covidct.io.nifti import load_nifti

        return load_nifti
    if name in _WRITERS:
        from covidct.io import writers

        return getattr(writers, name)
    raise AttributeError(f"module 'covidct.io' has no attribute {name!r}")
