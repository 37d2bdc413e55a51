"""Load check of the web service: N concurrent uploads of a phantom on 127.0.0.1, all must finish.

Starts ``covidct serve`` in a subprocess on a free loopback port with a temporary data dir,
uploads the phantom N times at once from N threads, polls the jobs until they are done (bounded
by --timeout), and prints the time per job and the server's peak resident memory (VmHWM) as a
Markdown table row for docs/BENCHMARKS.md. Traffic goes to 127.0.0.1 only.

    python benchmarks/service_load.py [--jobs 8] [--workers 2] [--shape 48,192,192] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import date
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _upload(base: str, path: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{base}/api/jobs", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _peak_rss_mib(pid: int) -> float | None:
    """Peak resident set of the server process (and its children, none here), from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="concurrent analyses in the server")
    ap.add_argument("--shape", default="48,192,192", help="phantom shape z,y,x")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    from covidct.phantom import make_phantom, write_phantom

    with tempfile.TemporaryDirectory(prefix="covidct-load-") as tmp:
        tmp = Path(tmp)
        nifti = write_phantom(make_phantom(shape=shape, seed=0), tmp / "phantom", fmt="nifti")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "covidct", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(tmp / "data"), "--workers", str(args.workers), "--max-queue", str(max(args.jobs, 1))]
        env = dict(os.environ, COVIDCT_TOKEN="")
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            t0 = time.time()
            while True:
                try:
                    _get(f"{base}/api/health")
                    break
                except OSError:
                    if server.poll() is not None or time.time() - t0 > 60:
                        print("server did not start:", server.stderr.read().decode()[-2000:], file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            rss_idle = _peak_rss_mib(server.pid)
            results: dict[int, dict] = {}

            def one(i: int) -> None:
                t_start = time.time()
                try:
                    job = _upload(base, nifti)
                except OSError as e:
                    results[i] = {"status": f"upload failed: {e}"}
                    return
                t_up = time.time() - t_start
                while time.time() - t_start < args.timeout:
                    job = _get(f"{base}/api/jobs/{job['id']}")
                    if job["status"] in ("done", "failed"):
                        break
                    time.sleep(0.25)
                results[i] = {"status": job["status"], "error": job.get("error"), "upload_s": t_up,
                              "analysis_s": job.get("seconds"), "end_to_end_s": time.time() - t_start}

            t_all = time.time()
            threads = [threading.Thread(target=one, args=(i,)) for i in range(args.jobs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.timeout + 30)
            wall = time.time() - t_all
            peak = _peak_rss_mib(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()

    done = [r for r in results.values() if r["status"] == "done"]
    for i in sorted(results):
        r = results[i]
        print(f"job {i}: {r['status']}"
              + (f"  upload {r['upload_s']:.2f} s, analysis {r['analysis_s']:.2f} s, end-to-end {r['end_to_end_s']:.1f} s"
                 if r["status"] == "done" else f"  {r.get('error')}"))
    ana = [r["analysis_s"] for r in done]
    e2e = [r["end_to_end_s"] for r in done]
    med = statistics.median

    def fmt(xs: list[float]) -> str:
        return f"{med(xs):.1f} / {max(xs):.1f}" if xs else "—"

    print()
    print("| date | machine | uploads | workers | phantom (z,y,x) | finished | wall (s) | analysis per job, median / max (s) "
          "| upload to done, median / max (s) | server peak RSS (MiB), idle → load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {date.today()} | {platform.machine()}, {os.cpu_count()} cores | {args.jobs} | {args.workers} | "
          f"{'×'.join(map(str, shape))} | {len(done)}/{args.jobs} | {wall:.1f} | {fmt(ana)} | {fmt(e2e)} | "
          f"{rss_idle:.0f} → {peak:.0f} |" if rss_idle and peak else "| n/a |")
    return 0 if len(done) == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
