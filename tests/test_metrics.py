"""Segmentation metrics against hand computations, the 256-threshold Dice, and the report files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.evaluate.metrics import dice_over_thresholds, metrics_from_confusion, segmentation_metrics


def _masks():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1  # 16 px
    pred = np.zeros((10, 10), np.uint8)
    pred[3:7, 2:6] = 1  # 16 px, 12 overlap
    pred[0, 0] = 1  # one more FP -> TP 12, FP 5, FN 4, TN 79
    return pred, gt


def test_binary_metrics_match_hand_values():
    pred, gt = _masks()
    tp, fp, fn, tn = 12, 5, 4, 79
    r = segmentation_metrics([pred], [gt], ["background", "infection"])["per_class"]["infection"]
    sens, spec, prec = tp / (tp + fn), tn / (tn + fp), tp / (tp + fp)
    assert r["dice"]["mean"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["iou"]["mean"] == pytest.approx(tp / (tp + fp + fn))
    assert r["sensitivity"]["mean"] == pytest.approx(sens)
    assert r["specificity"]["mean"] == pytest.approx(spec)
    assert r["precision"]["mean"] == pytest.approx(prec)
    assert r["gmean"]["mean"] == pytest.approx(math.sqrt(sens * spec))
    assert r["f2"]["mean"] == pytest.approx(5 * prec * sens / (4 * prec + sens))
    assert r["f1"]["mean"] == pytest.approx(r["dice"]["mean"])


def test_mean_std_over_images_and_global_accuracy():
    pred, gt = _masks()
    res = segmentation_metrics([pred, gt], [gt, gt], ["background", "infection"])
    d = res["per_class"]["infection"]["dice"]
    d1 = 24 / 33
    assert d["mean"] == pytest.approx((d1 + 1) / 2) and d["std"] == pytest.approx(abs(1 - d1) / 2) and d["n"] == 2
    assert res["global_accuracy"]["mean"] == pytest.approx(((100 - 9) / 100 + 1) / 2)
    assert res["confusion"] == [[79 + 84, 5], [4, 12 + 16]]


def test_absent_class_is_skipped_not_zero():
    empty = np.zeros((5, 5), np.uint8)
    pred, gt = _masks()
    res = segmentation_metrics([empty, pred], [empty, gt], ["bg", "fg"])
    assert res["per_class"]["fg"]["dice"]["n"] == 1  # both-empty image: undefined, skipped
    fp_only = empty.copy()
    fp_only[0, 0] = 1
    res2 = segmentation_metrics([fp_only], [empty], ["bg", "fg"])
    assert res2["per_class"]["fg"]["precision"]["mean"] == 0 and res2["per_class"]["fg"]["dice"]["mean"] == 0


def test_multiclass_metrics_and_hd95():
    gt = np.zeros((12, 12), np.uint8)
    gt[1:4, 1:4], gt[6:10, 6:10] = 1, 2
    pred = gt.copy()
    pred[6:10, 6] = 3  # a column of class 2 predicted as class 3
    res = segmentation_metrics([pred], [gt], ["none", "ggo", "consolidation", "effusion"], with_hd95=True)
    pc = res["per_class"]
    assert pc["ggo"]["dice"]["mean"] == 1.0
    assert pc["consolidation"]["sensitivity"]["mean"] == pytest.approx(12 / 16)
    assert pc["effusion"]["dice"]["mean"] == 0.0 and pc["effusion"]["precision"]["mean"] == 0.0
    assert pc["ggo"]["hd95"]["mean"] == 0.0


def test_confusion_metric_nan_where_undefined():
    m = metrics_from_confusion(np.array([0.0, 0.0, 10.0, 0.0]))  # class absent from both
    assert np.isnan(m["dice"]) and np.isnan(m["sensitivity"]) and m["specificity"] == 1.0


def test_dice_over_256_thresholds_known_map():
    prob = np.array([[0.0, 0.25], [0.5, 1.0]])
    gt = np.array([[0, 0], [1, 1]])
    thr = np.linspace(0, 1, 256)
    expected = []
    for t in thr:  # brute force
        p = prob >= t
        expected.append(2 * (p & (gt > 0)).sum() / (p.sum() + gt.sum()))
    r = dice_over_thresholds([prob], [gt])
    np.testing.assert_allclose(r["curve"], expected)
    assert r["mean_dice"] == pytest.approx(np.mean(expected))
    assert r["max_dice"] == pytest.approx(1.0)
    # closed form: t=0 -> 4 px predicted: 2*2/6; (0, .25] -> 3 px: 4/5; (.25, .5] -> 1; (.5, 1] -> 2/3
    n = [1, int(np.sum((thr > 0) & (thr <= 0.25))), int(np.sum((thr > 0.25) & (thr <= 0.5))),
         int(np.sum(thr > 0.5))]
    assert r["mean_dice"] == pytest.approx((n[0] * 4 / 6 + n[1] * 0.8 + n[2] * 1 + n[3] * 2 / 3) / 256)


def test_report_files(tmp_path):
    import torch

    from covidct.evaluate import evaluate
    from covidct.models import build_model, save_checkpoint

    torch.manual_seed(0)
    m = build_model("unet", 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    path = save_checkpoint(tmp_path / "m.pt", m, name="unet", kwargs={"channels": [4, 8], "strides": [2],
                           "num_res_units": 0}, in_channels=1, out_channels=2, task="infection",
                           classes=["background", "infection"], input_size=(32, 32), normalisation={},
                           thresholds={"foreground": 0.5})
    pred, gt = _masks()
    recs = [{"id": f"r{i}", "image": (gt * 200 + 20).astype(np.float32), "is_hu": False, "infection": gt}
            for i in range(3)] + [{"id": "nolabel", "image": np.zeros((8, 8), np.float32), "infection": None}]
    res = evaluate(path, recs, None, tmp_path / "ev")
    assert res["n_images"] == 3 and "dice_256_thresholds" in res
    for f in ("metrics.md", "metrics.csv", "per_image.csv", "metrics.json", "heatmap.png", "confusion.png"):
        assert (tmp_path / "ev" / f).is_file(), f
    assert "| infection |" in (tmp_path / "ev" / "metrics.md").read_text()
