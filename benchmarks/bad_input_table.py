"""The bad-input table: every class of broken input tried, what ``covidct info`` answers and its exit code.

Each input is generated in a temp folder (no data needed) and given to ``covidct info`` in-process
(``covidct.cli.main``); the table printed (markdown) is the one in docs/BENCHMARKS.md.
Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bad_input_table.py``
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest_io_helpers import make_series, phantom_hu  # noqa: E402
from covidct.cli import main  # noqa: E402

MiB = 1024**2


def nifti(p: Path, data: np.ndarray, poke: dict | None = None) -> Path:
    raw = bytearray(nib.Nifti1Image(data.astype(np.float32), np.diag([0.8, 0.8, 2.5, 1])).to_bytes())
    for offset, (fmt, value) in (poke or {}).items():
        struct.pack_into(fmt, raw, offset, *value)
    p.write_bytes(gzip.compress(bytes(raw)) if p.name.endswith(".gz") else bytes(raw))
    return p


def zipped(p: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return p


def cases(t: Path) -> list[tuple[str, Path]]:
    hu = phantom_hu((32, 28, 6))
    ct_like = np.random.default_rng(0).uniform(-1000, 400, (32, 32, 6))
    out: list[tuple[str, Path]] = []

    def add(name: str, path: Path) -> None:
        out.append((name, path))

    add("path does not exist", t / "nope.nii.gz")
    (t / "empty").mkdir()
    add("empty folder", t / "empty")
    (t / "junk").mkdir()
    (t / "junk" / "readme.txt").write_text("not dicom")
    add("folder without DICOM files", t / "junk")
    (t / "zero.dcm").write_bytes(b"")
    add("0-byte file", t / "zero.dcm")
    (t / "text.png").write_text("hello")
    add("text file named .png", t / "text.png")
    (t / "data.xyz").write_bytes(b"12345")
    add("unknown extension", t / "data.xyz")
    (t / "bad.nii.gz").write_bytes(b"\x1f\x8b" + bytes(200))
    add("corrupt .nii.gz", t / "bad.nii.gz")
    (t / "bad.zip").write_bytes(b"PK\x03\x04" + bytes(100))
    add("corrupt .zip", t / "bad.zip")
    paths = make_series(t / "trunc", hu)
    (t / "one.dcm").write_bytes(paths[0].read_bytes()[:600])
    add("truncated single DICOM file", t / "one.dcm")
    make_series(t / "mr", hu, modality="MR")
    add("MR series", t / "mr")
    make_series(t / "sizes", hu, series_uid="1.2.3.4", prefix="A")
    make_series(t / "sizes", hu[:16, :16], series_uid="1.2.3.4", prefix="B", origin=(-10.0, -20.0, 100.0))
    add("one series, two slice sizes", t / "sizes")
    make_series(t / "gaps", phantom_hu((32, 28, 12)), drop=(2, 3, 4, 6, 7))
    add("over 25 % of slices missing", t / "gaps")
    make_series(t / "orient", phantom_hu((16, 16, 16)), series_uid="1.2.3.5", prefix="AX")
    make_series(t / "orient", phantom_hu((16, 16, 16)), series_uid="1.2.3.5", prefix="COR", col_dir=(0, 0, -1))
    add("one series, axial + coronal slices", t / "orient")
    make_series(t / "slope", hu, intercept=-1e7)
    add("DICOM with RescaleIntercept -1e7", t / "slope")
    add("4-D NIfTI", nifti(t / "4d.nii.gz", np.zeros((8, 8, 4, 3)) + np.arange(3)))
    add("label mask given as CT", nifti(t / "mask.nii.gz", np.random.default_rng(0).integers(0, 3, (32, 32, 6))))
    add("all-NaN NIfTI", nifti(t / "nan.nii.gz", np.full((32, 32, 6), np.nan)))
    inf = ct_like.copy()
    inf.reshape(-1)[: int(0.7 * inf.size)] = np.inf
    add("70 % Inf NIfTI", nifti(t / "inf.nii.gz", inf))
    few = ct_like.copy()
    few[:4] = np.nan
    add("12 % NaN NIfTI (padding-like)", nifti(t / "few.nii.gz", few))
    add("constant NIfTI (-1000)", nifti(t / "const.nii.gz", np.full((32, 32, 6), -1000.0)))
    add("NIfTI values x 1e6", nifti(t / "huge.nii.gz", ct_like * 1e6))
    add("NIfTI datatype code 0", nifti(t / "dt.nii.gz", ct_like, {70: ("<h", (0,))}))
    add("NIfTI vox_offset = Inf", nifti(t / "off.nii", ct_like, {108: ("<f", (np.inf,))}))
    add("NIfTI pixdim NaN", nifti(t / "pix.nii.gz", ct_like, {80: ("<f", (np.nan,)), 254: ("<h", (0,)),
                                                               252: ("<h", (0,))}))
    add("NIfTI declares 30000^3 voxels", nifti(t / "dims.nii.gz", ct_like, {42: ("<3h", (30000, 30000, 30000))}))
    (t / "junk.mha").write_bytes(b"\x00\x01 not a header")
    add("junk named .mha", t / "junk.mha")
    bomb = (b"ObjectType = Image\nNDims = 3\nCompressedData = True\nCompressedDataSize = 20\n"
            b"DimSize = 4000 4000 4000\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    (t / "bomb.mha").write_bytes(bomb + zlib.compress(bytes(20)))
    add(".mha declaring 4000^3 voxels (compressed)", t / "bomb.mha")
    (t / "alone.mhd").write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_SHORT\n"
                                  b"ElementDataFile = alone.raw\n")
    add(".mhd without its .raw", t / "alone.mhd")
    add("zip: one member of 256 MiB zeros", zipped(t / "b1.zip", {"a.dcm": bytes(256 * MiB)}))
    add("zip: 20001 members", zipped(t / "b2.zip", {f"{i}.dcm": b"" for i in range(20001)}))
    add("zip: 3000 x 64 KiB zeros", zipped(t / "b3.zip", {f"{i}.dcm": bytes(64 * 1024) for i in range(3000)}))
    inner = (t / "b1.zip").read_bytes()
    add("zip in a zip", zipped(t / "b4.zip", {"x/inner.zip": inner}))
    add("zip in a zip named .dcm", zipped(t / "b5.zip", {"x/IM1.dcm": inner}))
    add("zip: ../ path", zipped(t / "b6.zip", {"../../evil.dcm": b"x" * 300}))
    return out


def main_table() -> None:
    with tempfile.TemporaryDirectory(prefix="covidct_bad_") as tmp:
        print("| input | `covidct info` exit | message (one line, paths shortened) | s |")
        print("|---|---|---|---|")
        for name, path in cases(Path(tmp)):
            err = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["info", str(path)])
            seconds = time.perf_counter() - t0
            msg = err.getvalue().strip().splitlines()
            msg = msg[-1].replace(tmp + "/", "") if msg else "(loads: exit 0)"
            print(f"| {name} | {code} | {msg.replace('|', '/')} | {seconds:.2f} |")


if __name__ == "__main__":
    main_table()
