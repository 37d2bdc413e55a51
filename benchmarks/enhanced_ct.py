"""A real series as one multi-frame Enhanced CT file: does `covidct analyze` give what it gives for the series?

    python benchmarks/enhanced_ct.py [--scan DIR] [--json OUT]

Converts the series (default COVID-CT-MD P001; skips cleanly without it) into a Legacy Converted Enhanced CT file
with highdicom (frames decompressed, in the series' file order) in a temporary folder, runs `covidct analyze` on the
series and on the file, and compares: the lung and lesion NIfTI masks voxel by voxel, the report's figures (every
key but the input's provenance, the slice rows' file names, the creation time and the timings), and the two DICOM
SEGs decoded to volumes by highdicom (labels and affine). Prints the comparisons and both commands' wall times as
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_io import ROOT, emit_json, p001_or_none  # noqa: E402  (the script's folder is on sys.path)

IGNORED = {"created", "input", "slices", "timings_s", "outputs"}


def _analyze(scan: Path, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "covidct", "analyze", str(scan), "-o", str(out)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=Path, default=None, help="a DICOM series folder (default: P001)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    scan = p001_or_none(args.scan)
    if scan is None:
        return 0
    import highdicom as hd
    import nibabel as nib
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    result: dict = {"scan": str(scan)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datasets = []
        for f in sorted(p for p in scan.iterdir() if p.is_file()):
            ds = pydicom.dcmread(f)
            ds.decompress()  # the converter copies the frames as they are: one transfer syntax for all
            datasets.append(ds)
        image = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=hd.UID(), series_number=99,
                                               sop_instance_uid=hd.UID(), instance_number=1)
        enhanced = tmp / "enhanced.dcm"
        image.save_as(enhanced)
        del datasets, image
        result["frames"] = int(pydicom.dcmread(enhanced, stop_before_pixels=True).NumberOfFrames)
        result["series_s"] = round(_analyze(scan, tmp / "series"), 2)
        result["enhanced_s"] = round(_analyze(enhanced, tmp / "enhanced"), 2)
        a, b = (json.loads((tmp / k / "report.json").read_text()) for k in ("series", "enhanced"))
        result["report_keys_differing"] = sorted(k for k in set(a) | set(b) if k not in IGNORED and a.get(k) != b.get(k))
        for name in ("lungs", "lesions"):
            x, y = (nib.load(tmp / k / f"{name}.nii.gz") for k in ("series", "enhanced"))
            result[f"{name}_nifti_identical"] = bool(np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
                                                     and np.allclose(x.affine, y.affine))
        va, vb = (hd.seg.segread(tmp / k / "segmentation.dcm").get_volume() for k in ("series", "enhanced"))
        result["seg_volumes_identical"] = bool(va.array.shape == vb.array.shape and np.array_equal(va.array, vb.array)
                                               and np.allclose(va.affine, vb.affine))
        result["diagnosis"] = [a["diagnosis"]["label"], b["diagnosis"]["label"]]
    return emit_json(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
