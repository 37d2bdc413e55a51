"""Image-level samples for classification and contrastive pre-training: cached model-space images and
their augmentation.

Owns :class:`ClassifyDataset` (each image normalised and resized once, kept as float16, augmented on
every access) and :func:`build_augment` (random resized crop, flips, rotations, affine, contrast,
intensity, noise, smoothing, JPEG re-encoding), with the two transforms MONAI does not have
(:class:`RandResizedCrop`, :class:`RandJpeg`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from covidct.models.inference import model_input


class RandResizedCrop:
    """Crop a random box (area fraction in ``scale``, aspect 3/4..4/3) and resize it to ``size``."""

    def __init__(self, size: int, scale: Sequence[float], prob: float) -> None:
        self.size, self.scale, self.prob = size, tuple(scale), prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from covidct.preprocess import resize_image_tensor

        h, w = x.shape[-2:]
        if np.random.rand() < self.prob:
            area = np.random.uniform(*self.scale) * h * w
            ar = np.exp(np.random.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch = int(round(min(h, np.sqrt(area / ar))))
            cw = int(round(min(w, np.sqrt(area * ar))))
            y0, x0 = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
            x = x[..., y0 : y0 + ch, x0 : x0 + cw]
        return resize_image_tensor(x, (self.size, self.size))


class RandJpeg:
    """Re-encode the [0, 1] image as 8-bit JPEG at a random quality (compression noise of paper figures)."""

    def __init__(self, quality: Sequence[int], prob: float) -> None:
        self.quality, self.prob = tuple(quality), prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import cv2

        if np.random.rand() >= self.prob:
            return x
        u8 = np.clip(np.rint(x[0].numpy() * 255), 0, 255).astype(np.uint8)
        q = int(np.random.randint(self.quality[0], self.quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:  # pragma: no cover - OpenCV always encodes 8-bit grey
            return x
        return torch.from_numpy(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0)[None]


def build_augment(cfg):
    """Training augmentation on a cached (1, S, S) model-space image (S = 1.25 x input size)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandFlip,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandRotate90,
        RandScaleIntensity,
    )

    n = cfg.train.input_size
    a, c = cfg.augment, cfg.classify
    ts: list = [RandResizedCrop(n, c.crop_scale, c.crop_prob if a.enabled else 0.0)]
    if a.enabled:
        if a.flip_prob > 0:
            ts += [RandFlip(prob=a.flip_prob, spatial_axis=1), RandFlip(prob=a.flip_prob, spatial_axis=0)]
        if a.rot90_prob > 0:
            ts.append(RandRotate90(prob=a.rot90_prob, max_k=3))
        if a.affine_prob > 0:
            ts.append(RandAffine(prob=a.affine_prob, rotate_range=np.deg2rad(a.rotate_deg),
                                 translate_range=(a.shift * n, a.shift * n), scale_range=(a.scale, a.scale),
                                 padding_mode="zeros"))
        if a.contrast_prob > 0:
            ts.append(RandAdjustContrast(prob=a.contrast_prob, gamma=tuple(a.gamma)))
        if a.intensity_scale_prob > 0:
            ts.append(RandScaleIntensity(factors=a.intensity_scale, prob=a.intensity_scale_prob))
        if a.noise_prob > 0:
            ts.append(RandGaussianNoise(prob=a.noise_prob, std=a.noise_std))
        if a.smooth_prob > 0:
            ts.append(RandGaussianSmooth(prob=a.smooth_prob, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)))
    ts.append(lambda t: torch.as_tensor(t, dtype=torch.float32).clamp(0, 1))
    if a.enabled and c.jpeg_prob > 0:
        ts.append(RandJpeg(c.jpeg_quality, c.jpeg_prob))
    return Compose(ts)


class ClassifyDataset(torch.utils.data.Dataset):
    """Samples normalised and resized once (cached), augmented on every access."""

    def __init__(self, samples: list[dict], norm, size: int, augment=None) -> None:
        self.size = int(round(size * 1.25)) if augment is not None else size  # room for crops
        self.x = [model_input(s["image"], s["is_hu"], norm, self.size).half() for s in samples]
        self.y = [int(s["target"]) for s in samples]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i].float()
        if self.augment is not None:
            x = self.augment(x)
            # MONAI transforms return a MetaTensor only when they fire: a batch must be plain tensors
            x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float()
        return x, self.y[i]


class RandZoomOutd:
    """A wider field of view, before the normalisation (dictionary transform on the raw (H, W) arrays).

    With probability ``prob`` the image is shrunk by a factor drawn from ``scale`` (area-averaged; labels nearest) and
    set at a random place on a canvas of its own size filled with its own outside air: the median of its four
    corners. The normalisation's percentiles and CLAHE tiles then see the wider field as a reconstruction with a field
    of view wider than the body would give them (docs/BENCHMARKS.md, twenty-ninth session: the lesion network's
    readings on real series changed with the anatomy's scale)."""

    def __init__(self, keys: Sequence[str], prob: float, scale: Sequence[float]) -> None:
        self.keys, self.prob, self.scale = list(keys), float(prob), tuple(scale)

    def __call__(self, data: dict) -> dict:
        import cv2

        if np.random.random() >= self.prob:
            return data
        d = dict(data)
        image = np.asarray(d[self.keys[0]], np.float32)
        h, w = image.shape
        f = np.random.uniform(*self.scale)
        hh, ww = max(1, int(round(h * f))), max(1, int(round(w * f)))
        y0, x0 = np.random.randint(0, h - hh + 1), np.random.randint(0, w - ww + 1)
        air = float(np.median([image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]]))
        for i, key in enumerate(self.keys):
            if d.get(key) is None:
                continue
            a = np.asarray(d[key])
            small = cv2.resize(a.astype(np.float32), (ww, hh), interpolation=cv2.INTER_AREA if i == 0 else cv2.INTER_NEAREST)
            canvas = np.full((h, w), air if i == 0 else 0, np.float32)
            canvas[y0 : y0 + hh, x0 : x0 + ww] = small
            d[key] = canvas if i == 0 else canvas.astype(a.dtype)
        return d
