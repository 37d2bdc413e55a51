"""The HU rules of the lungs and lesions stages (covidct.pipeline.hu_rules) on generated volumes."""

from __future__ import annotations

import numpy as np

from covidct.labels import CONSOLIDATION, GGO
from covidct.pipeline.hu_rules import (
    aerated_lung_hu,
    drop_tubes,
    drop_vessel_pieces,
    elongation,
    hu_lesions,
    hu_lungs,
    lung_noise,
    trim_lung_border,
)

SP = (2.0, 1.0, 1.0)


def _chest(nz=30, n=96, seed=0):
    """Soft tissue with two aerated lungs (about -850 HU, noisy) and a trachea between them in the top slices."""
    rng = np.random.default_rng(seed)
    hu = np.full((nz, n, n), 30.0, np.float32)
    lungs = np.zeros(hu.shape, bool)
    lungs[3:nz - 3, 16:80, 10:38] = True
    lungs[3:nz - 3, 16:80, 58:86] = True
    hu[lungs] = -850 + rng.normal(0, 15, int(lungs.sum()))
    hu[nz - 8:, 40:46, 45:51] = -1000  # trachea: small, central, above the lungs' top slices
    return hu, lungs


def test_shape_measures():
    rng = np.random.default_rng(0)
    tube = np.c_[rng.uniform(0, 40, 500), rng.normal(0, 1, 500), rng.normal(0, 1, 500)]
    blob = rng.normal(0, 5, (500, 3))
    assert elongation(tube) > 5 and elongation(blob) < 1.5
    m = np.zeros((20, 40, 40), bool)
    m[2:18, 5:8, 5:8] = True  # a tube along z
    m[5:12, 20:32, 20:32] = True  # a blob
    out = drop_tubes(m, SP, 3.0)
    assert not out[:, 5:8, 5:8].any() and out[5:12, 20:32, 20:32].all()


def test_vessel_pieces_are_dropped_lesions_kept():
    dense = np.zeros((30, 60, 60), bool)
    dense[0:30, 28:32, 28:32] = True  # vessels along z and along x ...
    dense[14:17, 28:32, 0:60] = True
    dense[13:17, 26:34, 26:34] = True  # ... and their thick bifurcation: a small share of the branching structure
    dense[3:13, 40:52, 40:52] = True  # a consolidation with a thin vessel leaving it: most of its own structure
    dense[8, 45, 52:60] = True
    opened = np.zeros_like(dense)
    opened[13:17, 26:34, 26:34] = True  # what an opening keeps of each
    opened[3:13, 40:52, 40:52] = True
    out = drop_vessel_pieces(opened, dense, SP, 0.35, 20.0)
    assert not out[13:17, 26:34, 26:34].any() and out[3:13, 40:52, 40:52].all()
    assert (drop_vessel_pieces(opened, dense, SP, 0.0, 20.0) == opened).all()
    # a lesion on a large vessel tree: only the vessels near it count, not the whole tree
    tree = np.zeros((40, 120, 120), bool)
    tree[20, 5:115, 58:62] = True  # a long vessel ...
    tree[5:35, 5:115, 10:14] = True  # ... joined to a large network far from the lesion
    tree[10:35, 10:14, 10:60] = True
    tree[16:24, 80:95, 52:67] = True  # a consolidation on the vessel, 60 mm from the network
    lesion = np.zeros_like(tree)
    lesion[16:24, 80:95, 52:67] = True
    assert lesion.sum() < 0.35 * tree.sum()  # against the whole tree it would be dropped
    assert drop_vessel_pieces(lesion, tree, SP, 0.35, 20.0)[lesion].all()


def test_lesions_keep_ggo_and_consolidation_drop_vessels():
    hu, lungs = _chest()
    hu[10:18, 30:45, 15:30] = -500  # GGO patch, 16 x 15 x 15 mm
    hu[12:20, 55:70, 66:81] = 20  # consolidation, 16 x 15 x 15 mm
    hu[5:25, 60, 20] = 40  # a 1-voxel vessel along z
    hu[15, 20:50, 70] = 40  # and one in-plane
    hu[15, 19:51, 69] = -500  # with its partial-volume shell
    les = hu_lesions(hu, SP, lungs.astype(np.uint8))
    assert (les[11:17, 32:43, 17:28] == GGO).all()
    assert (les[12:20, 55:70, 66:81] == CONSOLIDATION).mean() > 0.6  # the 3-D opening rounds a cube's edges
    assert (les[14:18, 58:67, 69:78] == CONSOLIDATION).all()
    assert not les[5:25, 60, 20].any() and not les[15, 19:51, 69:71].any()
    # a lesion-free chest stays clean
    hu0, lungs0 = _chest(seed=1)
    assert not hu_lesions(hu0, SP, lungs0.astype(np.uint8)).any()


def test_lungs_add_missed_air_drop_leaks_keep_lesions():
    hu, lungs = _chest()
    hu[12:16, 30:50, 18:30] = 20  # a consolidation inside the left lung
    model = lungs.copy()
    model[:, 16:50, 58:86] = False  # the model missed the front of one lung
    model[12:16, 30:50, 18:30] = True  # it did label the consolidation
    model[10:20, 85:92, 30:60] = True  # and leaked into soft tissue behind the lungs
    model[3:27, 50:60, 38:58] = True  # and into the mediastinum between them
    out = hu_lungs(hu, SP, model)
    assert out[3:27, 16:50, 58:86].mean() > 0.99  # the missed lung is back
    assert out[12:16, 30:50, 18:30].all()  # the consolidation stays (surrounded by lung)
    assert not out[10:20, 88:92, 30:60].any()  # the leak behind is gone beyond the 7 mm reach
    assert not out[3:27, 50:60, 46:50].any()  # so is the middle of the mediastinum
    assert not out[27:, 40:46, 45:51].any()  # the trachea was never lung


def test_lungs_add_missed_air_beyond_the_models_box():
    """Aerated lung the model missed far out from everything it labels (wider than the 7 mm margin around its
    mask) is still lung: the air search sees whole slices, where it is enclosed by the body (cap001's
    lateral right base), not a box where it would touch the edge like air outside the body."""
    hu, lungs = _chest()
    model = lungs.copy()
    model[:, :, 10:30] = False  # the model labels only the inner 8 mm of the right lung
    out = hu_lungs(hu, SP, model)
    assert out[3:27, 16:80, 10:38].mean() > 0.99
    assert not out[:, :, :8].any() and not out[:, :12].any()  # the body wall and the outside stay out


def test_lung_border_trim_drops_the_soft_tissue_rim_keeps_border_lesions():
    """A mask 2 voxels too wide wraps the pleura in soft tissue: the trim takes that rim off and nothing else;
    a labelled consolidation against the pleura stays, and so does aerated lung at the border."""
    hu, lungs = _chest()
    wide = np.zeros(hu.shape, np.uint8)
    wide[3:27, 14:82, 8:40] = 2
    wide[3:27, 14:82, 56:88] = 1
    lesions = np.zeros(hu.shape, np.uint8)
    hu[10:16, 40:50, 8:16] = 30  # a consolidation against the lateral chest wall, inside the wide mask ...
    lesions[10:16, 40:50, 8:16] = CONSOLIDATION  # ... and labelled
    out = trim_lung_border(wide, lesions, hu, SP)
    rim = (wide > 0) & ~lungs
    rim[10:16, 40:50, 8:16] = False
    assert not out[rim].any()  # the soft tissue rim is gone
    assert (out[lungs] == wide[lungs]).all()  # the lung keeps its labels (left / right)
    assert (out[10:16, 40:50, 8:16] == 2).all()  # the border lesion stays lung


def test_trachea_traced_from_the_neck_is_never_lung():
    """A trachea whose air is only about -900 HU (streaks at the thoracic inlet) runs from the neck down between
    the lungs; the model labels it with the lungs at their top: the lungs stage takes it out with its wall."""
    from covidct.pipeline.lungs import drop_trachea, trachea_from_neck

    hu, lungs = _chest(nz=40)
    lungs[30:] = False  # the neck: no lung in the top 10 slices
    hu[30:] = 30.0
    hu[8:, 44:58, 41:55] = 30.0  # the tracheal wall (soft tissue) ...
    hu[8:, 46:56, 43:53] = -905.0  # ... around a 1 cm² lumen, from the neck down to the carina at slice 8
    model = lungs.copy()
    model[20:30, 42:60, 39:57] = True  # the model's lung takes in the trachea at the top of the lungs
    traced = trachea_from_neck(model, hu, SP)
    assert traced[8:30, 46:56, 43:53].all() and traced.sum() == traced[8:30, 46:56, 43:53].size
    out = drop_trachea(model, hu, SP)
    assert not out[20:30, 43:57, 40:56].any()  # lumen and wall
    assert (out[lungs] == model[lungs]).all()  # the lungs themselves untouched
    # a scan that starts below the neck has no slice above the lungs to trace from: nothing is removed
    assert (drop_trachea(model[:30], hu[:30], SP) == model[:30]).all()


def test_thick_slices_drop_vessel_partial_volume_keep_lesions():
    """On 5 mm slices the GGO opening stays 3-D: a GGO-density patch seen in one slice only (a vessel's
    partial volume) goes, a lesion spanning three slices stays."""
    sp = (5.0, 1.0, 1.0)
    hu, lungs = _chest(nz=16)
    hu[7, 30:42, 15:27] = -550  # one slice only
    hu[6:9, 55:70, 62:77] = -500  # three slices
    les = hu_lesions(hu, sp, lungs.astype(np.uint8))
    assert not les[7, 30:42, 15:27].any()
    assert (les[7, 57:68, 64:75] == GGO).all()


def test_lungs_stage_does_not_fill_the_mediastinum_the_lungs_enclose():
    """Where the two lungs touch in front of and behind the mediastinum, a slice-by-slice hole fill makes it
    lung; the HU-volume lungs stage keeps the lungs' components and fills only holes enclosed in 3-D."""
    from covidct.pipeline.lungs import clean_lung_mask, keep_lung_components

    hu, lungs = _chest()
    ring = lungs.copy()
    ring[3:27, 16:22, 38:58] = True  # the lungs meet in front of the mediastinum
    ring[3:27, 74:80, 38:58] = True  # and behind it
    hu[ring & ~lungs] = -850
    filled = clean_lung_mask(ring, SP)
    assert filled[10, 40:60, 45:50].all()  # the old fill: mediastinum made lung
    kept = keep_lung_components(hu_lungs(hu, SP, ring))
    assert not kept[10, 40:60, 45:50].any()
    assert kept[10, 30:60, 15:30].all()


def _noisy_ggo_chest(noise_hu: float, seed: int = 0):
    """The test chest with a GGO patch in each lung, its lung (lesions included) under white noise of ``noise_hu``."""
    hu, lungs = _chest(nz=24, n=128, seed=seed)
    hu[lungs] = -850.0
    hu[6:16, 30:50, 15:33] = -640.0  # faint GGO (60 HU above the rule's floor), 20 x 20 x 18 mm
    hu[8:18, 40:60, 63:81] = -640.0
    hu[lungs] += np.random.default_rng(seed).normal(0, noise_hu, int(lungs.sum())).astype(np.float32)
    return hu, lungs


def test_lung_noise_measures_the_noise_of_aerated_lung_not_its_lesions():
    for sd in (15.0, 40.0):
        hu, lungs = _noisy_ggo_chest(sd)
        assert abs(lung_noise(hu, lungs.astype(np.uint8)) - sd) < 0.1 * sd
        notes: dict = {}
        hu_lesions(hu, SP, lungs.astype(np.uint8), notes=notes)
        assert notes["lung_noise_hu"] == lung_noise(hu, lungs.astype(np.uint8))
    assert lung_noise(np.zeros((4, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8)) is None  # no lung, no figure


def test_aerated_lung_hu_is_the_best_aerated_tenth_and_rises_with_a_shallow_breath():
    """The 10th percentile of the lung: about 1.28 noise SDs below aerated lung, barely moved by a lesion in a tenth of
    the lung, 100 HU higher when all the aerated lung is 100 HU denser; in the HU rule's notes with the 1st percentile;
    None without lung. Disease over 90 % of the lung takes the 10th percentile into it, not the 1st."""
    hu, lungs = _chest()  # aerated lung -850 HU, noise SD 15
    m = lungs.astype(np.uint8)
    base = aerated_lung_hu(hu, m)
    assert -875.0 < base < -863.0
    sick = hu.copy()
    sick[3:27, 16:80, 10:13] = -500.0  # GGO over about a tenth of the lung
    assert abs(aerated_lung_hu(sick, m) - base) < 5.0
    shallow = hu.copy()
    shallow[lungs] += 100.0
    assert abs(aerated_lung_hu(shallow, m) - (base + 100.0)) < 1.0
    p10, p1 = aerated_lung_hu(hu, m, percentile=(10.0, 1.0))
    assert p10 == base and -895.0 < p1 < -875.0  # about 2.33 SDs below
    assert np.allclose(aerated_lung_hu(shallow, m, percentile=(10.0, 1.0)), (p10 + 100.0, p1 + 100.0), atol=1.0)
    diffuse = hu.copy()
    diffuse[lungs & (np.random.default_rng(1).random(hu.shape) < 0.9)] = -600.0
    d10, d1 = aerated_lung_hu(diffuse, m, percentile=(10.0, 1.0))
    assert d10 > base + 200.0 and d1 < p1 + 20.0
    notes: dict = {}
    hu_lesions(hu, SP, m, notes=notes)
    assert notes["aerated_lung_hu"] == base and notes["best_aerated_lung_hu"] == p1
    assert aerated_lung_hu(hu, np.zeros(hu.shape, np.uint8)) is None


def _aerated_chest(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_chest` with its lung as aerated as real series in full inspiration (-895 HU: 1st percentile about -930,
    below every volume the HU rule was measured on)."""
    hu, lungs = _chest(seed=seed)
    hu[lungs] -= 45.0
    return hu, lungs


def test_ggo_floor_rises_with_a_shallow_breath_and_keeps_real_ggo_when_asked():
    """With ``ggo_follows_aerated`` (off by default): healthy lung made 215 HU denser (-680 HU: inside the fixed GGO
    range) is not GGO: the floor rises by as much as the best-aerated lung is denser than in the calibration volumes;
    a GGO patch 280 HU above that lung is still found. A lung as aerated as the calibration volumes keeps the fixed
    floor."""
    from dataclasses import replace

    from covidct.pipeline.hu_rules import DEFAULT, DENSEST_BEST_AERATED_HU

    follows = replace(DEFAULT, ggo_follows_aerated=True)
    hu, lungs = _aerated_chest()
    m = lungs.astype(np.uint8)
    hu[lungs] += 215.0
    hu[10:18, 30:45, 15:30] = -400.0  # GGO patch
    notes: dict = {}
    assert not DEFAULT.ggo_follows_aerated
    assert (hu_lesions(hu, SP, m, notes=notes) > 0).sum() > 0.5 * lungs.sum() and notes["ggo_floor_lift_hu"] == 0.0
    les = hu_lesions(hu, SP, m, follows, notes=notes)
    assert notes["ggo_floor_lift_hu"] == notes["best_aerated_lung_hu"] - DENSEST_BEST_AERATED_HU > 150.0
    assert (les[11:17, 32:43, 17:28] == GGO).all()
    assert (les > 0).sum() < 0.05 * lungs.sum()
    fixed = hu_lesions(hu, SP, m, replace(DEFAULT, ggo_follows_aerated=False))
    assert (fixed > 0).sum() > 0.5 * lungs.sum()  # the fixed floor calls the denser healthy lung GGO
    plain, _ = _aerated_chest(seed=1)
    notes = {}
    assert (hu_lesions(plain, SP, m, follows, notes=notes) == hu_lesions(plain, SP, m)).all()
    assert notes["ggo_floor_lift_hu"] == 0.0


def test_diffuse_ggo_over_most_of_the_lung_is_not_taken_for_a_shallow_breath():
    """GGO (-620 HU) over 93 % of an aerated lung: the 10th percentile is inside the disease, but a floor that follows
    the lung (opt-in) follows the 1st, which stays in the aerated rest, so the GGO is found (a floor following the
    10th lost all of it)."""
    from dataclasses import replace

    from covidct.pipeline.hu_rules import DEFAULT

    hu, lungs = _aerated_chest()
    m = lungs.astype(np.uint8)
    sick = lungs.copy()
    sick[:, :, 10:12] = sick[:, :, 84:86] = False  # the aerated rest: a band along each lung's outer side
    hu[sick] += 275.0  # -895 -> -620 HU
    notes: dict = {}
    les = hu_lesions(hu, SP, m, replace(DEFAULT, ggo_follows_aerated=True), notes=notes)
    assert notes["aerated_lung_hu"] > -700.0 and notes["ggo_floor_lift_hu"] == 0.0
    inner = sick.copy()
    inner[:6] = inner[-6:] = False  # the rule does not score the lung's 3 mm border; regrowth covers most of it
    assert (les[inner] == GGO).mean() > 0.95
