"""Segmentation losses (MONAI where it has them) and median-frequency class weights.

All segmentation losses take logits (B, C, H, W) with C classes *including background* and integer
labels (B, 1, H, W); the softmax and one-hot encoding happen inside. Deep-supervision models return
a list of logits; :func:`apply_loss` averages the loss over them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from covidct.errors import ConfigError

LOSSES = ("dice", "focal", "dice_ce", "dice_focal", "ce")


def median_frequency_weights(label_arrays: Iterable[np.ndarray], n_classes: int) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015), as in seed paper 004.

    ``freq_c = (pixels of class c) / (total pixels of the images in which c is present)`` and
    ``w_c = median(freq) / freq_c``. The median is taken over the classes that occur at all; a class
    absent from every label array gets weight 0 (it never appears as a target anyway).
    """
    class_pixels = np.zeros(n_classes, dtype=np.float64)
    image_pixels = np.zeros(n_classes, dtype=np.float64)
    for lab in label_arrays:
        lab = np.asarray(lab)
        counts = np.bincount(lab.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
        class_pixels += counts
        image_pixels += (counts > 0) * lab.size
    present = class_pixels > 0
    if not present.any():
        raise ValueError("median_frequency_weights: no labelled pixels")
    freq = np.zeros(n_classes)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = np.zeros(n_classes)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights.astype(np.float32)


class WeightedCELoss(nn.Module):
    """Pixel-wise cross-entropy with optional class weights; labels (B, 1, H, W) or (B, H, W)."""

    def __init__(self, weight: Sequence[float] | None = None) -> None:
        super().__init__()
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer("weight", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:
            target = target[:, 0]
        return nn.functional.cross_entropy(logits, target.long(), weight=self.weight)


class _SegLoss(nn.Module):
    """Wrap a MONAI loss so that it accepts integer label maps and float32-casts bf16 logits."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim - 1:
            target = target[:, None]
        return self.loss(logits.float(), target.long())


def build_loss(cfg, class_weights: Sequence[float] | None = None) -> nn.Module:
    """Build the loss named in ``cfg`` (a :class:`~covidct.train.config.LossConfig` or dict).

    ``class_weights`` (e.g. from :func:`median_frequency_weights`) are used when ``cfg.weights`` is
    ``"median_frequency"``; an explicit list in ``cfg.weights`` (one per class, background first) is
    used as is. In the combined losses MONAI applies the weights to the Dice term as well.
    """
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss

    c = cfg if not isinstance(cfg, dict) else _NS(cfg)
    name = c.name
    if name not in LOSSES:
        raise ConfigError(f"loss.name: unknown loss {name!r} (choose from {', '.join(LOSSES)})")
    w = c.weights
    if w == "median_frequency":
        if class_weights is None:
            raise ConfigError("loss.weights: median_frequency weights need training labels")
        w = list(map(float, class_weights))
    elif w is not None and not isinstance(w, list | tuple):
        raise ConfigError(f"loss.weights: expected null, 'median_frequency' or a list, got {w!r}")
    wt = None if w is None else torch.as_tensor(w, dtype=torch.float32)
    incl = bool(c.include_background)
    # MONAI's focal/dice weights exclude the background entry when the background is excluded
    wt_fg = wt if (wt is None or incl) else wt[1:]
    if name == "ce":
        return WeightedCELoss(wt)
    if name == "dice":
        return _SegLoss(DiceLoss(include_background=incl, to_onehot_y=True, softmax=True, batch=c.batch_dice))
    if name == "focal":
        # MONAI drops the background channel *before* its softmax, which for a binary model leaves a
        # one-channel softmax (constant 1, zero gradient); the softmax focal loss therefore always
        # keeps the background channel.
        return _SegLoss(FocalLoss(include_background=True, to_onehot_y=True, gamma=c.gamma, weight=wt,
                                  use_softmax=True))
    if name == "dice_ce":
        return _SegLoss(DiceCELoss(include_background=incl, to_onehot_y=True, softmax=True, batch=c.batch_dice,
                                   weight=wt, lambda_dice=c.lambda_dice, lambda_ce=c.lambda_ce))
    return _SegLoss(DiceFocalLoss(include_background=incl, to_onehot_y=True, softmax=True, batch=c.batch_dice,
                                  gamma=c.gamma, weight=wt_fg, lambda_dice=c.lambda_dice,
                                  lambda_focal=c.lambda_ce))


class _NS:
    """Attribute view of a loss dict with the LossConfig defaults."""

    def __init__(self, d: dict) -> None:
        from covidct.train.config import LossConfig

        base = LossConfig()
        for k in vars(base):
            setattr(self, k, d.get(k, getattr(base, k)))


def apply_loss(loss_fn: nn.Module, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Loss of one output, or the mean over deep-supervision heads (all at full resolution)."""
    if isinstance(outputs, list | tuple):
        return sum(loss_fn(o, target) for o in outputs) / len(outputs)
    return loss_fn(outputs, target)
