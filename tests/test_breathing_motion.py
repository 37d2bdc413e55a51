"""Breathing during the scan: the motion simulation (covidct.evaluate.motion) and `analyze` on a moved phantom."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from covidct.evaluate.hu_volumes import hu_lung_reference
from covidct.evaluate.motion import breathing_motion_simulated
from covidct.phantom import make_phantom


@pytest.fixture(scope="module")
def healthy():
    return make_phantom(seed=213, lesions=False, effusion=False, shape=(16, 112, 112), spacing=(8.0, 3.5, 3.5))


def test_motion_grows_from_the_apex_to_the_bases(healthy):
    ct = healthy.ct
    still = breathing_motion_simulated(ct, 0.0)
    np.testing.assert_array_equal(still.array, ct.array)
    moved = breathing_motion_simulated(ct, 15.0)
    step = breathing_motion_simulated(ct, 15.0, "step")
    assert np.abs(step.array - ct.array).mean() > np.abs(moved.array - ct.array).mean()  # the harshest profile
    lung = hu_lung_reference(ct.array, ct.spacing)
    zs = np.flatnonzero(lung.any((1, 2)))
    change = np.abs(moved.array - ct.array).mean((1, 2))
    np.testing.assert_array_equal(moved.array[zs.max() :], ct.array[zs.max() :])  # the apex does not move
    mid = (zs.min() + zs.max()) // 2
    lower, upper = change[zs.min() : mid].mean(), change[mid : zs.max()].mean()
    assert lower > upper > 0  # the bases move most
    np.testing.assert_array_equal(breathing_motion_simulated(ct, 15.0).array, moved.array)  # deterministic
    with pytest.raises(ValueError, match="unknown motion profile"):
        breathing_motion_simulated(ct, 10.0, "jerky")
    with pytest.raises(ValueError, match="no lung field"):
        breathing_motion_simulated(dataclasses.replace(ct, array=np.full_like(ct.array, 40.0)), 10.0)


def test_analyze_reads_a_healthy_chest_that_breathed_as_normal(healthy):
    from covidct.pipeline import analyze

    # the bases moving steadily by 10 mm over each rotation; with the second half of the views moved at once by 20 mm
    # (the harshest profile) this phantom's heart border smeared over the left lung base as 53 mL of ground glass
    report = analyze(breathing_motion_simulated(healthy.ct, 10.0), None).report
    assert report["diagnosis"]["label"] == "normal"
