"""Volumes stored flipped: what ``analyze`` reads and warns on the real chest volumes, as stored and flipped.

    python benchmarks/orientation_flips.py [--crops] [--json OUT]

Each whole chest volume in ../shared/data (P001, cap001, normal001, LIDC-IDRI-0001, cip-ct-64, the TotalSegmentator
example's lung bases) through ``analyze`` in process: as stored, and with its array flipped left to right, front to
back and head to feet while its geometry stays as it was (what a header that lost its orientation gives). For each,
the diagnosis and which flips the warnings name (``covidct.slice_view.flipped_volume_warnings``). ``--crops``: also a
tight field of view (12 % or 20 % of the columns off the patient's right, 12 % off the left, 12 % off each side) on
the four DICOM series, as stored and flipped left to right; a cut lung moves the middle of the left-right check, whose
cut slices are left out. Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

VOLUMES = (("P001", "covid-ct-md/P001"), ("cap001", "covid-ct-md/cap001"), ("normal001", "covid-ct-md/normal001"),
           ("LIDC-IDRI-0001", "lidc-idri/LIDC-IDRI-0001"), ("cip-ct-64", "chest-misc/cip-ct-64/ct-64.nrrd"),
           ("TotalSegmentator bases", "chest-misc/totalseg-example/example_ct.nii.gz"))
FLIPS = (("as stored", ()), ("left to right", (2,)), ("front to back", (1,)), ("head to feet", (0,)))
NAMES = ("left to right", "front to back", "head to feet")


def _named_flips(warnings: list[str]) -> str:
    said = [w for w in warnings if "looks flipped" in w]
    return ", ".join(n for n in NAMES if any(n in w for w in said)) or "none"


def _read(analyzer, ct) -> tuple[str, str]:
    from covidct.pipeline import analyze

    report = analyze(ct, None, analyzer=analyzer).report
    return report["diagnosis"]["label"], _named_flips(report["warnings"])


def _flipped(ct, axes: tuple[int, ...]):
    return dataclasses.replace(ct, array=np.ascontiguousarray(np.flip(ct.array, axes))) if axes else ct


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", action="store_true", help="also tight fields of view on the four DICOM series")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from covidct.data import data_root
    from covidct.io import load_ct
    from covidct.pipeline import shared_analyzer

    root = data_root()
    if root is None:
        print("skip: ../shared/data not found")
        return 0
    analyzer = shared_analyzer()
    rows = []
    print("| volume | array | diagnosis | flips warned |")
    print("|---|---|---|---|")
    for name, rel in VOLUMES:
        if not (root / rel).exists():
            continue
        ct = load_ct(root / rel)
        for how, axes in FLIPS:
            label, warned = _read(analyzer, _flipped(ct, axes))
            rows.append({"volume": name, "array": how if axes else "as stored", "diagnosis": label, "warned": warned})
            print(f"| {name} | {rows[-1]['array']} | {label} | {warned} |", flush=True)
        if not args.crops or not ct.kind == "dicom":
            continue
        w = ct.shape[2]  # canonical x runs from the patient's right to left
        for crop, (c0, c1) in (("12 % off the patient's right", (int(0.12 * w), w)),
                               ("20 % off the patient's right", (int(0.2 * w), w)),
                               ("12 % off the patient's left", (0, w - int(0.12 * w))),
                               ("12 % off each side", (int(0.12 * w), w - int(0.12 * w)))):
            cut = dataclasses.replace(ct, array=np.ascontiguousarray(ct.array[:, :, c0:c1]))
            for how, axes in FLIPS[:2]:
                label, warned = _read(analyzer, _flipped(cut, axes))
                rows.append({"volume": name, "array": f"{crop}, {how}", "diagnosis": label, "warned": warned})
                print(f"| {name} | {rows[-1]['array']} | {label} | {warned} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
