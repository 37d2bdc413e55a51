"""Free pleural fluid inside the rib cage (covidct.pipeline.pleural): found behind the lung, never in the back muscles
outside the ribs or in the mediastinum, and labelled effusion by the pipeline."""

import numpy as np
from scipy import ndimage

from covidct.evaluate.acquisitions import layering_effusion_simulated
from covidct.labels import EFFUSION
from covidct.phantom import make_phantom
from covidct.pipeline.pleural import rib_bounded_fluid


def _dry_phantom():
    return make_phantom(seed=3, shape=(40, 128, 128), spacing=(5.0, 2.7, 2.7), lesions=False, effusion=False)


def test_fluid_behind_the_lung_is_found():
    ph = _dry_phantom()
    wet, region = layering_effusion_simulated(ph.ct, 0.2, ("right",))
    lungs = np.where(region, 0, ph.lungs).astype(np.uint8)  # the fluid is not lung
    found = rib_bounded_fluid(wet.array, lungs, wet.spacing)
    assert (found & region).sum() >= 0.6 * region.sum()
    assert (found & ~region).sum() <= 0.1 * found.sum()


def test_water_dense_muscle_outside_the_ribs_is_not_fluid():
    # on coarse voxels the back muscles mix with fat to water density: the rib cage, not density, separates them
    ph = _dry_phantom()
    hu = ph.ct.array.copy()
    # the back wall under each lung: in the columns of a slice whose last bone (the ribs of the two slices above and
    # below too, as they run obliquely) lies behind the lung, the rows behind that bone
    bone = ndimage.maximum_filter1d(hu > 200, size=5, axis=0)
    rows = np.arange(hu.shape[1])[None, :, None]
    last_bone = hu.shape[1] - 1 - np.argmax(bone[:, ::-1, :], axis=1)  # (z, x)
    last_lung = ph.lungs.shape[1] - 1 - np.argmax((ph.lungs > 0)[:, ::-1, :], axis=1)
    lung_below = (ph.lungs > 0).any(axis=1) & bone.any(axis=1) & (last_bone > last_lung)
    behind_ribs = ph.body & lung_below[:, None, :] & (rows > last_bone[:, None, :]) & (hu > -200)
    assert behind_ribs.sum() > 1000
    hu[behind_ribs] = 15.0  # water density
    assert not (rib_bounded_fluid(hu, ph.lungs, ph.ct.spacing) & behind_ribs).any()


def test_analyze_labels_the_settled_fluid_effusion_and_none_in_a_dry_chest():
    from covidct.pipeline.analyzer import Analyzer

    ph = _dry_phantom()
    assert not (Analyzer()(ph.ct).lesions == EFFUSION).any()
    wet, region = layering_effusion_simulated(ph.ct, 0.2, ("right",))
    analysis = Analyzer()(wet)
    effusion = analysis.lesions == EFFUSION
    assert (effusion & region).sum() >= 0.5 * region.sum()
    assert not (analysis.lungs[effusion]).any()


def test_a_thin_layer_is_found_alike_whatever_the_pixel_size():
    # the opening that drops the pleura and thin muscle is 2 mm whatever the grid (a radius rounded to whole pixels
    # made it 2.5 mm on 1.27 mm pixels: a 9 mm layer found at 0.22, but 0.40 on 1.5 mm ones), and a 3x3 median keeps
    # the layer's pixels beside the lung (a mean averaged them with it: 0.38-0.40 with the mm opening)
    found = []
    for pixel in (1.27, 1.5):
        ph = make_phantom(seed=3, shape=(40, 256, 256), spacing=(5.0, pixel, pixel), lesions=False, effusion=False)
        wet, region = layering_effusion_simulated(ph.ct, 0.02, ("right",))
        lungs = np.where(region, 0, ph.lungs).astype(np.uint8)
        fluid = rib_bounded_fluid(wet.array, lungs, wet.spacing)
        found.append((fluid & region).sum() / region.sum())
    assert min(found) >= 0.6
    assert abs(found[0] - found[1]) <= 0.05


def test_airless_lung_outside_the_mask_is_warned_and_a_dry_chest_is_not():
    # dependent consolidation (35 HU, bronchi and vessels kept) is left out of the lung mask: measured and warned
    from covidct.evaluate.hu_volumes import dependent_consolidation_simulated
    from covidct.pipeline.analyzer import Analyzer

    def airless(report):
        return [w for w in report["warnings"] if "soft-tissue-dense tissue" in w]

    ph = _dry_phantom()
    assert not airless(Analyzer()(ph.ct).report)
    consolidated, region = dependent_consolidation_simulated(ph.ct, 0.15)
    analysis = Analyzer()(consolidated)
    warned = airless(analysis.report)
    assert len(warned) == 1
    ml = float(warned[0].split(" mL")[0])
    assert 0.3 * region.sum() * consolidated.voxel_volume_ml <= ml <= 1.1 * region.sum() * consolidated.voxel_volume_ml
    assert (analysis.lungs[region] > 0).mean() < 0.1  # the mask still leaves it out: only the warning tells
