"""Running the analysis models on the slices of one CT: 2-D models slice by slice (ONNX Runtime, or torch for a
checkpoint without an ONNX file: :mod:`covidct.models.runtime`), 3-D models by sliding window (torch).

A model can also run ahead (:class:`RunAhead`): started on the slices of an earlier pass, in a background
thread, while this thread does that pass's post-processing on one core; its results are taken when asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from covidct.pipeline.types import LoadedModel

if TYPE_CHECKING:
    from covidct.volume import CT

# Slices per forward pass. ONNX Runtime (arena off) mallocs a run's intermediate tensors: for up to 5 slices of
# these 256² U-Nets glibc serves them again from its heap, from 6 on it maps them afresh every run and each
# page is faulted in (P001, 138 slices: 216,000 page
# faults and about 15 % more CPU time per network pass with 8; same outputs; docs/BENCHMARKS.md).
BATCH_SIZE = 4

# On HU series with slices this thin or thinner the 2-D networks run on every other slice (the even-numbered ones,
# and both ends), the probability of the slices between interpolated linearly: neighbouring slices this close
# differ little, and each network pass is about a second of CPU for a 150-slice series. 0 turns it off.
SKIP_MAX_MM = 2.5


def network_slices(zs: np.ndarray, ct: CT) -> np.ndarray:
    """The slices of ``zs`` (sorted) a 2-D network runs on for ``ct`` (see ``SKIP_MAX_MM``; every slice where the
    slice spacing is unknown)."""
    zs = np.asarray(zs)
    thin = ct.is_hu and ct.spacing_known and 0 < SKIP_MAX_MM and ct.spacing[0] <= SKIP_MAX_MM
    if not thin or len(zs) <= 4:
        return zs
    return np.union1d(zs[zs % 2 == 0], zs[[0, -1]])


def interpolate_slices(prob: np.ndarray, run: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Probabilities (len(zs), ...) on slices ``zs`` from those on slices ``run`` (a sorted subset of ``zs`` holding
    both of its ends): copied where computed, linear in the slice number between the computed neighbours."""
    out = np.empty((len(zs), *prob.shape[1:]), prob.dtype)
    k = np.searchsorted(run, zs)
    for i, z in enumerate(zs):
        j = k[i]
        if run[j] == z:
            out[i] = prob[j]
        else:
            w = (z - run[j - 1]) / (run[j] - run[j - 1])
            np.add((1 - w) * prob[j - 1], w * prob[j], out=out[i])
    return out


class ModelRunner:
    """Runs the models for one CT; ``bf16``/``batch_size`` as :class:`~covidct.pipeline.Analyzer`.

    It keeps each slice's normalised model input (``cache``), so models sharing the normalisation
    settings do not repeat it (CLAHE on every slice is a sizeable part of a pass)."""

    def __init__(self, bf16: bool = True, batch_size: int = BATCH_SIZE, ahead: dict[str, LoadedModel] | None = None) -> None:
        """``ahead``: role -> model to start in the background on the same slices once that role's pass is done
        (see :class:`RunAhead`; only an ONNX Runtime 2-D model runs ahead, and only for the whole classes)."""
        self.bf16 = bf16
        self.batch_size = batch_size
        self.cache: dict = {}
        self.ahead = {role: m for role, m in (ahead or {}).items() if m is not None and RunAhead.can_run(m)}
        self.running: dict[int, RunAhead] = {}
        self.finished: list[RunAhead] = []  # passes taken over by their caller whose thread may still be mid-slice

    def close(self) -> None:
        """Stop any pass running ahead (after an error or Ctrl-C) and wait for every background thread to end.

        Why wait for the finished passes too: their caller took over the slice the thread was running rather than
        wait for it, so the thread may still be inside ONNX Runtime; a process that exits then aborts ("terminate
        called without an active exception"; seen in 2 of 8 runs of a script of six phantom analyses). By the time the
        analysis closes the runner that slice is long done, so the wait costs nothing there."""
        for job in self.running.values():
            job.cancel()
        for job in self.finished:
            job.thread.join()
        self.running.clear()
        self.finished.clear()

    def probabilities(self, model: LoadedModel, vol: np.ndarray, zs: np.ndarray, is_hu: bool,
                      spacing: Sequence[float] | None = None, role: str = "lungs", channel: int | None = None,
                      ahead_zs: np.ndarray | None = None) -> np.ndarray:
        """(N, C, H, W) probabilities of slices ``vol[zs]``; a 3-D model sees them as one volume (sliding window).
        ``channel``: only that class's (N, H, W) probability is kept (the softmax still sees every class).
        ``ahead_zs``: the slices a model running ahead after this pass runs on (default ``zs``; the lung network
        may run on every other slice, the lesion network is asked for all)."""
        info = model.info
        if model.is_3d:
            from covidct.models.volume_inference import predict_volume, probs_for_role

            prob = predict_volume(model.net, info, vol[zs], spacing, is_hu=is_hu, bf16=self.bf16)
            prob = probs_for_role(prob, info.get("classes", []), role)
            return prob if channel is None else np.ascontiguousarray(prob[:, channel])
        rows = self._rows(model, vol, zs, is_hu)
        done: dict[int, np.ndarray] = {}
        out = None
        job = self.running.pop(id(model), None)
        if job is not None:  # what ran ahead, for the slices asked for; any others run below as usual
            out = job.finish(model.net, vol, is_hu, zs, channel)
            self.finished.append(job)
            if out is None:
                done = job.done_rows()
        if out is None:
            out = self._run(model, vol, zs, is_hu, rows, channel, done)
        nxt = self.ahead.pop(role, None)
        if nxt is not None:
            # the slices this pass found something on first: the next stage most likely asks for those
            found = out.reshape(len(zs), -1).max(1) >= 0.5 if channel is not None else np.ones(len(zs), bool)
            first = np.asarray(zs)[found]
            order = np.concatenate([first, np.setdiff1d(np.asarray(zs if ahead_zs is None else ahead_zs), first)])
            self.running[id(nxt)] = RunAhead(nxt, vol, order, is_hu, self._rows(nxt, vol, order, is_hu), self.batch_size)
        return out

    def _rows(self, model: LoadedModel, vol: np.ndarray, zs: np.ndarray, is_hu: bool) -> dict[int, np.ndarray]:
        """The cached model inputs of slices ``zs`` for ``model`` (prepared here where missing)."""
        import json

        from covidct.models.runtime import prepare_slices

        info = model.info
        key = (json.dumps(info.get("normalisation"), sort_keys=True), tuple(info.get("input_size") or (256, 256)), is_hu)
        rows = self.cache.setdefault(key, {})
        missing = [int(z) for z in zs if int(z) not in rows]
        if missing:
            rows.update(zip(missing, prepare_slices([vol[z] for z in missing], [is_hu] * len(missing), info), strict=True))
        return rows

    def _run(self, model: LoadedModel, vol: np.ndarray, zs: np.ndarray, is_hu: bool, rows: dict, channel: int | None,
             done: dict[int, np.ndarray]) -> np.ndarray:
        from covidct.models.runtime import predict_slices

        info = model.info
        # batch by batch into one output: neither a second copy of the inputs nor the classes not asked for
        # are held for the whole series (P001's lesion stage: about 100 MB less at its peak)
        out: np.ndarray | None = None
        ran: set[int] = set()
        if done:
            first = next(iter(done.values()))
            out = np.empty((len(zs), *(first.shape if channel is None else first.shape[1:])), first.dtype)
            for i, z in enumerate(zs):
                if int(z) in done:
                    out[i] = done[int(z)] if channel is None else done[int(z)][channel]
                    ran.add(int(z))
            done.clear()
        todo = np.asarray([i for i, z in enumerate(zs) if int(z) not in ran], dtype=int)
        for start in range(0, len(todo), self.batch_size):
            at = todo[start : start + self.batch_size]
            chunk = np.asarray(zs)[at]
            prob = predict_slices(model.net, info, vol[chunk], is_hu, batch_size=len(chunk), bf16=self.bf16,
                                  prepared=np.stack([rows[int(z)] for z in chunk]))
            prob = prob if channel is None else prob[:, channel]
            if out is None:
                out = np.empty((len(zs), *prob.shape[1:]), prob.dtype)
            out[at] = prob
        if out is None:
            raise ValueError("no slices to run the model on")
        return out


class RunAhead:
    """One model's pass over given slices, run ahead in a background thread on the CPU this process leaves idle.

    The analysis runs the lung network on two cores, then post-processes its mask on one core (about 2.5 s for
    P001) before the lesion network can start: the lesion network runs on the lung network's slices meanwhile, one
    slice at a time with a one-thread ONNX Runtime session, in a thread at the lowest priority (Linux: nice 19),
    so that on a busy machine it takes only CPU time nothing else wants. When the results are asked for
    (:meth:`finish`), the asking thread runs the slices not started yet, from the end, with the model's own session,
    and also the one the background thread is busy with rather than wait for it. A slice's output of these
    networks does not depend on the batch it ran in nor on the session's thread count (bit for bit:
    tests/test_run_ahead.py), so the outputs are those of the plain pass. The results go into one array allocated
    once (kept per slice, the heap grew by a batch's temporaries for every batch: P001 +600 MB).
    """

    def __init__(self, model: LoadedModel, vol: np.ndarray, zs: np.ndarray, is_hu: bool, rows: dict[int, np.ndarray],
                 batch_size: int) -> None:
        """``zs``: the slices, in the order the background thread should run them."""
        from covidct.models import runtime

        self.model, self.vol, self.is_hu, self.rows, self.batch_size = model, vol, is_hu, rows, batch_size
        self.zs = sorted(int(z) for z in zs)  # the results' rows, in slice order
        self.row_of = {z: i for i, z in enumerate(self.zs)}
        self.pending = [int(z) for z in zs]  # in the order given: the background thread starts at the front
        self.busy: set[int] = set()  # slices the background thread is running now
        self.have = np.zeros(len(self.zs), bool)
        self.results: np.ndarray | None = None  # (slices, C, H, W), allocated with the first result
        self.stopped = False
        self.lock = threading.Lock()
        info = model.info
        side = runtime.onnx_session(info["path"], info["onnx_sha256"], threads=1)
        self.thread = threading.Thread(target=self._work, args=(side,), name="covidct-run-ahead", daemon=True)
        self.thread.start()

    @staticmethod
    def can_run(model: LoadedModel) -> bool:
        from covidct.models.runtime import is_onnx

        return is_onnx(model.info) and not model.is_3d and "path" in model.info and "onnx_sha256" in model.info

    def _predict(self, net, zs: list[int]) -> np.ndarray:
        from covidct.models.runtime import predict_slices

        chunk = np.asarray(zs)
        return predict_slices(net, self.model.info, self.vol[chunk], self.is_hu, batch_size=len(chunk),
                              prepared=np.stack([self.rows[z] for z in zs]))

    def _keep(self, zs: list[int], prob: np.ndarray) -> None:
        """Store results (under the lock)."""
        if self.results is None:
            self.results = np.empty((len(self.zs), *prob.shape[1:]), prob.dtype)
        for z, p in zip(zs, prob, strict=True):
            self.results[self.row_of[z]] = p
            self.have[self.row_of[z]] = True

    def _work(self, net) -> None:
        import os

        try:  # Linux: a thread's own nice value; elsewhere it simply runs at the process's priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            while True:
                with self.lock:
                    if self.stopped or not self.pending:
                        return
                    z = self.pending.pop(0)
                    self.busy.add(z)
                prob = self._predict(net, [z])
                with self.lock:
                    self.busy.discard(z)
                    if self.stopped:
                        return
                    self._keep([z], prob)
        except BaseException:  # noqa: BLE001 - the asking thread runs the slices left (and raises their error)
            return

    def finish(self, net, vol: np.ndarray, is_hu: bool, zs: np.ndarray, channel: int | None = None) -> np.ndarray | None:
        """The (N, C, H, W) probabilities of slices ``zs`` (``channel``: (N, H, W), that class's), once this thread
        has run what is left of them (see the class); None when they are not all among the slices run ahead in
        the same order (then :meth:`done_rows` has what did run) or the pass ran on another volume."""
        if vol is not self.vol or is_hu != self.is_hu:
            self.cancel()
            return None
        wanted = {int(z) for z in zs}
        with self.lock:
            self.pending = [z for z in self.pending if z in wanted]
        while True:
            with self.lock:
                todo = self.pending[-self.batch_size :] or sorted(self.busy & wanted)
                del self.pending[-self.batch_size :]
                if not todo:
                    self.stopped = True
                    break
                self.busy.difference_update(todo)  # a result of the background thread for these is the same
            prob = self._predict(net, todo)
            with self.lock:
                self._keep(todo, prob)
        at = [self.row_of.get(int(z), -1) for z in zs]
        if self.results is None or min(at, default=-1) < 0 or any(b <= a for a, b in zip(at, at[1:], strict=False)):
            return None
        res = self.results
        for i, r in enumerate(at):  # in place, forward: r >= i, so no row is overwritten before it is read
            if r != i:
                res[i] = res[r]
        self.results = None
        if channel is not None:
            return np.ascontiguousarray(res[: len(at), channel])
        return res[: len(at)]

    def done_rows(self) -> dict[int, np.ndarray]:
        """Slice -> probabilities (C, H, W) of the slices that ran (after :meth:`finish`)."""
        if self.results is None:
            return {}
        return {z: self.results[i] for z, i in self.row_of.items() if self.have[i]}

    def cancel(self) -> None:
        """Stop the background thread and wait for it (it finishes the slice it is running)."""
        with self.lock:
            self.stopped = True
            self.pending.clear()
        self.thread.join()
