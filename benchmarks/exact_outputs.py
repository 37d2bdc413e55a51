"""Fingerprints of ``covidct analyze`` outputs, to show a refactor leaves them byte-identical.

For each case (phantoms of a few seeds/shapes, a lesion-free one, a DICOM phantom with its SEG, a
single-slice PNG and, when present, the real series COVID-CT-MD P001) it runs ``covidct analyze`` from
this checkout in a fresh process and records:
- sha256 of the lungs/lesions voxel arrays (decoded NIfTI arrays with dtype and shape, not the gzip
  bytes, which carry no meaning beyond them), of the NIfTI affines, of the DICOM SEG pixel data and of
  the decoded PNG pixels;
- report.json without what changes from run to run (creation time, timings, input path).

Usage:
  python benchmarks/exact_outputs.py --out before.json [--data /work/shared/data]
  python benchmarks/exact_outputs.py --compare before.json after.json   # exit 1 when they differ
P001 is skipped (noted in the JSON) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHANTOMS = [  # name, phantom options
    ("phantom_s0_default", ["--seed", "0"]),
    ("phantom_s1_32x160_b30", ["--seed", "1", "--slices", "32", "--size", "160", "--burden", "0.3"]),
    ("phantom_s2_normal", ["--seed", "2", "--slices", "40", "--size", "176", "--burden", "0"]),
    ("phantom_s3_dicom", ["--seed", "3", "--slices", "32", "--size", "128", "--format", "dicom"]),
]
VOLATILE = {"created", "timings_s"}
# The DICOM phantom writer draws new UIDs (and file names from them) on every run: not compared for phantoms.
PHANTOM_UIDS = {"series_uid", "sop_instance_uid", "file", "study_date"}  # and the day it was written


def covidct(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    subprocess.run([sys.executable, "-m", "covidct", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def array_sha(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(outdir: Path) -> dict:
    import nibabel as nib

    fp: dict = {}
    for name in ("lungs", "lesions"):
        f = outdir / f"{name}.nii.gz"
        if f.exists():
            img = nib.load(f)
            arr = np.asarray(img.dataobj)
            fp[name] = {"sha256": array_sha(arr), "affine_sha256": array_sha(img.affine),
                        "counts": {int(v): int(c) for v, c in zip(*np.unique(arr, return_counts=True), strict=True)}}
        f = outdir / f"{name}.png"
        if f.exists():
            from PIL import Image

            fp[f"{name}_png"] = array_sha(np.asarray(Image.open(f)))
    seg = outdir / "segmentation.dcm"
    if seg.exists():
        import pydicom

        ds = pydicom.dcmread(seg)
        fp["seg"] = {"pixels_sha256": array_sha(ds.pixel_array),
                     "segments": [s.SegmentLabel for s in ds.SegmentSequence]}
    overlays = sorted(outdir.rglob("*.png"))
    if overlays:
        from PIL import Image

        fp["png_files"] = {str(p.relative_to(outdir)): array_sha(np.asarray(Image.open(p))) for p in overlays}
    report = json.loads((outdir / "report.json").read_text())
    for k in VOLATILE:
        report.pop(k, None)
    report.get("input", {}).pop("path", None)
    fp["report"] = report
    return fp


def run_cases(data: Path, work: Path) -> dict:
    cases: dict = {}
    for name, opts in PHANTOMS:
        src = work / name
        covidct("phantom", "-o", str(src), *opts)
        inp = src / "dicom" if "dicom" in opts else src / "phantom.nii.gz"
        out = work / f"{name}_out"
        extra = ["--png"] if name == "phantom_s1_32x160_b30" else []
        t0 = time.perf_counter()
        covidct("analyze", str(inp), "-o", str(out), *extra)
        cases[name] = fingerprint(out) | {"_seconds": round(time.perf_counter() - t0, 2)}
    # a single slice image: the lung-windowed middle slice of phantom seed 0
    import nibabel as nib
    from PIL import Image

    hu = np.asarray(nib.load(work / "phantom_s0_default" / "phantom.nii.gz").dataobj)
    mid = hu[..., hu.shape[-1] // 2] if hu.shape[-1] < hu.shape[0] else hu[hu.shape[0] // 2]
    png = work / "slice.png"
    Image.fromarray(np.clip((mid + 1350) / 1500 * 255, 0, 255).astype(np.uint8)).save(png)
    covidct("analyze", str(png), "-o", str(work / "slice_out"))
    cases["slice_png"] = fingerprint(work / "slice_out")
    p001 = data / "covid-ct-md" / "P001"
    if p001.is_dir():
        t0 = time.perf_counter()
        covidct("analyze", str(p001), "-o", str(work / "p001_out"))
        cases["P001"] = fingerprint(work / "p001_out") | {"_seconds": round(time.perf_counter() - t0, 2)}
    else:
        cases["P001"] = {"skipped": f"{p001} absent"}
    return cases


def strip(d, drop: frozenset = frozenset()):
    """``d`` without run-specific entries (keys starting with ``_``, and ``drop``)."""
    if isinstance(d, dict):
        return {k: strip(v, drop) for k, v in d.items() if not k.startswith("_") and k not in drop}
    if isinstance(d, list):
        return [strip(v, drop) for v in d]
    return d


def compare(a: Path, b: Path) -> int:
    ca, cb = json.loads(a.read_text())["cases"], json.loads(b.read_text())["cases"]
    bad = 0
    for name in sorted(set(ca) | set(cb)):
        drop = frozenset(PHANTOM_UIDS if name.startswith("phantom_") else ())
        same = strip(ca.get(name), drop) == strip(cb.get(name), drop)
        bad += not same
        print(f"{name}: {'identical' if same else 'DIFFERENT'}")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        ap.error("--out or --compare is needed")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        cases = run_cases(args.data, Path(tmp))
    result = {"commit": commit, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {args.out}: {', '.join(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
