"""Each pattern phantom preset gets its RSNA category (features measured on its exact labels and HU)."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.labels import EFFUSION
from covidct.pattern import analyse_pattern
from covidct.phantom.patterns import EXPECTED, PRESETS, make_pattern_phantom

# the diagnosis each pattern should lead to; None: only "not COVID-19" is asserted
SIZE = {"shape": (48, 160, 160), "spacing": (4.5, 2.1, 2.1)}  # small and quick; seeds 0-3 all pass here
LABELS = {"typical": "covid19", "unilateral": None, "lobar": "pneumonia", "nodules": "pneumonia",
          "effusion_septal": "pneumonia", "normal": "normal"}


@pytest.fixture(scope="module")
def results() -> dict:
    out = {}
    for preset in PRESETS:
        ph = make_pattern_phantom(preset, seed=0, **SIZE)
        out[preset] = (ph, analyse_pattern(ph.lungs, ph.lesions, ph.ct.spacing, ph.ct.array))
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_gets_its_category(results, preset) -> None:
    ph, res = results[preset]
    assert res.rsna_category == EXPECTED[preset], res.reasons
    assert ph.truth["pattern_preset"] == preset
    if LABELS[preset] is not None:
        assert res.label == LABELS[preset], res.probabilities
    if preset != "typical":
        assert res.label != "covid19" or preset == "unilateral"


def test_presets_have_their_defining_features(results) -> None:
    f = {p: r.features for p, (_, r) in results.items()}
    assert f["typical"]["minor_side_share"] > 0.3 and f["typical"]["peripheral_fraction"] > 0.5
    assert f["typical"]["ggo_fraction"] > 0.9
    assert f["unilateral"]["minor_side_share"] == 0.0 and results["unilateral"][1].co_rads == 4
    assert f["lobar"]["largest_consolidation_percent"] > 100 / 36 and f["lobar"]["ggo_fraction"] < 0.1
    assert f["nodules"]["n_nodules"] >= 5
    assert f["effusion_septal"]["effusion_sides"] == 2
    assert f["effusion_septal"]["septal_line_fraction"] > 3 * f["normal"]["septal_line_fraction"]
    assert f["normal"]["opacity_ml"] == 0.0 and f["normal"]["septal_line_fraction"] < 0.08


def test_preset_labels_are_consistent() -> None:
    ph = make_pattern_phantom("effusion_septal", seed=1, **SIZE)
    eff = ph.lesions == EFFUSION
    assert eff.any() and not (ph.lungs[eff] > 0).any()  # effusion voxels leave the lung label
    assert ph.truth["lesion_volume_ml"]["effusion"] > 0
    nod = make_pattern_phantom("nodules", seed=1, **SIZE)
    assert np.all(nod.lungs[nod.lesions == 2] > 0)  # nodules lie in the lungs
    with pytest.raises(ValueError, match="unknown pattern preset"):
        make_pattern_phantom("cavitation")
