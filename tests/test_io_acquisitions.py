"""One series holding two acquisitions over the same positions (e.g. inspiration and expiration): read as the first
acquisition, with a warning naming the other. Before, its repeated positions with other pixels refused the series."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from conftest_io_helpers import make_series, phantom_hu
from covidct.io import load_ct


def _number(paths, acquisition) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.AcquisitionNumber = acquisition if not callable(acquisition) else acquisition(ds)
        ds.save_as(p)


def test_two_acquisitions_over_the_same_positions_read_as_the_first(tmp_path):
    uid, study = generate_uid(), generate_uid()
    first, second = phantom_hu(seed=1), phantom_hu(seed=2)
    _number(make_series(tmp_path / "s", second, series_uid=uid, study_uid=study, prefix="B", seed=3), 2)
    _number(make_series(tmp_path / "s", first, series_uid=uid, study_uid=study, prefix="A", seed=4), 1)
    ct = load_ct(tmp_path / "s")
    np.testing.assert_array_equal(ct.array, first.transpose(2, 1, 0))
    (w,) = [w for w in ct.warnings if w.startswith("folder holds 2 series")]
    assert "acquisition 1," in w and "acquisition 2," in w.split("also found")[1]


def test_a_sequential_scan_numbering_each_table_position_stays_one_series(tmp_path):
    """Step-and-shoot scanners number each rotation's slices as an acquisition: no position repeats, no split."""
    hu = phantom_hu()
    paths = make_series(tmp_path / "s", hu)
    _number(paths, lambda ds: int(ds.InstanceNumber) // 2)  # 2 slices per rotation
    ct = load_ct(tmp_path / "s")
    np.testing.assert_array_equal(ct.array, hu.transpose(2, 1, 0))
    assert not any("acquisition" in w for w in ct.warnings)


def test_repeated_positions_within_one_acquisition_are_still_refused(tmp_path):
    from covidct.errors import InconsistentSeries

    uid = generate_uid()
    _number(make_series(tmp_path / "s", phantom_hu(seed=1), series_uid=uid, prefix="A", seed=3), 1)
    _number(make_series(tmp_path / "s", phantom_hu(seed=2), series_uid=uid, prefix="B", seed=4), 1)
    try:
        load_ct(tmp_path / "s")
    except InconsistentSeries as e:
        assert "same position" in str(e)
    else:
        raise AssertionError("two slices at one position with different pixels were stacked")
