"""Wall-clock timeline of one ``covidct analyze`` process tree: what runs when, and how many cores are busy.

    python benchmarks/analyze_timeline.py [--scan DIR] [-o OUT.json] [--step 0.05] [--runs 1]

Runs ``covidct analyze SCAN -o TMP`` (default COVID-CT-MD P001; skips cleanly without it) in a child process
that traces, without changing what runs or when:
- the import of each heavy top-level package (numpy, scipy, onnxruntime, pydicom, highdicom, nibabel, ...), first
  import only, as a span;
- the pipeline's own steps (load, model loading, each network pass, the lung/lesion post-processing, measures,
  diagnosis, each output writer, the DICOM SEG in the forked scan process) as spans, per process and thread.
Functions are wrapped when their module is first imported (an import hook), so nothing is imported earlier than
it would be. Meanwhile this process samples the CPU time of every process of the tree from /proc every
``--step`` seconds. It prints the spans and, per 0.5 s, the cores in use; then the wall time with at most about
one core busy (< 1.25 cores), split by the innermost spans that were open then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench_io import p001_or_none  # noqa: E402  (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
TRACE_ENV = "COVIDCT_TIMELINE_FILE"
EPOCH_ENV = "COVIDCT_TIMELINE_EPOCH"

IMPORTS = {"numpy", "scipy", "onnxruntime", "pydicom", "highdicom", "nibabel", "skimage", "cv2", "matplotlib", "PIL",
           "typer", "rich", "jsonschema", "gdcm", "pylibjpeg", "SimpleITK", "torch", "monai", "jinja2", "yaml"}
TRACED = {  # module -> functions / Class.method to trace
    "covidct.commands.analyze": ["_analyze_one", "_print_summary"],
    "covidct.commands.scan_process": ["_scan_process_load", "_scan_process_prepare", "_scan_process_write_seg",
                                      "ScanProcess.load_beside"],
    "covidct.commands.scan_transfer": ["pack", "unpack"],
    "covidct.io": ["load_ct"],
    "covidct.io.writers": ["save_mask_nifti"],
    "covidct.models.runtime": ["load"],
    "covidct.pipeline.analyzer": ["shared_analyzer", "Analyzer.__init__", "Analyzer.__call__", "Analyzer._masks",
                                  "Analyzer._finish"],
    "covidct.pipeline.predict": ["ModelRunner.probabilities"],
    "covidct.pipeline.grid": ["working_grid", "upsample_labels"],
    "covidct.pipeline.lungs": ["segment_lungs", "remove_air_pockets", "clean_lung_mask", "keep_lung_components",
                               "split_left_right"],
    "covidct.pipeline.hu_rules": ["hu_lungs", "hu_lesions"],
    "covidct.pipeline.lesions": ["segment_lesions", "final_masks", "_absorb_lesions", "_plausible_effusion", "_drop_small"],
    "covidct.pipeline.measures": ["measure"],
    "covidct.pipeline.diagnosis": ["diagnose", "pattern_reading"],
    "covidct.pipeline.outputs": ["EarlyOutputs.start", "EarlyOutputs.discard", "write_outputs", "_move_into"],
    "covidct.report": ["slice_rows", "validate_report"],
    "covidct.report.html": ["images_section", "write_html_report"],
    "covidct.report.dicomseg": ["prepare_dicom_seg", "write_dicom_seg"],
    "covidct.report.heatmap": ["uncertainty"],
}


# --- in the traced process ----------------------------------------------------------------------------------


def _install_tracer() -> None:
    import functools
    import importlib.abc
    import importlib.machinery

    path, epoch = os.environ[TRACE_ENV], float(os.environ[EPOCH_ENV])
    depth = threading.local()

    def log(kind: str, name: str, t0: float, t1: float, level: int) -> None:
        rec = {"kind": kind, "name": name, "t0": round(t0 - epoch, 4), "t1": round(t1 - epoch, 4), "pid": os.getpid(),
               "thread": threading.current_thread().name, "depth": level}
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # one write per record: safe across a fork
        try:
            os.write(fd, (json.dumps(rec) + "\n").encode())
        finally:
            os.close(fd)

    def traced(name: str, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            level = getattr(depth, "n", 0)
            depth.n = level + 1
            t0 = time.time()
            try:
                return fn(*a, **k)
            finally:
                depth.n = level
                log("call", name, t0, time.time(), level)

        return wrapper

    def patch(module) -> None:
        for qual in TRACED.get(module.__name__, ()):
            owner, _, attr = qual.rpartition(".")
            obj = getattr(module, owner) if owner else module
            fn = obj.__dict__.get(attr) if owner else module.__dict__.get(attr)
            if callable(fn):
                setattr(obj, attr, traced(f"{module.__name__.removeprefix('covidct.')}.{qual}", fn))

    def wrap_loader(loader, top: bool) -> None:
        # the loader object itself is kept (packages read their data files through it); only its exec_module is wrapped
        inner = loader.exec_module

        def exec_module(module) -> None:
            t0 = time.time()
            try:
                inner(module)
            finally:
                if top:
                    log("import", module.__name__, t0, time.time(), getattr(depth, "n", 0))
            patch(module)

        loader.exec_module = exec_module

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, target_path=None, target=None):
            top = name in IMPORTS
            if not (top or name in TRACED):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, target_path)
            if spec is None or spec.loader is None:
                return None
            wrap_loader(spec.loader, top)
            return spec

    sys.meta_path.insert(0, Finder())


def _child(argv: list[str]) -> None:
    _install_tracer()
    sys.argv = ["covidct", *argv]
    from covidct.entry import run

    run()


# --- in the measuring process -------------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (this process's threads; not reaped children)
    except (OSError, IndexError, ValueError):
        return -1


def measure(scan: Path, step: float) -> dict:
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        epoch = time.time()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **{TRACE_ENV: str(trace), EPOCH_ENV: repr(epoch)})
        proc = subprocess.Popen([sys.executable, __file__, "--child", "analyze", str(scan), "-o", str(Path(tmp) / "out")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        samples: list[tuple[float, dict[int, int]]] = []
        while proc.poll() is None:
            samples.append((time.time() - epoch, {p: _cpu_ticks(p) for p in _tree(proc.pid)}))
            time.sleep(step)
        wall = time.time() - epoch
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"analyze failed ({proc.returncode}): {err.decode(errors='replace')[-1500:]}")
        spans = [json.loads(line) for line in trace.read_text().splitlines()]
    # cores busy per sampling interval: ticks gained by every process seen in both samples
    busy = []
    for (ta, a), (tb, b) in zip(samples, samples[1:], strict=False):
        d = sum(max(0, b[p] - a[p]) for p in b if p in a and a[p] >= 0 and b[p] >= 0)
        d += sum(b[p] for p in b if p not in a and b[p] > 0)  # a process born in the interval
        busy.append((ta, tb, d / hz / (tb - ta)))
    return {"scan": str(scan), "wall_s": round(wall, 3), "spans": spans, "busy": busy, "stdout": out.decode()[-400:]}


def summarise(res: dict, low: float = 1.25) -> dict:
    spans, busy = res["spans"], res["busy"]
    # per 0.5 s: mean cores busy
    bins = defaultdict(list)
    for ta, _tb, c in busy:
        bins[int(ta / 0.5)].append(c)
    profile = [(k * 0.5, round(sum(v) / len(v), 2)) for k, v in sorted(bins.items())]
    # low-concurrency wall time, attributed to the innermost open spans (deepest call, else the import)
    low_s: dict[str, float] = defaultdict(float)
    total_low = 0.0
    for ta, tb, c in busy:
        if c >= low:
            continue
        dt = tb - ta
        total_low += dt
        mid = (ta + tb) / 2
        open_ = [s for s in spans if s["t0"] <= mid < s["t1"]]
        if not open_:
            low_s["(no traced span: interpreter start, CLI parsing, exit)"] += dt
            continue
        # per process/thread the innermost span; the time goes to each such span equally
        inner: dict[tuple, dict] = {}
        for s in open_:
            key = (s["pid"], s["thread"])
            if key not in inner or (s["t0"], -s["t1"]) > (inner[key]["t0"], -inner[key]["t1"]):
                inner[key] = s
        for s in inner.values():
            low_s[f"{s['kind']}: {s['name']}"] += dt / len(inner)
    return {"wall_s": res["wall_s"], "cpu_s": round(sum(c * (tb - ta) for ta, tb, c in busy), 2),
            "low_concurrency_s": round(total_low, 2),
            "low_by_span": dict(sorted(((k, round(v, 2)) for k, v in low_s.items() if v >= 0.02), key=lambda kv: -kv[1])),
            "cores_per_half_second": profile}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=Path)
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("--step", type=float, default=0.05)
    args = ap.parse_args()
    scan = args.scan
    scan = p001_or_none(scan)
    if scan is None:
        return 0
    load_before = os.getloadavg()
    res = measure(scan, args.step)
    summary = summarise(res) | {"load_before": load_before, "load_after": os.getloadavg()}
    for s in sorted(res["spans"], key=lambda s: s["t0"]):
        if s["t1"] - s["t0"] >= 0.05:
            print(f"{s['t0']:7.2f} {s['t1']:7.2f} {s['t1'] - s['t0']:6.2f}  pid {s['pid']:>7} {s['thread'][:18]:18} "
                  f"{'  ' * s['depth']}{s['kind']}: {s['name']}")
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.write_text(json.dumps(res | {"summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
