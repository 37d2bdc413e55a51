"""Airless lung painted into lung-segmentation training slices (augmentation ``augment.airless_prob``).

Why: every lung label covidct trains on is mostly aerated, so its lung networks learnt "lung = dark" and leave
consolidated lung out of the lung mask. A consolidated lobe or a dependent consolidation of severe COVID-19 / ARDS
then never reaches the lesion stage and a litre of it reads normal (docs/BENCHMARKS.md, "Lungs at the extremes of
density"). This transform turns part of a slice's labelled lung to soft-tissue density, the label unchanged:

- *dependent*: a band along the posterior edge of the lung field (in each image column, the lung within a depth of
  its posterior-most lung pixel; the canonical orientation puts posterior at the bottom, and the flips and 90-degree
  rotations that follow in the pipeline give the other sides), with an irregular front;
- *patchy*: smooth random patches anywhere in the lung (lobar, segmental and multifocal consolidation).

The density is the slice's own: the median of the tissue just outside the lung (chest wall, mediastinum), so it
follows each source's windowing and normalisation. Vessels denser than that stay. It runs in model space after the
resize, before the spatial augmentation, and only on a binary lung label (configs are checked for task ``lungs``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage


class RandAirlessLungd(MapTransform, Randomizable):
    """With probability ``prob``, airless lung over a share (uniform in ``share``) of the labelled lung."""

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), prob: float = 0.0,
                 share: Sequence[float] = (0.05, 0.45), dependent_prob: float = 0.6, min_lung_px: int = 400) -> None:
        super().__init__(keys)
        self.prob, self.share, self.dependent_prob, self.min_lung_px = prob, tuple(share), dependent_prob, min_lung_px

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.R.rand() >= self.prob:
            return d
        lung = np.asarray(d["label"][0]) > 0
        if lung.sum() < self.min_lung_px:
            return d
        image = np.asarray(d["image"][0], dtype=np.float32)
        ring = ndimage.binary_dilation(lung, iterations=12) & ~ndimage.binary_dilation(lung, iterations=3)
        if ring.sum() < 50:
            return d
        region = self._region(lung, float(self.R.uniform(*self.share)))
        level = float(np.median(image[ring]))
        solid = level + self.R.normal(0.0, float(self.R.uniform(0.01, 0.04)), image.shape).astype(np.float32)
        # a soft front (a pixel's width), and vessels denser than the fill stay
        alpha = ndimage.gaussian_filter(region.astype(np.float32), 0.7)
        painted = image * (1.0 - alpha) + np.maximum(image, solid) * alpha
        out = torch.as_tensor(np.clip(painted, 0.0, 1.0), dtype=d["image"].dtype)[None]
        d["image"] = out.to(d["image"].device) if isinstance(d["image"], torch.Tensor) else out
        return d

    def _region(self, lung: np.ndarray, share: float) -> np.ndarray:
        h, w = lung.shape
        if self.R.rand() < self.dependent_prob:
            rows = np.arange(h, dtype=np.float32)[:, None]
            depth = np.where(lung, rows, -1.0).max(axis=0, keepdims=True) - rows
            front = ndimage.gaussian_filter1d(self.R.normal(0.0, 1.0, w), float(self.R.uniform(4.0, 16.0)))
            front = 1.0 + 0.35 * front / (front.std() + 1e-6)
            limit = np.quantile(depth[lung], share) * np.clip(front, 0.3, 1.7)[None, :]
            return lung & (depth <= limit)
        field = ndimage.gaussian_filter(self.R.normal(0.0, 1.0, (h, w)), float(self.R.uniform(8.0, 20.0)))
        return lung & (field >= np.quantile(field[lung], 1.0 - share))
