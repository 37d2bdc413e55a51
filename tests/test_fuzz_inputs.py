"""Property-based fuzzing of the readers: damaged DICOM series and NIfTI files (Hypothesis).

Each example writes a small, valid input (3-6 slices of 32x32), damages its headers or pixel data at random
(missing, duplicated or blank tags, values of the wrong type, inconsistent geometry, truncated pixel data
or files), and calls ``load_ct``. The property: ``load_ct`` returns a consistent CT (finite float32 voxels,
positive spacing, finite affine, one reference per slice) or raises one of covidct's own errors
(``covidct.errors``); never another exception, and never a hang (each example has a wall-clock limit,
``EXAMPLE_LIMIT_S``). Together the two properties run ``N_DICOM + N_NIFTI`` >= 500 inputs per suite run.
"""

from __future__ import annotations

import gzip
import signal
import struct
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.uid import generate_uid

from conftest_io_helpers import make_dataset
from covidct.errors import CovidCTError
from covidct.io import load_ct
from covidct.volume import CT

N_DICOM = 300
N_NIFTI = 300
EXAMPLE_LIMIT_S = 20  # a hang: far above the ~0.05 s an example takes, below what a stuck reader would
FUZZ = dict(deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ran = {"dicom": 0, "nifti": 0}
outcomes: Counter = Counter()  # (suite, "CT" or the covidct error class): printed by the last test


class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"load_ct took more than {EXAMPLE_LIMIT_S} s")


def load_within_limit(path: Path) -> CT | CovidCTError:
    """``load_ct(path)``, or the covidct error it raised; any other exception (or a hang) propagates."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_LIMIT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom/nibabel warn about the damage: expected here
            return load_ct(path)
    except CovidCTError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)  # one line for the user
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_consistent(ct: CT) -> None:
    arr = ct.array
    assert arr.ndim == 3 and arr.dtype == np.float32 and arr.size > 0
    assert np.isfinite(arr).all() and float(arr.max()) > float(arr.min())
    assert len(ct.spacing) == 3 and all(np.isfinite(s) and s > 0 for s in ct.spacing)
    assert ct.affine.shape == (4, 4) and np.isfinite(ct.affine).all()
    assert len(ct.slices) == arr.shape[0]
    if ct.source_shape is not None:
        assert int(np.prod(ct.source_shape)) == arr.size


# --------------------------------------------------------------------------- DICOM

TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "Modality",
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns",
        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
        "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "InstanceNumber", "PixelData",
        "NumberOfFrames", "ImageType"]
WRONG_VALUES = {  # value of a wrong type or meaning, written with a VR that accepts it
    "ImagePositionPatient": [("DS", ["abc", "1", "2"]), ("DS", ["1", "2"]), ("DS", ["nan", "0", "0"]),
                             ("DS", ["1e308", "1e308", "1e308"])],
    "ImageOrientationPatient": [("DS", ["0"] * 6), ("DS", ["1", "0", "0", "1", "0", "0"]), ("DS", ["1", "0"]),
                                ("DS", ["inf", "0", "0", "0", "1", "0"]), ("DS", ["0", "1", "0", "1", "0", "0"])],
    "PixelSpacing": [("DS", ["0", "0"]), ("DS", ["-1", "1"]), ("DS", ["nan", "1"]), ("DS", ["1"]), ("LO", "wide")],
    "SliceThickness": [("DS", "0"), ("DS", "-5"), ("LO", "thick")],
    "Rows": [("US", 0), ("US", 65535), ("US", 31), ("LO", "many")],
    "Columns": [("US", 0), ("US", 64), ("LO", "x")],
    "BitsAllocated": [("US", 0), ("US", 8), ("US", 12), ("US", 64)],
    "BitsStored": [("US", 40), ("US", 0)],
    "PixelRepresentation": [("US", 7)],
    "SamplesPerPixel": [("US", 3), ("US", 0)],
    "PhotometricInterpretation": [("CS", "RGB"), ("CS", "PALETTE COLOR"), ("CS", "YBR_FULL")],
    "RescaleSlope": [("DS", "0"), ("DS", "nan"), ("DS", "1e30"), ("LO", "steep"), ("DS", "-1")],
    "RescaleIntercept": [("DS", "inf"), ("DS", "-1e9"), ("LO", "low")],
    "InstanceNumber": [("IS", "-3"), ("LO", "first")],
    "NumberOfFrames": [("IS", "4"), ("IS", "0"), ("LO", "some")],
    "Modality": [("CS", "MR"), ("CS", "")],
    "SOPClassUID": [("UI", "1.2.840.10008.5.1.4.1.1.4")],
    "ImageType": [("CS", ["DERIVED", "SECONDARY", "LOCALIZER"])],
}

PIXEL_DATA = 0x7FE00010
damage_op = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(TAGS)),
    st.tuples(st.just("blank"), st.sampled_from(TAGS)),
    st.tuples(st.just("wrong"), st.sampled_from(sorted(WRONG_VALUES)), st.integers(0, 10)),
    st.tuples(st.just("truncate_pixels"), st.floats(0.0, 0.99)),
    st.tuples(st.just("truncate_file"), st.floats(0.05, 0.99)),
    st.tuples(st.just("move"), st.floats(-20.0, 20.0)),
    st.tuples(st.just("same_position_as_first")),
    st.tuples(st.just("duplicate_file")),
    st.tuples(st.just("garbage_file")),
)


def _set(ds, kw: str, vr: str, value) -> None:
    """Set ``kw`` to ``value`` with ``vr``; text values go in raw, as a damaged file holds them (pydicom would
    refuse to build a DS element from 'abc')."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = tag_for_keyword(kw)
    if isinstance(value, str | list) and vr not in ("US", "UL", "SS", "SL", "FL", "FD"):
        raw = "\\".join(value if isinstance(value, list) else [value]).encode("ascii")
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    else:
        ds[tag] = DataElement(tag, vr, value)


def _damage(folder: Path, files: list[Path], datasets: list, slice_ops: list[tuple[int, tuple]]) -> None:
    """Apply the operations to the slices' datasets, write them, then apply the file-level ones."""
    file_ops = []
    for k, op in slice_ops:
        ds = datasets[k % len(datasets)]
        kind = op[0]
        if kind == "delete" and op[1] in ds:
            del ds[op[1]]
        elif kind == "blank":
            from pydicom.datadict import dictionary_VR, tag_for_keyword

            vr = dictionary_VR(tag_for_keyword(op[1]))
            _set(ds, op[1], vr.split(" or ")[0], None)
        elif kind == "wrong":
            vr, value = WRONG_VALUES[op[1]][op[2] % len(WRONG_VALUES[op[1]])]
            _set(ds, op[1], vr, value)
        elif kind == "truncate_pixels" and ds.get("PixelData") is not None:  # not after a "blank" PixelData
            ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * op[1]) // 2 * 2]
        elif kind == "move" and "ImagePositionPatient" in ds:
            try:
                ds.ImagePositionPatient = [float(v) + op[1] for v in ds.ImagePositionPatient]
            except (TypeError, ValueError):
                pass
        elif kind == "same_position_as_first" and "ImagePositionPatient" in datasets[0]:
            try:  # the first slice's position may itself be damaged already ('abc'): pydicom refuses to copy it
                ds.ImagePositionPatient = datasets[0].ImagePositionPatient
            except (TypeError, ValueError):
                pass
        else:
            file_ops.append((k % len(datasets), op))
    for ds, path in zip(datasets, files, strict=True):
        if "PixelData" in ds:  # an explicit VR: pydicom cannot infer OB/OW once BitsAllocated is damaged
            ds[PIXEL_DATA] = DataElement(PIXEL_DATA, "OW", ds[PIXEL_DATA].value)
        ds.save_as(path, enforce_file_format=False)
    for k, op in file_ops:
        path = files[k]
        data = path.read_bytes()
        if op[0] == "truncate_file":
            path.write_bytes(data[: max(1, int(len(data) * op[1]))])
        elif op[0] == "duplicate_file":
            (folder / f"copy_{k}.dcm").write_bytes(data)
        elif op[0] == "garbage_file":
            path.write_bytes(b"\0" * 128 + b"DICM" + bytes(np.random.default_rng(k).integers(0, 256, 600, np.uint8)))


@settings(max_examples=N_DICOM, **FUZZ)
@given(n=st.integers(3, 6), slope=st.sampled_from([1.0, 0.5, 2.0]),
       ops=st.lists(st.tuples(st.integers(0, 5), damage_op), min_size=1, max_size=4))
def test_damaged_dicom_series(n, slope, ops):
    ran["dicom"] += 1
    suite = "dicom"
    rng = np.random.default_rng(n)
    series, study = generate_uid(), generate_uid()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        datasets, files = [], []
        for k in range(n):
            pixels = rng.integers(0, 2000, size=(32, 32)).astype(np.int16)
            ds = make_dataset(pixels, (0.0, 0.0, 2.5 * k), (1, 0, 0, 0, 1, 0), (0.8, 0.8), 2.5,
                              series_uid=series, study_uid=study, instance=k + 1)
            ds.RescaleSlope = slope
            datasets.append(ds)
            files.append(folder / f"IM{k}.dcm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid values written on purpose
            _damage(folder, files, datasets, ops)
        result = load_within_limit(folder)
        outcomes[suite, type(result).__name__] += 1
        if isinstance(result, CT):
            assert_consistent(result)


# --------------------------------------------------------------------------- NIfTI

HEADER_FIELDS = {  # NIfTI-1 header: (byte offset, struct format) of the fields damaged
    "dim": (40, "8h"), "datatype": (70, "h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
    "scl_slope": (112, "f"), "scl_inter": (116, "f"), "qform_code": (252, "h"), "sform_code": (254, "h"),
    "quatern": (256, "6f"), "srow": (280, "12f"), "magic": (344, "4s"),
}
odd_float = st.one_of(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, 1e-30]),
                      st.floats(-1e4, 1e4, allow_nan=False))
odd_short = st.one_of(st.sampled_from([0, -1, 1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 2304, 32767]),
                      st.integers(-32768, 32767))
nifti_op = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(sorted(HEADER_FIELDS)), st.integers(0, 11),
              st.one_of(odd_float, odd_short.map(float))),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.99)),
    st.tuples(st.just("nan_voxels"), st.floats(0.0, 1.0)),
)


def _poke(header: bytearray, field: str, index: int, value: float) -> None:
    offset, fmt = HEADER_FIELDS[field]
    count = int(fmt[:-1] or 1) if fmt[:-1].isdigit() else 1
    code = fmt[-1]
    if code == "s":
        header[offset:offset + 4] = [b"n+1\0", b"ni1\0", b"\0\0\0\0", b"n+2\0"][index % 4]
        return
    i = index % count
    size = struct.calcsize(code)
    if code == "h":
        value = int(max(-32768, min(32767, value if np.isfinite(value) else 0)))
    else:
        value = float(value)
    struct.pack_into("<" + code, header, offset + i * size, value)


@settings(max_examples=N_NIFTI, **FUZZ)
@given(shape=st.tuples(st.just(32), st.just(32), st.integers(3, 6)), gz=st.booleans(),
       dtype=st.sampled_from(["int16", "float32", "uint8", "float64"]),
       ops=st.lists(nifti_op, min_size=1, max_size=4))
def test_damaged_nifti(shape, gz, dtype, ops):
    ran["nifti"] += 1
    suite = "nifti"
    data = np.random.default_rng(shape[2]).uniform(-1000, 1000, size=shape)
    for op in ops:
        if op[0] == "nan_voxels" and dtype.startswith("float"):
            data.reshape(-1)[: int(op[1] * data.size)] = np.nan
    img = nib.Nifti1Image(data.astype(dtype), np.diag([0.8, 0.8, 2.5, 1.0]))
    raw = bytearray(img.to_bytes())
    for op in ops:
        if op[0] == "field":
            _poke(raw, op[1], op[2], op[3])
    for op in ops:
        if op[0] == "truncate":
            raw = raw[: int(len(raw) * op[1])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("ct.nii.gz" if gz else "ct.nii")
        path.write_bytes(gzip.compress(bytes(raw), 1) if gz else bytes(raw))
        result = load_within_limit(path)
        outcomes[suite, type(result).__name__] += 1
        if isinstance(result, CT):
            assert_consistent(result)


def test_fuzz_ran_enough_inputs():
    """Runs after the two properties (file order): at least 500 generated inputs in this session."""
    if not ran["dicom"] and not ran["nifti"]:
        pytest.skip("the fuzz properties were not selected")
    print("fuzz outcomes:", dict(sorted(outcomes.items())))
    assert ran["dicom"] + ran["nifti"] >= 500, ran
