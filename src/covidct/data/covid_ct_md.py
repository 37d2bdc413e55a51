"""COVID-CT-MD (DICOM series with per-slice and per-lobe labels) as covidct records.

Owns reading a subject's series (:func:`load_covid_ct_md`, slices as HU records in covidct's canonical
view) and the whole series as one volume (:func:`load_covid_ct_md_volume`). The record contract is
:mod:`covidct.data.sources`' (see its docstring), whose helpers this module uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidct.data.sources import _read_csv, _record, _source_root
from covidct.errors import ConfigError, InconsistentSeries, UnreadableInput


def _read_series(folder: Path) -> list[tuple[Path, Any]]:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    out = []
    for p in files:
        try:
            ds = pydicom.dcmread(p)
        except Exception as e:
            raise UnreadableInput(f"cannot read DICOM file {p}: {e}") from e
        if "PixelData" not in ds:
            continue
        out.append((p, ds))
    if not out:
        raise UnreadableInput(f"no DICOM images in {folder}")
    return out


def _hu_canonical(ds: Any, path: Path) -> tuple[np.ndarray, dict]:
    """Pixel data in HU, flipped if needed so rows run anterior->posterior, cols right->left."""
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as e:  # missing JPEG decoder, corrupt data...
        raise UnreadableInput(f"cannot decode pixels of {path}: {e}") from e
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    info: dict[str, Any] = {"flipped_rows": False, "flipped_cols": False}
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is not None:
        row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        # Axis-aligned axial only: LPS +x along columns, +y along rows is the canonical view.
        if abs(row_dir[0]) > 0.9 and abs(col_dir[1]) > 0.9:
            if row_dir[0] < 0:
                arr, info["flipped_cols"] = arr[:, ::-1], True
            if col_dir[1] < 0:
                arr, info["flipped_rows"] = arr[::-1], True
        else:
            info["non_axial_orientation"] = [float(v) for v in iop]
    return np.ascontiguousarray(arr, dtype=np.float32), info


def _slice_location(ds: Any) -> float:
    if "SliceLocation" in ds:
        return float(ds.SliceLocation)
    if "ImagePositionPatient" in ds:
        return float(ds.ImagePositionPatient[2])
    raise InconsistentSeries("DICOM slice has neither SliceLocation nor ImagePositionPatient")


_LOBES = ("LLL", "LUL", "RLL", "RML", "RUL")


def read_slice_labels(root: str | Path | None = None) -> dict[str, dict[str, int]]:
    """``labels_slice.csv`` of the COVID-CT-MD folder ``root`` as subject -> DICOM file name -> slice label (1
    infected, 0 not); {} without the file."""
    path = _source_root(root, "covid-ct-md") / "labels_slice.csv"
    if not path.exists():
        return {}
    out: dict[str, dict[str, int]] = {}
    for r in _read_csv(path):
        out.setdefault(r["subject"], {})[Path(r["dicom_file"]).name] = int(r["label"])
    return out


def load_covid_ct_md(root: str | Path | None = None, subject: str = "P001", negatives_only: bool = False,
                     fold: int | None = None, block: int = 8, gap: int = 0) -> list[dict]:
    """Each slice of a COVID-CT-MD subject's DICOM series (HU) with its slice and lobe labels.

    Labels from ``labels_slice.csv`` are matched by DICOM file name and checked against
    SliceLocation. Records come sorted by SliceLocation descending (the label order of the
    source, top of the chest first); ``meta["slice_location"]`` gives the position and
    ``meta["block_fold"]`` = (position // ``block``) % 2 the slice's half of an interleaved
    two-fold split (blocks of ``block`` slices, so each half has apex, mid-chest and base).

    ``fold``: keep only the slices of that half, less ``gap`` slices at each block edge (so that no kept
    slice is a near copy of a slice of the other half, 2 mm away). ``negatives_only``: keep only the slices the
    radiologists marked infection-free, each with an empty ``infection`` mask — real HU
    negatives (vessels, hila, lung bases) for the segmentation models; positive slices have no
    pixel labels and are dropped.
    """
    if fold not in (None, 0, 1):
        raise ConfigError(f"covid-ct-md: fold must be 0, 1 or null, got {fold!r}")
    root = _source_root(root, "covid-ct-md")
    folder = root / subject
    if not folder.is_dir():
        raise UnreadableInput(f"COVID-CT-MD subject folder not found: {folder}")
    labels: dict[str, dict[str, str]] = {}
    lab_csv = root / "labels_slice.csv"
    diagnosis = None
    if lab_csv.exists():
        for r in _read_csv(lab_csv):
            if r["subject"] == subject:
                labels[Path(r["dicom_file"]).name] = r
                diagnosis = r["diagnosis"]
    if diagnosis is None and (root / "subjects.csv").exists():
        for r in _read_csv(root / "subjects.csv"):
            if r["subject"] == subject:
                diagnosis = r["diagnosis"]
    series = _read_series(folder)
    series.sort(key=lambda t: -_slice_location(t[1]))
    out = []
    for pos, (path, ds) in enumerate(series):
        img, info = _hu_canonical(ds, path)
        loc = _slice_location(ds)
        lab = labels.get(path.name)
        meta: dict[str, Any] = {
            "file": f"{subject}/{path.name}", "slice_location": loc, "position": pos,
            "instance_number": int(getattr(ds, "InstanceNumber", -1) or -1),
            "pixel_spacing": tuple(float(v) for v in getattr(ds, "PixelSpacing", (1.0, 1.0))),
            "slice_thickness": float(getattr(ds, "SliceThickness", 0) or 0),
            "diagnosis": diagnosis, **info,
        }  # fmt: skip
        meta["block_fold"] = (pos // block) % 2
        slice_label = None
        if lab is not None:
            if abs(float(lab["slice_location"]) - loc) > 0.05:
                raise InconsistentSeries(
                    f"{path.name}: labels_slice.csv slice_location {lab['slice_location']} != SliceLocation {loc}"
                )
            slice_label = int(lab["label"])
            meta["lobes"] = {k: int(lab[k]) for k in _LOBES}
            meta["label_before_update1"] = int(lab["label_before_update1"])
            meta["label_slice_position"] = int(lab["slice_position"])
        elif labels:
            raise InconsistentSeries(f"{path.name} has no row in {lab_csv}")
        if fold is not None and (meta["block_fold"] != fold or not gap <= pos % block < block - gap):
            continue
        if negatives_only and slice_label != 0:
            continue
        out.append(
            _record(
                image=img, is_hu=True, slice_label=slice_label,
                infection=np.zeros(img.shape, np.uint8) if negatives_only else None,
                case=subject, id=f"{subject}/{path.name}", source="covid-ct-md", group=subject, meta=meta,
            )  # fmt: skip
        )
    return out


def load_covid_ct_md_volume(
    root: str | Path | None = None, subject: str = "P001"
) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume float32 (z, y, x) sorted by SliceLocation ascending, per-slice labels int8).

    Labels are in the same z order; -1 where a slice has no label (unlabelled subject).
    """
    recs = load_covid_ct_md(root, subject)[::-1]  # records are descending: reverse to ascending
    shapes = {r["image"].shape for r in recs}
    if len(shapes) != 1:
        raise InconsistentSeries(f"{subject}: slices of different sizes {sorted(shapes)}")
    vol = np.stack([r["image"] for r in recs]).astype(np.float32)
    labels = np.array([-1 if r["slice_label"] is None else r["slice_label"] for r in recs], dtype=np.int8)
    return vol, labels
