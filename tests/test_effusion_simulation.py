"""Free pleural fluid as the benchmarks simulate it (covidct.evaluate.acquisitions.layering_effusion_simulated): it
settles behind a level surface in a supine patient, deepest where the lung reaches farthest back."""

import numpy as np
import pytest

from covidct.evaluate.acquisitions import layering_effusion_simulated
from covidct.evaluate.hu_volumes import hu_lung_reference
from covidct.phantom import make_phantom


def test_layered_fluid_fills_the_back_of_the_chosen_side_behind_a_level_surface():
    ct = make_phantom(seed=3, shape=(40, 128, 128), spacing=(5.0, 2.7, 2.7), lesions=False, effusion=False).ct
    field = hu_lung_reference(ct.array, ct.spacing)
    middle = float(np.median(np.nonzero(field)[2]))
    right_field = field & (np.arange(field.shape[2]) < middle)[None, None, :]

    wet, region = layering_effusion_simulated(ct, 0.2, ("right",))
    assert region.any() and not region[:, :, int(np.ceil(middle)):].any()  # the patient's right only
    assert region.sum() / right_field.sum() == pytest.approx(0.2, abs=0.02)
    # a level surface: every fluid voxel lies behind (at a larger row than) every dry voxel of that side's field
    assert np.nonzero(region)[1].min() > np.nonzero(right_field & ~region)[1].max()
    assert abs(float(np.median(wet.array[region])) - 10.0) < 2.0  # water, noise SD 10
    assert np.array_equal(wet.array[~region], ct.array[~region].astype(np.float32))

    both, region2 = layering_effusion_simulated(ct, 0.2)
    assert region2[:, :, : int(middle)].any() and region2[:, :, int(np.ceil(middle)):].any()
    assert "layering-effusion-right+left0.2" in both.path
    with pytest.raises(ValueError, match="sides"):
        layering_effusion_simulated(ct, 0.2, ("posterior",))
