"""Segmentation metrics: per-image confusion-based scores per class (mean ± std over images, seed 004),
pooled scores, HD95, and Inf-Net's mean Dice over 256 thresholds.

Confusion counts come from MONAI (``get_confusion_matrix``, one class vs rest per image) and the
ratios from ``compute_confusion_matrix_metric`` where MONAI has them (sensitivity, specificity,
precision, F1 = Dice, threat score = IoU); G-mean and F2 are computed here. A ratio whose denominator
is 0 (e.g. Dice on an image where the class is absent from both masks) is NaN and left out of that
class's mean; ``n`` says how many images entered each mean.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

METRICS = ("dice", "iou", "sensitivity", "specificity", "precision", "f1", "gmean", "f2")
_MONAI_NAMES = {"dice": "f1 score", "f1": "f1 score", "iou": "threat score", "sensitivity": "sensitivity",
                "specificity": "specificity", "precision": "precision"}


def confusion_per_image(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, 4) counts [tp, fp, tn, fn] of one image's label maps (H, W), each class against the rest."""
    from monai.metrics import get_confusion_matrix
    from monai.networks.utils import one_hot

    p = one_hot(torch.as_tensor(np.asarray(pred), dtype=torch.long)[None, None], n_classes)
    g = one_hot(torch.as_tensor(np.asarray(gt), dtype=torch.long)[None, None], n_classes)
    return get_confusion_matrix(p, g, include_background=True)[0].numpy().astype(np.float64)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from confusion counts (..., 4) = [tp, fp, tn, fn]; NaN where undefined."""
    from monai.metrics import compute_confusion_matrix_metric

    t = torch.as_tensor(np.asarray(cm, dtype=np.float64))
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, monai_name in _MONAI_NAMES.items():
            out[name] = compute_confusion_matrix_metric(monai_name, t).numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["gmean"] = np.sqrt(out["sensitivity"] * out["specificity"])
        p, s = out["precision"], out["sensitivity"]
        out["f2"] = np.where(4 * p + s > 0, 5 * p * s / (4 * p + s), np.where(np.isnan(p) | np.isnan(s), np.nan, 0.0))
    return out


def global_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Share of pixels whose class is right (seed 004's 'global accuracy' of one image)."""
    return float(np.mean(np.asarray(pred) == np.asarray(gt)))


def hd95(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """95th-percentile Hausdorff distance (pixels) per foreground class; NaN when a mask is empty."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    p = one_hot(torch.as_tensor(np.asarray(pred), dtype=torch.long)[None, None], n_classes)
    g = one_hot(torch.as_tensor(np.asarray(gt), dtype=torch.long)[None, None], n_classes)
    out = np.full(n_classes - 1, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation chatter inside get_mask_edges
        for c in range(1, n_classes):
            if p[0, c].any() and g[0, c].any():
                out[c - 1] = float(compute_hausdorff_distance(p[:, c : c + 1], g[:, c : c + 1],
                                                              include_background=True, percentile=95)[0, 0])
    return out


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def segmentation_metrics(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    class_names: Sequence[str],
    with_hd95: bool = False,
) -> dict:
    """Per-class scores over a set of (prediction, ground truth) label maps (any sizes).

    Returns ``{"per_class": {class: {metric: {"mean", "std", "n", "pooled"}}}, "global_accuracy":
    {"mean", "std", "n"}, "foreground_mean": {metric: mean over foreground classes of the means},
    "per_image": [{"dice_<class>": ..., "global_accuracy": ...}, ...], "confusion": C x C pixel counts}``.
    ``pooled`` is the score of the summed confusion counts (dataset level; counts false positives on
    slices without the class, which the per-image means skip).
    """
    n = len(class_names)
    if len(preds) != len(gts):
        raise ValueError("segmentation_metrics: preds and gts differ in length")
    cms, accs, hds = [], [], []
    confusion = np.zeros((n, n), dtype=np.int64)
    for p, g in zip(preds, gts, strict=True):
        p, g = np.asarray(p), np.asarray(g)
        cms.append(confusion_per_image(p, g, n))
        accs.append(global_accuracy(p, g))
        confusion += np.bincount(g.ravel().astype(np.int64) * n + p.ravel().astype(np.int64),
                                 minlength=n * n).reshape(n, n)
        if with_hd95:
            hds.append(hd95(p, g, n))
    cm = np.stack(cms) if cms else np.zeros((0, n, 4))
    per_img = metrics_from_confusion(cm)
    pooled = metrics_from_confusion(cm.sum(0))
    per_class = {}
    for c, name in enumerate(class_names):
        per_class[name] = {m: {**_summary(per_img[m][:, c]), "pooled": float(pooled[m][c])} for m in METRICS}
        if with_hd95 and c > 0:
            per_class[name]["hd95"] = {**_summary(np.array([h[c - 1] for h in hds])), "pooled": float("nan")}
    fg = list(class_names[1:])
    fg_mean = {m: _nanmean([per_class[c][m]["mean"] for c in fg]) for m in METRICS}
    per_image = []
    for i in range(len(cms)):
        row = {f"dice_{c}": float(per_img["dice"][i, k]) for k, c in enumerate(class_names)}
        row["global_accuracy"] = accs[i]
        per_image.append(row)
    return {"per_class": per_class, "global_accuracy": _summary(np.array(accs)), "foreground_mean": fg_mean,
            "per_image": per_image, "confusion": confusion.tolist(), "classes": list(class_names),
            "n_images": len(cms)}


def dice_over_thresholds(probs: Sequence[np.ndarray], gts: Sequence[np.ndarray], n_thresholds: int = 256) -> dict:
    """Inf-Net's mean Dice: for t in linspace(0, 1, n), Dice of (prob >= t) vs GT per image, then averaged.

    ``probs``: foreground probability maps (H, W); ``gts``: binary masks. Dice of two empty masks is
    undefined (NaN) and skipped. Returns ``{"mean_dice", "max_dice", "curve" (per threshold, mean over
    images), "per_image" (mean over thresholds), "thresholds"}``.
    """
    thr = np.linspace(0.0, 1.0, n_thresholds)
    curves = []
    for p, g in zip(probs, gts, strict=True):
        p = np.asarray(p, dtype=np.float64).ravel()
        g = np.asarray(g).ravel() > 0
        # bin index = largest threshold <= p, so "p >= thr[k]" <=> index >= k (exact, no float drift)
        idx = np.searchsorted(thr, p, side="right") - 1
        n_pred = np.cumsum(np.bincount(idx, minlength=n_thresholds)[::-1])[::-1]  # pixels with p >= thr[k]
        n_tp = np.cumsum(np.bincount(idx[g], minlength=n_thresholds)[::-1])[::-1]
        denom = n_pred + g.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            curves.append(np.where(denom > 0, 2.0 * n_tp / denom, np.nan))
    if not curves:
        return {"mean_dice": float("nan"), "max_dice": float("nan"), "curve": [], "per_image": [],
                "thresholds": thr.tolist()}
    c = np.stack(curves)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN columns (no image with a defined Dice) stay NaN
        curve = np.nanmean(c, axis=0)
        per_image = np.nanmean(c, axis=1)
    return {"mean_dice": float(np.nanmean(per_image)), "max_dice": float(np.nanmax(curve)),
            "curve": curve.tolist(), "per_image": per_image.tolist(), "thresholds": thr.tolist()}
