"""Real-data check of covidct.io (skips cleanly when the data folder is absent).

Data root: env ``COVIDCT_DATA``, else ``<repo>/../shared/data``.
Run: ``.venv/bin/python benchmarks/check_io.py``
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.io import load_ct

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COVIDCT_DATA", REPO.parent / "shared" / "data"))

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(f"  [{'ok' if cond else 'FAIL'}] {what}")
    if not cond:
        failures.append(what)


def check_p001(ct, label: str) -> None:
    print(f"{label}: shape {ct.shape}, spacing (z,y,x) {tuple(round(s, 4) for s in ct.spacing)}, "
          f"HU {ct.array.min():.0f}..{ct.array.max():.0f}, warnings {ct.warnings}")
    check(ct.shape == (148, 512, 512), "148 slices of 512x512")
    check(abs(ct.spacing[0] - 2.0) < 1e-3, "z spacing 2 mm")
    check(ct.array.dtype == np.float32 and ct.is_hu, "float32 HU")
    check(-1100 <= float(ct.array.min()) <= -1000, f"min HU near -1024 ({ct.array.min():.0f})")
    zs = [s.z_mm for s in ct.slices]
    check(all(b > a for a, b in zip(zs, zs[1:], strict=False)), "z increases with slice index")
    rows = list(csv.DictReader(open(DATA / "covid-ct-md" / "labels_slice.csv")))
    by_file = {Path(r["dicom_file"]).name: float(r["slice_location"]) for r in rows if r["subject"] == "P001"}
    locs = [by_file[Path(s.file).name] for s in ct.slices]
    check(locs == sorted(locs), "slice_location ascending along our z (CSV is top-of-chest first)")
    check(locs[0] == min(by_file.values()), f"index 0 is the lowest slice_location ({locs[0]})")
    # Canonical orientation: the spine (bone, > 300 HU near the midline) is posterior = larger y.
    bone = ct.array[74, :, 206:306] > 300
    cy = float(np.nonzero(bone)[0].mean())
    check(cy > 256, f"spine in the lower (posterior) half of the middle slice (bone row centroid {cy:.0f})")


def main() -> int:
    p001 = DATA / "covid-ct-md" / "P001"
    if not p001.is_dir():
        print(f"check_io: data folder {p001} absent; skipping")
        return 0
    t = time.perf_counter()
    ct = load_ct(p001)
    dt = time.perf_counter() - t
    print(f"load_ct(P001 folder) took {dt:.2f} s")
    check_p001(ct, "P001 folder")

    with tempfile.TemporaryDirectory() as tmp:
        zp = Path(tmp) / "P001.zip"
        with zipfile.ZipFile(zp, "w", zipfile.ZIP_STORED) as zf:
            for f in sorted(p001.iterdir()):
                zf.write(f, f"P001/{f.name}")
        t = time.perf_counter()
        ctz = load_ct(zp)
        print(f"load_ct(P001.zip) took {time.perf_counter() - t:.2f} s")
        check_p001(ctz, "P001 zip")
        check(np.array_equal(ct.array, ctz.array), "zip == folder voxel for voxel")

    images = []
    infnet = sorted((DATA / "medseg-infnet" / "TestingSet" / "LungInfection-Test" / "Imgs").glob("*.jpg"))
    ma = sorted((DATA / "ma2020-slices" / "ct").glob("*.png"))
    ucsd_rgba = None
    for f in sorted((DATA / "ucsd-covidct" / "CT_COVID").glob("*.png")):
        with Image.open(f) as im:
            if im.mode == "RGBA":
                ucsd_rgba = f
                break
    for label, f in (("Inf-Net JPG", infnet[0] if infnet else None), ("Ma PNG", ma[0] if ma else None),
                     ("UCSD RGBA PNG", ucsd_rgba)):
        if f is None:
            print(f"{label}: not found, skipped")
            continue
        with Image.open(f) as im:
            w, h, mode = im.width, im.height, im.mode
        c = load_ct(f)
        images.append(label)
        print(f"{label} {f.relative_to(DATA)} (mode {mode}, {w}x{h}): shape {c.shape}, "
              f"range {c.array.min():.0f}..{c.array.max():.0f}, is_hu {c.is_hu}, warnings {c.warnings}")
        check(c.shape == (1, h, w) and not c.is_hu and c.kind == "image", f"{label}: one-slice display image")
        check(0 <= c.array.min() and c.array.max() <= 255, f"{label}: values in 0..255")
    print("FAILED: " + "; ".join(failures) if failures else "all io checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
