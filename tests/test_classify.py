"""Classification: training path, threshold selection, metrics, patient aggregation, `covidct classify`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.errors import ConfigError
from covidct.evaluate.classification import classification_metrics, roc_auc, roc_points, select_threshold
from covidct.train.config import load_config


def shape_records(n_cases: int = 64, size: int = 32, seed: int = 0) -> list[dict]:
    """Display images: a bright disk (class 1, "covid19") or a bright square (class 0) on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    recs = []
    for c in range(n_cases):
        img = rng.normal(50, 8, (size, size)).astype(np.float32)
        cy, cx = rng.integers(10, size - 10, 2)
        r = int(rng.integers(5, 8))
        lab = c % 2
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if lab else ((abs(yy - cy) <= r - 1) & (abs(xx - cx) <= r - 1))
        img[m] = 200
        part = "train" if c < n_cases * 3 // 4 else "val"
        recs.append({"image": np.clip(img, 0, 255), "is_hu": False, "class_label": lab, "slice_label": lab,
                     "lungs": None, "infection": None, "lesions": None, "case": f"s{c}", "id": f"s{c}",
                     "group": f"s{c}", "source": "shapes", "meta": {"split": part}})
    return recs


def tiny_config(**over) -> dict:
    cfg = {
        "name": "tinycls", "task": "covid-vs-noncovid",
        "data": {"sources": [{"name": "shapes"}], "split": {"by_meta": "split"}},
        "model": {"name": "compact_cnn", "kwargs": {"features": [8, 16], "dropout": 0.0}},
        "loss": {"name": "ce", "weights": "median_frequency"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 6, "batch_size": 8, "input_size": 32, "seed": 0, "patience": None,
                  "save_fp16": False},
        "augment": {"enabled": True, "affine_prob": 0.0, "noise_prob": 0.0, "smooth_prob": 0.0},
        "classify": {"crop_prob": 0.2, "jpeg_prob": 0.2},
        "normalisation": {"clahe_clip": None},
        "output": {"tensorboard": False},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    from covidct.train import train

    run = tmp_path_factory.mktemp("cls") / "run"
    train(tiny_config(), run, records=shape_records(), verbose=False)
    return run, shape_records()


# --- config -------------------------------------------------------------------------------------------


def test_config_accepts_classification_and_rejects_mismatches():
    assert load_config(tiny_config()).classes == ["non_covid19", "covid19"]
    assert load_config(tiny_config(task="three-class")).classes == ["normal", "pneumonia", "covid19"]
    with pytest.raises(ConfigError, match="model.name: unet is a segmentation model"):
        load_config(tiny_config(model={"name": "unet", "kwargs": {}}))
    with pytest.raises(ConfigError, match="loss.name"):
        load_config(tiny_config(loss={"name": "dice"}))
    with pytest.raises(ConfigError, match="classify.threshold"):
        load_config(tiny_config(classify={"threshold": "magic"}))
    with pytest.raises(ConfigError, match="by_meta"):
        load_config({**tiny_config(task="infection"), "model": {"name": "unet"}, "loss": {"name": "dice"}})


# --- thresholds and metrics on hand-built data -------------------------------------------------------------


def test_youden_threshold_on_hand_built_roc():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.05, 0.1, 0.2, 0.55, 0.4, 0.7, 0.8, 0.9]
    # ROC points (t >= score): 0.9 (1/4, 0), 0.8, 0.7 (3/4, 0), 0.55 (3/4, 1/4), 0.4 (1, 1/4), ...
    # J: 0.25, 0.5, 0.75, 0.5, 0.75 ... -> max 0.75, first reached at 0.7 (highest threshold wins ties)
    sel = select_threshold(y, s, "youden")
    assert sel["threshold"] == pytest.approx((0.7 + 0.55) / 2)
    assert sel["tpr"] == 0.75 and sel["fpr"] == 0.0
    r = roc_points(y, s)
    assert r["tpr"][-1] == 1.0 and r["fpr"][-1] == 1.0
    assert roc_auc(y, s) == pytest.approx(15 / 16)  # one discordant pair (0.55 vs 0.4) out of 16


def test_target_precision_threshold():
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # precision at t=0.6: 3/3; t=0.5: 3/4; t=0.4: 4/5 -> lowest threshold with precision 1 is 0.6
    sel = select_threshold(y, s, "target_precision", target_precision=1.0)
    assert sel["threshold"] == pytest.approx(0.55) and sel["reached"] is True
    sel = select_threshold(y, s, "target_precision", target_precision=0.8)
    assert sel["threshold"] == pytest.approx(0.35)  # t=0.4: precision 4/5, recall 1
    assert select_threshold([1, 1], [0.2, 0.3], "youden")["threshold"] == 0.5  # one class: fallback


def test_metrics_hand_values():
    y = np.array([0, 0, 1, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    m = classification_metrics(y, prob, ["neg", "pos"], threshold=0.5)
    assert m["confusion"] == [[1, 1], [1, 2]]
    pos = m["per_class"]["pos"]
    assert pos["precision"] == pytest.approx(2 / 3) and pos["recall"] == pytest.approx(2 / 3)
    assert pos["specificity"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(0.6)
    assert m["macro"]["f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    m3 = classification_metrics([0, 1, 2], np.eye(3), ["a", "b", "c"])
    assert m3["accuracy"] == 1.0 and m3["macro"]["auc"] == 1.0


# --- patient aggregation -------------------------------------------------------------------------------------


def test_patient_aggregation_top_k():
    from covidct.classify import aggregate_slices, lung_slice_indices

    p = np.tile([[0.95, 0.05]], (40, 1))
    p[[10, 11, 12, 13]] = [0.1, 0.9]  # focal disease in 4 of 40 slices
    agg, top = aggregate_slices(p)  # k = max(3, 4) = 4 -> exactly the diseased slices
    assert agg[1] == pytest.approx(0.9) and top.tolist() == [10, 11, 12, 13]
    assert p.mean(0)[1] < 0.5  # the plain mean would have missed it
    one = p.copy()
    one[[11, 12, 13]] = [0.95, 0.05]  # a single abnormal slice is not enough
    assert aggregate_slices(one)[0][1] < 0.5
    lungs = np.zeros((5, 8, 8), bool)
    lungs[1, :1, :1] = True
    lungs[2:4] = True
    assert lung_slice_indices(lungs).tolist() == [2, 3]


# --- training path ------------------------------------------------------------------------------------------


def test_training_path_learns_and_stores_threshold(trained):
    run, recs = trained
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 7
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["task"] == "covid-vs-noncovid" and ckpt["thresholds"]["method"] == "youden"
    assert 0 < ckpt["thresholds"]["positive"] < 1
    m = json.loads((run / "metrics.json").read_text())
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert losses[-1] < losses[0]
    assert m["val_at_threshold"]["per_class"]["covid19"]["auc"] >= 0.8
    assert (run / "val" / "roc.png").is_file() and (run / "card.json").is_file()
    assert json.loads((run / "split.json").read_text())["info"]["by_meta"] == "split"


def test_init_from_starts_classification_from_given_weights(trained, tmp_path):
    """``model.init_from`` (transfer from another classifier): the first epoch starts from those weights."""
    from covidct.errors import ConfigError
    from covidct.train import train

    run, recs = trained
    cfg = tiny_config(train={"epochs": 1}, optimizer={"lr": 1e-9})  # so small a step that the weights stay put
    cfg["model"] = {**cfg["model"], "init_from": str(run)}
    tuned = train(cfg, tmp_path / "tuned", records=recs, verbose=False)
    fresh = train(tiny_config(train={"epochs": 1}, optimizer={"lr": 1e-9}), tmp_path / "fresh", records=recs,
                  verbose=False)
    src = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    got = torch.load(tuned / "best.pt", weights_only=True)["state_dict"]
    new = torch.load(fresh / "best.pt", weights_only=True)["state_dict"]
    key = next(k for k, v in src.items() if v.is_floating_point() and v.ndim == 4)  # the first convolution
    assert torch.allclose(got[key].float(), src[key].float(), atol=1e-4)
    assert not torch.allclose(new[key].float(), src[key].float(), atol=1e-4)
    bad = tiny_config(train={"epochs": 1})
    bad["model"] = {"name": "compact_cnn", "kwargs": {"features": [4, 8]}, "init_from": str(run)}
    with pytest.raises(ConfigError, match="does not fit"):
        train(bad, tmp_path / "bad", records=recs, verbose=False)


def test_three_class_config_trains(tmp_path):
    from covidct.train import train

    recs = shape_records(12)
    for i, r in enumerate(recs):
        r["class_label"] = None
        r["meta"]["diagnosis"] = ("normal", "CAP", "COVID-19")[i % 3]
    run = train(tiny_config(task="three-class", train={"epochs": 1}), tmp_path / "r3", records=recs, verbose=False)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["classes"] == ["normal", "pneumonia", "covid19"] and ckpt["model"]["out_channels"] == 3


# --- API, Grad-CAM and CLI -----------------------------------------------------------------------------------


def test_classify_image_and_cam(trained, tmp_path):
    from covidct.classify import classify_image, grad_cam, save_cam_overlay

    run, recs = trained
    r = classify_image(recs[-1]["image"], False, model=run)
    assert set(r) == {"label", "probabilities", "threshold", "model"}
    assert set(r["probabilities"]) == {"covid19", "non_covid19"}
    assert sum(r["probabilities"].values()) == pytest.approx(1.0)
    cam, res = grad_cam(recs[-1]["image"], False, model=run)
    assert cam.shape == recs[-1]["image"].shape and 0 <= cam.min() and cam.max() <= 1
    out = save_cam_overlay(recs[-1]["image"], cam, tmp_path / "cam.png", title=res["label"])
    assert Image.open(out).mode == "RGB"


def test_classify_volume_with_model(trained):
    from covidct.classify import classify_volume
    from covidct.volume import CT, affine_from_spacing

    run, recs = trained
    vol = np.stack([r["image"] for r in recs[:8]])
    ct = CT(array=vol, spacing=(2.0, 1.0, 1.0), affine=affine_from_spacing((2.0, 1.0, 1.0)), is_hu=False,
            kind="array")
    res = classify_volume(ct, lungs=np.ones(vol.shape, bool), model=run)
    assert res["label"] in ("covid19", "non_covid19") and len(res["slices"]) == 3


def test_cli_json_contract_and_bad_inputs(trained, tmp_path, capsys):
    from covidct.cli import main

    run, recs = trained
    good = []
    for i in (16, 17):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(recs[i]["image"].astype(np.uint8)).save(p)
        good.append(p)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    missing = tmp_path / "missing.png"
    code = main(["classify", str(good[0]), str(bad), str(missing), str(good[1]), "--model", str(run), "--json",
                 "--cam", str(tmp_path / "cams")])
    out, err = capsys.readouterr()
    assert code != 0
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["input"] for x in lines] == [str(good[0]), str(good[1])]
    for x in lines:
        assert set(x) == {"input", "label", "probabilities", "threshold", "model"}
        assert x["label"] in x["probabilities"] and x["model"].endswith("@0")
    errs = [e for e in err.splitlines() if e.startswith("covidct: error:")]
    assert any("broken.png" in e for e in errs) and any("missing.png" in e for e in errs)
    assert (tmp_path / "cams" / "img16_cam.png").is_file()


def test_erased_lesion_negatives(monkeypatch):
    import covidct.data
    from covidct.train.classify import class_target, erased_lesion_records

    img = np.full((32, 32), 60, np.float32)
    lungs = np.zeros((32, 32), np.uint8)
    lungs[4:28, 4:28] = 1
    inf = np.zeros((32, 32), np.uint8)
    inf[12:18, 12:18] = 1
    img[inf > 0] = 200
    rec = {"image": img, "is_hu": False, "lungs": lungs, "infection": inf, "lesions": None, "slice_label": None,
           "class_label": None, "case": "c", "id": "c-1", "group": "g", "source": "fake", "meta": {}}
    monkeypatch.setattr(covidct.data, "load_source", lambda name, **kw: [rec])
    (neg,) = erased_lesion_records("fake")
    assert class_target(neg, "slice-infection") == 0 and class_target(rec, "slice-infection") == 1
    assert neg["group"] == "g" and neg["id"] == "c-1-erased"
    assert abs(float(neg["image"][12:18, 12:18].mean()) - 60) < 10  # the bright lesion is gone


def test_volume_default_is_the_analysis_diagnosis(tmp_path, capsys):
    """Without a slice-infection or three-class model, `classify VOLUME` gives analyze's diagnosis."""
    from covidct.classify import classify_volume
    from covidct.cli import main
    from covidct.models import zoo
    from covidct.phantom import make_phantom, write_phantom
    from covidct.pipeline import shared_analyzer

    if zoo.has_model("slice-infection") or zoo.has_model("three-class"):
        pytest.skip("a patient-level classifier is shipped: the default uses it")
    ph = make_phantom(seed=4, lesion_burden=0.2, shape=(20, 128, 128), spacing=(6.0, 2.6, 2.6))
    res = classify_volume(ph.ct)
    expected = shared_analyzer()(ph.ct).report["diagnosis"]
    assert res["label"] == expected["label"] and res["probabilities"] == expected["probabilities"]
    assert res["model"].endswith("(lesion pattern)") and res["threshold"] is None
    lesion_area = (ph.lesions > 0).reshape(len(ph.lesions), -1).sum(1)
    assert all(lesion_area[k] > 0 for k in res["slices"])  # slices shown are lesion slices
    path = write_phantom(ph, tmp_path, fmt="nifti")
    code = main(["classify", str(path), "--json", "--cam", str(tmp_path / "cams")])
    out, err = capsys.readouterr()
    assert code == 0
    line = json.loads(out.strip().splitlines()[-1])
    assert set(line) == {"input", "label", "probabilities", "threshold", "model"}
    assert set(line["probabilities"]) == {"covid19", "pneumonia", "normal"} and line["label"] in line["probabilities"]
    assert "no Grad-CAM for the lesion-pattern diagnosis" in err
