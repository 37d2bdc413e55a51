"""Many studies at once: discovery, resume, failure isolation, worker processes or a Dask cluster.

Each study is analysed by :func:`covidct.pipeline.analyze` into its own output folder; a study whose
``report.json`` already exists is skipped (resume); a failing study is recorded and the others go on.
Models are loaded once per worker process (the pipeline keeps one :class:`Analyzer` per process).
"""

from __future__ import annotations

import csv
import gc
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from covidct.errors import CovidCTError, UnreadableInput

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VOLUME_EXTS = (".nii.gz", ".nii", ".zip", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")

SUMMARY_FIELDS = [
    "study", "input", "study_date", "status", "error", "diagnosis", "p_covid19", "p_pneumonia", "p_normal",
    "left_lung_ml", "right_lung_ml", "lesion_ml", "involvement_total_pct", "severity_score", "rsna_category",
    "co_rads", "mean_lung_hu", "laa950_pct", "lcta_affected_pct", "seconds", "outdir",
]  # fmt: skip


@dataclass
class Study:
    name: str
    path: Path


def expand_image_folders(inputs: Iterable[str | Path]) -> list[Path]:
    """Folders of slice images expand to their images (sorted); other folders (DICOM series) and files stay."""
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            imgs = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
            out.extend(imgs if imgs else [p])
        else:
            out.append(p)
    return out


def _is_volume_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and (n.endswith(VOLUME_EXTS) or p.suffix.lower() in IMAGE_EXTS)


def _looks_like_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _is_series_folder(folder: Path) -> bool:
    """A folder holding DICOM files itself (possibly in sub-folders of one series)."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return any(p.suffix.lower() == ".dcm" or _looks_like_dicom(p) for p in files[:50])


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "study"


def discover_studies(inputs: Iterable[str | Path]) -> list[Study]:
    """Expand inputs into studies: files and series folders are one study each; a folder of studies
    (sub-folders / volume files) contributes each entry."""
    studies: list[Study] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            studies.append(Study(_safe_name(p.name), p))  # reported as a failure later
            continue
        if p.is_file() or _is_series_folder(p):
            studies.append(Study(_study_name(p), p))
            continue
        entries = sorted(e for e in p.iterdir() if not e.name.startswith("."))
        children = [e for e in entries if e.is_dir() or _is_volume_file(e)]
        if not children:
            studies.append(Study(_study_name(p), p))  # let load_ct explain what is wrong
            continue
        studies.extend(Study(_study_name(e), e) for e in children)
    seen: dict[str, int] = {}
    for s in studies:  # unique output folder names
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}-{seen[s.name]}"
        else:
            seen[s.name] = 0
    return studies


def _study_name(p: Path) -> str:
    n = p.name
    for ext in (".nii.gz", *VOLUME_EXTS, *IMAGE_EXTS):
        if n.lower().endswith(ext):
            n = n[: -len(ext)]
            break
    return _safe_name(n)


def _summary_row(study: Study, outdir: Path, status: str, error: str = "", report: dict | None = None, seconds: float = 0.0) -> dict:
    row = dict.fromkeys(SUMMARY_FIELDS, "")
    row.update(study=study.name, input=str(study.path), status=status, error=error, outdir=str(outdir), seconds=f"{seconds:.2f}")
    if report:
        d = report.get("diagnosis", {})
        p = d.get("probabilities", {})
        row.update(
            study_date=report.get("input", {}).get("study_date") or "",
            diagnosis=d.get("label", ""),
            p_covid19=p.get("covid19", ""), p_pneumonia=p.get("pneumonia", ""), p_normal=p.get("normal", ""),
            left_lung_ml=report["lungs"].get("left_ml", ""), right_lung_ml=report["lungs"].get("right_ml", ""),
            lesion_ml=report["lesions"].get("total_ml", ""),
            involvement_total_pct=report["involvement_percent"].get("total", ""),
            severity_score=report["severity"].get("score", ""),
            rsna_category=(report.get("pattern") or {}).get("rsna_category", ""),
            co_rads=(report.get("pattern") or {}).get("co_rads", ""),
        )  # fmt: skip
        dens = (report.get("densitometry") or {}).get("total") or {}
        row.update(mean_lung_hu=dens.get("mean_hu", ""), laa950_pct=dens.get("laa950_percent", ""),
                   lcta_affected_pct=dens.get("affected_percent", ""))
    return row


def run_study(study: Study, outdir: Path, png: bool = False, html: bool = True, model_args: dict | None = None,
              heatmap: bool = False) -> dict:
    """Analyse one study into ``outdir`` (in whatever process runs this); returns its summary row."""
    import json

    from covidct import pipeline

    t0 = time.perf_counter()
    done = outdir / "report.json"
    if done.exists():
        try:
            return _summary_row(study, outdir, "skipped (done)", report=json.loads(done.read_text()))
        except (OSError, ValueError):
            pass  # unreadable old report: redo
    try:
        if not study.path.exists():
            raise UnreadableInput(f"{study.path}: no such file or folder")
        analyzer = pipeline.shared_analyzer(**(model_args or {}))
        res = pipeline.analyze(study.path, outdir, analyzer=analyzer, png=png, html=html, heatmap=heatmap)
        return _summary_row(study, outdir, "done", report=res.report, seconds=time.perf_counter() - t0)
    except CovidCTError as exc:
        return _summary_row(study, outdir, "failed", error=str(exc).splitlines()[0], seconds=time.perf_counter() - t0)
    except Exception as exc:  # isolate one study's bug from the batch
        return _summary_row(study, outdir, "failed", error=f"internal error: {type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)


def _run_star(args: tuple) -> dict:
    return run_study(*args)


def run_batch(
    studies: list[Study],
    outdir: Path,
    *,
    workers: int = 1,
    dask_address: str | None = None,
    png: bool = False,
    html: bool = True,
    model_args: dict | None = None,
    progress: Callable[[dict], None] | None = None,
    heatmap: bool = False,
) -> list[dict]:
    """Analyse every study into ``outdir/<study>/``, write ``outdir/summary.csv``; returns the rows."""
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = [(s, outdir / s.name, png, html, model_args, heatmap) for s in studies]
    rows: list[dict] = []

    def collect(row: dict) -> None:
        rows.append(row)
        if progress:
            progress(row)

    if dask_address:
        try:
            from dask.distributed import Client, as_completed
        except ImportError as exc:
            raise CovidCTError("--dask needs dask.distributed: pip install 'dask[distributed]'") from exc
        try:
            client = Client(dask_address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise CovidCTError(f"cannot reach the Dask scheduler at {dask_address}: {exc}") from exc
        try:
            futures = [client.submit(_run_star, j, pure=False) for j in jobs]
            for fut in as_completed(futures):
                collect(fut.result())
        finally:
            client.close()
    elif workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # clean workers: torch and fork do not mix well
        interrupted = False
        from covidct.interrupts import leave_stops_to_the_parent

        with ctx.Pool(processes=workers, initializer=leave_stops_to_the_parent) as pool:
            try:
                for row in pool.imap_unordered(_run_star, jobs):
                    collect(row)
            except KeyboardInterrupt:  # the pool's exit stops the workers
                interrupted = True
        if interrupted:
            from covidct.pipeline import remove_staging_folders

            for job in jobs:  # the stopped workers' half-written studies
                remove_staging_folders(job[1])
            # Raised afresh, the pool freed first: the traceback through the pool's frames (and its reference
            # cycles) kept its semaphores alive past the CLI's fast exit, and the resource tracker then printed
            # a "leaked semaphore objects" warning after "covidct: interrupted".
            del pool
            gc.collect()
            raise KeyboardInterrupt
    else:
        for j in jobs:
            collect(_run_star(j))
    order = {s.name: i for i, s in enumerate(studies)}
    rows.sort(key=lambda r: order.get(r["study"], 0))
    write_summary(rows, outdir / "summary.csv")
    return rows


def write_summary(rows: list[dict], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".summary-", suffix=".csv", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
