"""covidct.data: source adapters on tiny fake folders, NIfTI layouts, group-preserving splits."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.data import (
    apply_split,
    check_groups_disjoint,
    data_root,
    detect_nifti_layout,
    infnet_consistent_split,
    load_covid_ct_md,
    load_covid_ct_md_volume,
    load_ma2020,
    load_medseg_ct100,
    load_medseg_infnet,
    load_nifti_dataset,
    load_source,
    load_split,
    load_ucsd,
    medseg_groups,
    medseg_split_72_10_18,
    save_split,
    split_by_group,
    ucsd_group,
)
from covidct.errors import ConfigError, InconsistentSeries, UnreadableInput


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _png(path: Path, a: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8), mode=mode).save(path)


def _palette_png(path: Path, idx: np.ndarray) -> None:
    """A palette PNG whose index 1 is BLACK and 2 dark: only raw indices reveal the labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(idx.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 0, 0, 0, 1, 1, 1] + [0] * (256 * 3 - 9))
    img.save(path)


def _square(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    a[rows, cols] = value
    return a


# --------------------------------------------------------------------------- Ma et al.


@pytest.fixture
def ma_root(tmp_path: Path) -> Path:
    root = tmp_path / "ma2020-slices"
    sq = _square((16, 16), slice(2, 6), slice(3, 8))  # near the top-left corner
    rows = []
    for k, (fname, case) in enumerate([("0000.png", 0), ("0001.png", 0), ("0005.png", 10), ("0007.png", 11)]):
        _png(root / "ct" / fname, 40 + sq * 200)
        _png(root / "lungs" / fname, np.maximum(sq, _square((16, 16), slice(8, 12), slice(8, 14))) * 255)
        _png(root / "infection" / fname, sq * 255)
        rows.append([fname, case, k])
    _csv(root / "cases.csv", ["file", "case", "position"], rows)
    return root


def test_ma2020_flip_and_alignment(ma_root: Path) -> None:
    recs = load_ma2020(ma_root)
    assert [r["id"] for r in recs] == ["0000", "0001", "0005", "0007"]
    for r in recs:
        assert r["image"].dtype == np.float32 and r["image"].shape == (16, 16)
        assert r["infection"].dtype == np.uint8 and set(np.unique(r["infection"])) == {0, 1}
        np.testing.assert_array_equal(r["image"] > 128, r["infection"] > 0)  # square on the mask
        rows, cols = np.nonzero(r["infection"])
        assert (cols.min(), cols.max()) == (3, 7)  # left/right never changes
        if r["meta"]["case_index"] >= 10:  # vertical flip only: rows 2..5 -> 10..13
            assert r["meta"]["flipped"] and (rows.min(), rows.max()) == (10, 13)
        else:
            assert not r["meta"]["flipped"] and (rows.min(), rows.max()) == (2, 5)
    assert {r["group"] for r in recs} == {"ma-0", "ma-10-11"}
    assert recs[2]["case"] == "ma-10" and recs[3]["group"] == "ma-10-11"


# --------------------------------------------------------------------------- MedSeg CT100 + Inf-Net

CT_SHAPE = (24, 24)
BOX = (3, 5, 21, 15)  # x0, y0, x1, y1: a non-square box so a missing transpose cannot fit


@pytest.fixture
def medseg_root(tmp_path: Path) -> Path:
    ct = tmp_path / "medseg-ct100"
    inet = tmp_path / "medseg-infnet"
    x0, y0, x1, y1 = BOX
    rows = []
    for idx, split in [(0, "train"), (1, "test"), (2, "none")]:
        img = np.full(CT_SHAPE, 30, np.uint8)
        ggo = _square(CT_SHAPE, slice(6, 9), slice(4, 8))  # upper-left inside the box
        cons = _square(CT_SHAPE, slice(10, 13), slice(14, 19))  # lower-right inside the box
        extra = _square(CT_SHAPE, slice(12, 14), slice(9, 12)) if idx == 0 else np.zeros(CT_SHAPE, np.uint8)
        img[ggo > 0], img[cons > 0], img[extra > 0] = 120, 220, 160
        _png(ct / "images" / f"tr_im_{idx:04d}.png", img)
        _palette_png(ct / "masks" / f"tr_mask_{idx:04d}.png", ggo | cons | extra)
        files = ""
        if split != "none":
            base = {"train": "TrainingSet/LungInfection-Train/Doctor-label", "test": "TestingSet/LungInfection-Test"}
            mc = {"train": "TrainingSet/MultiClassInfection-Train", "test": "TestingSet/MultiClassInfection-Test"}
            lab = (ggo + 2 * cons)[y0:y1, x0:x1].T  # Inf-Net stores transposed crops
            (inet / base[split] / "Imgs").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[y0:y1, x0:x1].T).save(inet / base[split] / "Imgs" / f"{idx}.jpg", quality=100)
            _png(inet / base[split] / "GT" / f"{idx}.png", (lab > 0) * 255)
            _palette_png(inet / mc[split] / "GT" / f"{idx}.png", lab)
            files = f"{base[split]}/Imgs/{idx}.jpg"
        box = [x0, y0, x1, y1] if split != "none" else ["", "", "", ""]
        rows.append([idx, f"images/tr_im_{idx:04d}.png", 1, 0, split, files, 0.99, (idx + 1) % 3, 0.5, *box,
                     "transpose" if files else "", 1.0])  # fmt: skip
    _csv(
        ct / "infnet_map.csv",
        ["ct100_index", "ct100_image", "in_jcs_train", "in_jcs_test", "infnet_split", "infnet_files",
         "match_score", "second_best_index", "second_best_score", "box_x0", "box_y0", "box_x1", "box_y1",
         "infnet_to_ct100", "gt_dice_vs_ct100_mask"],
        rows,
    )  # fmt: skip
    return tmp_path


def test_medseg_ct100_palette_indices_and_infnet_mapping(medseg_root: Path) -> None:
    recs = load_medseg_ct100(medseg_root / "medseg-ct100")
    assert [r["id"] for r in recs] == ["0", "1", "2"]
    r0 = recs[0]
    assert set(np.unique(r0["infection"])) == {0, 1}  # palette indices, not (black) RGB
    np.testing.assert_array_equal(r0["image"] > 100, r0["infection"] > 0)
    les = r0["lesions"]
    assert les is not None and set(np.unique(les)) == {0, 1, 2}
    np.testing.assert_array_equal(les == 1, r0["image"] == 120)  # GGO back on its pixels
    np.testing.assert_array_equal(les == 2, r0["image"] == 220)  # consolidation too
    extra = r0["meta"]["extra_region"]
    np.testing.assert_array_equal(extra > 0, r0["image"] == 160)  # not labelled effusion
    assert r0["meta"]["extra_region_pixels"] == 6 and r0["meta"]["infnet_outside_mask_pixels"] == 0
    assert recs[1]["meta"]["extra_region_pixels"] == 0 and recs[1]["meta"]["infnet_split"] == "test"
    assert recs[2]["lesions"] is None and recs[2]["meta"]["infnet_split"] == "none"
    # regions of at least min_effusion_px become class 3 (pleural effusion)
    eff = load_medseg_ct100(medseg_root / "medseg-ct100", min_effusion_px=1)[0]["lesions"]
    np.testing.assert_array_equal(eff == 3, r0["image"] == 160)


def test_medseg_ct100_lung_masks_from_a_folder(medseg_root: Path, tmp_path: Path) -> None:
    """``lungs_dir``: a slice with ``tr_lung_NNNN.png`` gets it as ``lungs``, the others keep None; a mask of the
    wrong size is an error naming the slice."""
    from covidct.errors import UnreadableInput

    lungs = np.zeros(CT_SHAPE, np.uint8)
    lungs[4:20, 2:22] = 255
    _png(tmp_path / "lungs" / "tr_lung_0000.png", lungs)
    recs = load_medseg_ct100(medseg_root / "medseg-ct100", lungs_dir=tmp_path / "lungs")
    np.testing.assert_array_equal(recs[0]["lungs"], lungs > 0)
    assert recs[1]["lungs"] is None and recs[2]["lungs"] is None
    assert load_medseg_ct100(medseg_root / "medseg-ct100")[0]["lungs"] is None  # no folder: as before
    _png(tmp_path / "lungs" / "tr_lung_0001.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(UnreadableInput, match="slice 1: lung mask"):
        load_medseg_ct100(medseg_root / "medseg-ct100", lungs_dir=tmp_path / "lungs")


def test_pseudo_lung_joins_labelled_lesions_and_leaves_effusion_out() -> None:
    """scripts/pseudo_lung_labels.py: the model's aerated lung joined with the doctors' GGO/consolidation, the gap
    between them closed, holes filled, effusion (not lung) left out."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "pseudo_lung_labels.py"
    spec = importlib.util.spec_from_file_location("pseudo_lung_labels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = np.zeros((40, 40), np.uint8)
    model[5:35, 5:20] = 1  # aerated lung ...
    model[15:20, 10:14] = 0  # ... with a hole (a vessel)
    lesions = np.zeros((40, 40), np.uint8)
    lesions[10:30, 21:27] = 2  # consolidation one pixel away from the aerated lung
    lesions[30:35, 21:27] = 1
    lesions[5:9, 28:36] = 3  # effusion
    lung = mod.pseudo_lung(model, lesions)
    assert lung[lesions == 2].all() and lung[lesions == 1].all()
    assert lung[17, 12] and lung[20, 20]  # hole filled, gap closed
    assert not lung[lesions == 3].any() and not lung[0, 0]


def test_medseg_infnet_transposed_back(medseg_root: Path) -> None:
    ct = {r["id"]: r for r in load_medseg_ct100(medseg_root / "medseg-ct100")}
    x0, y0, x1, y1 = BOX
    for split, ids in [("train", ["0"]), ("test", ["1"])]:
        recs = load_medseg_infnet(medseg_root / "medseg-infnet", split=split, multiclass=True)
        assert [r["id"] for r in recs] == ids
        r = recs[0]
        assert r["image"].shape == (y1 - y0, x1 - x0)  # back to rows = y after the transpose
        crop = ct[r["id"]]["image"][y0:y1, x0:x1]
        assert np.abs(r["image"] - crop).max() < 12  # JPEG noise only
        np.testing.assert_array_equal(r["lesions"], ct[r["id"]]["lesions"][y0:y1, x0:x1])
        np.testing.assert_array_equal(r["infection"], r["lesions"] > 0)
        assert r["meta"]["infnet_split"] == split
    assert load_medseg_infnet(medseg_root / "medseg-infnet", "train")[0]["lesions"] is None
    # the crop takes its full slice's effusion class (the extra region of the CT100 mask), as load_medseg_ct100 gives it
    crop = load_medseg_infnet(medseg_root / "medseg-infnet", "train", multiclass=True, effusion_from_ct100=True,
                              min_effusion_px=1)[0]["lesions"]
    full = load_medseg_ct100(medseg_root / "medseg-ct100", min_effusion_px=1)[0]["lesions"]
    np.testing.assert_array_equal(crop, full[y0:y1, x0:x1])
    assert (crop == 3).sum() == 6
    assert not (load_medseg_infnet(medseg_root / "medseg-infnet", "train", multiclass=True, effusion_from_ct100=True,
                                   min_effusion_px=7)[0]["lesions"] == 3).any()  # under the size floor: left out


def test_medseg_groups_union_find() -> None:
    g = medseg_groups(range(100))
    assert g[4] == g[17] == g[91] == g[93] == "medseg-4-17-91-93"
    assert g[5] == g[46] and g[6] == g[26] and g[0] == "medseg-0"
    assert medseg_groups([16, 61], [(16, 61)])[16] == "medseg-16-44-61"
    assert len(set(g.values())) == 100 - 13  # each of the 13 pairs merges two groups


# --------------------------------------------------------------------------- UCSD


def test_ucsd_grey_conversion_and_meta(tmp_path: Path) -> None:
    root = tmp_path / "ucsd-covidct"
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :6, 3] = 255  # left half opaque white, right half transparent -> black
    (root / "CT_COVID").mkdir(parents=True)
    (root / "CT_NonCOVID").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(root / "CT_COVID" / "2020.03.13.20035212-p23-155.png")
    Image.fromarray(np.full((8, 9, 3), (200, 100, 50), np.uint8), "RGB").save(root / "CT_NonCOVID" / "21%0.jpg")
    _png(root / "CT_NonCOVID" / "7.png", np.full((5, 5), 77))
    _csv(root / "train.csv", ["file", "label"],
         [["CT_COVID/2020.03.13.20035212-p23-155.png", 1], ["CT_NonCOVID/21%0.jpg", 0], ["CT_NonCOVID/7.png", 0]])  # fmt: skip
    recs = load_ucsd(root, "train")
    a, b, c = recs
    assert a["image"].shape == (10, 12) and a["image"].dtype == np.float32
    assert a["image"][:, :6].min() == 255 and a["image"][:, 6:].max() == 0
    assert (a["class_label"], b["class_label"]) == (1, 0)
    assert a["meta"]["mode"] == "RGBA" and b["meta"]["format"] == "JPEG" and c["meta"]["mode"] == "L"
    assert a["meta"]["file_size"] > 0 and b["image"].ndim == 2 and float(c["image"].mean()) == 77.0
    assert a["group"] == "2020.03.13.20035212"
    assert b["group"] == ucsd_group("CT_NonCOVID/21%3.jpg") != ucsd_group("CT_NonCOVID/21.png")
    with pytest.raises(UnreadableInput):
        load_ucsd(root, "val")


# --------------------------------------------------------------------------- COVID-CT-MD DICOM


def _write_dicom(path: Path, stored: np.ndarray, loc: float, inst: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, loc]
    ds.SliceLocation, ds.InstanceNumber = loc, inst
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def ctmd_root(tmp_path: Path) -> Path:
    root = tmp_path / "covid-ct-md"
    locs = {"S_2.dcm": -2.0, "S_10.dcm": 0.0, "S_1.dcm": -4.0}  # names do not give the order
    rows = []
    for k, (name, loc) in enumerate(sorted(locs.items(), key=lambda t: -t[1])):
        stored = np.full((6, 5), 1024 - 800, np.uint16)
        stored[1, 3] = 1024 + 40 * (k + 1)  # a marker: HU 40, 80, 120 from the top slice down
        _write_dicom(root / "P001" / name, stored, loc, k + 1)
        rows.append(["P001", "COVID-19", 0, k, f"P001/{name}", loc, k + 1, int(k == 1), 0, 0, 0, 0, 0, int(k == 1)])
    _csv(root / "labels_slice.csv",
         ["subject", "diagnosis", "npy_row", "slice_position", "dicom_file", "slice_location", "instance_number",
          "label", "label_before_update1", "LLL", "LUL", "RLL", "RML", "RUL"], rows)  # fmt: skip
    return root


def test_covid_ct_md_dicom(ctmd_root: Path) -> None:
    recs = load_covid_ct_md(ctmd_root, "P001")
    assert [r["meta"]["slice_location"] for r in recs] == [0.0, -2.0, -4.0]
    assert all(r["is_hu"] and r["image"].dtype == np.float32 for r in recs)
    assert recs[0]["image"][0, 0] == -800 and [r["image"][1, 3] for r in recs] == [40, 80, 120]
    assert [r["slice_label"] for r in recs] == [0, 1, 0] and recs[1]["meta"]["lobes"]["RUL"] == 1
    vol, labels = load_covid_ct_md_volume(ctmd_root, "P001")
    assert vol.shape == (3, 6, 5) and list(vol[:, 1, 3]) == [120, 80, 40]  # ascending SliceLocation
    assert list(labels) == [0, 1, 0]


def test_covid_ct_md_negatives_and_folds(ctmd_root: Path) -> None:
    # positions 0, 1, 2 with labels 0, 1, 0; blocks of 2 slices: folds 0, 0, 1
    neg = load_covid_ct_md(ctmd_root, "P001", negatives_only=True)
    assert [r["meta"]["position"] for r in neg] == [0, 2]  # the positive slice has no pixel labels: dropped
    assert all(r["infection"].shape == r["image"].shape and not r["infection"].any() for r in neg)
    assert [r["meta"]["block_fold"] for r in load_covid_ct_md(ctmd_root, "P001", block=2)] == [0, 0, 1]
    assert [r["meta"]["position"] for r in load_covid_ct_md(ctmd_root, "P001", fold=0, block=2)] == [0, 1]
    assert [r["meta"]["position"] for r in load_covid_ct_md(ctmd_root, "P001", fold=1, block=2, negatives_only=True)] == [2]
    # gap: slices at a block edge (next to the other fold) are left out
    assert load_covid_ct_md(ctmd_root, "P001", fold=0, block=2, gap=1) == []
    assert [r["meta"]["position"] for r in load_covid_ct_md(ctmd_root, "P001", fold=0, block=3, gap=1)] == [1]


def test_covid_ct_md_label_mismatch(ctmd_root: Path) -> None:
    p = ctmd_root / "labels_slice.csv"
    p.write_text(p.read_text().replace(",-2.0,", ",-3.0,"))
    with pytest.raises(InconsistentSeries):
        load_covid_ct_md(ctmd_root, "P001")
    with pytest.raises(UnreadableInput):
        load_covid_ct_md(ctmd_root, "P999")


# --------------------------------------------------------------------------- NIfTI layouts


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_nifti_layouts(tmp_path: Path) -> None:
    a = tmp_path / "a"
    _touch(a / "images" / "c1.nii.gz", a / "labels" / "c1.nii.gz", a / "images" / "c2.nii.gz")
    b = tmp_path / "b"
    _touch(b / "imagesTr" / "x_001_0000.nii.gz", b / "imagesTr" / "x_001_0001.nii.gz", b / "labelsTr" / "x_001.nii.gz")
    c = tmp_path / "c"
    _touch(c / "Train" / "volume-covid19-A-0003_ct.nii.gz", c / "Train" / "volume-covid19-A-0003_seg.nii.gz")
    d = tmp_path / "d"
    _touch(d / "COVID-19-CT-Seg_20cases" / "coronacases_001.nii.gz", d / "Infection_Mask" / "coronacases_001.nii.gz",
           d / "Lung_Mask" / "coronacases_001.nii.gz", d / "COVID-19-CT-Seg_20cases" / "radiopaedia_4_85506_1.nii",
           d / "Lung_and_Infection_Mask" / "radiopaedia_4_85506_1.nii.gz")  # fmt: skip
    assert [detect_nifti_layout(p) for p in (a, b, c, d)] == ["images-labels", "nnunet", "covid19-20", "ma2020"]
    ra = load_nifti_dataset(a)
    assert [(r["case"], Path(r["label"]).parent.name) for r in ra] == [("c1", "labels")]
    rb = load_source("nifti", b)
    assert [r["case"] for r in rb] == ["x_001"] and rb[0]["image"].endswith("x_001_0000.nii.gz")
    rc = load_nifti_dataset(c)
    assert rc[0]["case"] == "volume-covid19-A-0003" and rc[0]["label"].endswith("_seg.nii.gz")
    rd = {r["case"]: r for r in load_nifti_dataset(d)}
    assert rd["coronacases_001"]["label"].endswith("Infection_Mask/coronacases_001.nii.gz")
    assert rd["coronacases_001"]["lungs"] is not None
    assert rd["radiopaedia_4_85506_1"]["meta"]["label_values"][3] == "infection"
    _touch(tmp_path / "e" / "notes.txt")
    with pytest.raises(UnreadableInput, match="no NIfTI data set layout"):
        load_nifti_dataset(tmp_path / "e")
    with pytest.raises(UnreadableInput):
        load_nifti_dataset(tmp_path / "missing")


def test_load_source_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match="unknown data source"):
        load_source("nope", tmp_path)
    monkeypatch.setenv("COVIDCT_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(UnreadableInput, match="not found"):
        load_source("ma2020")


# --------------------------------------------------------------------------- splits


def _fake(n_groups: int = 40, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for g in range(n_groups):
        for k in range(int(rng.integers(1, 5))):
            recs.append({"id": f"{g}-{k}", "group": f"g{g}", "class_label": g % 2, "source": "fake", "meta": {}})
    return recs


def test_split_by_group_disjoint_deterministic(tmp_path: Path) -> None:
    recs = _fake()
    s1 = split_by_group(recs, seed=3)
    s2 = split_by_group(list(reversed(recs)), seed=3)
    assert {k: sorted(v) for k, v in s1.items()} == {k: sorted(v) for k, v in s2.items()}
    assert check_groups_disjoint(recs, s1) == []
    assert sorted(i for v in s1.values() for i in v) == sorted(r["id"] for r in recs)
    n = len(recs)
    assert abs(len(s1["train"]) - 0.7 * n) <= 3 and abs(len(s1["test"]) - 0.15 * n) <= 3
    assert split_by_group(recs, seed=4) != s1  # the seed matters
    p = save_split(s1, tmp_path / "s.json")
    back = load_split(p)
    assert dict(back) == dict(s1) and back.seed == 3 and back.info["source"] == "fake"
    parts = apply_split(recs, back)
    assert [r["id"] for r in parts["val"]] == s1["val"]
    with pytest.raises(ConfigError):
        apply_split(recs, {"train": ["nope"]})


def test_split_counts_stratified_and_by_groups() -> None:
    recs = _fake(60)
    n = len(recs)
    s = split_by_group(recs, {"a": n - 20, "b": 12, "c": 8}, seed=0)
    assert [len(s[k]) for k in "abc"] == [n - 20, 12, 8] and check_groups_disjoint(recs, s) == []
    st = split_by_group(recs, {"train": 0.5, "test": 0.5}, seed=0, stratify_key="class_label")
    parts = apply_split(recs, st)
    pos = [sum(r["class_label"] for r in parts[k]) for k in ("train", "test")]
    assert abs(pos[0] - pos[1]) <= 4
    sg = split_by_group(recs, {"x": 30, "y": 30}, by="groups")
    assert len({r["group"] for r in apply_split(recs, sg)["x"]}) == 30
    with pytest.raises(ConfigError):
        split_by_group(recs, {"a": 0.5, "b": 0.2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):  # one big group cannot be cut to fit
            split_by_group([{"id": str(i), "group": "g"} for i in range(5)], {"a": 3, "b": 2})


def test_medseg_helpers() -> None:
    groups = medseg_groups(range(100))
    test_ids = set(range(50, 98)) | {26, 53}  # 48 test slices; 6/26 and 21/53 straddle
    test_ids -= {6, 21}
    test_ids = set(sorted(test_ids)[:48])
    recs = []
    for i in range(100):
        side = "none" if i in (22, 48) else ("test" if i in test_ids else "train")
        recs.append({"id": str(i), "group": groups[i], "source": "medseg-ct100", "meta": {"infnet_split": side}})
    s = medseg_split_72_10_18(recs, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [72, 10, 18]
    assert check_groups_disjoint(recs, s) == []
    assert medseg_split_72_10_18(recs, seed=0) == s
    inet = infnet_consistent_split(recs, n_val=10, seed=0)
    assert len(inet["test"]) == 48 and len(inet["val"]) == 10
    assert len(inet["train"]) + len(inet["val"]) == 100 - 48 - 2
    leaky = {d["group"] for d in inet.leaky_groups}
    assert "medseg-6-26" in leaky and "medseg-21-53" in leaky
    assert check_groups_disjoint(recs, {"train": inet["train"], "val": inet["val"]}) == []
    assert not {groups[int(i)] for i in inet["val"]} & leaky
    dropped = infnet_consistent_split(recs, n_val=10, seed=0, drop_leaky=True)
    assert "6" not in dropped["train"] and "6" in inet["train"]
