"""The scan process hands the voxels over in shared memory, and the rest of the CT pickled."""

from __future__ import annotations

import mmap
import os
import pickle

import numpy as np
import pytest

from covidct.commands import scan_transfer
from covidct.volume import CT


def _ct(shape=(4, 6, 5)) -> CT:
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 1000
    return CT(array=arr, spacing=(2.0, 0.7, 0.7), affine=np.eye(4), is_hu=True, kind="dicom", meta={"a": 1})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_voxels_written_by_a_forked_child_arrive_through_the_region():
    region = scan_transfer.new_region()
    assert region is not None
    ct = _ct((8, 64, 64))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the scan process
        os.close(r)
        data = scan_transfer.pack(ct, region)
        os.write(w, len(data).to_bytes(8, "little") + data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        data = f.read(n)
    os.waitpid(pid, 0)
    assert len(data) < ct.array.nbytes  # the voxels did not travel in the pickle
    got = scan_transfer.unpack(data, region)
    np.testing.assert_array_equal(got.array, ct.array)
    assert got.meta == {"a": 1} and got.array.dtype == np.float32


def test_a_scan_too_large_for_the_region_is_pickled_whole():
    region = mmap.mmap(-1, 16)
    ct = _ct()
    data = scan_transfer.pack(ct, region)
    assert not region.closed
    np.testing.assert_array_equal(scan_transfer.unpack(data, region).array, ct.array)
    np.testing.assert_array_equal(scan_transfer.unpack(scan_transfer.pack(ct, None), None).array, ct.array)


def test_masks_cropped_and_packed_for_the_seg_come_back_exactly() -> None:
    """The final masks go to the scan process cropped to their box and packed into one byte per voxel: the SEG writer
    gets them back voxel for voxel (effusion outside the lungs included), and other label maps pass as they are."""
    from covidct.commands.scan_transfer import crop_masks, uncrop_masks

    rng = np.random.default_rng(0)
    lungs = np.zeros((20, 64, 64), np.uint8)
    lesions = np.zeros_like(lungs)
    lungs[4:15, 10:40, 8:30] = rng.integers(0, 3, (11, 30, 22))
    lesions[3:12, 30:50, 20:60] = rng.integers(0, 4, (9, 20, 40))  # reaches outside the lungs' box
    packed = crop_masks(lungs, lesions)
    assert packed[2].nbytes < lungs.nbytes and packed[3] is None
    back = uncrop_masks(pickle.loads(pickle.dumps(packed)))
    assert np.array_equal(back[0], lungs) and np.array_equal(back[1], lesions)
    empty = uncrop_masks(crop_masks(np.zeros_like(lungs), np.zeros_like(lesions)))
    assert not empty[0].any() and not empty[1].any() and empty[0].shape == lungs.shape
    other = lungs.astype(np.int16) * 100  # not covidct's label values: sent as they are
    back = uncrop_masks(crop_masks(other, lesions))
    assert back[0] is other and back[1] is lesions
