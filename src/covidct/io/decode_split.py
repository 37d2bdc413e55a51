"""A series' pixel data decoded by two processes: a forked helper decodes the second half of the files.

GDCM's JPEG decoding and pydicom's parsing hold the GIL, so decoding threads do not overlap (P001, 148 JPEG-lossless
slices: about 1.1 s with one thread or two). ``analyze``'s scan process (covidct.commands.scan_process) turns this on
with :func:`enable`: it is a single-threaded process whose parent waits for the scan meanwhile, so a fork is cheap
and safe there. The slices go into a volume in anonymous shared memory (:func:`empty`), which both processes
write; the helper sends back what else each file gave (its header without pixel data, or the error) through a
pipe, pickled. Anything unexpected (no fork, the helper dying or sending nothing usable) and the files are decoded
here as before, so the result never depends on whether the split happened.
"""

from __future__ import annotations

import mmap
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_ENABLED = False
_REGION: mmap.mmap | None = None
MIN_FILES = 16  # fewer: the fork and the pickles are not worth it


def enable(on: bool = True, region: mmap.mmap | None = None) -> None:
    """Decode in two processes from now on in this process (only where forking is safe: a single-threaded process).

    ``region``: a shared mapping that the first volume fitting in it is decoded into (``analyze``'s scan process:
    its parent reads the voxels there, so they are not copied into it afterwards)."""
    global _ENABLED, _REGION
    _ENABLED = bool(on) and hasattr(os, "fork")
    _REGION = region if _ENABLED else None


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array, in anonymous shared memory when the split is on (a forked helper's writes are seen)."""
    global _REGION
    dtype = np.dtype(dtype)
    if _ENABLED:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if _REGION is not None and nbytes <= len(_REGION):
            region, _REGION = _REGION, None  # once: a later volume must not overwrite this one
            return np.frombuffer(region, dtype, int(np.prod(shape))).reshape(shape)
        try:
            return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype, int(np.prod(shape))).reshape(shape)
        except (OSError, ValueError, OverflowError):
            pass
    return np.empty(shape, dtype)


def _threads(paths: Sequence, decode: Callable) -> list:
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
        return list(ex.map(decode, paths))


def decode_all(paths: Sequence, decode: Callable, row: Callable[[Any], np.ndarray | None]) -> list:
    """``[decode(p) for p in paths]`` (an exception ``decode`` raises propagates; one it returns is a result).

    ``decode(p)`` gives ``(header, pixels)``, the pixels possibly ``row(p)``: that file's row of a volume made by
    :func:`empty`, which a helper process fills in place (None: the file has no row)."""
    if not _ENABLED or len(paths) < MIN_FILES:
        return _threads(paths, decode)
    half = len(paths) // 2
    mine, theirs = list(paths[:half]), list(paths[half:])
    try:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
    except OSError:
        return _threads(paths, decode)
    if pid == 0:  # the helper: decode its half, send back what is not in shared memory, and leave at once
        code = 1
        try:
            os.close(read_fd)
            _die_with_parent()
            out = []
            for p in theirs:
                try:
                    r = decode(p)
                except Exception as exc:  # noqa: BLE001 - raised again in the parent, in order
                    out.append(("raise", exc))
                    continue
                slot = row(p)
                if isinstance(r, tuple) and slot is not None and r[1] is not None and r[1].ctypes.data == slot.ctypes.data:
                    out.append(("row", r[0]))
                else:
                    out.append(("value", r))
            data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write_fd, "wb") as w:
                w.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        results = [decode(p) for p in mine]
    except BaseException:
        _reap(read_fd, pid)
        raise
    sent = _reap(read_fd, pid)
    if sent is None or len(sent) != len(theirs):
        return results + _threads(theirs, decode)
    for p, (kind, value) in zip(theirs, sent, strict=True):
        if kind == "raise":
            raise value
        results.append((value, row(p)) if kind == "row" else value)
    return results


def _reap(read_fd: int, pid: int) -> list | None:
    """The helper's pickled results (None when it failed), the helper waited for."""
    try:
        with os.fdopen(read_fd, "rb") as r:
            data = r.read()
    except OSError:
        data = b""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        status = 1
    if status != 0 or not data:
        return None
    try:
        sent = pickle.loads(data)
    except Exception:  # noqa: BLE001 - decoded here instead
        return None
    return sent if isinstance(sent, list) else None


def _die_with_parent() -> None:
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
