"""Slice inference: the one path from raw slices (HU or display) to class probabilities.

Used by evaluation and later by ``covidct segment``/``analyze``. Each slice is normalised with the
model's stored :class:`~covidct.preprocess.NormalisationConfig` (exactly as in training), resized to
the model's input size, passed through the network, and its softmax probabilities are resized back to
the slice's own size (bilinear on probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from covidct.models.checkpoint import load_model
from covidct.models.onnx_runtime import mirror_averaged, slices_and_flags
from covidct.preprocess import NormalisationConfig, resize_image_tensor, to_model_input

__all__ = ["predict_slices", "prepare_slices", "probabilities_to_labels", "load_model", "optimise_for_cpu", "model_input"]


def optimise_for_cpu(model: nn.Module) -> nn.Module:
    """An inference copy of a 2-D network: batch norm folded into the preceding convolution and weights in
    channels-last layout (oneDNN's fast path; docs/BENCHMARKS.md has the measured gain). Same outputs up to
    float rounding; the original model is left untouched (training, Grad-CAM hooks)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fast = copy.deepcopy(model).eval()
    for block in fast.modules():
        # MONAI's Convolution block: .conv, then .adn applying norm (N) before the activation
        conv, adn = getattr(block, "conv", None), getattr(block, "adn", None)
        norm = getattr(adn, "N", None) if adn is not None else None
        if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(norm, nn.BatchNorm2d) and _norm_first(adn):
            block.conv = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d))
            adn.N = nn.Identity()
    return fast.to(memory_format=torch.channels_last)


def _norm_first(adn: nn.Module) -> bool:
    """True when the ADN block applies its norm first (MONAI's default order "NDA"), so folding is exact."""
    names = list(dict(adn.named_children()))
    return bool(names) and names[0] == "N"


def model_input(image: np.ndarray, is_hu: bool, norm, size: int | Sequence[int]) -> torch.Tensor:
    """(1, H, W) float tensor in model space: :func:`covidct.preprocess.to_model_input`, then resize."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.from_numpy(to_model_input(np.asarray(image, np.float32), is_hu, norm))[None]
    return resize_image_tensor(x, size)


def prepare_slices(images: Sequence[np.ndarray], is_hu: Sequence[bool], info: dict) -> torch.Tensor:
    """(N, 1, S, S) model-space input: each slice normalised with the model's stored settings and resized
    to its input size. Models sharing the normalisation and size can share this tensor."""
    norm = NormalisationConfig.from_dict(info.get("normalisation"))
    size = tuple(info.get("input_size") or (256, 256))
    return torch.stack([resize_image_tensor(torch.from_numpy(to_model_input(np.asarray(im), bool(f), norm))[None], size)
                        for im, f in zip(images, is_hu, strict=True)])


@torch.no_grad()
def predict_slices(
    model: nn.Module,
    info: dict,
    images: np.ndarray | Sequence[np.ndarray],
    is_hu: bool | Sequence[bool],
    batch_size: int = 8,
    bf16: bool = False,
    device: str | torch.device | None = None,
    prepared: torch.Tensor | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Softmax probabilities (C, H, W) float32 for each slice.

    ``images`` is an array (N, H, W) -> returns (N, C, H, W), or a list of (H, W) arrays of any sizes
    -> returns a list. ``is_hu`` is one flag for all slices or one per slice. ``prepared``: the output of
    :func:`prepare_slices` for these images and this model's settings, when already computed.
    """
    as_array, imgs, flags = slices_and_flags(images, is_hu)
    mirror = mirror_averaged(info)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    stacked: np.ndarray | None = None  # the (N, C, H, W) result when no slice needs resizing back
    for start in range(0, len(imgs), batch_size):
        chunk = imgs[start : start + batch_size]
        x = (prepared[start : start + batch_size] if prepared is not None
             else prepare_slices(chunk, flags[start : start + batch_size], info))
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        if isinstance(logits, list | tuple):
            logits = logits[0]
        prob = torch.softmax(logits.float(), dim=1)
        if mirror:  # the mean with the mirror image's probabilities, mirrored back (as the ONNX path)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                flipped = model(torch.flip(x, dims=(-1,)))
            flipped = flipped[0] if isinstance(flipped, list | tuple) else flipped
            prob = (prob + torch.flip(torch.softmax(flipped.float(), dim=1), dims=(-1,))) / 2
        if as_array and tuple(prob.shape[-2:]) == tuple(images.shape[-2:]):  # copy the batch straight in
            if stacked is None:
                stacked = np.empty((len(imgs), *prob.shape[1:]), np.float32)
            stacked[start : start + len(chunk)] = prob.cpu().numpy()
            continue
        for p, im in zip(prob, chunk, strict=True):
            p = _resize_back(p, np.asarray(im).shape[-2:])
            out.append(p.cpu().numpy().astype(np.float32))
    if was_training:
        model.train()
    if stacked is not None:
        return stacked
    return np.stack(out) if as_array else out


def _resize_back(p: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if tuple(p.shape[-2:]) == tuple(shape):
        return p
    q = torch.nn.functional.interpolate(p[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]
    return q / q.sum(0, keepdim=True).clamp_min(1e-8)


def probabilities_to_labels(prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Label map(s) from probabilities (C, H, W) or (N, C, H, W).

    Binary models (C == 2) use ``prob[1] >= threshold`` when a threshold is given (the one stored in
    ``info["thresholds"]["foreground"]``); otherwise argmax over classes.
    """
    prob = np.asarray(prob)
    ch = prob.ndim - 3
    if prob.shape[ch] == 2 and threshold is not None:
        return (np.take(prob, 1, axis=ch) >= threshold).astype(np.uint8)
    return np.argmax(prob, axis=ch).astype(np.uint8)
