"""MetaImage reading checked against SimpleITK: files SimpleITK writes read by ``load_ct`` as their sources.

    python benchmarks/metaimage_check.py --sitk-python /path/to/python-with-SimpleITK [--keep DIR]

covidct reads .mha/.mhd with ``metaimageio``, not SimpleITK (which is not a dependency). Here a Python that has
SimpleITK (a separate environment: ``python -m venv e && e/bin/pip install SimpleITK``) writes, from the real data,
cip-ct-64's NRRD as a compressed .mha, as an .mhd with its .raw, and with its axes permuted and two of them flipped
(a direction matrix that is not the identity), and the DICOM series LIDC-IDRI-0001 and P001 as read by its GDCM, each
as .mha. Each file is then read by ``covidct.io.load_ct`` and compared with covidct's own reading of the source:
voxels and voxel-to-world affine. Skips (exit 0) without the data or without ``--sitk-python``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WRITER = r'''
import glob, os, sys
import SimpleITK as sitk
data, out = sys.argv[1], sys.argv[2]
img = sitk.ReadImage(f"{data}/chest-misc/cip-ct-64/ct-64.nrrd")
sitk.WriteImage(img, f"{out}/cip.mha", useCompression=True)
sitk.WriteImage(img, f"{out}/cip.mhd", useCompression=False)
turned = sitk.Flip(sitk.PermuteAxes(img, [1, 0, 2]), [True, False, True])
sitk.WriteImage(turned, f"{out}/cip_permuted_flipped.mha", useCompression=True)
for name, folder in (("lidc", f"{data}/lidc-idri/LIDC-IDRI-0001"), ("p001", f"{data}/covid-ct-md/P001")):
    reader = sitk.ImageSeriesReader()
    for d in sorted({os.path.dirname(f) for f in glob.glob(folder + "/**/*", recursive=True) if os.path.isfile(f)}):
        ids = reader.GetGDCMSeriesIDs(d)
        if ids:
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(d, ids[0]))
            sitk.WriteImage(reader.Execute(), f"{out}/{name}.mha", useCompression=True)
            break
'''

PAIRS = (("cip.mha", "chest-misc/cip-ct-64/ct-64.nrrd"), ("cip.mhd", "chest-misc/cip-ct-64/ct-64.nrrd"),
         ("cip_permuted_flipped.mha", "chest-misc/cip-ct-64/ct-64.nrrd"), ("lidc.mha", "lidc-idri/LIDC-IDRI-0001"),
         ("p001.mha", "covid-ct-md/P001"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sitk-python", default=None, help="a Python interpreter that can import SimpleITK")
    ap.add_argument("--keep", type=Path, default=None, help="write the MetaImage files here and keep them")
    args = ap.parse_args()
    from covidct.data import data_root
    from covidct.io import load_ct

    root = data_root()
    if root is None or not args.sitk_python:
        print("skip: ../shared/data not found" if root is None else "skip: no --sitk-python given")
        return 0
    with tempfile.TemporaryDirectory(prefix="covidct_mha_") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([args.sitk_python, "-c", WRITER, str(root), str(out)], check=True)
        print("| file written by SimpleITK | source | voxels | affine |")
        print("|---|---|---|---|")
        for name, source in PAIRS:
            mha, ref = load_ct(out / name), load_ct(root / source)
            same = mha.array.shape == ref.array.shape and np.array_equal(mha.array, ref.array)
            voxels = "identical" if same else f"differ (shapes {mha.array.shape} / {ref.array.shape})"
            diff = float(np.abs(np.asarray(mha.affine) - np.asarray(ref.affine)).max())
            print(f"| {name} | {source} | {voxels} | {'identical' if diff == 0 else f'max difference {diff:g}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
