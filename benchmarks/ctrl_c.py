"""Ctrl-C at random moments of ``covidct analyze``: does every run stop cleanly?

Writes a small synthetic DICOM study (the test suite's 16-slice phantom), then runs ``covidct analyze``
on it N times, sending SIGINT to the whole process group (as a terminal's Ctrl-C does) after a random
delay in [LO, HI] seconds. A run is clean when it exits 130 with the single line
"covidct: interrupted" (SIGTERM: exit 143, "covidct: terminated") and leaves no output, or finished first (exit 0, complete output). A run that
has not ended 40 s after the signal counts as a hang (its processes are killed). ``--batch`` runs three
copies of the study with ``--workers 2`` instead.

Usage: python benchmarks/ctrl_c.py [--runs 40] [--lo 0.5] [--hi 2.0] [--batch] [--seed 0] [--signal INT|TERM]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def make_study(root: Path, batch: bool) -> Path:
    from covidct.phantom import make_phantom, write_phantom

    ph = make_phantom(seed=6, lesion_burden=0.15, shape=(16, 128, 128), spacing=(6.0, 2.6, 2.6))
    folder = write_phantom(ph, root / "study", fmt="dicom")
    if not batch:
        return folder
    for name in "abc":
        shutil.copytree(folder, root / "studies" / name)
    return root / "studies"


def one_run(study: Path, out: Path, delay: float, batch: bool, sig: signal.Signals = signal.SIGINT) -> str:
    cmd = [sys.executable, "-m", "covidct", "analyze", str(study), "-o", str(out)] + (["--workers", "2"] if batch else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay)
    os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "hang"
    if proc.returncode == 0:
        return "finished first"
    expected = (130, "covidct: interrupted") if sig == signal.SIGINT else (143, "covidct: terminated")
    if (proc.returncode, err.strip()) == expected:
        leftovers = [p for p in out.rglob("*") if p.is_file() and p.name != "report.json"] if out.exists() else []
        done = {p.parent for p in out.rglob("report.json")} if out.exists() else set()
        partial = [p for p in leftovers if p.parent not in done]
        return "clean" if not partial else "left partial output"
    return f"exit {proc.returncode}: {err.strip().splitlines()[-1][:80] if err.strip() else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--lo", type=float, default=0.5)
    ap.add_argument("--hi", type=float, default=2.0)
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", choices=["INT", "TERM"], default="INT", help="INT (Ctrl-C) or TERM (kill, timeout)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    outcomes: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(Path(tmp), args.batch)
        for i in range(args.runs):
            delay = rng.uniform(args.lo, args.hi)
            out = Path(tmp) / "out"
            shutil.rmtree(out, ignore_errors=True)
            outcome = one_run(study, out, delay, args.batch, getattr(signal, f"SIG{args.signal}"))
            outcomes[outcome] += 1
            print(f"{i + 1:3d}  SIG{args.signal} at {delay:5.2f} s: {outcome}", flush=True)
    print(f"{'batch' if args.batch else 'single study'}, SIG{args.signal}, {args.runs} runs, delay {args.lo}-{args.hi} s: "
          + ", ".join(f"{n} {k}" for k, n in outcomes.most_common()))


if __name__ == "__main__":
    main()
