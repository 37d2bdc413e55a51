"""The service's jobs: an on-disk store, a bounded queue and worker threads running ``analyze``.

Layout under the data dir::

    jobs/<id>/job.json          status, stage, error, revision... (replaced atomically)
    jobs/<id>/input/            the upload, under names chosen here (never the client's)
    jobs/<id>/result/           the analyze outputs (report.json, report.html, masks, DICOM SEG)
    jobs/<id>/cache/            canonical CT (ct.npy + ct.pkl) and masks (*.npy) for the viewer
    jobs/<id>/revisions/NNN/    click corrections (see covidct.service.viewer)
    incoming/                   uploads being checked (emptied at start-up)

Jobs survive a restart: queued and running jobs are queued again when the store is opened.
Analyses run in threads of the server process (numpy/torch release the GIL), at most
``workers`` at a time, so memory is bounded by that many volumes at once.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from covidct.errors import CovidCTError, UnreadableInput
from covidct.io.archive import ZipLimits
from covidct.service.safety import valid_job_id
from covidct.volume import CT

log = logging.getLogger("covidct.service")

STAGES = ("unpack", "load", "lungs", "lesions", "severity", "outputs")
STATUSES = ("queued", "running", "done", "failed")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temp file and os.replace: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class JobNotFound(KeyError):
    """No job with this id (or a malformed id)."""


class QueueFull(Exception):
    """The bounded queue holds ``max_queue`` jobs already."""


class JobStore:
    """Jobs on disk under ``data_dir/jobs``; one lock per job for read-modify-write updates."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.jobs_dir = self.data_dir / "jobs"
        self.incoming = self.data_dir / "incoming"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # uploads that were being checked when the server stopped are incomplete: drop them
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    def lock(self, job_id: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(job_id, threading.RLock())

    def folder(self, job_id: str) -> Path:
        """The job's folder; JobNotFound for a malformed or unknown id (checked before any path use)."""
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        folder = self.jobs_dir / job_id
        if not (folder / "job.json").is_file():
            raise JobNotFound(job_id)
        return folder

    def create(self, job_id: str, staged_input: Path, info: dict) -> dict:
        """Move a checked upload (a folder) into a new job folder and write its job.json (queued)."""
        folder = self.jobs_dir / job_id
        folder.mkdir()
        os.replace(staged_input, folder / "input")
        job = {
            "id": job_id,
            "status": "queued",
            "stage": None,
            "error": None,
            "created": _now(),
            "updated": _now(),
            "revision": 0,
            "revisions": [],
            "summary": None,
            "files": [],
            **info,
        }
        write_json_atomic(folder / "job.json", job)
        return job

    def read(self, job_id: str) -> dict:
        folder = self.folder(job_id)
        return json.loads((folder / "job.json").read_text())

    def update(self, job_id: str, **fields) -> dict:
        with self.lock(job_id):
            job = self.read(job_id)
            job.update(fields, updated=_now())
            write_json_atomic(self.folder(job_id) / "job.json", job)
            return job

    def all_jobs(self) -> list[dict]:
        out = []
        for p in self.jobs_dir.iterdir():
            try:
                out.append(json.loads((p / "job.json").read_text()))
            except (OSError, ValueError):
                continue  # a folder without (readable) job.json is not a job
        return sorted(out, key=lambda j: j.get("created", ""))


# --- running one job ------------------------------------------------------------------------------


def unpack_zip(zip_path: Path, dest: Path, shown: str, limits: ZipLimits | None = None) -> Path:
    """Extract an uploaded zip with covidct.io's archive rules (checked again before extracting, real bytes
    counted); returns what to load.

    The DICOM files stay on disk (a DICOM SEG references them). A zip of one folder gives that
    folder; a zip holding a single NIfTI gives that file.
    """
    from covidct.io.archive import open_zip, safe_extract

    dest.mkdir(parents=True, exist_ok=True)
    with open_zip(zip_path, shown, limits) as zf:
        safe_extract(zf, dest.resolve(), shown, limits)
    entries = [p for p in dest.iterdir() if p.name != "__MACOSX"]
    niftis = [p for p in dest.rglob("*") if p.name.lower().endswith((".nii", ".nii.gz"))]
    dicoms = [p for p in dest.rglob("*") if p.is_file() and not p.name.lower().endswith((".nii", ".nii.gz"))]
    if len(niftis) == 1 and not dicoms:
        return niftis[0]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def source_of(folder: Path) -> Path:
    """What to load from a job's input/ folder."""
    inp = folder / "input"
    if (inp / "series").is_dir():
        return inp / "series"
    files = [p for p in inp.iterdir() if p.is_file()]
    if len(files) != 1:
        raise UnreadableInput("the job's input folder is incomplete")
    return files[0]


def save_ct_cache(ct: CT, cache: Path) -> None:
    """The canonical CT for the viewer: ct.npy (int16 HU or uint8 grey, memory-mapped later) + ct.pkl."""
    cache.mkdir(parents=True, exist_ok=True)
    a = ct.array
    if ct.is_hu and a.size and a.min() >= -32768 and a.max() <= 32767:
        arr = np.rint(a).astype(np.int16)
    elif not ct.is_hu and a.size and a.min() >= 0 and a.max() <= 255:
        arr = np.rint(a).astype(np.uint8)
    else:
        arr = a.astype(np.float32)
    tmp = cache / f".ct.{uuid.uuid4().hex[:8]}.npy"
    np.save(tmp, arr)
    os.replace(tmp, cache / "ct.npy")
    # the geometry and provenance without the voxels; written and read only by this service
    geom = replace(ct, array=np.zeros((1, 1, 1), np.float32))
    geom.meta = {k: v for k, v in ct.meta.items() if not k.startswith("_")}
    tmp = cache / f".ct.{uuid.uuid4().hex[:8]}.pkl"
    tmp.write_bytes(pickle.dumps(geom))
    os.replace(tmp, cache / "ct.pkl")


def load_ct_cache(cache: Path) -> CT:
    """The cached canonical CT, its voxels memory-mapped (slices are read on demand)."""
    geom: CT = pickle.loads((cache / "ct.pkl").read_bytes())
    arr = np.load(cache / "ct.npy", mmap_mode="r")
    geom.array = arr  # bypasses __post_init__ on purpose: the shape was checked when it was cached
    return geom


def save_mask(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npy")
    np.save(tmp, np.ascontiguousarray(arr, dtype=np.uint8))
    os.replace(tmp, path)


def _one_line(exc: BaseException, hide: list[tuple[str, str]]) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    for path, shown in hide:  # server paths never reach the client: name the upload instead
        msg = msg.replace(path, shown)
    return msg


def run_job(store: JobStore, job_id: str, analyzer_factory: Callable[[], object],
            zip_limits: ZipLimits | None = None) -> dict:
    """Analyse one job: unpack (zip) → load → lungs → lesions → severity → outputs; returns job.json."""
    folder = store.folder(job_id)
    job = store.update(job_id, status="running", stage="load", error=None, started=_now())
    shown = job.get("filename") or "upload"
    hide = [(str(folder / "input" / "unpacked"), shown), (str(folder / "input"), shown), (str(folder), shown)]
    t0 = time.perf_counter()
    try:
        src = source_of(folder)
        if job.get("input_kind") == "zip":
            store.update(job_id, stage="unpack")
            unpacked = folder / "input" / "unpacked"
            shutil.rmtree(unpacked, ignore_errors=True)  # a half extraction from before a restart
            src = unpack_zip(src, unpacked, shown, zip_limits)
            store.update(job_id, stage="load")
        from covidct.io import load_ct

        t_load = time.perf_counter()
        ct = load_ct(src)
        ct.meta["_load_seconds"] = time.perf_counter() - t_load
        save_ct_cache(ct, folder / "cache")
        analyzer = analyzer_factory()
        result = folder / "result"
        shutil.rmtree(result, ignore_errors=True)
        analysis = analyzer(ct, result, progress=lambda s: store.update(job_id, stage=s), keep_probability=True)
        if analysis.ct is not ct:  # a display-range volume analysed as approximate HU: the viewer shows what was read
            save_ct_cache(analysis.ct, folder / "cache")
        save_mask(analysis.lungs, folder / "cache" / "lungs.npy")
        save_mask(analysis.lesions, folder / "cache" / "lesions.npy")
        prob = getattr(analysis, "lesion_probability", None)  # uint8 p x 255; None when no lesion model ran
        if prob is not None:
            save_mask(prob, folder / "cache" / "lesion_prob.npy")  # the viewer's heatmap layer
        rep = analysis.report
        return store.update(
            job_id,
            status="done",
            stage=None,
            finished=_now(),
            seconds=round(time.perf_counter() - t0, 3),
            files=sorted(p.name for p in result.iterdir() if p.is_file()),
            summary=summary_of(rep),
        )
    except CovidCTError as exc:
        return store.update(job_id, status="failed", error=_one_line(exc, hide), finished=_now())
    except Exception as exc:  # a bug: keep the traceback in the server log, one line for the client
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return store.update(
            job_id, status="failed", error=f"internal error: {exc.__class__.__name__}: {_one_line(exc, hide)}", finished=_now()
        )


def summary_of(report: dict) -> dict:
    """The few figures a job list shows."""
    return {
        "mode": report.get("mode"),
        "diagnosis": report.get("diagnosis", {}).get("label"),
        "involvement_total": (report.get("involvement_percent") or {}).get("total"),
        "severity": (report.get("severity") or {}).get("score"),
    }


class JobRunner:
    """A bounded FIFO of job ids and ``workers`` threads that run them."""

    def __init__(
        self, store: JobStore, *, workers: int = 1, max_queue: int = 32, analyzer_factory: Callable[[], object] | None = None,
        zip_limits: ZipLimits | None = None,
    ) -> None:
        if analyzer_factory is None:
            from covidct.pipeline import shared_analyzer

            analyzer_factory = shared_analyzer
        self.store = store
        self.workers = max(int(workers), 0)
        self.max_queue = max(int(max_queue), 1)
        self.analyzer_factory = analyzer_factory
        self.zip_limits = zip_limits
        self._queue: deque[str] = deque()
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stop = False
        self.running = 0

    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def submit(self, job_id: str, *, force: bool = False) -> None:
        """Queue a job; QueueFull when ``max_queue`` are waiting (``force`` for re-queueing at start-up)."""
        with self._cv:
            if not force and len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} jobs are waiting (limit {self.max_queue}); try again later")
            self._queue.append(job_id)
            self._cv.notify()

    def reserve(self) -> None:
        """Raise QueueFull now, before an upload is stored, when no place is left."""
        if self.pending() >= self.max_queue:
            raise QueueFull(f"{self.pending()} jobs are waiting (limit {self.max_queue}); try again later")

    def requeue_unfinished(self) -> list[str]:
        """After a restart: running jobs go back to queued, and every queued job is queued again."""
        ids = []
        for job in self.store.all_jobs():
            if job.get("status") in ("queued", "running"):
                self.store.update(job["id"], status="queued", stage=None)
                self.submit(job["id"], force=True)
                ids.append(job["id"])
        return ids

    def start(self) -> None:
        self._stop = False
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"covidct-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; a running analysis finishes (or is re-queued at the next start)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job_id = self._queue.popleft()
                self.running += 1
            try:
                run_job(self.store, job_id, self.analyzer_factory, self.zip_limits)
            except Exception:  # the store itself failed (disk full...): log, keep serving
                log.error("job %s could not be run:\n%s", job_id, traceback.format_exc())
            finally:
                with self._cv:
                    self.running -= 1
