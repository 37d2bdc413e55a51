"""Tiny synthetic DICOM series / NIfTI / image generators for the covidct.io tests.

The DICOM generator samples a known canonical volume ``hu_xyz`` (x -> patient left,
y -> posterior, z -> superior, voxel (0,0,0) at ``origin`` in LPS mm) through an arbitrary
axis-aligned slice orientation, so a correct loader must give back exactly ``hu_xyz``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN = (-10.0, -20.0, -30.0)


def phantom_hu(shape_xyz: tuple[int, int, int] = (32, 28, 6), seed: int = 0) -> np.ndarray:
    """Random integer HU values (every voxel distinct enough to catch any flip/permutation)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=shape_xyz).astype(np.float32)


def _axis(v: tuple[int, int, int]) -> tuple[int, int]:
    a = int(np.argmax(np.abs(v)))
    return a, int(np.sign(v[a]))


def make_dataset(
    pixels: np.ndarray,
    ipp: tuple[float, float, float],
    iop: tuple[float, ...],
    pixel_spacing: tuple[float, float],
    thickness: float,
    *,
    series_uid: str,
    study_uid: str,
    instance: int,
    intercept: float = -1024.0,
    modality: str = "CT",
    description: str = "test series",
) -> Dataset:
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = study_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID = "TEST001"
    ds.SeriesDescription = description
    ds.Manufacturer = "covidct-tests"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = float(thickness)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def make_series(
    folder: Path,
    hu_xyz: np.ndarray,
    *,
    row_dir: tuple[int, int, int] = (1, 0, 0),
    col_dir: tuple[int, int, int] = (0, 1, 0),
    spacing_xyz: tuple[float, float, float] = SPACING_XYZ,
    origin: tuple[float, float, float] = ORIGIN,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    drop: tuple[int, ...] = (),
    prefix: str = "IM",
    seed: int = 1,
    description: str = "test series",
) -> list[Path]:
    """Write ``hu_xyz`` as a DICOM series with the given in-plane directions.

    ``row_dir``/``col_dir`` are the ImageOrientationPatient row/column cosines (integer unit
    vectors in LPS). Files get shuffled, non-sorting names. ``drop`` removes slice numbers
    (in slice-normal order). Returns the written paths in slice-normal order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid if series_uid is not None else generate_uid()
    study_uid = study_uid or generate_uid()
    size = np.array(hu_xyz.shape)
    r, c = np.array(row_dir), np.array(col_dir)
    n = np.cross(r, c)
    ar, _ = _axis(tuple(r))
    ac, _ = _axis(tuple(c))
    an, _ = _axis(tuple(n))
    v0 = np.array([size[a] - 1 if (r[a] + c[a] + n[a]) < 0 else 0 for a in range(3)])
    rows, cols, nsl = int(size[ac]), int(size[ar]), int(size[an])
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    sp = np.array(spacing_xyz)
    names = [f"{prefix}{k}" for k in range(nsl)]
    random.Random(seed).shuffle(names)  # file names unrelated to position
    paths: list[Path] = []
    for k in range(nsl):
        if k in drop:
            continue
        v = v0[:, None, None] + jj[None] * r[:, None, None] + ii[None] * c[:, None, None] + k * n[:, None, None]
        hu = hu_xyz[v[0], v[1], v[2]]
        ipp = tuple(np.array(origin) + (v0 + k * n) * sp)
        ds = make_dataset(
            (hu - intercept).astype(np.int16), ipp, (*r.astype(float), *c.astype(float)),
            (float(sp[ac]), float(sp[ar])), float(sp[an]),
            series_uid=series_uid, study_uid=study_uid, instance=nsl - k, intercept=intercept,
            modality=modality, description=description,
        )
        p = folder / f"{names[k]}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def assert_mask_written_on_the_ct_grid(ct, folder: Path) -> None:
    """Write a mask of ``ct``'s dense voxels with ``save_mask_nifti`` and check that every voxel of the written mask
    sits at the world point of the CT voxel it labels (the reader's geometry and the writer's agree)."""
    import nibabel as nib

    from covidct.io import save_mask_nifti

    mask = (ct.array > 200).astype(np.uint8)
    out = nib.load(save_mask_nifti(mask, ct, folder / "mask.nii.gz"))
    m = np.asarray(out.dataobj)
    ijk = np.argwhere(m > 0)[:50]
    world = nib.affines.apply_affine(out.affine, ijk)
    canon = np.rint(nib.affines.apply_affine(np.linalg.inv(ct.affine), world)).astype(int)
    assert (ct.array[canon[:, 2], canon[:, 1], canon[:, 0]] > 200).all()
    assert int(m.sum()) == int(mask.sum())
