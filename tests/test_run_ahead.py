"""The lesion network run ahead (covidct.pipeline.predict.RunAhead) gives exactly the plain pass's outputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from covidct.models import onnx_runtime as ox
from covidct.models import runtime
from covidct.phantom import make_phantom
from covidct.pipeline import Analyzer, working_grid
from covidct.pipeline.predict import ModelRunner, RunAhead
from covidct.pipeline.types import LoadedModel

pytestmark = pytest.mark.skipif(runtime.onnx_entry("lesions") is None, reason="no shipped lesions ONNX model")


@pytest.fixture(scope="module")
def phantom_ct():
    return make_phantom(shape=(24, 128, 128), spacing=(5.0, 2.0, 2.0), seed=5, lesion_burden=0.2).ct


def test_a_slice_output_depends_neither_on_its_batch_nor_on_the_thread_count(phantom_ct):
    """What makes running ahead exact: per slice, the same bits whatever the batch and the session's threads."""
    net2, info = runtime.load("lesions", threads=2)
    net1 = runtime.onnx_session(info["path"], info["onnx_sha256"], threads=1)
    zs = np.arange(4, 14)
    x = runtime.prepare_slices([phantom_ct.array[z] for z in zs], [True] * len(zs), info)

    def run(net, batch, first=0):
        starts = [0, *range(first, len(zs), batch)] if first else range(0, len(zs), batch)
        ends = [*starts[1:], len(zs)]
        return np.concatenate([ox.predict_slices(net, info, phantom_ct.array[zs[a:b]], True, batch_size=b - a,
                                                 prepared=x[a:b]) for a, b in zip(starts, ends, strict=True) if b > a])

    plain = run(net2, 4)
    for other in (run(net2, 1), run(net2, 3, first=2), run(net1, 4), run(net1, 1)):
        np.testing.assert_array_equal(other, plain)


def test_analysis_with_the_lesion_network_run_ahead_is_identical(phantom_ct, monkeypatch):
    an = Analyzer()
    started = []
    real_init = RunAhead.__init__

    def counting_init(self, *a, **k):
        started.append(self)
        real_init(self, *a, **k)

    monkeypatch.setattr(RunAhead, "__init__", counting_init)
    ahead = an(phantom_ct)
    assert len(started) == 1 and not started[0].pending
    monkeypatch.setattr(an, "_runner", lambda ahead=False, models=None, real=an._runner: real(ahead=False, models=models))
    plain = an(phantom_ct)
    assert len(started) == 1
    np.testing.assert_array_equal(ahead.lungs, plain.lungs)
    np.testing.assert_array_equal(ahead.lesions, plain.lesions)
    assert ahead.report["severity"] == plain.report["severity"]
    assert ahead.report["uncertainty"] == plain.report["uncertainty"]


def _lesions_and_work(phantom_ct):
    an = Analyzer()
    work, _ = working_grid(phantom_ct)
    return an.models["lesions"], work


@pytest.mark.parametrize("ran_ahead", ["all", "none", "some"])
def test_results_taken_from_the_run_ahead_equal_the_plain_pass(phantom_ct, ran_ahead, monkeypatch):
    model, work = _lesions_and_work(phantom_ct)
    zs = np.arange(3, 21)
    plain = ModelRunner().probabilities(model, work.array, zs, True, work.spacing, "lesions")
    runner = ModelRunner(ahead={"lungs": model})
    lungs = LoadedModel(model.net, dict(model.info))  # any model makes the first pass; its slices are run ahead
    gate = threading.Event()
    if ran_ahead != "all":  # the background thread waits (none) or runs a few slices (some) before the caller asks
        real = RunAhead._predict
        count = {"n": 0}

        def slow(self, net, z):
            if threading.current_thread().name == "covidct-run-ahead":
                count["n"] += 1
                if ran_ahead == "none" or count["n"] > 3:
                    gate.wait(5)
            return real(self, net, z)

        monkeypatch.setattr(RunAhead, "_predict", slow)
    runner.probabilities(lungs, work.array, np.arange(1, 23), True, work.spacing, "lungs", channel=1)
    job = runner.running[id(model)]
    if ran_ahead == "all":
        job.thread.join(30)
        assert not job.pending
    out = runner.probabilities(model, work.array, zs, True, work.spacing, "lesions")
    gate.set()
    assert job.stopped and not runner.running
    np.testing.assert_array_equal(out, plain)
    one = ModelRunner(ahead={"lungs": model})
    one.probabilities(lungs, work.array, zs, True, work.spacing, "lungs", channel=1)
    np.testing.assert_array_equal(one.probabilities(model, work.array, zs, True, work.spacing, "lesions", channel=2),
                                  plain[:, 2])


def test_close_waits_for_a_thread_its_caller_took_over_from(phantom_ct, monkeypatch):
    """The caller runs the slice the background thread is busy with instead of waiting; the thread then finishes
    that slice on its own. ``close`` waits for it: a process exiting while it is still inside ONNX Runtime aborted
    ("terminate called without an active exception", exit code 134)."""
    import time

    model, work = _lesions_and_work(phantom_ct)
    runner = ModelRunner(ahead={"lungs": model})
    lungs = LoadedModel(model.net, dict(model.info))
    gate, inside = threading.Event(), threading.Event()
    real = RunAhead._predict

    def held(self, net, z):
        if threading.current_thread().name == "covidct-run-ahead":
            inside.set()
            gate.wait(10)  # the slice the thread is running when the caller asks
        return real(self, net, z)

    monkeypatch.setattr(RunAhead, "_predict", held)
    zs = np.arange(2, 8)
    runner.probabilities(lungs, work.array, zs, True, work.spacing, "lungs", channel=1)
    job = runner.running[id(model)]
    assert inside.wait(10)
    runner.probabilities(model, work.array, zs, True, work.spacing, "lesions")  # takes the pass over
    assert job.stopped and job.thread.is_alive()
    threading.Timer(0.3, gate.set).start()
    t0 = time.perf_counter()
    runner.close()
    assert not job.thread.is_alive() and time.perf_counter() - t0 >= 0.2 and not runner.finished


def test_close_stops_a_pass_nobody_asked_for(phantom_ct):
    model, work = _lesions_and_work(phantom_ct)
    runner = ModelRunner(ahead={"lungs": model})
    runner.probabilities(model, work.array, np.arange(len(work.array)), True, work.spacing, "lungs", channel=1)
    job = runner.running[id(model)]
    runner.close()
    assert not job.thread.is_alive() and not runner.running


def test_only_onnx_2d_models_run_ahead():
    assert not RunAhead.can_run(LoadedModel(object(), {"runtime": "torch"}))
    assert not RunAhead.can_run(LoadedModel(object(), {"runtime": "onnxruntime", "spatial_dims": 3, "path": "x",
                                                       "onnx_sha256": "0"}))
    assert ModelRunner(ahead={"lungs": None}).ahead == {}
