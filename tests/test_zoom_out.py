"""The wider-field augmentation (covidct.train.augment.RandZoomOutd), drawn before the normalisation."""

from __future__ import annotations

import numpy as np

from covidct.train.augment import RandZoomOutd
from covidct.train.config import AugmentConfig
from covidct.train.datasets import build_transforms


def test_the_anatomy_shrinks_into_its_own_air():
    np.random.seed(0)
    image = np.full((64, 64), -1000.0, np.float32)
    image[8:56, 8:56] = 40.0  # a "body" filling most of the field
    label = np.zeros((64, 64), np.uint8)
    label[20:30, 20:30] = 2
    out = RandZoomOutd(["image", "label"], prob=1.0, scale=(0.5, 0.5))({"image": image, "label": label, "id": "x"})
    assert out["image"].shape == (64, 64) and out["label"].shape == (64, 64) and out["label"].dtype == np.uint8
    assert np.isclose((out["image"] > -500).sum(), 24 * 24, rtol=0.1)  # the body at half its width and height
    assert (out["image"][out["image"] <= -500] == -1000).all()  # the canvas is the image's own outside air
    assert set(np.unique(out["label"])) == {0, 2} and np.isclose((out["label"] == 2).sum(), 25, rtol=0.3)
    ys, xs = np.nonzero(out["label"] == 2)
    body = np.nonzero(out["image"] > -500)
    assert body[0].min() <= ys.min() and ys.max() <= body[0].max() and body[1].min() <= xs.min()  # labels follow
    assert out["id"] == "x" and RandZoomOutd(["image", "label"], prob=0.0, scale=(0.5, 0.5))({"image": image})["image"] is image


def test_the_training_pipeline_draws_it_before_the_normalisation():
    cfg = AugmentConfig(zoom_out_prob=1.0, zoom_out_scale=[0.5, 0.5], flip_prob=0, affine_prob=0, noise_prob=0,
                        contrast_prob=0, intensity_scale_prob=0, smooth_prob=0)
    from covidct.preprocess import NormalisationConfig

    t = build_transforms(64, NormalisationConfig(), cfg)
    assert type(t.transforms[0]).__name__ == "RandZoomOutd"
    image = np.full((64, 64), -1000.0, np.float32)
    image[8:56, 8:56] = 40.0
    out = t({"image": image, "label": np.zeros((64, 64), np.uint8), "is_hu": True, "id": "x"})
    assert tuple(out["image"].shape) == (1, 64, 64) and float(out["image"].max()) <= 1.0
    assert build_transforms(64, NormalisationConfig(), AugmentConfig()).transforms[0].__class__.__name__ != "RandZoomOutd"
