"""Reading one DICOM file: tag values that tolerate damaged headers, the pixel data (the fastest decoder installed)
and its Hounsfield units."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from covidct.errors import UnsupportedInput
from covidct.io import imagecodecs_plugin


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _f(ds: Dataset, kw: str, default=None):
    """``ds``'s value for ``kw``; ``default`` when absent, empty, or not convertible to its VR (e.g. DS 'abc')."""
    try:
        v = ds.get(kw, None)
    except Exception:  # noqa: BLE001 - pydicom converts values lazily and raises many types on damaged ones
        return default
    if v is None or v == "":
        return default
    return v


def _floats(v) -> tuple[float, ...] | None:
    """A tuple of finite floats, or None (missing, not numbers, NaN/Inf)."""
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if all(math.isfinite(x) for x in out) else None


def _num(ds: Dataset, kw: str, default: float | None = None) -> float | None:
    """A finite number from ``ds[kw]`` (first value of a multi-value), or ``default``."""
    v = _f(ds, kw)
    if v is not None and not isinstance(v, str | bytes) and hasattr(v, "__len__"):
        v = v[0] if len(v) else None
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        return default
    return x if math.isfinite(x) else default


def scan_date(ds: Dataset) -> str | None:
    """The scan's date as ISO ``YYYY-MM-DD``: StudyDate, else SeriesDate, else AcquisitionDate; None when none is a
    valid DICOM date (DA, ``YYYYMMDD``; de-identified data may shift or blank it)."""
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate"):
        v = str(_f(ds, kw, "")).strip()
        if len(v) != 8 or not v.isdigit():
            continue
        try:
            return date(int(v[:4]), int(v[4:6]), int(v[6:])).isoformat()
        except ValueError:  # 20201332 and the like
            continue
    return None


def _int(ds: Dataset, kw: str, default: int) -> int:
    x = _num(ds, kw)
    return default if x is None or abs(x) > 2**31 else int(x)


def _rescale(ds: Dataset, kw: str, default: float, name: str) -> float:
    """RescaleSlope/Intercept: the default when absent; a present value that is not a finite number is refused
    (guessing it would give wrong HU everywhere)."""
    if _f(ds, kw) is None and kw not in ds:
        return default
    x = _num(ds, kw)
    if x is None:
        if _f(ds, kw) is None:
            return default  # present but empty
        raise UnsupportedInput(f"{name}: {kw} {str(ds.get(kw, ''))[:30]!r} is not a number")
    return x


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _gdcm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gdcm") is not None


_USE_GDCM = _gdcm_available()
_USE_IMAGECODECS = imagecodecs_plugin.register()


def _pixels(ds: Dataset) -> np.ndarray:
    """Pixel data. Lossless JPEG and JPEG-LS slices go through imagecodecs when installed (``covidct.io.
    imagecodecs_plugin``: several times faster than GDCM, identical pixels); other compressed slices, and any that
    imagecodecs refuses, through GDCM when installed (about 2x faster than pylibjpeg on P001's JPEG-lossless
    slices); else pydicom's other decoders."""
    ts = ds.file_meta.get("TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return ds.pixel_array
    plugins = [name for name, use in (("imagecodecs", _USE_IMAGECODECS and ts in imagecodecs_plugin.SYNTAXES),
                                      ("gdcm", _USE_GDCM)) if use]
    for name in plugins:
        try:
            ds.pixel_array_options(decoding_plugin=name)
            return ds.pixel_array
        except Exception:  # noqa: BLE001 - fall back to the next decoder
            pass
    ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(path, force=not _has_preamble(path))
    if _int(ds, "SamplesPerPixel", 1) != 1:
        raise UnsupportedInput(f"{path.name}: colour DICOM image (SamplesPerPixel {_f(ds, 'SamplesPerPixel')})")
    if _int(ds, "NumberOfFrames", 1) > 1:  # one file of many slices: covidct.io.dicom_frames reads it
        raise UnsupportedInput(f"{path.name}: a multi-frame image in a series of several files (covidct reads a "
                               "multi-frame file on its own)")
    px = _pixels(ds)
    if px.ndim != 2:
        raise UnsupportedInput(f"{path.name}: pixel data of shape {px.shape} is not one 2-D slice")
    # the compressed bytes and pydicom's cached decoded copy are not needed again (P001: 78 MB of int16)
    del ds.PixelData
    return ds, _to_hu(ds, px, path.name)


def _to_hu(ds: Dataset, px: np.ndarray, name: str) -> np.ndarray:
    slope = _rescale(ds, "RescaleSlope", 1.0, name)
    inter = _rescale(ds, "RescaleIntercept", 0.0, name)
    hu = px.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    if inter != 0.0:
        hu += np.float32(inter)
    return hu
