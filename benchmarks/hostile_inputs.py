"""Hostile and messy inputs on real data: DICOM SEG validity (dciodvfy) and zip-bomb refusal times.

1. For each real DICOM series in the data folder (covid-ct-md P001, cap001, normal001; lidc-idri
   LIDC-IDRI-0001), run ``covidct.pipeline.analyze`` and check the ``segmentation.dcm`` it writes with
   ``dciodvfy`` (count of ``Error`` and ``Warning`` lines). Then the same series with its UIDs blanked as
   the reported anonymiser did (SOPInstanceUID, FrameOfReferenceUID emptied, SeriesNumber dropped; a copy in
   a temp folder): no SEG may be written, the reason must be in report.json.
2. Zip bombs like the reported one (a ~2 MiB zip holding one 2 GiB member) and the other shapes: the time
   from starting ``covidct info BOMB.zip`` (a whole fresh process) to its exit, and its exit code.

Data root: env ``COVIDCT_DATA``, else ``<repo>/../shared/data``; part 1 skips when absent.
3. ``--new-uids``: only the opt-in copy with fresh UIDs (``--seg-new-uids``) on the blanked real series.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/hostile_inputs.py [--skip-seg] [--skip-bombs] [--new-uids]``
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COVIDCT_DATA", REPO.parent / "shared" / "data"))
SERIES = ["covid-ct-md/P001", "covid-ct-md/cap001", "covid-ct-md/normal001", "lidc-idri/LIDC-IDRI-0001"]
MiB = 1024**2


def dciodvfy_counts(path: Path) -> tuple[int, int, list[str]]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=600)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    return len(errors), sum(line.startswith("Warning") for line in lines), errors


def blank_uids(src: Path, dst: Path) -> None:
    import pydicom

    dst.mkdir(parents=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() != ".xml"):
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.FrameOfReferenceUID = ""
        if "SeriesNumber" in ds:
            del ds.SeriesNumber
        ds.save_as(dst / f.name)


def seg_validity() -> None:
    from covidct.pipeline import analyze

    if shutil.which("dciodvfy") is None or not DATA.is_dir():
        print("skipped: dciodvfy or the data folder is missing")
        return
    print("| series | SEG written | dciodvfy errors | dciodvfy warnings | analyse s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="covidct_hostile_") as tmp:
        for name in SERIES:
            folder = DATA / name
            if not folder.is_dir():
                print(f"| {name} | absent | | | |")
                continue
            for variant in ("as published", "UIDs blanked"):
                src = folder
                if variant == "UIDs blanked":
                    src = Path(tmp) / f"blank_{folder.name}"
                    blank_uids(folder, src)
                out = Path(tmp) / f"out_{folder.name}_{variant[:2]}"
                t0 = time.perf_counter()
                res = analyze(src, out, html=False)
                seconds = time.perf_counter() - t0
                seg = out / "segmentation.dcm"
                if seg.exists():
                    n_err, n_warn, errors = dciodvfy_counts(seg)
                    print(f"| {name} ({variant}) | yes | {n_err} | {n_warn} | {seconds:.1f} |")
                    for e in errors[:5]:
                        print(f"|   {e} | | | | |")
                else:
                    why = [w for w in res.report["warnings"] if w.startswith("no DICOM SEG")]
                    print(f"| {name} ({variant}) | no: {why[0] if why else 'NO REASON GIVEN'} | – | – | {seconds:.1f} |")
                shutil.rmtree(out, ignore_errors=True)


def new_uids_copies() -> None:
    """The opt-in (``--seg-new-uids``) on the blanked real series: the SEG (lungs from a simple threshold,
    no models needed) and the first image of the copy checked with dciodvfy."""
    import numpy as np

    from covidct.io import load_ct
    from covidct.report.dicom_copy import NEW_UIDS_DIR
    from covidct.report.dicomseg import write_dicom_seg

    print("| blanked series, --seg-new-uids | SEG dciodvfy errors | copy image dciodvfy errors | copy files |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="covidct_newuids_") as tmp:
        for name in SERIES:
            if not (DATA / name).is_dir():
                continue
            src = Path(tmp) / f"blank_{Path(name).name}"
            blank_uids(DATA / name, src)
            ct = load_ct(src)
            lungs = np.where(ct.array < -400, 1, 0).astype(np.uint8)
            lungs[:, :, ct.shape[2] // 2:] *= 2
            out = write_dicom_seg(ct, lungs, np.zeros_like(lungs), Path(tmp) / f"out_{src.name}" / "seg.dcm",
                                  new_uids=True)
            copies = sorted((out.parent / NEW_UIDS_DIR).glob("*.dcm"))
            print(f"| {name} | {dciodvfy_counts(out)[0]} | {dciodvfy_counts(copies[0])[0]} | {len(copies)} |")


def _zeros_member(zf: zipfile.ZipFile, name: str, size: int) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(16 * MiB)
    with zf.open(info, "w", force_zip64=size >= 2**31) as dst:
        left = size
        while left:
            n = min(left, len(block))
            dst.write(block[:n])
            left -= n


def make_bombs(root: Path) -> dict[str, Path]:
    import io

    bombs = {}

    def new(name: str) -> zipfile.ZipFile:
        bombs[name] = root / f"bomb{len(bombs)}.zip"
        return zipfile.ZipFile(bombs[name], "w", zipfile.ZIP_DEFLATED, compresslevel=9)

    with new("one 2 GiB member") as zf:
        _zeros_member(zf, "slice.dcm", 2 * 1024**3)
    with new("20001 members") as zf:
        for i in range(20001):
            zf.writestr(f"s/{i:05d}.dcm", b"")
    with new("3000 x 64 KiB members (190 MiB)") as zf:
        for i in range(3000):
            zf.writestr(f"s/{i:05d}.dcm", bytes(64 * 1024))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z2:
        _zeros_member(z2, "a.dcm", 256 * MiB)
    with new("nested zip (inner.zip)") as zf:
        zf.writestr("series/inner.zip", inner.getvalue())
    with new("nested zip named IM0001.dcm") as zf:
        zf.writestr("series/IM0001.dcm", inner.getvalue())
    with new("one 4 MiB member at ~1000x") as zf:
        zf.writestr("slice.dcm", bytes(4 * MiB))
    with new("path traversal ../../x.dcm") as zf:
        zf.writestr("../../x.dcm", b"x" * 300)
    return bombs


def bomb_times() -> None:
    with tempfile.TemporaryDirectory(prefix="covidct_bombs_") as tmp:
        bombs = make_bombs(Path(tmp))
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        print("| zip | size | `covidct info` exit | whole process s (3 runs) | in-process load_ct s (3 runs) |")
        print("|---|---|---|---|---|")
        from covidct.errors import CovidCTError
        from covidct.io import load_ct

        for name, path in bombs.items():
            walls, codes, inproc = [], set(), []
            for _ in range(3):
                t0 = time.perf_counter()
                run = subprocess.run([sys.executable, "-m", "covidct", "info", str(path)], capture_output=True,
                                     text=True, env=env, timeout=600)
                walls.append(time.perf_counter() - t0)
                codes.add(run.returncode)
                t0 = time.perf_counter()
                try:
                    load_ct(path)
                except CovidCTError:
                    pass
                inproc.append(time.perf_counter() - t0)
            msg = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
            print(f"| {name} | {path.stat().st_size / MiB:.2f} MiB | {sorted(codes)} | "
                  f"{', '.join(f'{w:.2f}' for w in walls)} | {', '.join(f'{w:.3f}' for w in inproc)} |")
            print(f"|   `{msg}` | | | | |")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import covidct.cli"], env=env, check=True)
        print(f"(for scale: a process that only imports covidct.cli: {time.perf_counter() - t0:.2f} s)")
        print(json.dumps({"python": sys.version.split()[0]}))


if __name__ == "__main__":
    if "--new-uids" in sys.argv:
        new_uids_copies()
        sys.exit(0)
    if "--skip-seg" not in sys.argv:
        seg_validity()
    if "--skip-bombs" not in sys.argv:
        bomb_times()
