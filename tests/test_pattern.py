"""Pattern features, RSNA category, CO-RADS and diagnosis on small synthetic lung/lesion masks."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.pattern import FEATURE_DOCS, analyse_pattern, measure_pattern
from covidct.pattern.geometry import lung_geometry
from covidct.volume import DEPENDENT_SIDE, SUPINE, dependent_side

SPACING = (5.0, 2.0, 2.0)
SHAPE = (40, 96, 128)
LUNG_HU, GGO_HU, CONS_HU = -850.0, -550.0, 20.0


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij")
    return z - z.mean(), y - y.mean(), x - x.mean()


Z, Y, X = _grid()
# x runs from the patient's right to left: the left lung has the larger x
CENTRES = {LEFT_LUNG: 58.0, RIGHT_LUNG: -58.0}


def chest() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two ellipsoid lungs (left/right), no lesions, and an HU volume (lung, soft tissue outside)."""
    lungs = np.zeros(SHAPE, np.uint8)
    for lab, cx in CENTRES.items():
        lungs[((X - cx) / 46.0) ** 2 + (Y / 80.0) ** 2 + (Z / 95.0) ** 2 <= 1.0] = lab
    hu = np.where(lungs > 0, LUNG_HU, 40.0).astype(np.float32)
    return lungs, np.zeros(SHAPE, np.uint8), hu


def ball(cx: float, cy: float, cz: float, r: float) -> np.ndarray:
    return (X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2 <= r * r


def put(lungs, lesions, hu, mask, label) -> None:
    mask = mask & (lungs > 0)
    lesions[mask] = label
    hu[mask] = GGO_HU if label == GGO else CONS_HU


def typical() -> tuple:
    """Bilateral, peripheral (lateral and posterior subpleural), lower-zone, round GGO patches."""
    lungs, les, hu = chest()
    for cx in CENTRES.values():
        s = np.sign(cx)
        for cy, cz in ((10.0, -50.0), (45.0, -20.0), (-25.0, -55.0), (30.0, 25.0), (-10.0, 5.0)):
            put(lungs, les, hu, ball(cx + s * 32.0, cy, cz, 16.0), GGO)
        put(lungs, les, hu, ball(cx + s * 34.0, 10.0, -50.0, 5.0), CONSOLIDATION)
    return lungs, les, hu


def lobar() -> tuple:
    """Confluent consolidation filling the lower third of the right lung, little GGO."""
    lungs, les, hu = chest()
    put(lungs, les, hu, (lungs == RIGHT_LUNG) & (Z < -35.0), CONSOLIDATION)
    return lungs, les, hu


def unilateral() -> tuple:
    lungs, les, hu = typical()
    left = les.copy()
    left[lungs == RIGHT_LUNG] = 0
    les[lungs == LEFT_LUNG] = 0
    hu[(lungs == LEFT_LUNG) & (left > 0)] = LUNG_HU
    return lungs, les, hu


def nodules() -> tuple:
    """Seven discrete solid round nodules (10 mm) inside both lungs."""
    lungs, les, hu = chest()
    for lab, cx in CENTRES.items():
        for cy, cz in ((-30.0, 40.0), (0.0, 0.0), (25.0, -40.0), (-10.0, -70.0)):
            if lab == LEFT_LUNG and cz == -70.0:
                continue
            put(lungs, les, hu, ball(cx, cy, cz, 5.5), CONSOLIDATION)
    return lungs, les, hu


def effusion_septal() -> tuple:
    """Bilateral dependent effusions and thickened interlobular septa (thin dense lines every 10 mm)."""
    lungs, les, hu = chest()
    for lab in CENTRES:
        fluid = (lungs == lab) & (Y > 50.0) & (Z < 0.0)
        les[fluid] = EFFUSION
        lungs[fluid] = 0
        hu[fluid] = 15.0
    ix, iy = np.indices(SHAPE)[2], np.indices(SHAPE)[1]
    lines = (ix % 5 == 0) | (iy % 5 == 0)  # 2 mm septa every 10 mm, seen as a net in each axial slice
    hu[(lungs > 0) & lines] = -200.0
    return lungs, les, hu


def dependent_only(dependent: tuple[int, int] = SUPINE) -> tuple:
    """A thin (6 mm) GGO band at the dependent edge of both lungs (posterior for a supine patient): dependent
    density."""
    lungs, les, hu = chest()
    geo = lung_geometry(lungs, SPACING, dependent)
    put(lungs, les, hu, (geo.dependent_gap <= 6.0) & (Z < 0.0), GGO)
    return lungs, les, hu


def perihilar() -> tuple:
    """Bilateral GGO around the hila (medial, mid zone): no peripheral predominance."""
    lungs, les, hu = chest()
    for cx in CENTRES.values():
        for cz in (-15.0, 15.0):
            put(lungs, les, hu, ball(cx - np.sign(cx) * 30.0, 0.0, cz, 16.0), GGO)
    return lungs, les, hu


def run(case) -> tuple:
    lungs, les, hu = case()
    res = analyse_pattern(lungs, les, SPACING, hu)
    return res, res.features


def test_geometry_maps_follow_the_anatomy() -> None:
    lungs, _, _ = chest()
    geo = lung_geometry(lungs, SPACING)
    k = SHAPE[0] // 2
    row = SHAPE[1] // 2
    lateral_left = np.flatnonzero(lungs[k, row] == LEFT_LUNG).max()
    medial_left = np.flatnonzero(lungs[k, row] == LEFT_LUNG).min()
    assert geo.relative_depth[k, row, lateral_left] < 0.1
    assert geo.relative_depth[k, row, medial_left] > 0.8  # the mediastinal side is central, not pleura
    inside = lungs > 0
    assert set(np.unique(geo.zone[inside])) == {0, 1, 2}
    assert geo.zone[inside & (Z < -60)].max() == 0 and geo.zone[inside & (Z > 60)].min() == 2
    col = lungs[k, :, 40] > 0
    ys = np.flatnonzero(col)
    assert geo.ap_position[k, ys[0], 40] < 0.1 and geo.ap_position[k, ys[-1], 40] > 0.9
    assert geo.dependent_gap[k, ys[-1], 40] == 0.0
    assert geo.dependent_gap[k, ys[0], 40] == pytest.approx((ys[-1] - ys[0]) * SPACING[1])
    assert np.isnan(geo.relative_depth[~inside]).all()


@pytest.mark.parametrize("position", ["HFP", "FFP", "HFDL", "FFDR"])
def test_the_dependent_edge_follows_the_patient_position(position: str) -> None:
    """Prone: the most anterior lung voxel of a column is the dependent edge; decubitus: the outermost one towards
    the side lain on (x runs to the patient's left)."""
    lungs, _, _ = chest()
    axis, sign = DEPENDENT_SIDE[position]
    geo = lung_geometry(lungs, SPACING, (axis, sign))
    k, row = SHAPE[0] // 2, SHAPE[1] // 2
    line = lungs[k, :, 40] > 0 if axis == 1 else lungs[k, row, :] == (LEFT_LUNG if sign > 0 else RIGHT_LUNG)
    idx = np.flatnonzero(line)
    edge, other = (idx[-1], idx[0]) if sign > 0 else (idx[0], idx[-1])
    gap = geo.dependent_gap[k, :, 40] if axis == 1 else geo.dependent_gap[k, row, :]
    assert gap[edge] == 0.0
    assert gap[other] == pytest.approx(abs(edge - other) * SPACING[axis])
    assert np.isnan(geo.dependent_gap[lungs == 0]).all()
    assert dependent_side({"patient_position": position.lower() + " "}) == (axis, sign)
    assert dependent_side({}) == dependent_side({"patient_position": "HFS"}) == SUPINE


def test_every_feature_is_documented_and_measured() -> None:
    res, f = run(typical)
    assert set(f) == set(FEATURE_DOCS)
    for name, (unit, definition, _) in FEATURE_DOCS.items():
        assert unit and definition, name
    assert set(res.report()) == {"rsna_category", "co_rads", "features", "reasons", "borderline"}


def test_docs_list_every_feature() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "report.md").read_text(encoding="utf-8")
    for name, (unit, definition, threshold) in FEATURE_DOCS.items():
        assert f"| `{name}` | {unit} | {definition} | {threshold or '—'} |" in docs, name


def test_typical_pattern() -> None:
    res, f = run(typical)
    assert f["minor_side_share"] > 0.4
    assert f["peripheral_fraction"] >= 0.6 and f["perihilar_fraction"] < 0.1
    assert f["ggo_fraction"] > 0.8 and f["n_foci"] >= 6 and f["n_round_foci"] >= 6
    assert f["lower_zone_fraction"] > f["upper_zone_fraction"]
    assert (res.rsna_category, res.co_rads, res.label) == ("typical", 5, "covid19")
    assert "→ typical" in res.reasons[0] and "bilateral" in res.reasons[0]
    assert res.probabilities["covid19"] > 0.8
    assert sum(res.probabilities.values()) == pytest.approx(1.0, abs=1e-3)


def round_ggo_in_one_lung() -> tuple:
    """Round GGO foci in the left lung only (central, not subpleural) and a band of GGO along the right lung's
    mediastinal side: bilateral opacity, but the round GGO is in one lung."""
    lungs, les, hu = chest()
    cx = CENTRES[LEFT_LUNG]
    for cy, cz in ((10.0, -50.0), (45.0, -20.0), (-25.0, -55.0), (30.0, 25.0)):
        put(lungs, les, hu, ball(cx, cy, cz, 15.0), GGO)
    band = (lungs == RIGHT_LUNG) & (np.abs(X - CENTRES[RIGHT_LUNG] - 14.0) < 8.0) & (np.abs(Y) < 50.0) & (np.abs(Z) < 30.0)
    put(lungs, les, hu, band, GGO)
    return lungs, les, hu


def test_round_ggo_counts_as_typical_only_in_both_lungs() -> None:
    """RSNA / CO-RADS 5 'multifocal round GGO' is a bilateral finding: round foci in one lung beside other
    opacity in the second are not the typical pattern."""
    _, f = run(typical)
    assert f["round_foci_sides"] == 2
    res, f = run(round_ggo_in_one_lung)
    assert f["n_round_foci"] >= 3 and f["round_foci_sides"] == 1 and f["minor_side_share"] >= 0.1
    assert f["peripheral_fraction"] < 0.5 and f["ggo_fraction"] > 0.9
    assert res.rsna_category == "indeterminate" and res.co_rads == 3
    from covidct.pattern.category import classify_pattern

    both = classify_pattern(dict(f, round_foci_sides=2))  # the same features with round foci in each lung
    assert both.rsna_category == "typical"


def test_normal_lungs_are_negative() -> None:
    res, f = run(chest)
    assert f["opacity_ml"] == 0.0 and f["n_foci"] == 0
    assert f["lung_peripheral_fraction"] == run(typical)[1]["lung_peripheral_fraction"] > 0.3  # the lung's own share
    assert f["peripheral_odds_ratio"] == 0.0
    assert (res.rsna_category, res.co_rads, res.label) == ("negative", 1, "normal")
    assert res.probabilities["normal"] > 0.95


def test_dependent_band_is_not_an_opacity() -> None:
    lungs, les, hu = dependent_only()
    assert np.count_nonzero(les == GGO) * np.prod(SPACING) / 1000.0 > 20.0  # a real band of "GGO"
    res = analyse_pattern(lungs, les, SPACING, hu)
    assert res.features["dependent_density_ml"] > 10.0
    assert res.features["opacity_ml"] < 1.0
    assert (res.rsna_category, res.label) == ("negative", "normal")
    assert any("dependent" in r for r in res.reasons)


def test_the_dependent_band_of_a_prone_patient_is_anterior() -> None:
    """Prone, gravity pulls forward: the anterior band is dependent density, and the same band read as if supine
    (or a posterior band read prone) is an opacity."""
    prone = DEPENDENT_SIDE["HFP"]
    lungs, les, hu = dependent_only(prone)
    assert np.mean(Y[les == GGO] < 0.0) > 0.95  # the band lies anteriorly
    res = analyse_pattern(lungs, les, SPACING, hu, dependent=prone)
    assert res.features["dependent_density_ml"] > 10.0 and res.features["opacity_ml"] < 1.0
    assert (res.rsna_category, res.label) == ("negative", "normal")
    assert any("dependent (anterior subpleural band)" in r for r in res.reasons)
    as_supine = analyse_pattern(lungs, les, SPACING, hu)
    assert as_supine.features["dependent_density_ml"] < 1.0 and as_supine.features["opacity_ml"] > 10.0
    lungs, les, hu = dependent_only()
    posterior = analyse_pattern(lungs, les, SPACING, hu, dependent=prone)
    assert posterior.features["opacity_ml"] > 10.0 and posterior.label != "normal"


def test_lobar_consolidation_is_atypical_other_pneumonia() -> None:
    res, f = run(lobar)
    assert f["largest_consolidation_percent"] > 5.0 and f["ggo_fraction"] < 0.1
    assert f["minor_side_share"] == 0.0 and f["lower_zone_fraction"] > 0.9
    assert (res.rsna_category, res.co_rads, res.label) == ("atypical", 2, "pneumonia")
    assert "lobar/segmental" in res.reasons[0]


def test_unilateral_peripheral_ggo_is_indeterminate_co_rads_4() -> None:
    res, f = run(unilateral)
    assert f["minor_side_share"] == 0.0 and f["left_percent"] == 0.0 and f["right_percent"] > 0
    assert (res.rsna_category, res.co_rads) == ("indeterminate", 4)
    assert "not bilateral" in res.reasons[0]


def test_discrete_nodules_are_atypical() -> None:
    res, f = run(nodules)
    assert f["n_nodules"] == 7
    assert (res.rsna_category, res.co_rads) == ("atypical", 2)
    assert res.label != "covid19"


def test_effusion_with_septal_lines_is_atypical() -> None:
    res, f = run(effusion_septal)
    assert f["effusion_ml"] > 100 and f["effusion_sides"] == 2
    assert f["septal_line_fraction"] >= 0.08
    assert (res.rsna_category, res.co_rads) == ("atypical", 2)
    assert res.label != "covid19"
    _, normal = run(chest)
    assert normal["septal_line_fraction"] < 0.02


def test_perihilar_ggo_is_indeterminate_not_covid() -> None:
    res, f = run(perihilar)
    assert f["perihilar_fraction"] > 0.5 and f["peripheral_fraction"] < 0.2
    assert res.rsna_category == "indeterminate" and res.co_rads == 3
    assert res.probabilities["covid19"] < res.probabilities["pneumonia"]


def test_no_hu_and_no_lungs() -> None:
    lungs, les, _ = typical()
    f = measure_pattern(lungs, les, SPACING, None)
    assert f["septal_line_fraction"] is None and f["opacity_ml"] > 0
    empty = measure_pattern(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8), SPACING, None)
    assert empty["opacity_ml"] == 0.0
    assert analyse_pattern(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8), SPACING).rsna_category == "negative"


def test_deterministic() -> None:
    a, b = run(typical), run(typical)
    assert a[1] == b[1] and a[0].probabilities == b[0].probabilities


def test_a_typical_category_is_never_reported_beside_other_pneumonia() -> None:
    """The demo's case: typical features, but an effusion and a perihilar share that alone pull towards
    other pneumonia; the category itself counts, so CO-RADS 5 does not sit beside 'pneumonia'."""
    from covidct.pattern.category import classify_pattern

    _, f = run(typical)
    f = dict(f, effusion_ml=61.0, effusion_sides=1, peripheral_fraction=0.52, perihilar_fraction=0.4, ggo_fraction=0.55,
             minor_side_share=0.12, n_round_foci=1, posterior_fraction=0.5)
    res = classify_pattern(f)
    assert (res.rsna_category, res.co_rads) == ("typical", 5)
    assert res.label == "covid19"
    # however strong the pull the other way (a larger effusion, fully perihilar): still not 'pneumonia'
    res = classify_pattern(dict(f, effusion_ml=400.0, perihilar_fraction=0.6, peripheral_fraction=0.5))
    assert res.rsna_category == "typical" and res.probabilities["covid19"] > res.probabilities["pneumonia"]


def test_the_hu_rule_masks_are_read_with_their_own_opening_and_abnormal_level() -> None:
    """Whole HU volumes: the HU rule's masks (already cleaned of vessels) are not opened again and count as abnormal
    from the HU rule's own false-positive level; 8-bit volumes keep the lesion models' opening and level."""
    from covidct.pattern import OPACITY_PERCENT, OPACITY_PERCENT_HU_RULE, OPENING_RADIUS_MM
    from covidct.pattern.category import classify_pattern
    from covidct.pipeline.diagnosis import pattern_reading
    from covidct.volume import CT, affine_from_spacing

    sp = (2.0, 1.0, 1.0)
    hu = CT(array=np.zeros((8, 16, 16), np.float32), spacing=sp, affine=affine_from_spacing(sp), is_hu=True, kind="array")
    disp = CT(array=np.zeros((8, 16, 16), np.float32), spacing=sp, affine=affine_from_spacing(sp), is_hu=False, kind="array")
    assert pattern_reading(hu) == {"opening_mm": 0.0, "abnormal_percent": OPACITY_PERCENT_HU_RULE}
    assert pattern_reading(disp) == {"opening_mm": OPENING_RADIUS_MM, "abnormal_percent": OPACITY_PERCENT}
    _, f = run(typical)
    between = dict(f, opacity_percent=(OPACITY_PERCENT_HU_RULE + OPACITY_PERCENT) / 2)
    assert classify_pattern(between).rsna_category == "negative"
    assert classify_pattern(between, OPACITY_PERCENT_HU_RULE).rsna_category == "typical"


def test_lung_geometry_on_each_slices_box_is_the_whole_slices():
    """The per-slice distances are computed on the slice's lung box: the same values as on the whole slice."""
    from scipy import ndimage

    from covidct.pattern.geometry import lung_geometry, thoracic_envelope

    rng = np.random.default_rng(7)
    lungs = np.zeros((5, 60, 80), np.uint8)
    for k in range(1, 5):
        y0, x0 = (int(v) for v in rng.integers(0, 20, 2))
        lungs[k, 10 + y0 : 35 + y0, 5 + x0 : 25 + x0] = 2
        lungs[k, 8 + y0 : 30 + y0, 35 + x0 : 55 + x0] = 1
    lungs[3, 0:5, 0:6] = 2  # touching the slice edge
    lungs[lungs > 0] *= rng.random(lungs.shape)[lungs > 0] > 0.05
    dy, dx = 0.8, 0.7
    g = lung_geometry(lungs, (2.0, dy, dx))
    y = np.arange(lungs.shape[1], dtype=np.float32)[:, None]
    for k in range(len(lungs)):
        if not lungs[k].any():
            assert np.isnan(g.relative_depth[k]).all()
            continue
        env = thoracic_envelope(lungs[k] > 0)
        d = ndimage.distance_transform_edt(np.pad(env, 1), sampling=(dy, dx))[1:-1, 1:-1].astype(np.float32)
        for lab in (1, 2):
            m = lungs[k] == lab
            if m.any():
                np.testing.assert_array_equal(g.relative_depth[k][m], d[m] / max(float(d[m].max()), 1e-6))
                rows = np.flatnonzero(m.any(axis=1))
                ap = np.broadcast_to((y - rows[0]) / max(rows[-1] - rows[0], 1), m.shape)[m]
                np.testing.assert_array_equal(g.ap_position[k][m], ap.astype(np.float32))


def test_the_label_follows_the_co_rads_score() -> None:
    """P(COVID-19 | abnormal) is the score's pooled COVID-19 frequency (Kwee et al. 2021) moved by the pattern by less
    than CO-RADS 4's distance from even odds: CO-RADS >= 4 reads COVID-19, CO-RADS 2-3 another pneumonia, however
    strongly the pattern's own terms pull (the CAP patient cap001 read CO-RADS 3 beside 'COVID-19 0.85' before)."""
    import math

    from covidct.pattern.category import CO_RADS_COVID_FREQUENCY, WITHIN_CATEGORY_LOGIT, classify_pattern

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    _, f = run(typical)
    # bilateral GGO-predominant, not peripheral: CO-RADS 3, with every COVID-leaning term the category allows
    equivocal = dict(f, peripheral_fraction=0.49, ggo_fraction=1.0, minor_side_share=0.5, posterior_fraction=1.0,
                     perihilar_fraction=0.0, round_foci_sides=1)
    unilateral = dict(f, minor_side_share=0.0, peripheral_fraction=0.9, ggo_fraction=0.9, perihilar_fraction=0.6,
                      posterior_fraction=0.0)
    for feats, score, label in ((equivocal, 3, "pneumonia"), (unilateral, 4, "covid19"), (f, 5, "covid19")):
        res = classify_pattern(feats)
        assert res.co_rads == score and res.label == label, (res.co_rads, res.probabilities)
        p = res.probabilities["covid19"] / (res.probabilities["covid19"] + res.probabilities["pneumonia"])
        assert abs(logit(p) - logit(CO_RADS_COVID_FREQUENCY[score])) <= WITHIN_CATEGORY_LOGIT + 1e-3
        assert "pooled" in res.reasons[-1] and f"CO-RADS {score}" in res.reasons[-1]
    assert logit(CO_RADS_COVID_FREQUENCY[4]) - WITHIN_CATEGORY_LOGIT > 0 > logit(CO_RADS_COVID_FREQUENCY[3]) + WITHIN_CATEGORY_LOGIT


def test_reasons_never_round_a_share_across_its_threshold() -> None:
    """cap001's peripheral share 0.496 read "50 % peripheral ... not peripheral"; it now reads 49.6 %."""
    from covidct.pattern.category import _pct, classify_pattern

    assert _pct(0.496, 0.5) == "49.6 %" and _pct(0.496) == "50 %" and _pct(0.72, 0.5) == "72 %"
    assert _pct(0.5, 0.5) == "50 %" and _pct(0.5049, 0.5) == "50 %" and _pct(0.49996, 0.5) == "49.996 %"
    _, f = run(typical)
    res = classify_pattern(dict(f, peripheral_fraction=0.496, round_foci_sides=1))
    assert "49.6 % peripheral" in res.reasons[0] and "not peripheral" in res.reasons[0]


def test_an_evenly_spread_opacity_has_a_peripheral_odds_ratio_of_one() -> None:
    """The outer third holds about half of a lung, so an opacity spread evenly through the lung (here GGO over a whole
    slab of both lungs) has about half of itself there; the odds ratio against the lung's own share reads it as what
    it is, diffuse (about 1), while the subpleural patches read far above."""
    from covidct.pattern.features import peripheral_odds_ratio

    def slab() -> tuple:
        lungs, les, hu = chest()
        put(lungs, les, hu, np.abs(Z) < 30.0, GGO)
        return lungs, les, hu

    _, f = run(slab)
    assert 0.3 < f["lung_peripheral_fraction"] < 0.7
    assert abs(f["peripheral_fraction"] - f["lung_peripheral_fraction"]) < 0.08
    assert 0.7 < f["peripheral_odds_ratio"] < 1.3
    _, t = run(typical)
    assert t["lung_peripheral_fraction"] == f["lung_peripheral_fraction"]  # the same lungs
    assert t["peripheral_odds_ratio"] > 5 * f["peripheral_odds_ratio"]
    # the same share of opacity is more or less peripheral depending on how much of the lung the outer third holds
    assert peripheral_odds_ratio(550, 1000, 0.5) == pytest.approx(1.22, abs=0.01)
    assert peripheral_odds_ratio(550, 1000, 0.4) == pytest.approx(1.83, abs=0.01)
    assert peripheral_odds_ratio(1000, 1000, 0.5) == pytest.approx(2001.0) and peripheral_odds_ratio(0, 0, 0.5) == 0.0


def test_a_confluent_opacity_larger_than_a_segment_is_not_a_round_focus() -> None:
    """RSNA's "multifocal round GGO" means discrete foci: two round GGO balls in each lung, each larger than a
    bronchopulmonary segment (1/18 of the lungs), are confluent opacity and do not make the pattern typical (they
    counted as four round foci in both lungs before); the same balls at a third of the size do."""
    def balls(r: float) -> tuple:
        lungs, les, hu = chest()
        for cx in CENTRES.values():
            for cz in (-42.0, 42.0):
                put(lungs, les, hu, ball(cx, 0.0, cz, r), GGO)
        return lungs, les, hu

    res, f = run(lambda: balls(38.0))
    lung_ml = float(np.count_nonzero(chest()[0])) * np.prod(SPACING) / 1000.0
    assert f["opacity_ml"] / 4 > lung_ml / 18  # each ball is larger than a segment
    assert f["n_foci"] == 4 and f["n_round_foci"] == 0 and f["round_foci_sides"] == 0
    assert res.rsna_category == "indeterminate"
    res, f = run(lambda: balls(20.0))
    assert f["opacity_ml"] / 4 < lung_ml / 18 and f["n_round_foci"] == 4 and f["round_foci_sides"] == 2
    assert res.rsna_category == "typical"


def test_a_reading_near_a_threshold_is_reported_borderline() -> None:
    """cap001's masks read indeterminate with a peripheral share of 0.496 against the 0.5 threshold; one voxel of
    erosion read it typical. Such a reading is flagged (pattern.borderline, and a reason), far ones are not, and the
    category itself is not changed by the check."""
    from covidct.pattern.category import MASK_SENSITIVITY, classify_pattern

    res, f = run(typical)
    assert res.borderline == [] and res.report()["borderline"] == []
    near = classify_pattern(dict(f, peripheral_fraction=0.496, round_foci_sides=1))
    assert near.rsna_category == "indeterminate" and near.borderline == ["peripheral_fraction"]
    assert any(r.startswith("borderline: peripheral share (49.6 %)") for r in near.reasons)
    assert near.reasons[-1].startswith("P(abnormal)")  # the last reason still says how the probabilities follow
    step = MASK_SENSITIVITY["peripheral_fraction"][0]
    far = classify_pattern(dict(f, peripheral_fraction=0.5 - 1.5 * step, round_foci_sides=1))
    assert far.rsna_category == "indeterminate" and "peripheral_fraction" not in far.borderline
    # a small opacity near the abnormal level: one voxel less of every lesion could read negative
    small = classify_pattern(dict(f, opacity_percent=1.2))
    assert small.rsna_category == "typical" and "opacity_percent" in small.borderline
    res, f = run(chest)
    assert res.rsna_category == "negative" and res.borderline == []
    # a change of CO-RADS within the category counts too: peripheral GGO in one lung is indeterminate, CO-RADS 4
    # (read COVID-19); just under the peripheral threshold it is indeterminate, CO-RADS 3 (another pneumonia)
    _, u = run(unilateral)
    one_sided = classify_pattern(dict(u, peripheral_fraction=0.51))
    assert (one_sided.rsna_category, one_sided.co_rads, one_sided.label) == ("indeterminate", 4, "covid19")
    assert "peripheral_fraction" in one_sided.borderline
    assert classify_pattern(dict(u, peripheral_fraction=0.49)).co_rads == 3
    assert "peripheral_fraction" not in classify_pattern(dict(u, peripheral_fraction=0.6)).borderline
