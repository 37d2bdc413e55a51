"""The HU-volume benchmark's parts on generated data: LIDC nodule contours, leave-one-out bookkeeping,
the rule floor / HU count, lung-leak checks and the table (no ../shared needed)."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.evaluate.hu_volumes import (
    build_table,
    dependent_consolidation_simulated,
    diffuse_disease_simulated,
    emphysema_simulated,
    false_lesions,
    hu_count_per_slice,
    loo_training_sets,
    lung_leaks,
    roc_auc,
    rule_floor,
    scoring_note,
    select_loo,
)
from covidct.evaluate.lidc import nodule_mask, parse_lidc_xml
from covidct.volume import CT, SliceRef, affine_from_spacing

XML = """<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage xmlns="http://www.nih.gov">
<ResponseHeader><SeriesInstanceUid>1.2.3</SeriesInstanceUid></ResponseHeader>
<readingSession>
  <servicingRadiologistID>A</servicingRadiologistID>
  <unblindedReadNodule>
    <noduleID>Nodule 001</noduleID>
    <characteristics><malignancy>5</malignancy></characteristics>
    <roi><imageZposition>-20.0</imageZposition><imageSOP_UID>uid.2</imageSOP_UID><inclusion>TRUE</inclusion>
      {contour}
    </roi>
    <roi><imageZposition>-17.5</imageZposition><imageSOP_UID>uid.3</imageSOP_UID><inclusion>TRUE</inclusion>
      {contour}
    </roi>
  </unblindedReadNodule>
  <nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>-25.0</imageZposition><imageSOP_UID>uid.0</imageSOP_UID>
    <locus><xCoord>5</xCoord><yCoord>5</yCoord></locus></nonNodule>
</readingSession>
<readingSession>
  <servicingRadiologistID>B</servicingRadiologistID>
  <unblindedReadNodule>
    <noduleID>n2</noduleID>
    <roi><imageZposition>-15.0</imageZposition><imageSOP_UID>unknown</imageSOP_UID><inclusion>TRUE</inclusion>
      <edgeMap><xCoord>40</xCoord><yCoord>12</yCoord></edgeMap>
    </roi>
  </unblindedReadNodule>
</readingSession>
</LidcReadMessage>
"""


def _square(x0, y0, x1, y1):
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in pts)


def _ct(nz=6, ny=48, nx=64, dz=2.5):
    sp = (dz, 1.0, 1.0)
    aff = affine_from_spacing(sp, (0.0, 0.0, -25.0))
    slices = [SliceRef(k, -25.0 + k * dz, sop_instance_uid=f"uid.{k}") for k in range(nz)]
    return CT(np.zeros((nz, ny, nx), np.float32), sp, aff, True, "dicom", slices=slices,
              meta={"iop": [1, 0, 0, 0, 1, 0]})


def test_lidc_xml_parsed_and_rasterised(tmp_path):
    p = tmp_path / "069.xml"
    p.write_text(XML.format(contour=_square(10, 20, 19, 29)))
    nods = parse_lidc_xml(p)
    assert [(n.reader, n.kind) for n in nods] == [(0, "nodule"), (0, "non-nodule"), (1, "small")]
    assert nods[0].nodule_id == "Nodule 001" and len(nods[0].rois) == 2 and nods[0].rois[0].sop_uid == "uid.2"
    np.testing.assert_array_equal(nods[0].rois[0].points_xy[0], [10, 20])
    ct = _ct()
    m = nodule_mask(ct, nods, margin_mm=0.0)
    # contour x = columns 10..19, y = rows 20..29 on slices uid.2 and uid.3; the small nodule by z (-15 -> slice 4)
    assert m[2, 20:30, 10:20].all() and m[3, 20:30, 10:20].all()
    assert m[2].sum() == 100 and m[3].sum() == 100 and m[4, 12, 40] and m[4].sum() == 1
    assert not m[0].any()  # non-nodules are not excluded by default
    grown = nodule_mask(ct, nods, margin_mm=3.0)
    assert grown[1, 25, 15] and grown[2, 25, 7] and not grown[2, 25, 5] and not grown[0, 25, 15]
    ct.meta["iop"] = [0, 1, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="axial"):
        nodule_mask(ct, nods)


def test_leave_one_out_bookkeeping():
    vols = ["P001", "cap001", "normal001", "phantom"]
    sets = loo_training_sets(vols, ["P001", "cap001", "normal001"])
    assert sets == {"P001": ["cap001", "normal001"], "cap001": ["P001", "normal001"],
                    "normal001": ["P001", "cap001"], "phantom": ["P001", "cap001", "normal001"]}
    assert scoring_note("P001", ["P001"]) == "LOO" and scoring_note("phantom", ["P001"]) == "held-out"
    # a setting is chosen without the volume it is scored on: each volume prefers its own setting, so
    # leave-one-out must pick the majority setting of the others
    own = {"P001": 1, "cap001": 2, "normal001": 2}
    chosen = select_loo(vols, [1, 2], lambda c, train: sum(own[t] == c for t in train), tuned_on=own)
    assert chosen == {"P001": 2, "cap001": 1, "normal001": 1, "phantom": 2}
    # leave-one-patient-out: a series' thick-slice version is held out with it, other patients' versions stay in
    vols2 = ["P001", "P001 (2x)", "normal001", "normal001 (2x)"]
    groups = {"P001 (2x)": "P001", "normal001 (2x)": "normal001"}
    sets = loo_training_sets(vols2, vols2, groups)
    assert sets["P001"] == sets["P001 (2x)"] == ["normal001", "normal001 (2x)"]
    assert sets["normal001"] == ["P001", "P001 (2x)"]


def test_floor_count_auc_and_false_lesions():
    rng = np.random.default_rng(0)
    hu = np.full((6, 64, 64), 20.0, np.float32)  # soft tissue
    hu[:, 8:56, 8:56] = -850 + rng.normal(0, 10, (6, 48, 48))  # aerated lung
    hu[3:5, 20:32, 20:32] = -500  # a 12 mm GGO on two slices
    hu[:, 40, 10:50] = 0  # a 1-voxel vessel: the floor's opening drops it, the HU count keeps its partial volume
    hu[:, 41, 10:50] = -500
    sp = (2.0, 1.0, 1.0)
    floor = rule_floor(hu, sp)
    assert floor[3:5, 22:30, 22:30].all() and not floor[:, 40:42].any() and not floor[:3].any()
    count, mask = hu_count_per_slice(hu)
    assert mask[:, 41, 20:40].all() and count[3] > count[0] > 0
    assert roc_auc(floor.reshape(6, -1).sum(1), [0, 0, 0, 1, 1, 0]) == 1.0
    assert roc_auc([1, 2, 2, 3], [0, 1, 0, 1]) == 0.875 and np.isnan(roc_auc([1, 2], [1, 1]))
    lung = hu < -300
    fl = false_lesions(floor, lung, sp)
    assert fl["false_ml"] == pytest.approx(floor.sum() * 0.002)
    excl = np.zeros_like(floor)
    excl[3:5] = True
    assert false_lesions(floor, lung, sp, excl)["false_ml"] == 0.0


def test_lung_leaks_found_where_they_are():
    hu = np.full((20, 64, 64), 40.0, np.float32)
    hu[4:16, 10:50, 6:24] = -850  # right lung
    hu[4:16, 10:50, 40:58] = -850  # left lung
    sp = (5.0, 1.0, 1.0)
    lungs = np.where(hu < -500, 1, 0).astype(np.uint8)
    hu[10:, 34:44, 29:39] = -1000  # a 1 cm² trachea from the neck down between the lungs (behind the leak below)
    assert lung_leaks(lungs, hu, sp) == {"neck_ml": 0.0, "below_ml": 0.0, "mediastinum_ml": 0.0, "trachea_ml": 0.0}
    leak = lungs.copy()
    leak[18, 20:30, 44:64] = 1  # neck: 200 voxels above the apex + margin
    leak[8, 20:30, 30:34] = 1  # mediastinum: 40 voxels between the lungs
    leak[1, 20:30, 10:20] = 1  # below the base, under the right lung: 100 voxels
    out = lung_leaks(leak, hu, sp)
    assert out == pytest.approx({"neck_ml": 1.0, "below_ml": 0.5, "mediastinum_ml": 0.2, "trachea_ml": 0.0})
    # the trachea labelled lung in the lungs' top slices: its air is lung to the HU reference, so only trachea_ml sees it
    on_trachea = lungs.copy()
    on_trachea[12:16, 34:44, 29:39] = 1  # 400 voxels
    out = lung_leaks(on_trachea, hu, sp)
    assert out == pytest.approx({"neck_ml": 0.0, "below_ml": 0.0, "mediastinum_ml": 0.0, "trachea_ml": 2.0})


def test_table_building():
    rows = [{"volume": "P001", "method": "shipped", "auc": 0.9234, "false_ml": None},
            {"volume": "normal001", "method": "rule floor", "false_ml": 3.71, "diagnosis": "normal (0.10)"}]
    t = build_table(rows, [("volume", "volume"), ("method", "method"), ("auc", "AUC"), ("false_ml", "false mL"),
                           ("diagnosis", "diagnosis")])
    lines = t.splitlines()
    assert lines[0] == "| volume | method | AUC | false mL | diagnosis |" and lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| P001 | shipped | 0.923 | – | – |"
    assert lines[3] == "| normal001 | rule floor | – | 3.710 | normal (0.10) |"


def test_thick_slabs_average_slices_and_label_slabs():
    from covidct.evaluate.hu_volumes import thick_slabs
    from covidct.volume import CT, SliceRef, affine_from_spacing

    arr = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((7, 4, 4), np.float32)
    sl = [SliceRef(index=i, z_mm=2.0 * i, file=f"f{i}.dcm") for i in range(7)]
    ct = CT(array=arr, spacing=(2.0, 1.0, 1.0), affine=affine_from_spacing((2.0, 1.0, 1.0)), is_hu=True, kind="dicom",
            slices=sl)
    labels = {"f0.dcm": 0, "f1.dcm": 0, "f2.dcm": 0, "f3.dcm": 1, "f4.dcm": 0, "f5.dcm": 0}  # f6 unlabelled, dropped
    thick, y = thick_slabs(ct, 2, labels)
    assert thick.shape == (3, 4, 4) and thick.spacing == (4.0, 1.0, 1.0)
    assert np.allclose(thick.array[:, 0, 0], [0.5, 2.5, 4.5])
    assert list(y) == [0, 1, 0]
    # slab centres: the world position of slab 1 is the mean of slices 2 and 3
    centre = thick.affine @ np.array([0, 0, 1, 1.0])
    assert np.allclose(centre[:3], (ct.affine @ np.array([0, 0, 2.5, 1.0]))[:3])


def test_thin_interpolated_keeps_the_original_slices_and_their_labels():
    from covidct.evaluate.hu_volumes import thin_interpolated
    from covidct.volume import CT, SliceRef, affine_from_spacing

    arr = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 3), np.float32) * 30.0
    sl = [SliceRef(index=i, z_mm=2.0 * i, file=f"f{i}.dcm") for i in range(4)]
    ct = CT(array=arr, spacing=(2.0, 1.0, 1.0), affine=affine_from_spacing((2.0, 1.0, 1.0)), is_hu=True, kind="dicom",
            slices=sl)
    thin, y, nearest = thin_interpolated(ct, 3, {"f0.dcm": 0, "f1.dcm": 1, "f2.dcm": 0})  # f3 unlabelled
    assert thin.shape == (10, 3, 3) and np.allclose(thin.spacing, (2.0 / 3, 1.0, 1.0))
    assert np.allclose(thin.array[:, 0, 0], np.arange(10) * 10.0)  # linear; every third slice an original one
    assert list(nearest) == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3] and list(y) == [0, 0, 1, 1, 1, 0, 0, 0, -1, -1]
    # same world positions: thin slice 3 is original slice 1
    assert np.allclose(thin.affine @ np.array([0, 0, 3, 1.0]), ct.affine @ np.array([0, 0, 1, 1.0]))
    assert np.isclose(thin.slices[4].z_mm, 2.0 + 2.0 / 3)


def test_card_figures_summarise_the_rows_against_the_targets():
    """scripts/record_card_figures.py: the pipeline's rows, the HU count's and leave-one-out AUCs beside them, and a
    verdict per issue-17 target that is false as soon as one row misses it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "record_card_figures.py"
    spec = importlib.util.spec_from_file_location("record_card_figures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [
        {"volume": "P001", "method": "shipped", "scored": "tuned on", "auc": 0.985, "neck_ml": 0.0, "mediastinum_ml": 0.0,
         "below_ml": 0.0, "diagnosis": "covid19 (0.91)"},
        {"volume": "P001", "method": "HU count", "scored": "held-out", "auc": 0.942},
        {"volume": "P001", "method": "hu-rules LOO (setting 11)", "scored": "LOO", "auc": 0.985},
        {"volume": "normal001", "method": "shipped", "scored": "tuned on", "false_ml": 2.7, "false_pct": 0.08,
         "neck_ml": 0.0, "mediastinum_ml": 0.3, "below_ml": 1.6, "diagnosis": "normal (0.00)"},
        {"volume": "cip-ct-64", "method": "shipped", "scored": "tuned on", "false_ml": 1.2, "false_pct": 0.03,
         "lung_dice": 0.978, "diagnosis": "normal (0.00)"},
    ]
    s = mod.hu_summary(rows)
    assert s["rows"]["P001"]["auc"] == 0.985 and s["hu_count_auc"] == {"P001": 0.942}
    assert s["leave_one_out_auc"] == {"P001": 0.985}
    verdict = list(s["targets_met"].values())
    assert verdict == [True, True, False, True]  # the leaks of normal001 are not zero
    rows[3]["diagnosis"] = "covid19 (0.6)"
    rows[2]["auc"] = 0.94
    verdict = list(mod.hu_summary(rows)["targets_met"].values())
    assert verdict == [False, False, False, True]
    cov = {"rows": [{"model": "runs/x", "ma_val.infection": {"share": 0.9}},
                    {"model": "lungs", "infnet_test_full.consolidation": {"share": 0.789, "pixels": 10}}],
           "slices": {"infnet_test": 48}}
    assert mod.coverage_entry(cov) == {"infnet_test_full.consolidation": {"share": 0.789, "pixels": 10},
                                       "slices": {"infnet_test": 48}}  # the shipped model's row only
    assert mod.coverage_entry({"rows": cov["rows"][:1]}) is None


def test_diffuse_disease_covers_its_share_of_the_lung_field_and_keeps_vessels():
    """GGO over the asked share of the HU lung field, in smooth patches; aerated lung rises by the shift, vessels and
    tissue outside the lung stay; the region is returned as the truth."""
    ct = _ct(nz=12, ny=64, nx=64, dz=2.0)
    arr = np.full(ct.shape, 40.0, np.float32)
    arr[1:11, 8:56, 6:30] = arr[1:11, 8:56, 34:58] = -860.0  # two lungs
    arr[:, 30:32, 16:18] = 40.0  # a vessel
    ct.array = arr
    out, region = diffuse_disease_simulated(ct, 0.8, 250.0)
    field = arr < -320
    assert abs(region.sum() / field.sum() - 0.8) < 0.01 and not (region & ~field).any()
    assert (out.array[region] == -610.0).all()  # below -850 HU all air share: the whole shift
    assert (out.array[~region] == arr[~region]).all() and (out.array[:, 30:32, 16:18] == 40.0).all()
    assert "@diffuse0.8+250" in str(out.path)


def _two_lungs(dz=2.0):
    ct = _ct(nz=12, ny=64, nx=64, dz=dz)
    arr = np.full(ct.shape, 40.0, np.float32)
    arr[1:11, 8:56, 6:30] = arr[1:11, 8:56, 34:58] = -860.0
    arr[:, 30:32, 16:18] = 40.0  # a vessel
    arr[:, 50:52, 40:42] = -990.0  # an airway in the dependent lung
    ct.array = arr
    return ct, arr


def test_dependent_consolidation_fills_the_posterior_band_and_keeps_airways_and_vessels():
    """Airless lung in the posterior (higher y) band of the lung field, about the asked share; air bronchograms stay."""
    ct, arr = _two_lungs()
    out, region = dependent_consolidation_simulated(ct, 0.25)
    field = arr < -320
    assert 0.2 < region.sum() / field.sum() < 0.3 and not (region & ~field).any()
    ys = np.nonzero(region)[1]
    assert ys.min() >= 40 and ys.max() == 55  # the posterior edge of the field, down to the band's depth
    filled = out.array[region & (arr == -860.0)]
    assert abs(float(filled.mean()) - 35.0) < 3.0 and (out.array[:, 50:52, 40:42] == -990.0).all()
    assert (out.array[~region] == arr[~region]).all()
    fluid, same = dependent_consolidation_simulated(ct, 0.25, effusion=True)
    assert (same == region).all() and abs(float(fluid.array[region].mean()) - 10.0) < 2.0
    assert (fluid.array[~region] == arr[~region]).all() and "@effusion0.25" in str(fluid.path)


def test_emphysema_lowers_parenchyma_in_patches_and_keeps_vessels():
    ct, arr = _two_lungs()
    for subpleural in (False, True):
        out, region = emphysema_simulated(ct, 0.3, subpleural=subpleural)
        field = arr < -320
        assert 0.25 < region.sum() / field.sum() < 0.32 and not (region & (arr > -600)).any()
        assert abs(float(out.array[region].mean()) + 975.0) < 3.0 and (out.array[~region] == arr[~region]).all()


def test_scanner_geometry_variants_keep_the_world_and_the_field_of_view():
    """The field-of-view crop keeps each voxel's place in the world, the pixel-size change keeps the field of view,
    and the outside-FOV padding touches only the corners outside the reconstruction circle."""
    from covidct.evaluate.hu_volumes import field_of_view_cropped, outside_fov_padded, pixel_size_scaled

    arr = np.random.default_rng(0).normal(-500, 100, (4, 60, 48)).astype(np.float32)
    ct = CT(array=arr, spacing=(2.0, 0.8, 0.7), affine=affine_from_spacing((2.0, 0.8, 0.7)), is_hu=True, kind="array")
    cut = field_of_view_cropped(ct, top=5, bottom=3, left=7, right=2)
    assert cut.array.shape == (4, 52, 39) and (cut.array == arr[:, 5:57, 7:46]).all()
    world = lambda c, x, y: (c.affine @ np.array([x, y, 0, 1.0]))[:3]  # noqa: E731
    assert np.allclose(world(cut, 0, 0), world(ct, 7, 5))
    coarse = pixel_size_scaled(ct, 4 / 3)
    assert coarse.array.shape == (4, 45, 36)
    assert np.isclose(coarse.spacing[1] * 45, 0.8 * 60) and np.isclose(coarse.spacing[2] * 36, 0.7 * 48)
    assert np.allclose(np.linalg.norm(coarse.affine[:3, :3], axis=0), [coarse.spacing[2], coarse.spacing[1], 2.0])
    padded = outside_fov_padded(ct)
    assert (padded.array[:, 0, 0] == -3024).all() and (padded.array[:, 30, 24] == arr[:, 30, 24]).all()


def test_slice_labels_read_and_scored_by_file_name(tmp_path):
    """``labels_slice.csv`` is read as subject -> DICOM file name -> label, and the slice AUC ranks each labelled
    slice's lesion area, matched by file name (unlabelled slices left out)."""
    from covidct.data.covid_ct_md import read_slice_labels
    from covidct.evaluate.hu_volumes import slice_auc

    (tmp_path / "labels_slice.csv").write_text(
        "subject,dicom_file,label\nP1,P1/IM1.dcm,0\nP1,P1/IM2.dcm,1\nP1,P1/IM3.dcm,1\nP2,P2/IM1.dcm,0\n")
    labels = read_slice_labels(tmp_path)
    assert labels == {"P1": {"IM1.dcm": 0, "IM2.dcm": 1, "IM3.dcm": 1}, "P2": {"IM1.dcm": 0}}
    (tmp_path / "P1").mkdir()
    assert read_slice_labels(tmp_path / "P1") == {}  # a folder without the table
    ct = CT(array=np.zeros((4, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0), affine=affine_from_spacing((1.0, 1.0, 1.0)),
            is_hu=True, kind="array", slices=[SliceRef(k, float(k), f"/x/IM{k + 1}.dcm") for k in range(4)])
    infection = np.zeros((4, 4, 4), bool)
    infection[1, :2] = infection[2, :1] = infection[3, :3] = True  # IM4 is unlabelled: it must not count
    assert slice_auc(ct, infection, labels["P1"]) == 1.0
    infection[0, :] = True  # the negative slice now has the most
    assert slice_auc(ct, infection, labels["P1"]) == 0.0
