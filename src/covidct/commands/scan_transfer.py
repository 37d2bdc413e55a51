"""The scan read by ``analyze``'s forked scan process, handed to the analysing process through shared memory.

The analysing process maps an anonymous shared region before the fork; the scan process writes the voxels
there (P001: 155 MB) and pickles the rest of the CT, so the voxels are neither pickled twice (by us, by the
process pool) nor piped nor unpickled. Untouched pages of the region cost nothing; a scan too large for it
is pickled whole, as before. The scan process then hands its freed memory back to the system before it
writes the DICOM SEG (which alone needs about 600 MB for P001): its peak went from about 1045 MB to about
850 MB (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import mmap
import pickle

import numpy as np

from covidct.volume import CT

REGION_BYTES = 4 << 30
_KEY = "_shared_voxels"


def new_region() -> mmap.mmap | None:
    """An anonymous MAP_SHARED region (the forked child writes, the parent reads), or None where it cannot be mapped."""
    try:
        return mmap.mmap(-1, REGION_BYTES)
    except (OSError, ValueError, OverflowError):
        return None


def pack(ct: CT, region: mmap.mmap | None) -> bytes:
    """In the scan process: ``ct`` pickled, its voxels written into ``region`` when they fit (``region`` is
    then closed here: only this process's mapping, the pages stay the parent's); ``ct`` itself is left as it was."""
    arr = ct.array
    if region is not None and arr.nbytes <= len(region):
        np.frombuffer(region, arr.dtype, arr.size).reshape(arr.shape)[...] = arr
        region.close()
        ct.array = np.zeros((0, 0, 0), arr.dtype)
        ct.meta[_KEY] = (arr.shape, arr.dtype.str)
        try:
            data = pickle.dumps(ct, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            ct.array = arr
            ct.meta.pop(_KEY, None)
        return data
    return pickle.dumps(ct, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes, region: mmap.mmap | None) -> CT:
    """In the analysing process: the CT of :func:`pack`, its voxels a view of ``region`` when sent there."""
    ct = pickle.loads(data)
    shared = ct.meta.pop(_KEY, None)
    if shared is not None:
        shape, dtype = shared
        ct.array = np.frombuffer(region, np.dtype(dtype), int(np.prod(shape))).reshape(shape)
    return ct


def trim_heap() -> None:
    """glibc: hand the memory freed so far back to the system (elsewhere nothing happens)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
