"""``analyze``'s scan process: a forked helper that reads the scan while the models load, and writes the DICOM SEG
while the report is made (:class:`ScanProcess`); the collector paused for one study (:func:`gc_paused`)."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from covidct.commands import scan_transfer
from covidct.interrupts import leave_stops_to_the_parent, stop_signals_held

if TYPE_CHECKING:
    from covidct import pipeline
    from covidct.volume import CT

T = TypeVar("T")


def load_timed(path: Path, series: str | None = None, fetch: Callable[[], object] | None = None):
    """``load_ct`` with its duration in ``meta["_load_seconds"]`` (the report's load time); ``fetch`` (e.g. a
    PACS download into ``path``) runs first and counts as loading."""
    import time

    from covidct.io import load_ct

    t0 = time.perf_counter()
    if fetch is not None:
        fetch()
    ct = load_ct(path, series=series)
    ct.meta["_load_seconds"] = time.perf_counter() - t0
    return ct


# In the forked scan process: the scan it read, kept (without its voxels) for the DICOM SEG.
_SCAN: CT | None = None
# Shared memory the parent maps before the fork, for the scan's voxels (covidct.commands.scan_transfer).
_VOXELS: mmap.mmap | None = None


def _keep_freed_memory() -> None:
    """glibc: keep freed memory in this process's heap rather than handing it back to the system.

    Decoding's large arrays then reuse pages instead of faulting in fresh ones. Only for the short-lived
    scan process, which hands it all back once the scan is sent (``scan_transfer.trim_heap``): the SEG alone needs
    about 600 MB for P001, and on top of the decoding's kept pages the process peaked above 1 GB.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: large blocks from the heap, not mmap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: do not give the heap's top back
    except (OSError, AttributeError):
        pass


def _scan_process_start(parent: int) -> None:
    """In the scan process, first: Ctrl-C is the parent's to handle (it stops this process), and this
    process dies with the parent, whatever kills it; otherwise an aborted parent left it holding the
    terminal's pipes open forever."""
    import ctypes
    import signal

    leave_stops_to_the_parent()
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _scan_process_load(path: Path, series: str | None = None, fetch: Callable[[], object] | None = None) -> bytes:
    """The scan (``fetch`` fills ``path`` first), pickled here: the parent unpickles it in its main thread (see
    ``load_beside``)."""
    global _SCAN, _VOXELS
    import dataclasses
    import gc

    import numpy as np

    from covidct.io import decode_split

    _keep_freed_memory()
    decode_split.enable(region=_VOXELS)  # single-threaded, the parent waits: decode in two, into the parent's region
    ct = load_timed(path, series, fetch)
    # The SEG needs the headers and geometry, not the HU values: a zero-stride stand-in of the same shape.
    _SCAN = dataclasses.replace(ct, array=np.broadcast_to(np.float32(0), ct.shape))
    data = scan_transfer.pack(ct, _VOXELS)
    del ct
    # the collector is paused for the study (gc_paused, inherited by this forked process: its collections over
    # pydicom's and highdicom's objects took about 0.5 s of CPU here per scan); the decoding's reference cycles hold
    # pixel buffers, so they are collected once (without this, the process peaked 150 MB higher)
    gc.collect()
    scan_transfer.trim_heap(_VOXELS)
    _VOXELS = None
    return data


def _scan_process_prepare() -> None:
    """The SEG writer's imports and one-off costs, paid while the other process segments the lungs."""
    if _SCAN is not None and _SCAN.kind == "dicom":
        from covidct.report.dicomseg import prepare_dicom_seg

        try:
            prepare_dicom_seg(_SCAN)
        except ValueError:  # reported by the real SEG writer, in its place
            pass


def _scan_process_write_seg(masks: tuple, path: Path) -> Path:
    """``masks``: the final lungs and lesions as cropped by ``scan_transfer.crop_masks``."""
    from covidct.report.dicomseg import write_dicom_seg

    if _SCAN is None:
        raise RuntimeError("the scan process holds no scan")
    return write_dicom_seg(_SCAN, *scan_transfer.uncrop_masks(masks), path)


# What the analysing process imports anyway after the scan arrives (unpickling its DICOM headers, the output writers,
# the report page, the report's validation): P001 about 0.3 s, otherwise spent after the wait for the scan. Not
# matplotlib (0.1 s): its 23 MB would be held through the lung stage, the analysing process's memory peak.
_LATER_IMPORTS = ("pydicom", "covidct.io.dicom", "nibabel", "covidct.io.writers", "jsonschema", "skimage.segmentation",
                  "covidct.report.html")


def _import_while(waiting: Callable[[], bool], names: Sequence[str]) -> None:
    """Import ``names`` one by one, in this thread, as long as ``waiting()`` (this process would sit idle otherwise)."""
    import importlib

    for name in names:
        if not waiting():
            return
        try:
            importlib.import_module(name)
        except ImportError:  # an optional package missing: whoever needs it says so, later
            pass


class ScanProcess:
    """A forked helper process that reads the scan while torch, MONAI and the models load, then writes
    the DICOM SEG from its own copy of the headers while this process finishes the report.

    pydicom's parsing, highdicom's SEG encoding and the imports all hold the GIL most of the time,
    so threads overlapped them little (P001: models and scan ready at 4.3 s with a thread, 2.6 s with
    this process). The fork happens before torch is imported, so no torch thread pools are copied.
    Where the platform does not fork, or if the child dies, the work falls back to this process.
    """

    def __init__(self, fork: bool | None = None) -> None:
        """``fork``: None forks where the platform can and torch is not yet imported; True/False force it."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = self.waiter = None
        self.children: list = []  # the forked process, to stop it after an error or Ctrl-C
        if fork is None:
            fork = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" and "torch" not in sys.modules
        if fork:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_scan_process_start, initargs=(os.getpid(),))

    def __enter__(self) -> ScanProcess:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After an error or Ctrl-C, do not wait for the child's task: stop the child (it ignores Ctrl-C, and
        # dies with this process in any case, see _scan_process_start).
        wait = exc_type is None
        if not wait:
            for child in self.children:  # it would otherwise keep the terminal's pipes open
                child.terminate()
        if self.waiter is not None:
            self.waiter.shutdown(wait=wait, cancel_futures=True)
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)

    def load_beside(self, path: Path, work: Callable[[], T], series: str | None = None,
                    fetch: Callable[[], object] | None = None) -> tuple[CT, T]:
        """The scan at ``path`` (``series``: its series UID; ``fetch``: fills ``path`` first, e.g. from a PACS),
        read while ``work()`` runs here, and ``work()``'s result."""
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            with ThreadPoolExecutor(max_workers=1) as threads:
                loading = threads.submit(load_timed, path, series, fetch)
                with stop_signals_held():
                    result = work()
                return loading.result(), result
        import multiprocessing

        global _VOXELS
        before = set(multiprocessing.active_children())
        region = _VOXELS = scan_transfer.new_region()  # before the fork, which the first submit does
        with stop_signals_held():
            loading = self.pool.submit(_scan_process_load, path, series, fetch)  # the first submit forks the process
            _VOXELS = None
            self.children = [c for c in multiprocessing.active_children() if c not in before]
            self.pool.submit(_scan_process_prepare)  # the SEG writer's imports, while the lungs are segmented
            result = work()
            _import_while(lambda: not loading.done(), _LATER_IMPORTS)
        try:
            # Unpickled here, after ``work()``: the pool's own thread would unpickle the pydicom values while
            # this thread imports MONAI (which imports pydicom), and two threads importing pydicom at once
            # failed 1 run in ~5 with "partially initialized module 'pydicom' has no attribute 'valuerep'".
            return scan_transfer.unpack(loading.result(), region), result
        except BrokenProcessPool:  # the child was killed (e.g. out of memory): read it here instead
            self.pool.shutdown(wait=False)
            self.pool = None
            return load_timed(path, series, fetch), result

    def seg_writer(self, ct: CT) -> pipeline.SegWriter | None:
        """Writes ``ct``'s SEG in the scan process (None: let the pipeline write it here)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.pool is None:
            return None
        self.waiter = ThreadPoolExecutor(max_workers=1)
        return lambda lungs, lesions, path: self.waiter.submit(self._write_seg, ct, lungs, lesions, path)

    def _write_seg(self, ct: CT, lungs, lesions, path: Path) -> Path:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(_scan_process_write_seg, scan_transfer.crop_masks(lungs, lesions), path).result()
        except BrokenProcessPool:  # the child was killed: write it here after all
            from covidct.report.dicomseg import write_dicom_seg

            return write_dicom_seg(ct, lungs, lesions, path)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's garbage collector off for one study, as it was after. Its passes over the many small objects of a
    scan's DICOM headers found next to no garbage (reference cycles) and took about 0.75 s of CPU per study over the
    three processes (P001; the forked processes inherit the pause: see _scan_process_load); the arrays are
    freed by reference counting either way."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
