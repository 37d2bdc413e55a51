"""``covidct watch``: atomic claims (no Orthanc needed), and against a private Orthanc three studies (one
broken) with a SIGKILLed watcher restarted in the middle: every good study analysed and stored once, the
broken one recorded as failed, nothing duplicated in the PACS; SIGTERM stops an idle watcher cleanly."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from covidct.pacs.orthanc import PrivateOrthanc, orthanc_missing
from covidct.pacs.watch import WatchState

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _claim_all(root: str, studies: list[str], queue, go, finish) -> None:
    state = WatchState(Path(root))
    go.wait(60)
    queue.put([s for s in studies if state.claim(s)])
    finish.wait(60)  # a watcher holds its claims while it lives (a dead one's may be taken over)


def test_claims_are_exclusive_across_processes(tmp_path):
    studies = [f"1.2.3.{i}" for i in range(40)]
    ctx = mp.get_context("fork")
    queue, go, finish = ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), studies, queue, go, finish)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()  # all at once
    won = [queue.get(timeout=60) for _ in procs]
    finish.set()
    for p in procs:
        p.join(timeout=60)
    claimed = [s for w in won for s in w]
    assert sorted(claimed) == sorted(studies)  # each study claimed by exactly one process


def test_dead_owner_claim_is_taken_over_live_one_is_not(tmp_path):
    state = WatchState(tmp_path)
    assert state.claim("1.2.3") and not state.claim("1.2.3")  # held by this very process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim = tmp_path / "claims" / "1.2.3.json"
    claim.write_text(json.dumps({**state.owner, "pid": dead.pid, "started": "1", "claimed": time.time()}))
    assert state.claim("1.2.3")  # its owner is gone: taken over
    other = {**state.owner, "host": "elsewhere", "claimed": time.time()}
    claim.write_text(json.dumps(other))
    assert not state.claim("1.2.3")  # another host's fresh claim is respected
    claim.write_text(json.dumps({**other, "claimed": time.time() - 3 * state.claim_timeout}))
    assert state.claim("1.2.3")  # ...until it is older than the claim timeout
    state.record({"study": "1.2.3", "status": "done", "pushed": []})
    assert state.settled("1.2.3") and not claim.exists()


needs_orthanc = pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or "")


def _watch(orthanc, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "COVIDCT_PACS_USER": orthanc.user,
           "COVIDCT_PACS_PASSWORD": orthanc.password, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "covidct", "watch", "--pacs", orthanc.url, "-o", str(out),
                             "--no-html", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _broken_study(folder: Path) -> Path:
    """A CT series whose slices do not stack (one slice of another size): the loader refuses it."""
    from covidct.phantom import make_phantom, write_phantom

    series = write_phantom(make_phantom(shape=(4, 64, 64), seed=9), folder, fmt="dicom")
    first = sorted(series.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    small = ds.pixel_array[:32, :32].copy()
    ds.Rows = ds.Columns = 32
    ds.PixelData = small.tobytes()
    ds.save_as(first)
    return series


@needs_orthanc
def test_watch_restart_after_sigkill_no_loss_no_duplicates(tmp_path):
    from covidct.pacs.client import connect, settings_from
    from covidct.pacs.transfer import list_series, upload_folder
    from covidct.phantom import make_phantom, write_phantom

    with PrivateOrthanc() as orthanc:
        settings = settings_from(orthanc.url, environ={"COVIDCT_PACS_USER": orthanc.user,
                                                       "COVIDCT_PACS_PASSWORD": orthanc.password})
        good = [upload_folder(settings, write_phantom(make_phantom(shape=(12, 64, 64), seed=i), tmp_path / f"ph{i}",
                                                      fmt="dicom")) for i in range(2)]
        bad = upload_folder(settings, _broken_study(tmp_path / "bad"))
        out = tmp_path / "out"
        state = out / ".covidct-watch"

        first = _watch(orthanc, out, "--interval", "0.5")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((state / "done").glob("*.json")) and first.poll() is None:
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)  # killed mid-queue, without any chance to clean up
        first.communicate(timeout=30)
        settled_first = {p.stem for p in (state / "done").glob("*.json")} | {p.stem for p in (state / "failed").glob("*.json")}
        assert settled_first, "the first watcher settled nothing before it was killed"

        second = _watch(orthanc, out, "--once")
        stdout, stderr = second.communicate(timeout=300)
        assert second.returncode == 0, stderr[-2000:]
        done = {p.stem for p in (state / "done").glob("*.json")}
        failed = {p.stem: json.loads(p.read_text()) for p in (state / "failed").glob("*.json")}
        assert done == set(good) and set(failed) == {bad}
        assert "mixes slice sizes" in failed[bad]["error"] and "covidct_pacs_" not in failed[bad]["error"]
        assert not list((state / "claims").glob("*.json")) and not any((state / "pulls").rglob("*.dcm"))
        # the second run analysed only what the first had not settled
        analysed_again = [s for s in settled_first if f"{s}: done" in stdout or f"{s}: FAILED" in stdout]
        assert not analysed_again, stdout
        client = connect(settings)
        for study in good:
            modalities = sorted(s["modality"] for s in list_series(client, settings, study))
            counts = [s["instances"] for s in list_series(client, settings, study) if s["modality"] in ("SEG", "SR")]
            assert modalities == ["CT", "SEG", "SR"] and counts == [1, 1], (study, modalities, counts)
            assert (out / study / "report.sr.dcm").is_file()
        assert sorted(s["modality"] for s in list_series(client, settings, bad)) == ["CT"]

        # an idle watcher rides out a PACS outage and stops cleanly on SIGTERM: exit 143, one line, state kept
        started = datetime.now(UTC).isoformat()
        idle = _watch(orthanc, out, "--interval", "0.5")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and json.loads((state / "watch.json").read_text()).get("last_poll", "") < started:
            time.sleep(0.2)  # until it has polled once
        # the PACS goes away: the watcher logs the failed polls and keeps going
        orthanc.stop(remove=False)
        time.sleep(3)
        assert idle.poll() is None
        idle.send_signal(signal.SIGTERM)
        out_text, err = idle.communicate(timeout=60)
        assert idle.returncode == 143 and "covidct: terminated" in err and "Traceback" not in err, err
        assert "poll failed, trying again" in out_text and "cannot reach" in out_text
        assert (state / "watch.json").is_file()


def test_pool_and_dask_executors_run_and_wait():
    """The ``--workers`` and ``--dask`` adapters the watcher hands studies to (a trivial task here)."""
    from covidct.pacs.watch import _Dask, _Pool

    pool = _Pool(2)
    try:
        futures = [pool.submit(pow, 2, k) for k in range(4)]
        done: list = []
        while len(done) < 4:
            done += [f for f in pool.wait([f for f in futures if f not in done], timeout=30) if f not in done]
        assert sorted(f.result() for f in futures) == [1, 2, 4, 8]
    finally:
        pool.shutdown()
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dask = _Dask(cluster.scheduler_address)
        try:
            fut = dask.submit(pow, 3, 2)
            assert dask.wait([fut], timeout=30) == [fut] and fut.result() == 9
            assert dask.wait([], timeout=0.1) == []
        finally:
            dask.shutdown()


def test_unreachable_pacs_leaves_no_folder(tmp_path):
    """A watcher that never reached the PACS did nothing: its output and state folders are not left behind."""
    from covidct.errors import PacsError
    from covidct.pacs.client import settings_from
    from covidct.pacs.watch import watch

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_from(f"http://127.0.0.1:{port}/dicom-web", retries=0, timeout=5, environ={})
    with pytest.raises(PacsError):
        watch(settings, tmp_path / "out", once=True, log=lambda _m: None)
    assert not (tmp_path / "out").exists()
