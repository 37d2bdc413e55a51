"""A DICOM series decoded in two processes (covidct.io.decode_split) gives exactly what one process gives."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import UnsupportedInput
from covidct.io import decode_split, load_ct
from covidct.phantom import make_phantom, write_phantom

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")


@pytest.fixture
def split_on():
    decode_split.enable()
    yield
    decode_split.enable(False)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    ph = make_phantom(shape=(24, 96, 96), spacing=(5.0, 3.0, 3.0), seed=2, lesion_burden=0.1)
    return write_phantom(ph, tmp_path_factory.mktemp("split"), fmt="dicom")


def test_load_ct_in_two_processes_is_identical(series, split_on, monkeypatch):
    import os

    forks = []
    real_fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    split = load_ct(series)
    assert forks, "the series was not split"
    decode_split.enable(False)
    plain = load_ct(series)
    np.testing.assert_array_equal(split.array, plain.array)
    assert split.spacing == plain.spacing and np.array_equal(split.affine, plain.affine)
    assert [s.sop_instance_uid for s in split.slices] == [s.sop_instance_uid for s in plain.slices]
    assert split.warnings == plain.warnings


def _volume(n: int):
    vol = decode_split.empty((n, 4, 4), np.float32)
    return vol, {i: vol[i] for i in range(n)}


def test_rows_in_shared_memory_and_values_come_back_in_order(split_on):
    vol, rows = _volume(20)

    def decode(i):
        if i % 5 == 0:
            return ValueError(f"bad {i}")  # a returned error is a result, as in dicom_volume
        if i % 7 == 0:
            return f"header {i}", np.full((3, 3), i, np.float32)  # not a row of the volume: sent back pickled
        rows[i][...] = i
        return f"header {i}", rows[i]

    out = decode_split.decode_all(list(range(20)), decode, lambda i: rows[i])
    assert len(out) == 20
    for i, r in enumerate(out):
        if i % 5 == 0:
            assert isinstance(r, ValueError) and str(r) == f"bad {i}"
        elif i % 7 == 0:
            assert r[0] == f"header {i}" and np.array_equal(r[1], np.full((3, 3), i))
        else:
            assert r[0] == f"header {i}" and r[1] is rows[i] and np.all(vol[i] == i)  # the helper's writes are seen


def test_an_error_raised_in_the_helpers_half_is_raised_here(split_on):
    vol, rows = _volume(20)

    def decode(i):
        if i == 17:
            raise UnsupportedInput("colour DICOM image")
        return "h", rows[i]

    with pytest.raises(UnsupportedInput, match="colour"):
        decode_split.decode_all(list(range(20)), decode, lambda i: rows[i])


def test_a_helper_that_cannot_send_its_results_is_replaced_here(split_on):
    import threading

    vol, rows = _volume(20)
    lock = threading.Lock()  # cannot be pickled: the helper fails to send, this process decodes its half itself

    def decode(i):
        rows[i][...] = i
        return lock, rows[i]

    out = decode_split.decode_all(list(range(20)), decode, lambda i: rows[i])
    assert [r[0] is lock for r in out] == [True] * 20 and np.all(vol == np.arange(20)[:, None, None])


def test_off_or_few_files_decodes_here():
    assert not decode_split._ENABLED
    assert decode_split.decode_all([1, 2, 3], lambda i: i * 2, lambda i: None) == [2, 4, 6]
    assert isinstance(decode_split.empty((2, 2), np.float32), np.ndarray)


def test_a_series_decoded_into_the_parents_region_arrives_without_a_copy(series):
    """``analyze``'s scan process decodes straight into the region its parent reads (covidct.commands.scan_transfer):
    the parent gets the same voxels as a plain load, ``pack`` writes nothing into the region, and the region
    is then unmapped in the scan process."""
    import os

    from covidct.commands import scan_transfer

    region = scan_transfer.new_region()
    assert region is not None
    plain = load_ct(series)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the scan process
        code = 1
        try:
            os.close(r)
            decode_split.enable(region=region)
            ct = load_ct(series)
            in_place = scan_transfer.in_region(ct.array, region)
            data = scan_transfer.pack(ct, region)
            copied = region.closed  # pack closes the region after copying into it
            del ct
            scan_transfer.trim_heap(region)
            os.write(w, bytes([in_place, copied, region.closed]) + data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        sent = f.read()
    assert os.waitpid(pid, 0)[1] == 0
    assert sent[:3] == b"\x01\x00\x01"  # decoded in the region, not copied again; then unmapped there
    got = scan_transfer.unpack(sent[3:], region)
    np.testing.assert_array_equal(got.array, plain.array)
    assert [s.sop_instance_uid for s in got.slices] == [s.sop_instance_uid for s in plain.slices]
