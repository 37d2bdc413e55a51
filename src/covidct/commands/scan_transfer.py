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
    """In the scan process: ``ct`` pickled, its voxels written into ``region`` when they fit and are not there yet
    (``region`` is then closed here: only this process's mapping, the pages stay the parent's); ``ct`` itself is
    left as it was."""
    arr = ct.array
    if region is not None and arr.nbytes <= len(region):
        if not in_region(arr, region):  # else decoded there already (covidct.io.decode_split.enable)
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


def in_region(arr: np.ndarray, region: mmap.mmap) -> bool:
    """Whether ``arr`` is laid out C-contiguous from the start of ``region`` (it is then what the parent reads)."""
    start = np.frombuffer(region, np.uint8, 1)
    return bool(arr.flags.c_contiguous and arr.__array_interface__["data"][0] == start.__array_interface__["data"][0])


def unpack(data: bytes, region: mmap.mmap | None) -> CT:
    """In the analysing process: the CT of :func:`pack`, its voxels a view of ``region`` when sent there."""
    ct = pickle.loads(data)
    shared = ct.meta.pop(_KEY, None)
    if shared is not None:
        shape, dtype = shared
        ct.array = np.frombuffer(region, np.dtype(dtype), int(np.prod(shape))).reshape(shape)
    return ct


def trim_heap(region: mmap.mmap | None = None) -> None:
    """glibc: hand the memory freed so far back to the system (elsewhere nothing happens), and unmap ``region``
    here if :func:`pack` left it mapped (the voxels were decoded into it: its pages stay the parent's)."""
    import ctypes

    if region is not None and not region.closed:
        try:
            region.close()
        except BufferError:  # something here still views the voxels: the mapping goes with it
            pass

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def crop_masks(lungs: np.ndarray, lesions: np.ndarray) -> tuple:
    """The final masks as sent to the scan process for the DICOM SEG: cropped to the box holding any label and
    packed into one byte per voxel (lungs 0-2 in the low bits, lesions 0-3 above): P001 17 MB instead of the 2 x 39 MB
    that the process pool pickles and pipes on the way to the last output."""
    from covidct.preprocess import bounding_box

    if lungs.dtype != np.uint8 or lesions.dtype != np.uint8 or lungs.max(initial=0) > 3 or lesions.max(initial=0) > 63:
        return lungs.shape, None, lungs, lesions  # not covidct's label maps: as they are
    box = bounding_box(np.bitwise_or(lungs, lesions))
    if box is None:
        box = tuple(slice(0, 0) for _ in lungs.shape)
    both = np.left_shift(lesions[box], 2)
    both |= lungs[box]
    return lungs.shape, tuple((s.start, s.stop) for s in box), both, None


def uncrop_masks(packed: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The full-size lungs and lesions again from :func:`crop_masks`' tuple."""
    shape, bounds, both, lesions_whole = packed
    if bounds is None:
        return both, lesions_whole
    box = tuple(slice(a, b) for a, b in bounds)
    lungs = np.zeros(shape, np.uint8)
    lesions = np.zeros(shape, np.uint8)
    np.bitwise_and(both, 3, out=lungs[box])
    np.right_shift(both, 2, out=lesions[box])
    return lungs, lesions
