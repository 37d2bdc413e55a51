"""Metal implants: the streak simulation (covidct.evaluate.metal) and what `analyze` says of a series with metal."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.evaluate.hu_volumes import hu_lung_reference
from covidct.evaluate.metal import STORED_MAX_HU, metal_implant_simulated
from covidct.phantom import make_phantom

SHAPE = dict(shape=(24, 160, 160), spacing=(5.0, 2.2, 2.2))


@pytest.fixture(scope="module")
def healthy():
    return make_phantom(seed=211, lesions=False, effusion=False, **SHAPE)


@pytest.fixture(scope="module")
def implants(healthy):
    return {name: metal_implant_simulated(healthy.ct, name) for name in ("pacemaker", "spinal rods")}


def test_each_implant_sits_where_it_belongs_and_streaks_only_its_slices(healthy, implants):
    ct = healthy.ct
    lung = hu_lung_reference(ct.array, ct.spacing)
    mid_x, lung_rows = ct.shape[2] / 2, np.flatnonzero(lung.any((0, 2)))
    for name, (sim, metal) in implants.items():
        assert metal.any() and not (metal & lung).any()  # never in the lung
        np.testing.assert_array_equal(sim.array[metal], STORED_MAX_HU)
        z, y, x = np.nonzero(metal)
        if name == "pacemaker":  # the can in the left (high x) front chest wall, in the upper part of the lungs
            assert np.percentile(x, 75) > mid_x and y.min() < lung_rows.min()
        else:  # two rods behind the lungs' middle, either side of the midline
            assert abs(x.mean() - mid_x) < 10 and y.mean() > lung_rows.mean()
            assert (x < mid_x).any() and (x > mid_x).any()
        on = metal.any((1, 2))
        np.testing.assert_array_equal(sim.array[~on], ct.array[~on])  # no metal on a slice, no streak
        streak = np.abs(sim.array - ct.array)[on[:, None, None] & ~metal].max()
        assert streak > 50.0  # the streaks are there
    again, _ = metal_implant_simulated(ct, "spinal rods")
    np.testing.assert_array_equal(again.array, implants["spinal rods"][0].array)  # deterministic per seed
    with pytest.raises(ValueError, match="unknown implant"):
        metal_implant_simulated(ct, "hip")


def test_analyze_warns_of_metal_and_only_then(healthy, implants):
    from covidct.pipeline import analyze
    from covidct.pipeline.diagnosis import metal_warnings

    assert metal_warnings(healthy.ct, healthy.lungs, True) == []
    report = analyze(healthy.ct, None).report
    assert not [w for w in report["warnings"] if "metal" in w]
    sim, metal = implants["pacemaker"]
    analysis = analyze(sim, None)
    report = analysis.report
    said = [w for w in report["warnings"] if w.startswith("metal or undiluted contrast")]
    with_lung = int(analysis.lungs.any((1, 2)).sum())
    on = int((metal.any((1, 2)) & analysis.lungs.any((1, 2))).sum())
    assert len(said) == 1 and f"on {on} of the {with_lung} slices with lung" in said[0]
    assert report["diagnosis"]["label"] == "normal"  # the streaks are not read as disease
    assert metal_warnings(sim, healthy.lungs, False) == []  # not what the HU rule did not read (2-D images, display)
    below = healthy.lungs.copy()
    below[metal.any((1, 2))] = 0
    assert metal_warnings(sim, below, True) == []  # metal only on slices without lung: its streaks miss the lungs
