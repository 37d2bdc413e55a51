"""``covidct watch``: poll a PACS for new CT studies, analyse each once, push the results back.

State (a folder, by default ``OUTDIR/.covidct-watch``), every write atomic (temp file + rename / link):

* ``watch.json``: the persisted watermark (a StudyDate, ``YYYYMMDD``) and the last poll's time;
* ``done/<StudyInstanceUID>.json`` and ``failed/<StudyInstanceUID>.json``: one row per settled study;
* ``claims/<StudyInstanceUID>.json``: who is analysing a study now (host, pid, process start time).

What guarantees what:

* **Nothing skipped.** Each poll asks (QIDO-RS) for every study with a CT series and StudyDate on or after the
  watermark minus ``lookback_days``; every one that is neither done nor failed nor claimed is claimed and
  analysed. The watermark only advances after a poll that left nothing unclaimed, so a restart (even after
  SIGKILL) sees every study an earlier run had not settled. DICOMweb has no "received since" query, so the
  watermark is a StudyDate: a study that reaches the PACS more than ``lookback_days`` after its StudyDate
  (older than the watermark) is not seen; raise ``--lookback-days`` or start with ``--since`` for back-loads.
* **Nothing analysed twice by watchers sharing a state folder** (one machine, or several on a shared
  filesystem with atomic hard links: local disks, NFSv3+): a claim is created with ``link()``, which fails
  if the file exists, so exactly one watcher gets each study. The workers of a ``--workers`` pool or a
  ``--dask`` cluster only run what their watcher claimed.
* **A killed watcher's studies are picked up again**: its claims name its host, pid and process start time;
  a watcher on the same host takes over a claim whose process is gone, others after ``claim_timeout``
  seconds. Takeover renames the old claim first, so only one watcher wins it.
* **No duplicates in the PACS**, even across watchers that share nothing: before analysing, a watcher asks the
  study for a covidct SR and settles it as done if one is there; and results carry stable UIDs, so a study
  pushed twice (a race, or a kill between push and the done record) is stored once.
* **Where double work remains possible**: a watcher killed while a ``--dask`` cluster runs one of its studies
  (the cluster finishes it; the restarted watcher, seeing the claim's process gone, starts it again). Pool
  workers die with their watcher. Either way the PACS still gets one copy (stable UIDs).
* **A PACS outage does not stop a running watcher**: a failed poll is logged and tried again at the next interval
  (the first poll failing, e.g. wrong URL or credentials, stops it with a one-line error).
* **Failures are isolated**: a study that fails is recorded in ``failed/`` with its one-line error and not
  retried (``--retry-failed`` retries them); the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from glob import escape as glob_escape
from pathlib import Path

from covidct.errors import PacsError
from covidct.pacs.client import PacsSettings, connect, pacs_errors
from covidct.pacs.study import process_study
from covidct.pacs.transfer import UID_PATTERN


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, Linux), to tell a reused pid from the original."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class WatchState:
    """The state folder (see the module docstring)."""

    def __init__(self, root: Path, claim_timeout: float = 7200.0) -> None:
        self.root = Path(root)
        self.claim_timeout = claim_timeout
        for sub in ("claims", "done", "failed"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}
        # pulled studies go here, one folder per watcher process, so a killed watcher's can be found again
        self.pulls = self.root / "pulls" / f"{self.owner['host']}.{self.owner['pid']}.{self.owner['started']}"
        self._remove_dead_pulls()

    def _remove_dead_pulls(self) -> None:
        import shutil

        for folder in (self.root / "pulls").glob(f"{glob_escape(self.owner['host'])}.*"):
            pid, _, started = folder.name[len(self.owner["host"]) + 1:].partition(".")
            if pid.isdigit() and not _alive(int(pid), None if started in ("", "None") else started):
                shutil.rmtree(folder, ignore_errors=True)

    def settled(self, study: str, retry_failed: bool = False) -> bool:
        return (self.root / "done" / f"{study}.json").exists() or (
            not retry_failed and (self.root / "failed" / f"{study}.json").exists())

    def _claim_path(self, study: str) -> Path:
        return self.root / "claims" / f"{study}.json"

    def claim(self, study: str) -> bool:
        """Atomically claim ``study`` for this process; False when another live watcher holds it."""
        path = self._claim_path(study)
        tmp = path.with_name(f".{study}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps({**self.owner, "claimed": time.time()}))
        try:
            for _ in range(2):
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    if not self._take_over_if_stale(path):
                        return False
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over_if_stale(self, path: Path) -> bool:
        try:
            holder = json.loads(path.read_text())
        except FileNotFoundError:
            return True  # released meanwhile: try again
        except (OSError, ValueError):
            holder = {}
        mine = holder.get("host") == self.owner["host"]
        if mine and holder.get("pid") == self.owner["pid"] and holder.get("started") == self.owner["started"]:
            return False  # this very process holds it
        stale = (mine and not _alive(int(holder.get("pid", 0)), holder.get("started"))) or (
            time.time() - float(holder.get("claimed", 0)) > self.claim_timeout)
        if not stale:
            return False
        try:  # only one of several watchers taking over succeeds in moving the old claim away
            os.replace(path, path.with_name(f".{path.stem}.stale-{uuid.uuid4().hex[:8]}"))
        except FileNotFoundError:
            pass
        return True

    def release(self, study: str) -> None:
        self._claim_path(study).unlink(missing_ok=True)

    def record(self, row: dict) -> None:
        """Settle a study: done/ or failed/ (atomic), then drop its claim."""
        folder = "failed" if row["status"] == "failed" else "done"
        _write_json(self.root / folder / f"{row['study']}.json", {**row, "finished": datetime.now(UTC).isoformat()})
        if folder == "done":
            (self.root / "failed" / f"{row['study']}.json").unlink(missing_ok=True)
        self.release(row["study"])

    def load(self) -> dict:
        try:
            return json.loads((self.root / "watch.json").read_text())
        except (OSError, ValueError):
            return {}

    def save(self, data: dict) -> None:
        _write_json(self.root / "watch.json", data)


def poll(client, settings: PacsSettings, since: str) -> list[str]:
    """StudyInstanceUIDs of the studies with a CT series and StudyDate >= ``since`` (QIDO-RS).

    One unpaged query: Orthanc 1.10 ignores ``offset`` without ``limit`` and returns nothing past the first page
    with both, so dicomweb-client's paging looped forever on it. The StudyDate window keeps the answer small."""
    with pacs_errors(settings, "searching for CT studies"):
        found = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT", "StudyDate": f"{since}-"},
                                          fields=["StudyInstanceUID"])
    uids = [str((s.get("0020000D", {}).get("Value") or [""])[0]) for s in found]
    return sorted(u for u in uids if UID_PATTERN.match(u))


class _Inline:
    """One study at a time in this process (``--workers 1``)."""

    def submit(self, fn: Callable, *args, **kwargs):
        from concurrent.futures import Future

        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut

    def wait(self, futures: list, timeout: float | None) -> list:
        return [f for f in futures if f.done()]

    def shutdown(self) -> None:
        pass


def _worker_start(parent: int) -> None:
    """In a pool worker: stop signals are the watcher's to handle, and the worker dies with the watcher
    (SIGKILL included), so no orphan finishes a study that the restarted watcher takes over again."""
    import ctypes
    import signal

    from covidct.interrupts import leave_stops_to_the_parent

    leave_stops_to_the_parent()
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


class _Pool:
    """``--workers N``: spawned processes, models loaded once per process."""

    def __init__(self, workers: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_worker_start, initargs=(os.getpid(),))

    def submit(self, fn: Callable, *args, **kwargs):
        return self.pool.submit(fn, *args, **kwargs)

    def wait(self, futures: list, timeout: float | None) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)[0]) if futures else []

    def shutdown(self) -> None:
        for proc in list(getattr(self.pool, "_processes", {}).values()):  # stop studies in progress now
            proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Dask:
    """``--dask ADDRESS``: an existing Dask cluster."""

    def __init__(self, address: str) -> None:
        from covidct.errors import CovidCTError

        try:
            from dask.distributed import Client
        except ImportError as exc:
            raise CovidCTError("--dask needs dask.distributed: pip install 'dask[distributed]'") from exc
        try:
            self.client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise CovidCTError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc

    def submit(self, fn: Callable, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def wait(self, futures: list, timeout: float | None) -> list:
        from dask.distributed import wait

        if not futures:
            return []
        try:
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return [f for f in futures if f.done()]

    def shutdown(self) -> None:
        self.client.close()


def _result(fut, study: str) -> dict:
    try:
        return fut.result()
    except Exception as exc:  # a worker died or could not run the task: that study failed, the rest go on
        return {"study": study, "status": "failed", "error": f"worker error: {type(exc).__name__}: {exc}",
                "seconds": 0.0, "pushed": []}


def watch(settings: PacsSettings, outdir: Path, *, state_dir: Path | None = None, interval: float = 30.0,
          once: bool = False, workers: int = 1, dask_address: str | None = None, push: bool = True,
          since: str | None = None, lookback_days: int = 2, retry_failed: bool = False,
          claim_timeout: float = 7200.0, model_args: dict | None = None, html: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Poll and process until stopped (Ctrl-C / SIGTERM raise KeyboardInterrupt here) or, with ``once``, until
    nothing is left to do. Returns counts of done / failed / skipped in this run."""
    outdir = Path(outdir)
    state_root = Path(state_dir) if state_dir else outdir / ".covidct-watch"
    new_folders = [p for p in dict.fromkeys((outdir, state_root)) if not p.exists()]
    state = WatchState(state_root, claim_timeout=claim_timeout)
    saved = state.load()
    watermark = since or saved.get("watermark") or datetime.now(UTC).strftime("%Y%m%d")
    state.save({**saved, "watermark": watermark})
    client = connect(settings)
    executor = _Dask(dask_address) if dask_address else (_Pool(workers) if workers > 1 else _Inline())
    capacity = max(1, workers) * 2 if not dask_address else 64
    running: dict = {}  # future -> study
    polled_once = False
    counts = {"done": 0, "failed": 0, "skipped": 0}
    log(f"watching {settings.url} for CT studies from StudyDate {watermark} (minus {lookback_days} day(s)); "
        f"state in {state.root}")
    try:
        while True:
            started = datetime.now(UTC).strftime("%Y%m%d")
            query_from = (datetime.strptime(watermark, "%Y%m%d") - timedelta(days=lookback_days)).strftime("%Y%m%d")
            left_unclaimed = 0
            try:
                found = poll(client, settings, query_from)
                polled_once = True
            except PacsError as exc:
                if once or not polled_once:
                    if not polled_once:  # nothing was done: leave no folder behind
                        for folder in new_folders:
                            shutil.rmtree(folder, ignore_errors=True)
                    raise  # wrong URL or credentials: say so now rather than retry forever
                log(f"poll failed, trying again in {interval:g} s: {exc}")  # an outage: wait it out
                found, left_unclaimed = [], 1
            for study in found:
                if state.settled(study, retry_failed) or study in running.values():
                    continue
                if len(running) >= capacity:
                    left_unclaimed += 1
                    continue
                if not state.claim(study):
                    continue  # another watcher has it
                try:  # inline, the study runs here and now: a stop in it must give the study back too
                    fut = executor.submit(process_study, settings, study, outdir / study, push_results=push,
                                          model_args=model_args, html=html, pull_parent=state.pulls)
                except BaseException:
                    _give_back(state, study, outdir)
                    raise
                running[fut] = study
            if left_unclaimed == 0 and started > watermark:
                watermark = started
            state.save({"watermark": watermark, "last_poll": datetime.now(UTC).isoformat()})
            finished = executor.wait(list(running), timeout=None if once else interval)
            for fut in finished:
                row = _result(fut, running.pop(fut))
                state.record(row)
                kind = "skipped" if row["status"].startswith("skipped") else row["status"]
                counts[kind] += 1
                what = {"done": f"done in {row['seconds']:.1f} s, stored {len(row['pushed'])} result(s)",
                        "failed": f"FAILED: {row['error']}", "skipped": "covidct results already in the PACS"}[kind]
                log(f"{row['study']}: {what}")
            if once and not running and left_unclaimed == 0 and not finished:
                return counts
            if not once and not running and not finished:
                time.sleep(interval)
    finally:  # Ctrl-C, SIGTERM or an error: stop the work in progress and give its studies back
        executor.shutdown()
        for fut, study in running.items():
            if fut.done():
                state.record(_result(fut, study))
            else:
                _give_back(state, study, outdir)


def _give_back(state: WatchState, study: str, outdir: Path) -> None:
    """A study stopped half-way: its claim released and its half-written outputs removed."""
    from covidct.pipeline import remove_staging_folders

    state.release(study)
    remove_staging_folders(outdir / study)
