"""Arms down: the simulation of what a patient's arms beside the chest add to a reconstruction
(covidct.evaluate.arms) and what `analyze` makes of it on a phantom."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.evaluate.arms import CORTEX_HU, arms_down_simulated
from covidct.evaluate.hu_volumes import hu_lung_reference
from covidct.evaluate.metal import body_of_slice
from covidct.phantom import make_phantom


@pytest.fixture(scope="module")
def healthy():
    # a wide field of view (the body about 60 % of it), so that the arms show in the image too
    return make_phantom(seed=212, lesions=False, effusion=False, shape=(16, 112, 112), spacing=(10.0, 4.4, 4.4))


@pytest.fixture(scope="module")
def arms(healthy):
    return {n: arms_down_simulated(healthy.ct, photons=n) for n in (1e5, 2e4)}


def test_the_arms_lie_beside_the_chest_and_add_noise_in_the_lung(healthy, arms):
    ct = healthy.ct
    lung = hu_lung_reference(ct.array, ct.spacing)
    sim, mask = arms[1e5]
    assert mask.any((1, 2)).all()  # from the lowest slice to the apex (this phantom's lung field reaches the top)
    z, y, x = np.nonzero(mask)
    mid = ct.shape[2] / 2
    assert (x < mid).any() and (x > mid).any()  # both arms
    for k in np.unique(z):
        assert not (mask[k] & body_of_slice(ct.array[k])).any()  # beside the body, not in it
    assert (sim.array[mask] == CORTEX_HU).any()  # the humerus
    spread = {n: float(np.std((s.array - ct.array)[lung])) for n, (s, _) in arms.items()}
    assert 3.0 < spread[1e5] < spread[2e4]  # photon starvation: the lower the dose, the more noise in the lung
    again, _ = arms_down_simulated(ct, photons=1e5)
    np.testing.assert_array_equal(again.array, sim.array)  # deterministic per seed


def test_analyze_reads_a_healthy_chest_with_arms_down_as_normal_and_warns_of_the_noise(healthy, arms):
    from covidct.pipeline import analyze

    report = analyze(arms[2e4][0], None).report
    assert report["diagnosis"]["label"] == "normal"
    assert not [w for w in report["warnings"] if "metal" in w]  # bone is not metal
    (noise,) = [w for w in report["warnings"] if w.startswith("the lung is noisier")]
    assert "the arms down beside the chest" in noise
    assert not [w for w in analyze(healthy.ct, None).report["warnings"] if "noisier" in w]
