"""The CT pulmonary angiography simulation (covidct.evaluate.acquisitions) and a lesion-free phantom read through it."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.evaluate.acquisitions import contrast_enhanced_simulated
from covidct.evaluate.hu_volumes import hu_lung_reference
from covidct.phantom import make_phantom

SHAPE = dict(shape=(24, 160, 160), spacing=(5.0, 2.2, 2.2))


@pytest.fixture(scope="module")
def healthy():
    return make_phantom(seed=210, lesions=False, effusion=False, **SHAPE)


def test_only_the_lung_fields_blood_is_enhanced(healthy):
    ct = healthy.ct
    sim = contrast_enhanced_simulated(ct, 400.0)
    field = hu_lung_reference(ct.array, ct.spacing)
    gain = sim.array - ct.array
    assert np.all(gain >= 0) and np.all(gain <= 360.0 + 1e-3)
    assert not gain[~field].any()  # the body, mediastinum and organs as they were
    assert not gain[ct.array > 150].any()  # bone stays
    lung = field & (ct.array < -800)
    vessel = field & (ct.array > -100)
    assert np.median(gain[lung]) < 20.0  # aerated lung: a few HU of blood in it
    assert np.median(gain[vessel]) > 200.0  # vessels inside the lung: most of the way to 400 HU
    same = contrast_enhanced_simulated(ct, 40.0)  # no contrast: nothing moves
    np.testing.assert_array_equal(same.array, ct.array)


def test_a_lesion_free_phantom_as_ctpa_reads_normal(healthy):
    """Enhanced vessels' partial-volume shells are denser, but are not ground glass."""
    from covidct.pipeline import analyze

    for ct in (healthy.ct, contrast_enhanced_simulated(healthy.ct, 400.0)):
        report = analyze(ct, None).report
        assert report["diagnosis"]["label"] == "normal"
        assert report["lesions"]["ggo_ml"] + report["lesions"]["consolidation_ml"] < 5.0


def test_gapped_slices_keep_their_place_thickness_and_files():
    """Every k-th slice: positions, files and thickness kept, spacing k times, the affine following."""
    from covidct.evaluate.acquisitions import gapped_slices
    from covidct.volume import CT, SliceRef

    arr = np.arange(10 * 4 * 5, dtype=np.float32).reshape(10, 4, 5)
    aff = np.diag([-0.7, -0.7, 2.0, 1.0])
    aff[:3, 3] = (10.0, 20.0, -50.0)
    slices = [SliceRef(index=i, z_mm=-50.0 + 2.0 * i, file=f"IM{i}.dcm") for i in range(10)]
    ct = CT(array=arr, spacing=(2.0, 0.7, 0.7), affine=aff, is_hu=True, kind="dicom", slices=slices,
            meta={"slice_thickness": 2.0})
    g = gapped_slices(ct, 3, start=1)
    np.testing.assert_array_equal(g.array, arr[1::3])
    assert g.spacing == (6.0, 0.7, 0.7) and g.meta["slice_thickness"] == 2.0
    assert [s.file for s in g.slices] == ["IM1.dcm", "IM4.dcm", "IM7.dcm"] and [s.index for s in g.slices] == [0, 1, 2]
    for i, s in enumerate(g.slices):  # each kept slice where it was
        assert (g.affine @ [0, 0, i, 1])[2] == pytest.approx(s.z_mm)


def test_a_thin_acquisition_averages_back_to_the_series_with_more_noise(healthy):
    """k thin slices per slice: their mean is the original slice, each is about sqrt(k) times as noisy (the lung-noise
    measure), and they lie where the original slice's thickness was, labels following their original slice."""
    import dataclasses

    from covidct.evaluate.acquisitions import thin_acquired
    from covidct.pipeline.hu_rules import lung_noise
    from covidct.volume import SliceRef

    ct = healthy.ct
    ct = dataclasses.replace(ct, slices=[SliceRef(index=i, z_mm=float((ct.affine @ [0, 0, i, 1])[2]), file=f"IM{i}.dcm")
                                         for i in range(ct.n_slices)])
    lungs = hu_lung_reference(ct.array, ct.spacing)
    labels = {f"IM{i}.dcm": i % 2 for i in range(ct.n_slices) if i != 3}
    for k in (2, 3):
        thin, y, nearest = thin_acquired(ct, k, labels, seed=1)
        assert thin.shape == (ct.n_slices * k, *ct.shape[1:]) and thin.spacing[0] == pytest.approx(ct.spacing[0] / k)
        np.testing.assert_allclose(thin.array.reshape(ct.n_slices, k, *ct.shape[1:]).mean(1), ct.array, atol=0.05)
        ratio = lung_noise(thin.array, np.repeat(lungs, k, axis=0)) / lung_noise(ct.array, lungs)
        assert np.sqrt(k) * 0.85 < ratio < np.sqrt(k) * 1.15
        np.testing.assert_array_equal(nearest, np.arange(ct.n_slices * k) // k)
        # the thin slices' centres spread over the original slice's thickness, the same way in the affine
        for i in (0, k - 1, k * ct.n_slices - 1):
            world = thin.affine @ [0, 0, i, 1]
            original = ct.affine @ [0, 0, i // k, 1]
            assert world[2] - original[2] == pytest.approx(((i % k) - (k - 1) / 2) * ct.spacing[0] / k * np.sign(ct.affine[2, 2]))
        assert list(y) == [-1 if j == 3 else j % 2 for j in nearest]
        assert [s.z_mm for s in thin.slices] == pytest.approx([(thin.affine @ [0, 0, i, 1])[2] for i in range(len(y))])
