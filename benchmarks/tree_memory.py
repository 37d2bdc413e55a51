"""Peak memory of a command together with every process it starts (Linux /proc), sampled.

`covidct analyze` on one DICOM study forks a helper process (it reads the series and writes the DICOM
SEG), so the peak RSS of the largest single process understates what the machine must hold. This runs
the command and samples, every ``--interval`` seconds, the summed RSS and the summed PSS (shared pages
split between the processes sharing them, so fork's copy-on-write pages are not counted twice) of the
process and all its descendants, and prints the peaks and the most processes seen at once.

Usage: python benchmarks/tree_memory.py [--interval 0.02] -- COMMAND [ARG ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _kib(pid: int, file: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give a command after --")
    if not Path("/proc/self/smaps_rollup").exists():
        print("needs Linux /proc (smaps_rollup)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_rss = peak_pss = most = 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        rss = sum(_kib(p, "status", "VmRSS") for p in pids)
        pss = sum(_kib(p, "smaps_rollup", "Pss") for p in pids)
        peak_rss, peak_pss, most = max(peak_rss, rss), max(peak_pss, pss), max(most, len(pids))
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    print(f"exit {proc.returncode}, wall {wall:.2f} s (sampling included), up to {most} processes at once")
    print(f"peak summed RSS {peak_rss / 1024:.0f} MiB, peak summed PSS {peak_pss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
