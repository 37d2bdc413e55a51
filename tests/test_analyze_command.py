"""`covidct analyze` on one DICOM study: the forked scan process that reads the series while the models
load and writes the DICOM SEG while the report is made, and the pipeline's early-started SEG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from covidct.commands.scan_process import ScanProcess
from covidct.io import load_ct
from covidct.phantom import make_phantom, write_phantom
from covidct.pipeline import Analyzer, analyze
from covidct.report.dicomseg import prepare_dicom_seg, write_dicom_seg
from covidct.volume import CT

SMALL = dict(shape=(16, 128, 128), spacing=(6.0, 2.6, 2.6))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    ph = make_phantom(seed=6, lesion_burden=0.15, **SMALL)
    return write_phantom(ph, tmp_path_factory.mktemp("study"), fmt="dicom"), ph


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer()


def _frames(path: Path) -> tuple[list[str], list[tuple[str, int]], np.ndarray]:
    """Segment labels, (referenced source instance, segment number) per frame, and the frames, in a fixed order."""
    ds = pydicom.dcmread(path)
    keys = [
        (f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
         int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    pixels = ds.pixel_array.reshape(len(keys), ds.Rows, ds.Columns)
    return [s.SegmentLabel for s in ds.SegmentSequence], [keys[i] for i in order], pixels[order]


def _same_seg(a: Path, b: Path) -> None:
    la, ka, pa = _frames(a)
    lb, kb, pb = _frames(b)
    assert la == lb and ka == kb
    np.testing.assert_array_equal(pa, pb)


def test_scan_crosses_the_process_boundary_unpickled_in_the_calling_thread(study, monkeypatch):
    """The pool's own thread must not unpickle the scan (its pydicom values import pydicom) while the
    caller imports MONAI: two threads importing pydicom at once broke analyze about 1 run in 5."""
    import pickle
    import threading

    folder, _ = study
    unpickled_in = {}
    real_loads = pickle.loads

    def loads(data, **kw):
        obj = real_loads(data, **kw)
        if isinstance(obj, CT):
            unpickled_in.setdefault("ct", []).append(threading.current_thread())
        return obj

    monkeypatch.setattr(pickle, "loads", loads)
    with ScanProcess(fork=True) as helper:
        ct, _ = helper.load_beside(folder, lambda: None)
    assert unpickled_in == {"ct": [threading.current_thread()]}
    np.testing.assert_array_equal(ct.array, load_ct(folder).array)


def test_scan_process_reads_the_series_and_writes_the_same_seg(study, tmp_path):
    folder, ph = study
    with ScanProcess(fork=True) as helper:
        assert helper.pool is not None
        ct, result = helper.load_beside(folder, lambda: "models loaded")
        assert result == "models loaded"
        np.testing.assert_array_equal(ct.array, load_ct(folder).array)
        assert ct.meta["_load_seconds"] > 0
        out = helper.seg_writer(ct)(ph.lungs, ph.lesions, tmp_path / "child.dcm").result()
    assert out == tmp_path / "child.dcm"
    write_dicom_seg(ct, ph.lungs, ph.lesions, tmp_path / "here.dcm")
    _same_seg(tmp_path / "child.dcm", tmp_path / "here.dcm")


def test_scan_process_errors_come_back_as_they_are(study, tmp_path):
    from covidct.errors import UnreadableInput

    folder, ph = study
    with ScanProcess(fork=True) as helper:
        with pytest.raises(UnreadableInput):
            helper.load_beside(tmp_path / "missing", lambda: None)
    with ScanProcess(fork=True) as helper:
        ct, _ = helper.load_beside(folder, lambda: None)
        with pytest.raises(ValueError, match="do not match"):
            helper.seg_writer(ct)(ph.lungs[:3], ph.lesions[:3], tmp_path / "x.dcm").result()


def test_scan_process_falls_back_when_the_child_dies(study, tmp_path):
    folder, ph = study
    with ScanProcess(fork=True) as helper:
        ct, _ = helper.load_beside(folder, lambda: None)
        write = helper.seg_writer(ct)
        helper.pool.submit(os._exit, 1).exception()  # the child is gone: the pool is broken
        out = write(ph.lungs, ph.lesions, tmp_path / "seg.dcm").result()  # written here instead
    _same_seg(out, write_dicom_seg(ct, ph.lungs, ph.lesions, tmp_path / "here.dcm"))


@pytest.mark.parametrize("fork", [True, False])
def test_scan_process_reads_the_chosen_series(study, tmp_path, fork):
    import shutil

    folder, _ = study
    other = write_phantom(make_phantom(seed=7, shape=(12, 96, 96), spacing=(6.0, 3.2, 3.2)), tmp_path / "other", fmt="dicom")
    both = tmp_path / "both"
    shutil.copytree(folder, both / "first")
    shutil.copytree(other, both / "second")
    uid = load_ct(other).meta["series_uid"]
    with ScanProcess(fork=fork) as helper:
        ct, _ = helper.load_beside(both, lambda: None, series=uid)
    assert ct.meta["series_uid"] == uid and ct.shape == (12, 96, 96)


def test_series_needs_a_single_input(study, tmp_path, capsys):
    from covidct.cli import main

    folder, _ = study
    assert main(["analyze", str(folder), str(folder), "-o", str(tmp_path / "out"), "--series", "1.2.3"]) == 64
    assert "--series picks the series of one DICOM input" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_fork_everything_stays_in_this_process(study):
    folder, _ = study
    with ScanProcess(fork=False) as helper:
        ct, _ = helper.load_beside(folder, lambda: None)
        assert helper.pool is None and helper.seg_writer(ct) is None
    np.testing.assert_array_equal(ct.array, load_ct(folder).array)


def test_prepare_dicom_seg_writes_nothing(study, tmp_path, monkeypatch):
    folder, _ = study
    monkeypatch.chdir(tmp_path)
    prepare_dicom_seg(load_ct(folder))
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="DICOM"):
        prepare_dicom_seg(make_phantom(seed=1, **SMALL).ct)  # an in-memory volume has no source files


def test_ggo_floor_follows_lung_flag_reaches_the_hu_rule(tmp_path, capsys):
    """`analyze --ggo-floor-follows-lung` on a scan at a (simulated) shallow breath: the HU rule raises its GGO floor,
    and the report and the printed summary say so; without the flag they say the floor is fixed."""
    from covidct.cli import main
    from covidct.evaluate.hu_volumes import shallow_breath_simulated
    from covidct.io.writers import save_ct_nifti

    scan = tmp_path / "shallow.nii.gz"
    save_ct_nifti(shallow_breath_simulated(make_phantom(shape=(32, 160, 160), seed=0).ct, 100.0), scan)
    for flag, said in (([], "GGO floor is fixed"), (["--ggo-floor-follows-lung"], "raised its GGO floor by")):
        out = tmp_path / f"out{len(flag)}"
        assert main(["analyze", str(scan), "-o", str(out), "--no-html", *flag]) == 0
        assert said in capsys.readouterr().out
        assert any(said in w for w in json.loads((out / "report.json").read_text())["warnings"])


def test_analyze_command_in_a_fresh_process(study, tmp_path):
    """The console command as users run it (torch not yet imported, so the scan process forks)."""
    folder, _ = study
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "covidct", "analyze", str(folder), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "report:" in res.stdout and not res.stderr.strip()
    report = json.loads((out / "report.json").read_text())
    # this coarse phantom (2.6 mm pixels) is far from the models' training data: they may be unsure on it;
    # and on its 6 mm slices the HU lesion rule keeps little of the painted lesion (low-involvement warning, or the
    # lower-bounds one above that level); its lungs fill its 16 slices, so the scan cuts them at the apex
    others = [w for w in report["warnings"]
              if not w.startswith(("uncertain lesion boundaries", "total involvement", "lesion volumes, involvement",
                                   "the scan cuts the lungs"))]
    assert report["outputs"]["dicom_seg"] == "segmentation.dcm" and not others
    assert {"load", "lungs", "lesions", "severity", "outputs"} <= set(report["timings_s"])
    # the SEG the scan process wrote holds exactly the masks of the NIfTIs
    ct = load_ct(folder)
    lungs, lesions = (np.asarray(nib.load(out / f).dataobj).transpose(2, 1, 0) for f in ("lungs.nii.gz", "lesions.nii.gz"))
    _same_seg(out / "segmentation.dcm", write_dicom_seg(ct, lungs, lesions, tmp_path / "here.dcm"))
    # the output folder gets the usual permissions, not a temp folder's 0700
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_lesion_free_scan_gets_every_output(tmp_path, analyzer):
    """A scan with no lesion voxel at all (a healthy patient's, a lesion-free phantom's): every output, the HTML
    report's lesion profile included (it crashed on an empty lesion mask: exit 70 on exact_outputs' normal case)."""
    # lesions=False: no lesion and no effusion (lesion_burden=0 alone still adds the phantom's 28 mL effusion, which
    # the rib-cage effusion search finds since the forty-first session)
    ph = make_phantom(seed=2, lesions=False, **SMALL)
    ct = load_ct(write_phantom(ph, tmp_path / "study", fmt="dicom"))
    analysis = analyzer(ct, tmp_path / "out")
    assert not analysis.lesions.any() and analysis.report["diagnosis"]["label"] == "normal"
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert '<svg class="profile"' in html and "<polygon" not in html  # the lung line, no lesion band
    assert {"report.json", "lungs.nii.gz", "lesions.nii.gz", "segmentation.dcm"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
    seg = pydicom.dcmread(tmp_path / "out" / "segmentation.dcm")  # the two lungs only (checked by dciodvfy too)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Left lung", "Right lung"]


def test_seg_writer_failure_becomes_a_warning(study, tmp_path, analyzer):
    folder, _ = study
    calls = []

    def failing(lungs, lesions, path):
        calls.append(path)
        fut: Future = Future()
        fut.set_exception(ValueError("source file gone"))
        return fut

    res = analyzer(load_ct(folder), tmp_path / "out", html=False, seg_writer=failing)
    assert len(calls) == 1 and calls[0].name == "segmentation.dcm"
    assert res.files["dicom_seg"] is None and (tmp_path / "out" / "lungs.nii.gz").is_file()
    assert not (tmp_path / "out" / "segmentation.dcm").exists()
    assert any("no DICOM SEG written: source file gone" in w for w in res.report["warnings"])


def test_failure_after_the_seg_started_leaves_nothing(study, tmp_path, analyzer, monkeypatch):
    import covidct.pipeline.measures as pl

    folder, _ = study

    def boom(*a, **k):
        raise RuntimeError("severity failed")

    monkeypatch.setattr(pl, "measure", boom)
    with pytest.raises(RuntimeError, match="severity failed"):
        analyze(folder, tmp_path / "out", analyzer=analyzer)  # the SEG was already being written
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_stops_cleanly(study, tmp_path, delay):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) at start-up, around the fork and while the
    models run: exit 130 (or 0 if the run had already finished), one line, nothing left behind, no hang."""
    import signal
    import time

    folder, _ = study
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "covidct", "analyze", str(folder), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal: a complete output
        assert (out / "report.json").is_file()
        return
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "covidct: interrupted" and not stdout
    left = list(tmp_path.iterdir())
    # The signal may land in the last moments, after the finished output was moved into place (helpers
    # stopping, summary): that complete output stays; never a half-written one or a staging folder.
    assert left == [] or (left == [out] and (out / "report.json").is_file()), left


@pytest.mark.parametrize("delay", [1.0, 2.5])
def test_sigterm_stops_cleanly_too(study, tmp_path, delay):
    """SIGTERM (kill, timeout, a job scheduler) to the command alone: the same clean stop as Ctrl-C, exit 143."""
    import signal
    import time

    folder, _ = study
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "covidct", "analyze", str(folder), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal
        assert (out / "report.json").is_file()
        return
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "covidct: terminated"
    if out.exists():  # only when the signal came after the outputs were in place
        assert (out / "report.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name != "out"] == []


def test_scan_process_dies_with_the_command(study, tmp_path):
    """Killed outright (no cleanup runs), the command's scan process goes too: its pipes close at once."""
    import signal
    import time

    folder, _ = study
    proc = subprocess.Popen([sys.executable, "-m", "covidct", "analyze", str(folder), "-o", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(1.5)  # the scan process is forked in the first second
    os.kill(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the scan process outlived the command, holding its pipes open")



def test_ctrl_c_is_held_while_the_models_load_then_raised():
    import signal

    # Python's own Ctrl-C handler, whatever this process inherited: a test run started in the background by a
    # non-interactive shell inherits Ctrl-C ignored, and then the held Ctrl-C is rightly ignored too
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_held_then_raised()
    finally:
        signal.signal(signal.SIGINT, inherited)


def _ctrl_c_held_then_raised() -> None:
    import signal

    from covidct.interrupts import stop_signals_held

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with stop_signals_held():
            with stop_signals_held():  # nested (a model loaded inside the analyzer's set-up): the outer one raises
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner block ran on")
            steps.append("outer block ran on")
    assert steps == ["inner block ran on", "outer block ran on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def servers_own_handler(signum, frame):  # e.g. uvicorn's graceful shutdown
        steps.append("handled by the server")

    signal.signal(signal.SIGINT, servers_own_handler)
    try:
        with stop_signals_held():
            os.kill(os.getpid(), signal.SIGINT)
        assert steps[-1] == "handled by the server"
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: steps.append("SIGTERM handled"))
    try:  # SIGTERM is held the same way
        with stop_signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("block ran on")
        assert steps[-2:] == ["block ran on", "SIGTERM handled"]
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def test_ctrl_c_stops_a_batch_cleanly(study, tmp_path):
    """Ctrl-C to a batch in worker processes: exit 130 and one line (no worker tracebacks, no resource-tracker
    warning about leaked semaphores); a study is either complete or absent."""
    import shutil
    import signal
    import time

    folder, _ = study
    names = [f"s{i:02d}" for i in range(12)]
    for name in names:
        shutil.copytree(folder, tmp_path / "studies" / name)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "covidct", "analyze", str(tmp_path / "studies"), "-o", str(out), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupt mid-batch, however fast this machine is: once the first study is complete (not after a fixed sleep)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and not any(out.glob("*/report.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "covidct: interrupted"
    done = [d for d in out.iterdir() if (d / "report.json").is_file()]
    assert 1 <= len(done) < len(names)  # the interrupt came mid-batch
    for study_out in out.iterdir():  # no half-written study, no hidden temp folder either
        assert (study_out / "report.json").is_file(), sorted(p.name for p in study_out.iterdir())


def test_ctrl_c_during_the_start_up_imports_is_one_line_exit_130():
    """A Ctrl-C while the command-line interface is still being imported: no traceback, exit 130."""
    code = ("import builtins\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'covidct.cli':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "import covidct.entry\n"
            "covidct.entry.run()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip() == "covidct: interrupted" and not proc.stdout


def test_the_summary_says_when_a_reading_is_borderline(capsys, tmp_path):
    """The command's summary prints the borderline reason beside the pattern (report.json has it in
    pattern.borderline); a reading that is not borderline prints no such line."""
    from covidct.commands.analyze import _print_summary

    why = ("borderline: peripheral share (49.6 %) near a threshold; lesion masks one voxel larger or smaller could "
           "change the category")
    report = {"diagnosis": {"label": "pneumonia", "probabilities": {"covid19": 0.28, "pneumonia": 0.69, "normal": 0.03}},
              "pattern": {"rsna_category": "indeterminate", "co_rads": 3, "borderline": ["peripheral_fraction"],
                          "reasons": ["bilateral, 49.6 % peripheral → indeterminate", why, "P(abnormal) 0.97"]},
              "mode": "slice", "warnings": [], "involvement_percent": {"total": 1.2}, "timings_s": {}}
    _print_summary(report, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("pattern: RSNA indeterminate, CO-RADS 3") and lines[2] == why
    report["pattern"].update(borderline=[], reasons=["bilateral, 72 % peripheral → typical", "P(abnormal) 0.99"])
    _print_summary(report, tmp_path)
    assert "borderline" not in capsys.readouterr().out


def test_patient_position_is_read_and_reported(tmp_path, analyzer):
    """DICOM Patient Position sets the dependent side (covidct.volume.dependent_side); the report says it."""
    ph = make_phantom(seed=2, lesion_burden=0.0, **SMALL)
    folder = write_phantom(ph, tmp_path / "study", fmt="dicom")
    assert load_ct(folder).meta["patient_position"] == "HFS"  # the phantom writer's
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientPosition = "HFP"
        ds.save_as(f)
    ct = load_ct(folder)
    assert ct.meta["patient_position"] == "HFP"
    report = analyzer(ct, tmp_path / "out").report
    assert report["input"]["patient_position"] == "HFP"
    assert "HFP (dependent side: anterior)" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_the_garbage_collector_is_paused_for_one_study_and_restored_after(study, tmp_path, monkeypatch):
    """One study runs with Python's collector off (its passes over the DICOM headers' objects were ~0.75 s of
    CPU per study); a caller's setting is back afterwards, whether the study ended well or not."""
    import gc

    from covidct.cli import main

    seen = []
    real = Analyzer.__call__

    def spy(self, *a, **k):
        seen.append(gc.isenabled())
        return real(self, *a, **k)

    monkeypatch.setattr(Analyzer, "__call__", spy)
    assert gc.isenabled()
    assert main(["analyze", str(study[0]), "-o", str(tmp_path / "out"), "--no-html"]) == 0
    assert seen == [False] and gc.isenabled()
    assert main(["analyze", str(tmp_path / "missing"), "-o", str(tmp_path / "out2")]) != 0
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        assert main(["analyze", str(study[0]), "-o", str(tmp_path / "out3"), "--no-html"]) == 0
        assert not gc.isenabled()
    finally:
        gc.enable()
