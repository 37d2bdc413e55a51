"""Writing a phantom to disk: a NIfTI volume or a CT DICOM series, plus its label volumes.

Owns :func:`write_phantom` and the per-slice CT Image Storage writer. Outputs are staged
(:func:`covidct.io.writers.staged_outputs`), so an error or Ctrl-C never leaves a partial
series behind.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidct.volume import CT

if TYPE_CHECKING:
    from covidct.phantom.build import Phantom


def write_phantom(phantom: Phantom, outdir: str | Path, fmt: str = "nifti", shuffle_names: bool = True) -> Path:
    """Write the phantom as NIfTI (``phantom.nii.gz``) or a CT DICOM series (``dicom/``).

    Both formats also get ``phantom_lungs.nii.gz`` and ``phantom_lesions.nii.gz`` (uint8,
    same geometry) in ``outdir``. Returns the NIfTI file or the DICOM folder. Written through
    :func:`covidct.io.writers.staged_outputs`: an error or Ctrl-C never leaves a partial series behind.
    """
    import nibabel as nib

    from covidct.io.writers import staged_outputs

    if fmt not in ("nifti", "dicom"):
        raise ValueError(f"unknown phantom format {fmt!r} (use 'nifti' or 'dicom')")
    ct = phantom.ct
    hu = np.clip(np.rint(ct.array), -1024, 3071).astype(np.int16)
    with staged_outputs(outdir) as staging:

        def save(arr: np.ndarray, name: str) -> Path:
            img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), ct.affine)
            img.header.set_xyzt_units("mm")
            img.set_qform(ct.affine, code=1)
            img.set_sform(ct.affine, code=1)
            path = staging / name
            nib.save(img, str(path))
            return path

        save(phantom.lungs.astype(np.uint8), "phantom_lungs.nii.gz")
        save(phantom.lesions.astype(np.uint8), "phantom_lesions.nii.gz")
        main = save(hu, "phantom.nii.gz") if fmt == "nifti" else _write_dicom(hu, ct, staging / "dicom", shuffle_names)
    return Path(outdir) / main.name


def _write_dicom(hu: np.ndarray, ct: CT, folder: Path, shuffle_names: bool) -> Path:
    """One uncompressed CT Image Storage file per slice (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from covidct import __version__ as version

    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = hu.shape
    dz, dy, dx = ct.spacing
    # Canonical volume: LPS position of voxel (x=0, y=0, z=k) is (ox, oy, oz + k*dz).
    ras0 = ct.affine[:3, 3]
    ox, oy, oz = -float(ras0[0]), -float(ras0[1]), float(ras0[2])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)  # 0..4095 after the HU clip

    def ds_num(v: float) -> str:
        s = f"{v:.6g}"
        return s if len(s) <= 16 else f"{v:.10g}"[:16]

    for k in range(nz):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "COVIDCT_PHANTOM"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "covidct"
        ds.ManufacturerModelName = "synthetic chest phantom"
        ds.SoftwareVersions = str(version)
        ds.InstitutionName = "covidct"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic chest CT phantom"
        ds.SeriesDescription = "Phantom axial"
        ds.PatientName = "PHANTOM^"  # family name only; a caret avoids the retired PN form
        ds.PatientID = "PHANTOM"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = ds_num(dz)
        ds.KVP = "120"
        ds.DataCollectionDiameter = ds_num(max(nx * dx, ny * dy))
        ds.ReconstructionDiameter = ds_num(max(nx * dx, ny * dy))
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        # Numbered from the top of the chest down, as scanners usually do.
        ds.InstanceNumber = nz - k
        z = oz + k * dz
        ds.ImagePositionPatient = [ds_num(ox), ds_num(oy), ds_num(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = ds_num(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.PixelSpacing = [ds_num(dy), ds_num(dx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = ["-600", "40"]
        ds.WindowWidth = ["1500", "400"]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        name = f"IMG_{secrets.token_hex(8)}.dcm" if shuffle_names else f"IMG_{nz - k:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder
