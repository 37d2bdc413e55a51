"""A DICOM series decoded in place (rows in position order, from the headers) is the stacked series, exactly."""

from __future__ import annotations

import numpy as np

from covidct.io import dicom_volume
from covidct.io.dicom import load_dicom_folder
from covidct.phantom import make_phantom, write_phantom


def _load_stacked(folder, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(dicom_volume, "_sorted_slots", lambda paths, headers: None)
        return load_dicom_folder(folder)


def test_in_place_decoding_gives_the_stacked_volume(tmp_path, monkeypatch):
    folder = write_phantom(make_phantom(shape=(12, 64, 64), seed=4), tmp_path, fmt="dicom", shuffle_names=True)
    calls = []
    real_stack = np.stack
    monkeypatch.setattr(dicom_volume.np, "stack", lambda *a, **k: calls.append(1) or real_stack(*a, **k))
    ct = load_dicom_folder(folder)
    assert calls == []  # filled in place, never stacked
    monkeypatch.undo()
    ref = _load_stacked(folder, monkeypatch)
    np.testing.assert_array_equal(ct.array, ref.array)
    assert ct.array.flags.c_contiguous and ct.array.dtype == np.float32
    np.testing.assert_array_equal(ct.affine, ref.affine)
    assert ct.meta["source_files"] == ref.meta["source_files"]


def test_a_series_with_an_unreadable_slice_is_stacked_as_before(tmp_path, monkeypatch):
    folder = write_phantom(make_phantom(shape=(10, 48, 48), seed=5), tmp_path, fmt="dicom")
    victim = sorted(folder.glob("*"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 2000])  # truncated pixel data: the slice is skipped with a warning
    ct = load_dicom_folder(folder)
    ref = _load_stacked(folder, monkeypatch)
    np.testing.assert_array_equal(ct.array, ref.array)
    assert ct.n_slices == 9 and any("skipped" in w for w in ct.warnings)
