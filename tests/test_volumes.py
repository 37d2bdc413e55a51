"""3-D path: training on tiny phantoms, sliding-window geometry, config checks, 3-D models in the pipeline/CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from covidct.errors import ConfigError, UnsupportedInput
from covidct.models.volume_inference import (
    predict_volume,
    probs_for_role,
    resampled_shape,
    sliding_window_probs,
)
from covidct.train.volumes import load_seg3d_config, task_label3d


def tiny3d(tmp_path, **over) -> dict:
    cfg = {
        "kind": "seg3d", "task": "lungs_infection", "name": "tiny3d",
        "data": {"sources": [{"name": "phantom", "n_volumes": 3, "shape": [8, 48, 48], "spacing": [5.0, 7.2, 7.2],
                              "seed": 1, "margin_slices": 0}],
                 "split": {"fractions": [0.34, 0.33, 0.33], "seed": 0}},
        "model": {"name": "unet3d", "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 4, "steps_per_epoch": 3, "batch_size": 2, "save_fp16": False, "patience": None},
        "volume": {"spacing": None, "patch": [8, 32, 32], "num_samples": 2, "cache_num": 4},
        "augment": {"enabled": False},
        "output": {"run_dir": str(tmp_path / "run3d"), "tensorboard": False},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    from covidct.train import train

    tmp = tmp_path_factory.mktemp("v3")
    return train(tiny3d(tmp), verbose=False)


def test_3d_loss_falls_and_checkpoint_is_3d(run3d):
    with open(run3d / "log.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    from covidct.models import zoo

    model, info = zoo.load(run3d)
    assert info["spatial_dims"] == 3 and info["classes"][3] == "infection"
    assert (run3d / "card.json").is_file() and (run3d / "metrics.json").is_file()


class _Stub(torch.nn.Module):
    """Logits [-k(x - .5), k(x - .5)]: foreground where the scaled input is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.k * (x - 0.5), self.k * (x - 0.5)], 1)


class _Shifted(torch.nn.Module):
    """Foreground logit rising along x: not mirror-symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand_as(x) * self.k
        return torch.cat([-ramp, ramp], 1)


def test_sliding_window_shape_and_geometry():
    vol = np.full((13, 50, 46), -1000.0, np.float32)
    vol[4:9, 10:20, 30:40] = 400.0  # a bright box, off centre
    info = {"extra": {"spatial_dims": 3, "spacing": [4.0, 2.0, 2.0], "hu_range": [-1000, 500], "patch": [8, 16, 16],
                      "overlap": 0.5, "blend": "gaussian"}}
    prob = predict_volume(_Stub(), info, vol, (2.0, 1.0, 1.0))
    assert prob.shape == (2, 13, 50, 46)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-4)
    fg = prob[1] > 0.5
    assert fg[6, 15, 35] and not fg[6, 15, 10] and not fg[1, 15, 35]
    inside = fg[4:9, 10:20, 30:40].mean()
    outside = fg.sum() - fg[4:9, 10:20, 30:40].sum()
    assert inside > 0.8 and outside < 0.2 * 5 * 10 * 10
    assert resampled_shape((13, 50, 46), (2.0, 1.0, 1.0), (4.0, 2.0, 2.0)) == (6, 25, 23)
    # test-time mirroring: a voxel-wise model gives the same answer flipped and unflipped
    mirrored = predict_volume(_Stub(), info, vol, (2.0, 1.0, 1.0), mirror_axes=[0, 1])
    np.testing.assert_allclose(mirrored, prob, atol=1e-5)
    asym = np.asarray(sliding_window_probs(_Shifted(), torch.zeros(1, 1, 8, 16, 16), (8, 16, 16), mirror_axes=[2]))
    assert np.allclose(asym[0, 1, 0, 0], 0.5)  # mean of the model and its mirror image: left and right cancel
    with pytest.raises(UnsupportedInput):
        predict_volume(_Stub(), info, vol[0], (2.0, 1.0, 1.0))
    with pytest.raises(UnsupportedInput):
        predict_volume(_Stub(), info, vol, (2.0, 1.0, 1.0), is_hu=False)


def test_labels_and_roles():
    lungs = np.array([[[0, 1, 2, 2]]], np.uint8)
    les = np.array([[[0, 0, 1, 3]]], np.uint8)
    assert task_label3d(lungs, les, "lungs_infection").tolist() == [[[0, 1, 3, 3]]]
    assert task_label3d(lungs, les, "lungs").tolist() == [[[0, 1, 1, 1]]]
    assert task_label3d(lungs, les, "infection").tolist() == [[[0, 0, 1, 1]]]
    p = np.zeros((4, 1, 1, 4), np.float32)
    p[[0, 1, 2, 3], 0, 0, [0, 1, 2, 3]] = 1
    lung = probs_for_role(p, ["background", "left_lung", "right_lung", "infection"], "lungs")
    assert lung.shape == (1, 2, 1, 4) and lung[0, 1, 0].tolist() == [0, 1, 1, 1]
    les2 = probs_for_role(p, ["background", "left_lung", "right_lung", "infection"], "lesions")
    assert les2[0, 1, 0].tolist() == [0, 0, 0, 1]
    with pytest.raises(UnsupportedInput):
        probs_for_role(p[:2], ["background", "infection"], "lungs")


@pytest.mark.parametrize("over, key", [
    ({"model": {"name": "unet"}}, "model.name"),
    ({"volume": {"patch": [8, 30, 32]}}, "volume.patch"),
    ({"augment": {"flip_axes": [2]}}, "augment.flip_axes"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"volume": {"cachee": 1}}, "volume.cachee"),
    ({"volume": {"mirror_axes": [2]}}, "volume.mirror_axes"),
    ({"volume": {"mirror_axes": [0, 0]}}, "volume.mirror_axes"),
])
def test_config_errors(tmp_path, over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_seg3d_config(tiny3d(tmp_path, **over))


def test_pipeline_and_segment_accept_3d_model(run3d, tmp_path):
    from covidct.cli import main
    from covidct.io import save_ct_nifti
    from covidct.phantom import make_phantom
    from covidct.pipeline import Analyzer

    ph = make_phantom((8, 48, 48), (5.0, 7.2, 7.2), seed=5, lesion_burden=0.2)
    an = Analyzer(lungs_model=str(run3d), lesions_model=str(run3d), bf16=False)
    lungs = an.segment_lungs(ph.ct)
    lesions = an.segment_lesions(ph.ct, lungs)
    assert lungs.shape == lesions.shape == ph.ct.shape
    nii = save_ct_nifti(ph.ct, tmp_path / "ph.nii.gz")
    rc = main(["segment", str(nii), "-o", str(tmp_path / "seg"), "--task", "lungs", "--model", str(run3d)])
    assert rc == 0 and (tmp_path / "seg" / "ph_lungs.nii.gz").is_file()
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "s.png")
    rc = main(["segment", str(tmp_path / "s.png"), "-o", str(tmp_path / "seg2"), "--model", str(run3d)])
    assert rc != 0  # a 3-D model refuses a 2-D image with a one-line error


def test_nifti_dataset_records_load_aligned(tmp_path):
    """A COVID-19-20-style folder (<case>_ct / <case>_seg) loads as aligned HU image + binary label."""
    from covidct.io import save_ct_nifti, save_mask_nifti
    from covidct.phantom import make_phantom
    from covidct.train.config import SourceConfig
    from covidct.train.volumes import LoadVolumed, load_volume_records

    ph = make_phantom((6, 40, 40), (5.0, 8.0, 8.0), seed=3, lesion_burden=0.2)
    save_ct_nifti(ph.ct, tmp_path / "case1_ct.nii.gz")
    save_mask_nifti((ph.lesions > 0).astype(np.uint8), ph.ct, tmp_path / "case1_seg.nii.gz")
    recs = load_volume_records([SourceConfig(name="nifti", root=str(tmp_path))])
    assert [r["case"] for r in recs] == ["case1"]
    d = LoadVolumed("infection")(recs[0])
    assert d["image"].shape == (1, *ph.ct.shape) and d["image"].min() < -500
    np.testing.assert_array_equal(d["label"][0], (ph.lesions > 0).astype(np.uint8))
    np.testing.assert_allclose(d["spacing"], ph.ct.spacing, rtol=1e-4)
    with pytest.raises(ConfigError, match="root"):
        load_volume_records([SourceConfig(name="nifti")])
