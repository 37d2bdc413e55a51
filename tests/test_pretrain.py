"""Contrastive self-supervised pre-training (task ``contrastive``) and the transfer into a classifier."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from covidct.errors import ConfigError
from covidct.train.config import load_config
from test_classify import shape_records, tiny_config


def contrastive_config(**over) -> dict:
    cfg = tiny_config(task="contrastive", train={"epochs": 6, "batch_size": 16},
                      optimizer={"name": "adam", "lr": 3e-3}, pretrain={"dim": 16, "temperature": 0.2},
                      classify={"crop_prob": 1.0, "crop_scale": [0.5, 1.0], "jpeg_prob": 0.0})
    cfg["name"] = "tinyssl"
    cfg["data"] = {"sources": [{"name": "shapes"}], "split": {"fractions": [0.75, 0.25, 0.0], "seed": 0}}
    cfg.pop("loss")
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from covidct.train import train

    recs = shape_records()
    for r in recs:  # labels must not be needed
        r["class_label"] = r["slice_label"] = None
    run = tmp_path_factory.mktemp("ssl") / "run"
    train(contrastive_config(), run, records=recs, verbose=False)
    return run


def test_contrastive_run_learns_and_writes_a_run_folder(pretrained):
    rows = list(csv.DictReader(open(pretrained / "log.csv")))
    assert len(rows) == 6
    loss = [float(r["train_loss"]) for r in rows]
    assert all(torch.isfinite(torch.tensor(loss)))
    assert min(loss[-2:]) < loss[0]  # views of one image are pulled together
    ckpt = torch.load(pretrained / "best.pt", weights_only=True)
    assert ckpt["task"] == "contrastive" and ckpt["model"]["out_channels"] == 16 and ckpt["classes"] == []
    card = json.loads((pretrained / "card.json").read_text())
    assert card["task"] == "contrastive" and card["split"]["val"]
    assert json.loads((pretrained / "metrics.json").read_text())["best_epoch"] >= 1


def test_classifier_starts_from_pretraining_except_the_projection(pretrained, tmp_path):
    from covidct.train import train

    cfg = tiny_config(train={"epochs": 1}, optimizer={"lr": 1e-9})  # a step too small to move the weights
    cfg["model"] = {**cfg["model"], "init_from": str(pretrained)}
    tuned = train(cfg, tmp_path / "tuned", records=shape_records(), verbose=False)
    src = torch.load(pretrained / "best.pt", weights_only=True)["state_dict"]
    got = torch.load(tuned / "best.pt", weights_only=True)["state_dict"]
    conv = next(k for k, v in src.items() if v.ndim == 4)
    assert torch.allclose(got[conv].float(), src[conv].float(), atol=1e-4)
    head = [k for k in got if got[k].shape != src[k].shape]
    assert sorted(head) == ["head.3.bias", "head.3.weight"] and got["head.3.weight"].shape[0] == 2


def test_pretraining_that_does_not_fit_is_refused(pretrained, tmp_path):
    from covidct.train import train

    cfg = tiny_config(train={"epochs": 1})
    cfg["model"] = {"name": "compact_cnn", "kwargs": {"features": [4, 8]}, "init_from": str(pretrained)}
    with pytest.raises(ConfigError, match="does not fit"):
        train(cfg, tmp_path / "bad", records=shape_records(), verbose=False)


def test_contrastive_config_checks():
    assert load_config(contrastive_config()).pretrain.dim == 16
    seg = contrastive_config()
    seg["model"] = {"name": "unet"}
    with pytest.raises(ConfigError, match="classification model"):
        load_config(seg)
    with pytest.raises(ConfigError, match="temperature"):
        load_config(contrastive_config(pretrain={"temperature": 0.0}))
    with pytest.raises(ConfigError, match="batch"):
        load_config(contrastive_config(train={"batch_size": 1}))


def test_a_contrastive_checkpoint_is_neither_a_classifier_nor_a_segmenter(pretrained, tmp_path):
    from covidct.classify import classify_image
    from covidct.errors import ModelError
    from covidct.evaluate import evaluate

    with pytest.raises(ModelError, match="not a classifier"):
        classify_image(shape_records(1)[0]["image"], False, model=pretrained)
    with pytest.raises(ModelError, match="'contrastive' model; evaluate scores segmentation"):
        evaluate(pretrained, shape_records(2), None, tmp_path / "ev")
