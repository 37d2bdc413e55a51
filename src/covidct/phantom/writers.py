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


# Tags every phantom slice carries unchanged.
_FIXED_TAGS: dict[str, object] = {
    "SpecificCharacterSet": "ISO_IR 100",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "AccessionNumber": "",
    "Modality": "CT",
    "Manufacturer": "covidct",
    "ManufacturerModelName": "synthetic chest phantom",
    "InstitutionName": "covidct",
    "ReferringPhysicianName": "",
    "StudyDescription": "Synthetic chest CT phantom",
    "SeriesDescription": "Phantom axial",
    "PatientName": "PHANTOM^",  # family name only; a caret avoids the retired PN form
    "PatientID": "PHANTOM",
    "PatientBirthDate": "",
    "PatientSex": "O",
    "BodyPartExamined": "CHEST",
    "KVP": "120",
    "ConvolutionKernel": "STANDARD",
    "PatientPosition": "HFS",
    "StudyID": "1",
    "SeriesNumber": 1,
    "AcquisitionNumber": 1,
    "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
    "PositionReferenceIndicator": "",
    "SamplesPerPixel": 1,
    "PhotometricInterpretation": "MONOCHROME2",
    "BitsAllocated": 16,
    "BitsStored": 12,
    "HighBit": 11,
    "PixelRepresentation": 0,
    "WindowCenter": ["-600", "40"],
    "WindowWidth": ["1500", "400"],
    "WindowCenterWidthExplanation": ["LUNG", "MEDIASTINUM"],
    "RescaleIntercept": "-1024",
    "RescaleSlope": "1",
    "RescaleType": "HU",
}


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

    # Tags of the whole series; each slice adds its own UID, number, position and pixels.
    series_tags = {
        **_FIXED_TAGS,
        "SOPClassUID": CTImageStorage,
        "StudyDate": date, "SeriesDate": date, "AcquisitionDate": date, "ContentDate": date,
        "StudyTime": time, "SeriesTime": time, "AcquisitionTime": time, "ContentTime": time,
        "SoftwareVersions": str(version),
        "SliceThickness": ds_num(dz),
        "DataCollectionDiameter": ds_num(max(nx * dx, ny * dy)),
        "ReconstructionDiameter": ds_num(max(nx * dx, ny * dy)),
        "StudyInstanceUID": study, "SeriesInstanceUID": series, "FrameOfReferenceUID": frame,
        "Rows": ny, "Columns": nx, "PixelSpacing": [ds_num(dy), ds_num(dx)],
    }  # fmt: skip
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
        for keyword, value in series_tags.items():
            setattr(ds, keyword, list(value) if isinstance(value, list) else value)
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = nz - k  # numbered from the top of the chest down, as scanners usually do
        z = oz + k * dz
        ds.ImagePositionPatient = [ds_num(ox), ds_num(oy), ds_num(z)]
        ds.SliceLocation = ds_num(z)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        name = f"IMG_{secrets.token_hex(8)}.dcm" if shuffle_names else f"IMG_{nz - k:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder
