"""covidct train / evaluate / segment through the CLI, on phantom data (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from covidct.cli import main
from covidct.phantom import make_phantom, write_phantom

TINY = {
    "name": "tiny-lesions",
    "task": "lesions",
    "data": {
        "sources": [{"name": "phantom", "n_volumes": 3, "shape": [8, 64, 64], "spacing": [8.0, 5.0, 5.0],
                     "margin_slices": 1, "seed": 3, "lesion_burden": [0.1, 0.3]}],
        "split": {"fractions": [0.34, 0.33, 0.33], "seed": 0},
    },
    "model": {"name": "unet", "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}},
    "loss": {"name": "dice_ce"},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "exponential", "gamma": 0.9},
    "train": {"epochs": 1, "batch_size": 4, "input_size": 64, "steps_per_epoch": 3, "seed": 0, "save_fp16": False},
    "augment": {"enabled": False},
}  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train")
    cfg = d / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run = d / "run"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    return run


def test_train_writes_run_folder(trained_run):
    for f in ("best.pt", "split.json", "log.csv", "card.json", "config.resolved.yaml"):
        assert (trained_run / f).exists(), f


def test_train_bad_config_one_line(tmp_path, capsys):
    bad = dict(TINY, optimizer={"name": "adam", "lr": "fast"})
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    assert main(["train", str(p), "--run-dir", str(tmp_path / "r")]) == 8
    err = capsys.readouterr().err
    assert "optimizer.lr" in err and err.count("\n") == 1


def test_evaluate_on_run_split(trained_run, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--data", f"run:{trained_run}:test", "-o", str(out)]) == 0
    text = (out / "metrics.md").read_text()
    assert "dice" in text and "sensitivity" in text and (out / "metrics.csv").exists()


def test_segment_images_keep_size_and_classes(trained_run, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    ph = make_phantom(shape=(8, 64, 64), spacing=(8.0, 5.0, 5.0), seed=9)
    for k, (h, w) in enumerate(((64, 64), (50, 60))):
        arr = np.clip((ph.ct.array[4][:h, :w] + 1350) / 1500 * 255, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(imgs / f"s{k}.png")
    (imgs / "broken.png").write_text("not an image")
    out = tmp_path / "seg"
    code = main(["segment", str(imgs), "-o", str(out), "--task", "lesions", "--model", str(trained_run), "--overlay"])
    assert code != 0  # the broken file is reported, the others written
    for k, (h, w) in enumerate(((64, 64), (50, 60))):
        lab = np.asarray(Image.open(out / f"s{k}.png"))
        assert lab.shape == (h, w) and lab.dtype == np.uint8 and lab.max() <= 3
        assert (out / f"s{k}_overlay.png").exists()


def test_segment_volume_aligned(trained_run, tmp_path):
    ph = make_phantom(shape=(8, 64, 64), spacing=(8.0, 5.0, 5.0), seed=2)
    nii = write_phantom(ph, tmp_path / "v", fmt="nifti")
    out = tmp_path / "seg"
    assert main(["segment", str(nii), "-o", str(out), "--task", "infection", "--model", str(trained_run)]) == 0
    src, seg = nib.load(nii), nib.load(out / "phantom_infection.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}


def test_segment_bad_task(tmp_path):
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--task", "bones"]) == 64


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


@pytest.mark.parametrize("task", ["infection", "lesions"])
def test_segment_equals_evaluate(trained_run, tmp_path, task):
    """The same model on the same slices: `covidct segment`'s masks scored with an independent Dice give
    exactly the per-image Dice `covidct evaluate` reports."""
    from covidct.evaluate import evaluate as run_eval
    from covidct.io import load_image_2d

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    ph = make_phantom(shape=(8, 64, 64), spacing=(8.0, 5.0, 5.0), seed=11, lesion_burden=0.3)
    records = []
    for k in (2, 4, 5):
        arr = np.clip((ph.ct.array[k] + 1350) / 1500 * 255, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(imgs / f"s{k}.png")
        lesions = ph.lesions[k].astype(np.uint8)
        records.append({"id": f"s{k}", "image": load_image_2d(imgs / f"s{k}.png"), "is_hu": False,
                        "lesions": lesions, "infection": (lesions > 0).astype(np.uint8)})
    out = tmp_path / "seg"
    assert main(["segment", str(imgs), "-o", str(out), "--task", task, "--model", str(trained_run)]) == 0
    res = run_eval(trained_run, records, task, tmp_path / "eval")
    classes = ["infection"] if task == "infection" else ["ggo", "consolidation", "effusion"]
    for r, row in zip(records, res["per_image"], strict=True):
        pred = np.asarray(Image.open(out / f"{r['id']}.png"))
        gt = r["infection"] if task == "infection" else r["lesions"]
        for c, name in enumerate(classes, start=1):
            ours, theirs = _dice(pred == c, gt == c), row[f"dice_{name}"]
            assert (np.isnan(ours) and np.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-9), (r["id"], name)
