"""PACS integration against a private local Orthanc (DICOMweb): round-trip time and the watch queue.

1. ``roundtrip``: COVID-CT-MD P001 (148 slices) stored in the PACS with STOW-RS, then, alternating run by
   run, whole-process wall time of ``covidct analyze P001 -o ...`` (files) and of ``covidct analyze --pacs URL
   --study UID -o ... --push`` (pull with WADO-RS, analyse, write the SR, store SEG + SR with STOW-RS).
   Skipped (said so) when the data is absent.
2. ``watch``: N phantom studies queued in the PACS; ``covidct watch`` is SIGKILLed once a third of them are
   done and restarted with ``--once``; then the state and the PACS are checked: N done, each study holding
   exactly one SEG and one SR instance, no study analysed twice (from the two runs' logs).

Usage: python benchmarks/pacs_roundtrip.py [--part roundtrip|watch|all] [--runs 3] [--studies 10]
                                           [--data /work/shared/data/covid-ct-md/P001] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from covidct.pacs.client import connect, settings_from  # noqa: E402
from covidct.pacs.orthanc import PrivateOrthanc, orthanc_missing  # noqa: E402
from covidct.pacs.transfer import list_series, upload_folder  # noqa: E402


def _env(orthanc: PrivateOrthanc) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "COVIDCT_PACS_USER": orthanc.user,
            "COVIDCT_PACS_PASSWORD": orthanc.password}


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return wall


def roundtrip(orthanc: PrivateOrthanc, data: Path, runs: int, work: Path) -> dict:
    env = _env(orthanc)
    settings = settings_from(orthanc.url, environ=env)
    t0 = time.perf_counter()
    study = upload_folder(settings, data)
    upload_s = time.perf_counter() - t0
    exe = [sys.executable, "-m", "covidct", "analyze"]
    _timed([*exe, str(data), "-o", str(work / "warm")], env)  # first run: page cache, .pyc files
    files, pacs = [], []
    for k in range(runs):
        files.append(_timed([*exe, str(data), "-o", str(work / f"file{k}")], env))
        pacs.append(_timed([*exe, "--pacs", orthanc.url, "--study", study, "-o", str(work / f"pacs{k}"), "--push"], env))
    client = connect(settings)
    found = {s["modality"]: s["instances"] for s in list_series(client, settings, study)}
    diffs = [p - f for p, f in zip(pacs, files, strict=True)]
    stages = {name: [json.loads((work / f"{name}{k}" / "report.json").read_text())["timings_s"] for k in range(runs)]
              for name in ("file", "pacs")}
    return {"pacs_steps_in_process": pacs_steps(settings, study, work / f"pacs{runs - 1}", runs),
            "report_timings": stages, "study": study, "upload_s": round(upload_s, 2), "file_s": [round(x, 2) for x in files],
            "pacs_s": [round(x, 2) for x in pacs], "median_file_s": round(statistics.median(files), 2),
            "median_pacs_s": round(statistics.median(pacs), 2), "median_paired_diff_s": round(statistics.median(diffs), 2),
            "series_in_pacs_after_all_runs": found}


def pacs_steps(settings, study: str, analysed: Path, runs: int) -> dict:
    """The steps a PACS round trip adds to a file analysis, each timed alone in this process (median of
    ``runs``): the WADO-RS download, the SEG's stable UIDs + the SR, the STOW-RS push (a re-push: the same UIDs)."""
    import shutil

    from covidct.pacs.study import finish_results
    from covidct.pacs.transfer import ct_series, download_series, push

    client = connect(settings)
    wanted = ct_series(list_series(client, settings, study), study)
    times: dict[str, list[float]] = {"download": [], "seg_uids_and_sr": [], "push_seg_and_sr": []}
    for k in range(runs):
        folder = analysed.parent / f"pull{k}"
        t0 = time.perf_counter()
        download_series(settings, study, wanted, folder, client)
        times["download"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        seg, sr = finish_results(analysed, folder)
        times["seg_uids_and_sr"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        push(client, settings, study, [seg, sr])
        times["push_seg_and_sr"].append(time.perf_counter() - t0)
        shutil.rmtree(folder)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def watch_queue(orthanc: PrivateOrthanc, n: int, work: Path) -> dict:
    from covidct.phantom import make_phantom, write_phantom

    env = _env(orthanc)
    settings = settings_from(orthanc.url, environ=env)
    studies = [upload_folder(settings, write_phantom(make_phantom(shape=(16, 96, 96), seed=i), work / f"ph{i}",
                                                     fmt="dicom")) for i in range(n)]
    out, state = work / "watch", work / "watch" / ".covidct-watch"
    cmd = [sys.executable, "-m", "covidct", "watch", "--pacs", orthanc.url, "-o", str(out), "--no-html"]
    t0 = time.perf_counter()
    first = subprocess.Popen([*cmd, "--interval", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    while first.poll() is None and len(list((state / "done").glob("*.json"))) < max(1, n // 3):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    log1, _ = first.communicate()
    done_at_kill = len(list((state / "done").glob("*.json")))
    second = subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True)
    total_s = time.perf_counter() - t0
    log = log1 + second.stdout
    analysed = [ln.split()[2].rstrip(":") for ln in log.splitlines() if ": done in " in ln]
    client = connect(settings)
    per_study = {}
    for s in studies:
        counts = {x["modality"]: x["instances"] for x in list_series(client, settings, s)}
        series = [x["modality"] for x in list_series(client, settings, s)]
        per_study[s] = {"SEG": counts.get("SEG", 0), "SR": counts.get("SR", 0), "series": len(series)}
    return {"studies": n, "done_when_killed": done_at_kill, "second_run_exit": second.returncode,
            "done": len(list((state / "done").glob("*.json"))), "failed": len(list((state / "failed").glob("*.json"))),
            "analysed_twice": sorted({s for s in analysed if analysed.count(s) > 1}),
            "skipped_as_already_in_pacs": log.count("already in the PACS") - log.count("0 already in the PACS"),
            "studies_with_exactly_one_seg_and_one_sr": sum(v["SEG"] == 1 and v["SR"] == 1 and v["series"] == 3
                                                         for v in per_study.values()),
            "duplicates_in_pacs": sum(max(0, v["SEG"] - 1) + max(0, v["SR"] - 1) for v in per_study.values()),
            "total_s": round(total_s, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("roundtrip", "watch", "all"), default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/covid-ct-md/P001"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if orthanc_missing():
        print(f"skipped: {orthanc_missing()}")
        return 0
    result: dict = {"machine": f"{platform.node()} {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="covidct_pacs_bench_") as tmp, PrivateOrthanc() as orthanc:
        work = Path(tmp)
        if args.part in ("roundtrip", "all"):
            if args.data.is_dir():
                result["roundtrip"] = roundtrip(orthanc, args.data, args.runs, work / "rt")
            else:
                print(f"roundtrip skipped: {args.data} not found")
        if args.part in ("watch", "all"):
            result["watch"] = watch_queue(orthanc, args.studies, work / "wq")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
