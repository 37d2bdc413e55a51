"""The analyze pipeline end to end on small phantoms (shipped models when present, else the HU fallback)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidct.errors import NoLungsFound, UnsupportedInput
from covidct.io import load_ct
from covidct.phantom import make_phantom, write_phantom
from covidct.pipeline import Analyzer, analyze, measure, pan_lobe_score, split_left_right

SMALL = dict(shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer()


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory) -> tuple[Path, object]:
    ph = make_phantom(seed=3, lesion_burden=0.15, **SMALL)
    folder = write_phantom(ph, tmp_path_factory.mktemp("ph"), fmt="dicom")
    return folder, ph


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_pan_lobe_score_bins():
    assert [pan_lobe_score(p) for p in (0, 1, 5, 20, 25, 30, 50, 60, 75, 80)] == [0, 1, 2, 2, 2, 3, 4, 4, 4, 5]


def test_left_right_split_touching_lungs():
    mask = np.zeros((4, 40, 60), bool)
    mask[:, 10:30, 8:29] = True
    mask[:, 10:30, 31:52] = True
    mask[:, 18:22, 29:31] = True  # a bridge: the lungs touch
    lab = split_left_right(mask, (5.0, 1.0, 1.0))
    assert set(np.unique(lab)) == {0, 1, 2}
    assert (lab[:, :, 40][mask[:, :, 40]] == 1).all()  # larger x = patient's left
    assert (lab[:, :, 15][mask[:, :, 15]] == 2).all()


def test_measure_known_volumes():
    from covidct.volume import CT, affine_from_spacing

    arr = np.zeros((6, 20, 20), np.float32)
    ct = CT(arr, (2.0, 1.0, 1.0), affine_from_spacing((2.0, 1.0, 1.0)), True, "array")
    lungs = np.zeros(arr.shape, np.uint8)
    lungs[:, 2:10, 11:19] = 1
    lungs[:, 2:10, 1:9] = 2
    lesions = np.zeros(arr.shape, np.uint8)
    lesions[:, 2:4, 11:19] = 1  # a quarter of the left lung
    sev = measure(ct, lungs, lesions)
    assert sev["involvement"]["left"] == pytest.approx(25.0)
    assert sev["involvement"]["right"] == 0.0
    assert sev["per_lung"]["left"]["lung_vox"] == 6 * 8 * 8


def test_analyze_dicom_phantom_outputs(tmp_path, phantom_dicom, analyzer):
    folder, ph = phantom_dicom
    out = tmp_path / "out"
    res = analyze(folder, out, analyzer=analyzer)
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema_version"] == "1.8" and rep["mode"] == "volume" and rep["input"]["patient_position"] == "HFS"
    assert rep["pattern"]["rsna_category"] in ("typical", "indeterminate", "atypical", "negative")
    assert 1 <= rep["pattern"]["co_rads"] <= 5 and rep["pattern"]["reasons"]
    assert rep["pattern"]["features"]["opacity_ml"] >= 0 and rep["diagnosis"]["method"].startswith("from the lesion pattern")
    assert rep["input"]["kind"] == "dicom" and rep["input"]["n_slices"] == ph.ct.n_slices
    assert set(rep["diagnosis"]["probabilities"]) == {"covid19", "pneumonia", "normal"}
    assert abs(sum(rep["diagnosis"]["probabilities"].values()) - 1) < 1e-3
    assert len(rep["slices"]) == ph.ct.n_slices
    files = {s["file"] for s in rep["slices"]}
    assert all(f and f.endswith(".dcm") for f in files)
    zs = [s["z_mm"] for s in rep["slices"]]
    assert zs == sorted(zs)
    # masks on the input's grid, aligned with the input written as NIfTI
    ct = load_ct(folder)
    for name in ("lungs.nii.gz", "lesions.nii.gz"):
        img = nib.load(out / name)
        np.testing.assert_allclose(img.affine, ct.affine, atol=1e-4)
        assert img.shape == ct.array.transpose(2, 1, 0).shape
    lungs = np.asarray(nib.load(out / "lungs.nii.gz").dataobj).transpose(2, 1, 0)
    for lab in (1, 2):
        assert _dice(lungs == lab, ph.lungs == lab) > 0.85, lab
    truth = ph.truth["lung_volume_ml"]
    assert rep["lungs"]["left_ml"] == pytest.approx(truth["left"], rel=0.2)
    assert rep["lungs"]["right_ml"] == pytest.approx(truth["right"], rel=0.2)
    assert res.report["involvement_percent"]["total"] > 1.0
    dens = rep["densitometry"]  # the same lung voxels as the lung volumes
    for side in ("left", "right", "total"):
        assert dens[side]["lung_ml"] == pytest.approx(rep["lungs"][f"{side}_ml"], abs=0.02)
    assert (out / "segmentation.dcm").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temp folder left behind


def test_normal_chest_less_involved_than_diseased(analyzer):
    normal = analyze(make_phantom(seed=5, lesions=False, effusion=False, **SMALL).ct, None, analyzer=analyzer)
    sick = analyze(make_phantom(seed=5, lesion_burden=0.3, **SMALL).ct, None, analyzer=analyzer)
    assert normal.report["involvement_percent"]["total"] < sick.report["involvement_percent"]["total"]
    assert normal.report["diagnosis"]["probabilities"]["normal"] > sick.report["diagnosis"]["probabilities"]["normal"]


def test_no_lungs_is_an_error(analyzer):
    ph = make_phantom(seed=2, lungs=False, lesions=False, effusion=False, **SMALL)
    with pytest.raises(NoLungsFound):
        analyze(ph.ct, None, analyzer=analyzer)


def test_too_few_slices_is_an_error(analyzer):
    from covidct.volume import CT

    ph = make_phantom(seed=2, **SMALL)
    ct = CT(ph.ct.array[8:10].copy(), ph.ct.spacing, ph.ct.affine, True, "array")
    with pytest.raises(UnsupportedInput):
        analyze(ct, None, analyzer=analyzer)


def test_analyze_single_image(tmp_path, analyzer):
    from PIL import Image

    from covidct.preprocess import apply_window

    ph = make_phantom(seed=4, **SMALL)
    k = int(np.argmax((ph.lungs > 0).reshape(ph.ct.n_slices, -1).sum(1)))
    img = (apply_window(ph.ct.array[k], "lung") * 255).astype(np.uint8)[:, :100]  # non-square on purpose
    p = tmp_path / "slice.png"
    Image.fromarray(img).save(p)
    out = tmp_path / "o"
    analyze(p, out, analyzer=analyzer)
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == "slice" and rep["severity"]["score"] is None and rep["lungs"]["left_ml"] is None
    for name in ("lungs.png", "lesions.png", "overlay.png"):
        assert (out / name).exists()
    assert Image.open(out / "lesions.png").size == (100, 128)


def test_failed_run_leaves_no_output(tmp_path, analyzer, monkeypatch):
    import covidct.pipeline as pl

    ph = make_phantom(seed=1, **SMALL)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pl, "validate_report", boom, raising=False)
    import covidct.report as rep

    monkeypatch.setattr(rep, "validate_report", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        analyze(ph.ct, out, analyzer=analyzer)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_batch_resume_and_failure_isolation(tmp_path):
    from covidct.cli import main

    studies = tmp_path / "studies"
    studies.mkdir()
    for seed in (1, 2):
        ph = make_phantom(seed=seed, **SMALL)
        write_phantom(ph, tmp_path / f"p{seed}", fmt="nifti")
        (tmp_path / f"p{seed}" / "phantom.nii.gz").rename(studies / f"case{seed}.nii.gz")
    (studies / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    code = main(["analyze", str(studies), "-o", str(out), "--no-html"])
    assert code != 0  # one study failed
    import csv

    rows = {r["study"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["case1"]["status"] == "done" and rows["case2"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    dens = json.loads((out / "case1" / "report.json").read_text())["densitometry"]["total"]
    assert float(rows["case1"]["mean_lung_hu"]) == dens["mean_hu"] < -500  # the phantom's aerated lung
    assert float(rows["case1"]["lcta_affected_pct"]) == dens["affected_percent"]
    assert rows["case1"]["study_date"] == ""  # a NIfTI volume carries no scan date (a DICOM series' StudyDate would)
    assert (out / "case1" / "lungs.nii.gz").exists()
    (studies / "broken.nii.gz").unlink()
    assert main(["analyze", str(studies), "-o", str(out), "--no-html"]) == 0
    rows = {r["study"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["case1"]["status"].startswith("skipped")


def _nifti_studies(tmp_path: Path, n: int) -> Path:
    studies = tmp_path / "studies"
    studies.mkdir()
    for seed in range(n):
        ph = make_phantom(seed=seed, **SMALL)
        write_phantom(ph, tmp_path / f"p{seed}", fmt="nifti")
        (tmp_path / f"p{seed}" / "phantom.nii.gz").rename(studies / f"case{seed}.nii.gz")
    return studies


def test_batch_on_a_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    from covidct.batch import discover_studies, run_batch

    studies = _nifti_studies(tmp_path, 2)
    # threads rather than processes keep the test fast; the code path (submit, gather, summary) is the same
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        rows = run_batch(discover_studies([studies]), tmp_path / "out", dask_address=cluster.scheduler_address, html=False)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert (tmp_path / "out" / "case0" / "lungs.nii.gz").exists() and (tmp_path / "out" / "summary.csv").exists()


def test_batch_in_worker_processes(tmp_path):
    from covidct.batch import discover_studies, run_batch

    studies = _nifti_studies(tmp_path, 2)
    rows = run_batch(discover_studies([studies]), tmp_path / "out", workers=2, html=False)
    assert {r["study"]: r["status"] for r in rows} == {"case0": "done", "case1": "done"}
    single = json.loads((tmp_path / "out" / "case1" / "report.json").read_text())
    again = analyze(tmp_path / "studies" / "case1.nii.gz", None)
    assert single["involvement_percent"]["total"] == pytest.approx(again.report["involvement_percent"]["total"], abs=1e-3)


def test_interrupted_batch_removes_the_stopped_workers_temp_folders(tmp_path):
    """Ctrl-C in a worker-process batch: the workers are stopped mid-study, so the parent removes their
    hidden temp folders (a stand-in one here); other folders are kept."""
    from covidct.batch import discover_studies, run_batch

    studies = _nifti_studies(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".case1.tmp-0123456789ab").mkdir()  # as a worker killed while writing case1 leaves it
    (out / ".case10.tmp-0123456789ab").mkdir()  # another study's
    (out / "case1-notes").mkdir()

    def ctrl_c(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(discover_studies([studies]), out, workers=2, html=False, progress=ctrl_c)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") or "-" in p.name) == [".case10.tmp-0123456789ab", "case1-notes"]


def test_remove_staging_folders_only_touches_that_study(tmp_path):
    from covidct.pipeline import remove_staging_folders

    for name in (".p[1].tmp-aa", ".p[1].tmp-bb", ".p1.tmp-cc", "p[1]"):
        (tmp_path / name).mkdir()
    remove_staging_folders(tmp_path / "p[1]")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p1.tmp-cc", "p[1]"]


def test_lungs_cut_by_a_tight_field_of_view_are_kept(analyzer):
    """A reconstruction whose field of view cuts the chest (the lungs touch the image's side edges): the slices are
    still analysed and the missed aerated lung added (the lung field counts air the edge cuts as inside the body), so
    the lung found matches the uncropped analysis inside the kept columns."""
    import dataclasses

    ct = make_phantom(seed=2, lesion_burden=0.1, shape=(20, 128, 128), spacing=(6.0, 2.8, 2.8)).ct
    full = analyze(ct, None, analyzer=analyzer)
    cols = np.flatnonzero((full.lungs > 0).any(axis=(0, 1)))
    m = int(cols.min()) + 4  # cut 4 columns into each lung
    w = ct.array.shape[2]
    cut = dataclasses.replace(ct, array=np.ascontiguousarray(ct.array[:, :, m : w - m]), source_shape=None)
    res = analyze(cut, None, analyzer=analyzer)
    assert (res.lungs[:, :, 0] > 0).any() and (res.lungs[:, :, -1] > 0).any()  # lung on both cut edges
    kept = float((full.lungs[:, :, m : w - m] > 0).sum())
    assert abs(float((res.lungs > 0).sum()) / kept - 1.0) < 0.05
    assert res.report["diagnosis"]["label"] == full.report["diagnosis"]["label"]


def test_low_involvement_warning():
    from covidct.pipeline import FALSE_INVOLVEMENT_PCT, low_involvement_warnings

    (w,) = low_involvement_warnings({"involvement": {"total": 1.2}})
    assert "1.2 %" in w and "false positives" in w
    assert low_involvement_warnings({"involvement": {"total": FALSE_INVOLVEMENT_PCT}}) == []


def test_whole_hu_volumes_with_lesions_say_their_figures_are_lower_bounds():
    """The HU rule's measured extent (a fraction of the phantoms' true GGO and consolidation) is said in the report of
    every whole HU volume with lesions above its false-positive level; not for 8-bit volumes, not below that level."""
    from covidct.pipeline.diagnosis import HU_RULE_FALSE_INVOLVEMENT_PCT, conservative_extent_warnings

    (w,) = conservative_extent_warnings({"involvement": {"total": 2.2}}, hu_rule=True)
    assert "lower bounds" in w and "20-44 % of the GGO" in w and "outside the lung mask" in w
    assert conservative_extent_warnings({"involvement": {"total": 2.2}}, hu_rule=False) == []
    below = {"involvement": {"total": HU_RULE_FALSE_INVOLVEMENT_PCT / 2}}
    assert conservative_extent_warnings(below, hu_rule=True) == []


def test_thin_slice_hu_volumes_are_warned_that_vessels_may_read_as_ggo():
    """Below the 2-2.5 mm slices the HU rule was chosen on, the report says so and what to feed instead, in place of
    the lower-bound warning; not for 2 mm or thicker slices, not for 8-bit volumes, not where the slice spacing is
    unknown; and through the analysis."""
    import dataclasses

    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer
    from covidct.pipeline.diagnosis import thin_slice_warnings

    thin = make_phantom(shape=(24, 96, 96), spacing=(1.0, 3.0, 3.0), seed=0).ct
    (w,) = thin_slice_warnings(thin, hu_rule=True)
    assert w.startswith("1 mm slices") and "2-5 mm reconstruction" in w
    assert thin_slice_warnings(thin, hu_rule=False) == []
    assert thin_slice_warnings(dataclasses.replace(thin, spacing_known=False), hu_rule=True) == []
    assert thin_slice_warnings(dataclasses.replace(thin, spacing=(2.0, 3.0, 3.0)), hu_rule=True) == []
    assert thin_slice_warnings(dataclasses.replace(thin, spacing=(0.625, 3.0, 3.0)), hu_rule=True)[0].startswith("0.625 mm")
    report = Analyzer()(thin, None, html=False).report
    assert any(x.startswith("1 mm slices") for x in report["warnings"])
    assert not any("are lower bounds" in x for x in report["warnings"])  # measured on 2.5-5 mm slices only


def test_gapped_slices_are_warned_that_lesions_are_under_counted(tmp_path):
    """Slices much thinner than their spacing (an incremental acquisition, or every k-th slice of a series): the HU
    rule's 3-D vessel filter reads the neighbours as touching; the report says so. Not for contiguous or overlapping
    slices, without a known thickness (NIfTI), or where the HU rule did not draw the lesions; and through a DICOM
    series' SliceThickness."""
    import dataclasses

    import pydicom

    from covidct.phantom import make_phantom, write_phantom
    from covidct.pipeline import Analyzer
    from covidct.pipeline.diagnosis import gapped_slice_warnings

    ph = make_phantom(shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6), seed=1)
    ct = ph.ct
    gapped = dataclasses.replace(ct, meta={**ct.meta, "slice_thickness": 2.0})
    (w,) = gapped_slice_warnings(gapped, hu_rule=True)
    assert w.startswith("the slices are 2 mm thick but 6 mm apart") and "under-counted" in w
    assert gapped_slice_warnings(gapped, hu_rule=False) == []
    for thick in (6.0, 5.0, 8.0, None):  # contiguous, nearly so, overlapping, unknown
        assert gapped_slice_warnings(dataclasses.replace(ct, meta={**ct.meta, "slice_thickness": thick}), True) == []
    folder = write_phantom(ph, tmp_path / "in", fmt="dicom")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.SliceThickness = 1.5
        ds.save_as(f)
    report = Analyzer()(load_ct(folder), None, html=False).report
    assert any(x.startswith("the slices are 1.5 mm thick but 6 mm apart") for x in report["warnings"])


def test_a_series_noisier_than_the_hu_rules_own_is_warned():
    """A whole HU volume under a simulated sharp kernel is noisier than the series the HU rule was chosen on: the
    report says so, with its noise; the phantom as generated is not warned."""
    from covidct.evaluate.hu_volumes import sharp_kernel_simulated
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer
    from covidct.pipeline.diagnosis import noise_warnings

    ct = make_phantom(shape=(32, 192, 192), seed=0).ct
    analyzer = Analyzer()
    plain = analyzer(ct, None, html=False).report
    assert not any("soft-kernel" in x for x in plain["warnings"])
    sharp = analyzer(sharp_kernel_simulated(ct, 3.5, 100.0), None, html=False).report
    (w,) = [x for x in sharp["warnings"] if "soft-kernel" in x]
    assert "under-counted" in w and "sharp 'lung' reconstruction kernel" in w
    assert noise_warnings(None) == [] and noise_warnings({"lung_noise_hu": 22.0}) == []
    assert noise_warnings({"lung_noise_hu": None}) == []


def test_a_series_with_denser_lung_than_the_hu_rules_own_is_warned():
    """A whole HU volume whose aerated lung is 100 HU denser (a simulated shallow breath) is denser than every volume
    the HU rule was measured on: the report says so; the phantom as generated is not warned."""
    from covidct.evaluate.hu_volumes import shallow_breath_simulated
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer
    from covidct.pipeline.diagnosis import density_warnings

    ct = make_phantom(shape=(32, 192, 192), seed=0).ct
    analyzer = Analyzer()
    plain = analyzer(ct, None, html=False).report
    assert not any("shallow breath" in x for x in plain["warnings"])
    breath = shallow_breath_simulated(ct, 100.0)
    shallow = analyzer(breath, None, html=False).report
    (w,) = [x for x in shallow["warnings"] if "shallow breath" in x]
    assert "GGO floor is fixed" in w and "may be too high" in w and "--ggo-floor-follows-lung" in w
    # the opt-in floor (`analyze --ggo-floor-follows-lung`) follows the denser lung: less GGO, and the report says so
    follows = Analyzer(ggo_floor_follows_lung=True)(breath, None, html=False).report
    (w,) = [x for x in follows["warnings"] if "shallow breath" in x]
    assert "raised its GGO floor by" in w and "full inspiration" in w
    assert follows["lesions"]["ggo_ml"] < shallow["lesions"]["ggo_ml"]
    assert density_warnings(None) == [] and density_warnings({"aerated_lung_hu": -880.0}) == []
    assert density_warnings({"aerated_lung_hu": None}) == []
    (raised,) = density_warnings({"aerated_lung_hu": -780.0, "best_aerated_lung_hu": -820.0, "ggo_floor_lift_hu": 80.0})
    assert "disease over much of the lung" in raised and "raised its GGO floor by 80 HU" in raised
    # dense on the whole but its best-aerated part as aerated as in full inspiration: disease, not a shallow breath
    (sick,) = density_warnings({"aerated_lung_hu": -700.0, "best_aerated_lung_hu": -930.0, "ggo_floor_lift_hu": 0.0})
    assert "points to disease over much of the lung" in sick and "--ggo-floor-follows-lung" not in sick


def test_diagnosis_rule_centred_at_the_false_positive_level():
    from covidct.pipeline import FALSE_INVOLVEMENT_PCT, diagnose_from_findings

    def dx(total):
        sev = {"involvement": {"total": total}, "bilateral": True, "ggo_fraction": 0.8, "peripheral_fraction": 0.7}
        return diagnose_from_findings(sev)

    at = dx(FALSE_INVOLVEMENT_PCT)["probabilities"]
    assert abs(at["normal"] - 0.5) < 1e-3  # the models' false-positive level alone is a coin toss, not disease
    assert dx(2.0)["label"] == "normal" and dx(15.0)["label"] == "covid19"
    assert str(FALSE_INVOLVEMENT_PCT) in dx(1.0)["method"] or f"{FALSE_INVOLVEMENT_PCT:g}" in dx(1.0)["method"]


def test_network_slices_and_interpolation_between_them():
    from covidct.pipeline.predict import interpolate_slices, network_slices

    thin, thick = make_phantom(shape=(24, 64, 64), spacing=(2.0, 5.0, 5.0)).ct, make_phantom(shape=(24, 64, 64)).ct
    zs = np.arange(3, 10)
    run = network_slices(zs, thin)
    np.testing.assert_array_equal(run, [3, 4, 6, 8, 9])  # even slices and both ends
    np.testing.assert_array_equal(network_slices(zs, thick), zs)  # 5 mm slices: every slice
    thin.spacing_known = False
    np.testing.assert_array_equal(network_slices(zs, thin), zs)  # unknown spacing: every slice
    thin.spacing_known = True
    prob = np.stack([np.full((2, 2, 2), float(z), np.float32) for z in run])  # probability = slice number
    out = interpolate_slices(prob, run, zs)
    np.testing.assert_allclose(out[:, 0, 0, 0], zs.astype(np.float32))  # linear between neighbours, exact on run


def test_thin_hu_series_run_the_lung_network_on_every_other_slice(monkeypatch):
    """Thin HU series: the lung network sees the even slices and both ends; the lesion network every lung slice
    (its effusion moved too much on every other slice: docs/BENCHMARKS.md); thick series: every slice."""
    from covidct.pipeline.predict import ModelRunner

    calls = []
    real = ModelRunner.probabilities

    def spy(self, model, vol, zs, is_hu, spacing=None, role="lungs", channel=None, ahead_zs=None):
        calls.append((role, np.asarray(zs).copy()))
        return real(self, model, vol, zs, is_hu, spacing, role, channel, ahead_zs)

    monkeypatch.setattr(ModelRunner, "probabilities", spy)
    analyzer = Analyzer()
    for dz, every_other in ((2.0, True), (5.0, False)):
        calls.clear()
        ph = make_phantom(shape=(40, 128, 128), spacing=(dz, 2.5, 2.5), seed=5)
        analysis = analyzer(ph.ct)
        assert analysis.lungs.any()
        (role, lung_zs), (role2, lesion_zs) = calls
        assert (role, role2) == ("lungs", "lesions")
        assert np.all(lung_zs[1:-1] % 2 == 0) == every_other
        assert (len(lung_zs) < 0.7 * (lung_zs[-1] - lung_zs[0] + 1)) == every_other
        np.testing.assert_array_equal(lesion_zs, np.arange(lesion_zs[0], lesion_zs[-1] + 1))
        if every_other:  # the lesion network ran ahead on every lung-network slice, the skipped ones too
            job = analyzer._runner(ahead=True)
            job.probabilities(analyzer.models["lungs"], ph.ct.array, lung_zs, True, ph.ct.spacing, "lungs", channel=1,
                              ahead_zs=np.arange(lung_zs[0], lung_zs[-1] + 1))
            ahead = next(iter(job.running.values()))
            assert set(ahead.zs) == set(range(lung_zs[0], lung_zs[-1] + 1))
            job.close()


def test_dense_effusion_away_from_the_lung_is_muscle_not_fluid():
    """The lesion network's "effusion" on P001 and LIDC-IDRI-0001 was paraspinal muscle (median 34-37 HU) touching the
    lung's edge only. Fluid is kept wherever it touches; a dense component is kept only if it lies against the lung."""
    from covidct.pipeline.lesions import EFFUSION_DENSE_HU, _plausible_effusion

    spacing = (2.0, 1.5, 1.5)
    hu = np.full((20, 80, 80), 40.0, np.float32)
    lung = np.zeros(hu.shape, bool)
    lung[2:18, 10:50, 10:35] = True  # right and left lung boxes; rows run anterior -> posterior
    lung[2:18, 10:50, 45:71] = True
    hu[lung] = -850.0
    fluid_layer = np.zeros(hu.shape, bool)
    fluid_layer[4:16, 50:54, 10:35] = True  # a posterior layer against the first lung
    dense_layer = np.zeros(hu.shape, bool)
    dense_layer[4:16, 50:54, 45:71] = True  # the same against the second lung, at muscle density (blood, pus)
    blob = np.zeros(hu.shape, bool)
    blob[4:16, 46:61, 36:44] = True  # between the lungs, 2 voxels from the first: touches its shell, not the lung
    for region, value in ((fluid_layer, 10.0), (dense_layer, 45.0), (blob, 45.0)):
        hu[region] = value
    effusion = fluid_layer | dense_layer | blob
    kept = _plausible_effusion(effusion, lung, spacing, hu=hu)
    assert kept[fluid_layer].all() and kept[dense_layer].all() and not kept[blob].any()
    # without HU (8-bit input) or at fluid density the blob passes the other checks, as before
    assert _plausible_effusion(effusion, lung, spacing)[blob].all()
    hu[blob] = EFFUSION_DENSE_HU - 5.0
    assert _plausible_effusion(effusion, lung, spacing, hu=hu)[blob].all()
    # on a display-range volume mapped to HU (values a few HU off near soft tissue) the contact test reaches lower
    kept = _plausible_effusion(effusion, lung, spacing, hu=hu, dense_hu=EFFUSION_DENSE_HU - 20.0)
    assert kept[fluid_layer].all() and kept[dense_layer].all() and not kept[blob].any()


def test_effusion_lies_on_the_dependent_side_of_the_patient_position():
    """A fluid layer against the anterior lung surface is an effusion of a prone patient, not of a supine one; for a
    patient lying on the left side it lies against the left lung's lateral wall."""
    from covidct.pipeline.lesions import _plausible_effusion
    from covidct.volume import DEPENDENT_SIDE, SUPINE

    spacing = (2.0, 1.5, 1.5)
    hu = np.full((20, 80, 80), 40.0, np.float32)
    lung = np.zeros(hu.shape, bool)
    lung[2:18, 14:50, 10:35] = True  # right lung (small x) and left lung; rows run anterior -> posterior
    lung[2:18, 14:50, 45:71] = True
    hu[lung] = -850.0
    anterior = np.zeros(hu.shape, bool)
    anterior[4:16, 10:14, 10:35] = True
    lateral_left = np.zeros(hu.shape, bool)
    lateral_left[4:16, 20:45, 71:75] = True
    hu[anterior | lateral_left] = 10.0
    assert not _plausible_effusion(anterior, lung, spacing, hu=hu, dependent=SUPINE).any()
    assert _plausible_effusion(anterior, lung, spacing, hu=hu, dependent=DEPENDENT_SIDE["HFP"])[anterior].all()
    assert _plausible_effusion(lateral_left, lung, spacing, hu=hu, dependent=DEPENDENT_SIDE["HFDL"])[lateral_left].all()
    assert not _plausible_effusion(lateral_left, lung, spacing, hu=hu, dependent=DEPENDENT_SIDE["HFDR"]).any()


def test_scan_that_cuts_the_lungs_says_so(analyzer):
    """A scan that stops inside the lungs (here a phantom without its upper half, as an abdominal CT shows only the
    lung bases) gets a warning that its measures describe the scanned part only; the whole phantom does not."""
    from covidct.pipeline.diagnosis import coverage_warnings

    ph = make_phantom(seed=0, shape=(20, 128, 128), spacing=(10.0, 2.6, 2.6), margin_slices=2)  # lung-free ends
    whole = analyzer(ph.ct)
    assert not [w for w in whole.report["warnings"] if "cuts the lungs" in w]
    lower = ph.ct.with_array(ph.ct.array)
    lower.array = np.ascontiguousarray(ph.ct.array[:12])
    warned = [w for w in analyzer(lower).report["warnings"] if "cuts the lungs" in w]
    assert len(warned) == 1 and "top slice" in warned[0] and "bottom slice" not in warned[0]
    # the rule itself: lung on an end slice counts from a tenth of the largest slice's lung
    lungs = np.zeros((5, 10, 10), np.uint8)
    lungs[1:4] = 1
    assert coverage_warnings(lungs, (2.0, 1.0, 1.0)) == []
    lungs[0, :2, :5] = 1  # 10 % of the largest slice's lung on the bottom slice
    assert "bottom slice" in coverage_warnings(lungs, (2.0, 1.0, 1.0))[0]


def test_one_lung_takes_its_side_from_the_body_midline():
    """A lung mask that is one lung (the other removed, collapsed or airless) is labelled by the side of the body it
    lies on, not cut in half; two lungs are split as before."""
    z, y, x = np.mgrid[:12, :80, :120]
    hu = np.where(((x - 60) / 55.0) ** 2 + ((y - 40) / 35.0) ** 2 <= 1.0, 40.0, -1000.0).astype(np.float32)  # body
    left = (((x - 85) / 18.0) ** 2 + ((y - 40) / 22.0) ** 2 <= 1.0) & (z >= 1) & (z <= 10)  # x > 60: patient's left
    right = (((x - 35) / 18.0) ** 2 + ((y - 40) / 22.0) ** 2 <= 1.0) & (z >= 1) & (z <= 10)
    hu[left | right] = -850.0
    spacing = (5.0, 2.0, 2.0)
    for lung, side in ((left, 1), (right, 2)):
        labels = split_left_right(lung, spacing, hu)
        assert (labels[lung] == side).all() and not labels[~lung].any()
        assert (split_left_right(lung, spacing) == 1).any() and (split_left_right(lung, spacing) == 2).any()  # no HU
    both = split_left_right(left | right, spacing, hu)
    assert (both[left] == 1).all() and (both[right] == 2).all()


def test_a_missing_lung_is_warned_about_and_the_other_keeps_its_side(analyzer):
    """A hemithorax made airless (its lung set to soft tissue, as a collapsed lung or a removed one looks): the
    remaining lung is labelled by its own side, not cut in half, and a warning says a lung is under half the other."""
    from covidct.labels import LEFT_LUNG, RIGHT_LUNG
    from covidct.pipeline.diagnosis import asymmetry_warnings

    ph = make_phantom(seed=2, lesion_burden=0.0, shape=(20, 128, 128), spacing=(8.0, 2.6, 2.6), margin_slices=2)
    arr = ph.ct.array.copy()
    arr[ph.lungs == RIGHT_LUNG] = 40.0
    res = analyzer(ph.ct.with_array(arr))
    kept = ph.lungs == LEFT_LUNG
    assert (res.lungs[kept] == LEFT_LUNG).mean() > 0.95 and not (res.lungs == RIGHT_LUNG).any()
    assert any("right lung measures 0 %" in w for w in res.report["warnings"])
    assert not [w for w in analyzer(ph.ct).report["warnings"] if "lung measures" in w]
    sev = {"per_lung": {"left": {"lung_vox": 100}, "right": {"lung_vox": 201}}}
    assert asymmetry_warnings(sev) and not asymmetry_warnings({"per_lung": {"left": {"lung_vox": 100},
                                                                             "right": {"lung_vox": 199}}})
