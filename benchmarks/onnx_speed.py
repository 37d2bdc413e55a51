"""ONNX Runtime vs torch inference path, paired: whole-process ``covidct analyze`` wall time, peak RSS and masks.

    COVIDCT_DATA=/work/shared/data python benchmarks/onnx_speed.py [--scan DIR] [--runs 5] [-o OUT.json]

Alternates ``COVIDCT_RUNTIME=torch`` (the checkpoint path ``analyze`` ran before: bf16 autocast, batch norm
folded) and the default ONNX Runtime path, one whole process each, so the load of a shared machine hits
both alike. Reports each path's median / min / max wall seconds, peak RSS (the child's ``ru_maxrss``), the
report's stage timings, and the Dice per class of the ONNX path's lung and lesion masks against the torch
path's. Also times ``covidct --help`` and a one-shot ``covidct refine`` (whole process, same alternation).
Default scan: COVID-CT-MD P001 (skips cleanly without the data).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_io import emit_json, p001_or_none  # noqa: E402  (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], runtime: str) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of one whole process."""
    env = dict(os.environ, COVIDCT_RUNTIME=runtime, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[int, float | None]:
    out = {}
    for c in sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0}):
        x, y = a == c, b == c
        s = int(x.sum()) + int(y.sum())
        out[int(c)] = None if s == 0 else round(2.0 * int((x & y).sum()) / s, 5)
    return out


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "runs": [round(v, 3) for v in values]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    scan = args.scan
    scan = p001_or_none(scan)
    if scan is None:
        return 0
    py = sys.executable
    res: dict = {"scan": str(scan), "runs": args.runs, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        walls: dict[str, list[float]] = {"torch": [], "onnx": []}
        rss: dict[str, list[float]] = {"torch": [], "onnx": []}
        stages: dict[str, list[dict]] = {"torch": [], "onnx": []}
        for i in range(args.runs):
            for rt in ("torch", "onnx"):
                out = tmp / f"{rt}{i}"
                wall, peak, rc = run([py, "-m", "covidct", "analyze", str(scan), "-o", str(out)], rt)
                if rc != 0:
                    raise SystemExit(f"analyze ({rt}) failed with exit code {rc}")
                walls[rt].append(wall)
                rss[rt].append(peak)
                stages[rt].append(json.loads((out / "report.json").read_text()).get("timings_s", {}))
        res["analyze_wall_s"] = {k: summary(v) for k, v in walls.items()}
        res["analyze_peak_rss_mb"] = {k: summary(v) for k, v in rss.items()}
        res["analyze_stage_s_median"] = {k: {s: round(statistics.median(d.get(s, 0.0) for d in v), 3) for s in v[0]}
                                         for k, v in stages.items()}
        import nibabel as nib

        res["dice_onnx_vs_torch"] = {}
        for mask in ("lungs", "lesions"):
            a = np.asarray(nib.load(tmp / "torch0" / f"{mask}.nii.gz").dataobj)
            b = np.asarray(nib.load(tmp / "onnx0" / f"{mask}.nii.gz").dataobj)
            res["dice_onnx_vs_torch"][mask] = dice_per_class(a, b)
        helps: dict[str, list[float]] = {"torch": [], "onnx": []}
        for _ in range(args.runs):
            for rt in ("torch", "onnx"):
                helps[rt].append(run([py, "-m", "covidct", "--help"], rt)[0])
        res["help_wall_s"] = {k: summary(v) for k, v in helps.items()}
        from PIL import Image

        img = np.asarray(nib.load(tmp / "onnx0" / "lungs.nii.gz").dataobj)  # any 2-D image will do: a mask slice
        Image.fromarray((img[..., img.shape[-1] // 2] * 100).astype(np.uint8)).save(tmp / "slice.png")
        refines: dict[str, list[float]] = {"torch": [], "onnx": []}
        for _ in range(args.runs):
            for rt in ("torch", "onnx"):
                refines[rt].append(run([py, "-m", "covidct", "refine", str(tmp / "slice.png"), "--click", "100,100,pos",
                                        "-o", str(tmp / f"r_{rt}.png")], rt)[0])
        res["refine_one_shot_wall_s"] = {k: summary(v) for k, v in refines.items()}
    res["load_after"] = os.getloadavg()
    return emit_json(res, args.output)


if __name__ == "__main__":
    sys.exit(main())
