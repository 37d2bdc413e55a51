"""Click-guided lesion refinement: ``refine(image, mask, clicks) -> mask`` (DeepGrow-like guidance maps).

A click is a pixel position plus positive ("this is lesion") or negative ("this is not"). The shipped
``refine`` model (trained by ``covidct train configs/refine.yaml``, see :mod:`covidct.train.interactive`)
takes the slice, the current mask and the positive / negative guidance maps of *all* clicks so far and
returns the new mask. Callers pass the latest mask and the whole click history, oldest first (the web
viewer and ``covidct refine`` do exactly this); it also works without a mask (first click only).

After the network, two rules make every click count: a positive click always ends up inside the mask
(the region the network gives around it at a lower threshold, at least a small disc), and a negative
click never does (the region of the mask around it, up to a local radius, is removed).

The model is loaded once per process and the normalised slice is cached, so a click on a 512² slice
costs one forward pass at the model's 256² grid (see docs/BENCHMARKS.md for the measured time).

Volumes: :func:`refine_volume` takes clicks with a slice index. With a 2-D model it refines each clicked
slice; with a 3-D refinement model (same four channels in 3-D, clicks as 3-D Gaussians, trained by the
same ``kind: interactive`` config with a 3-D network: ``configs/refine3d_phantom.yaml``) it refines the
whole volume in one sliding-window pass, with the same two rules applied in 3-D.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covidct import components
from covidct.errors import CovidCTError, ModelError, UnsupportedInput

__all__ = ["Click", "refine", "refine_volume", "parse_click", "model_spatial_dims"]


@dataclass(frozen=True)
class Click:
    """One click: ``x`` column, ``y`` row (pixels of the input image), positive or negative; ``z`` slice
    index for :func:`refine_volume` (ignored by :func:`refine`)."""

    x: int
    y: int
    positive: bool
    z: int | None = None


def parse_click(text: str) -> Click:
    """``"X,Y,pos"`` / ``"X,Y,neg"`` (also ``+``/``-``, ``1``/``0``) -> :class:`Click`; CovidCTError if malformed."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise CovidCTError(f"click {text!r}: expected X,Y,pos or X,Y,neg")
    try:
        x, y = int(parts[0]), int(parts[1])
    except ValueError as e:
        raise CovidCTError(f"click {text!r}: X and Y must be integers (pixels)") from e
    kind = parts[2].lower()
    if kind in ("pos", "positive", "+", "1", "p"):
        return Click(x, y, True)
    if kind in ("neg", "negative", "-", "0", "n"):
        return Click(x, y, False)
    raise CovidCTError(f"click {text!r}: the third field must be pos or neg")


# --- guidance (the encoding the refine model was trained with) -------------------------------------


def guidance_signal(shape: tuple[int, ...], pos: list[tuple[float, ...]], neg: list[tuple[float, ...]],
                    sigma: float | Sequence[float]) -> np.ndarray:
    """(2, *shape) float32 positive/negative guidance maps from points (row, col) — or (z, row, col) for a
    volume — on the model grid; ``sigma`` in grid units, one value or one per axis.

    The encoding of MONAI deepgrow's ``AddGuidanceSignald`` (a one at each click, Gaussian filter, min-max
    scaled per channel), written in closed form as a product of 1-D Gaussians: ~50x faster than the
    convolution at 256² and equal to it up to the kernel's discretisation (tests/test_interactive.py
    compares the two).
    """
    nd = len(shape)
    sig = [float(sigma)] * nd if np.isscalar(sigma) else [float(v) for v in sigma]
    out = np.zeros((2, *shape), np.float32)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    for ch, pts in enumerate((pos, neg)):
        for p in pts:
            g = np.ones((1,) * nd, np.float32)
            for a, (coord, n, sg) in enumerate(zip(p, shape, sig, strict=True)):
                c = min(max(int(round(coord)), 0), n - 1)
                prof = np.exp(-((axes[a] - c) ** 2) / (2 * sg**2)).reshape([-1 if i == a else 1 for i in range(nd)])
                g = g * prof
            out[ch] += g
        lo, hi = out[ch].min(), out[ch].max()
        if hi > lo:
            out[ch] = (out[ch] - lo) / (hi - lo)
    return out


def model_input(image01: np.ndarray, prior: np.ndarray, pos: list, neg: list,
                sigma: float | Sequence[float]) -> np.ndarray:
    """(4, H, W) — or (4, z, H, W) — network input from a model-space image, the current mask and clicks
    (points in array order)."""
    g = guidance_signal(image01.shape, pos, neg, sigma)
    return np.concatenate([image01[None], (np.asarray(prior) > 0)[None].astype(np.float32), g]).astype(np.float32)


# --- model and caches -------------------------------------------------------------------------------

_IMAGE_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()


def _load(model: str):
    from covidct.models import runtime

    # ONNX Runtime with one thread: the network is small, and on a busy machine a multi-threaded forward pass
    # waits on its own barriers (torch measured 0.8 s vs 0.015 s per click on 2 loaded cores; docs/BENCHMARKS.md)
    if runtime.onnx_entry(model) is not None and runtime.wanted_runtime() == "onnx":
        net, info = runtime.load(model, threads=1)
    else:  # a run folder without ONNX: the traced network when shipped, else the checkpoint (torch)
        from covidct.models import zoo

        net, info = zoo.load(model, scripted=True)
        info = dict(info, runtime="torch")
    if info.get("task") != "refine" or (info.get("model") or {}).get("in_channels") != 4:
        raise ModelError(f"model {model!r} is not a click-refinement model (task {info.get('task')!r})")
    return net, info


def model_spatial_dims(model: str) -> int:
    """2 for a slice refinement model (the shipped ``refine``), 3 for a volume one; ModelError if not a refine model."""
    return int(_load(model)[1].get("spatial_dims", 2))


def _model_image(image: np.ndarray, is_hu: bool, info: dict) -> np.ndarray:
    """The slice in model space on the model grid, cached by content (repeated clicks on one slice)."""
    from covidct.models.onnx_runtime import resize_image
    from covidct.preprocess import NormalisationConfig, to_model_input

    size = tuple(info.get("input_size") or (256, 256))
    key = (hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16).hexdigest(), image.shape,
           bool(is_hu), size, str(info.get("path")))
    if key in _IMAGE_CACHE:
        _IMAGE_CACHE.move_to_end(key)
        return _IMAGE_CACHE[key]
    x = to_model_input(image, is_hu, NormalisationConfig.from_dict(info.get("normalisation")))
    x = resize_image(x, size)
    _IMAGE_CACHE[key] = x
    while len(_IMAGE_CACHE) > 8:
        _IMAGE_CACHE.popitem(last=False)
    return x


# --- checks ---------------------------------------------------------------------------------------


def _check_inputs(image: np.ndarray, mask: np.ndarray | None, clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray | None]:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2 or min(img.shape) < 8:
        raise UnsupportedInput(f"refine needs one 2-D slice (H, W), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or not np.isfinite(img).all():
        raise UnsupportedInput("refine: the image must hold finite numbers")
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != img.shape:
            raise UnsupportedInput(f"refine: mask shape {m.shape} differs from image shape {img.shape}")
        m = (m > 0).astype(np.uint8)
    h, w = img.shape
    for c in clicks:
        if not isinstance(c, Click):
            raise CovidCTError(f"refine: clicks must be Click(x, y, positive), got {c!r}")
        if not (0 <= c.x < w and 0 <= c.y < h):
            raise CovidCTError(f"click ({c.x}, {c.y}) lies outside the {w}x{h} image (x = column, y = row)")
    return img.astype(np.float32, copy=False), m


# --- the API ---------------------------------------------------------------------------------------


def refine(image_hw: np.ndarray, mask_hw: np.ndarray | None, clicks: Sequence[Click], *, is_hu: bool,
           model: str = "refine") -> np.ndarray:
    """Refined lesion mask (H, W) uint8 0/1 of a slice after ``clicks`` (the whole history, oldest first).

    ``image_hw`` holds HU (``is_hu=True``) or 8-bit display grey levels; ``mask_hw`` is the current mask
    (any non-zero = lesion) or None. Without clicks the mask comes back unchanged (zeros without a mask).
    ``model`` is a shipped name, a checkpoint or a run folder of a refinement model.
    """
    from covidct.models import runtime
    from covidct.models.onnx_runtime import area_resize, bilinear, softmax

    img, prior = _check_inputs(image_hw, mask_hw, clicks)
    h, w = img.shape
    if not clicks:
        return np.zeros((h, w), np.uint8) if prior is None else prior.copy()
    net, info = _load(model)
    if info.get("spatial_dims") == 3:
        raise UnsupportedInput(f"model {model!r} is a 3-D refinement model: give it a volume (refine_volume, "
                               "or covidct refine VOLUME --slice Z)")
    size = tuple(info.get("input_size") or (256, 256))
    x01 = _model_image(img, bool(is_hu), info)
    if prior is None:
        p_small = np.zeros(size, np.float32)
    else:
        p_small = area_resize(prior.astype(np.float32), size)
    sy, sx = size[0] / h, size[1] / w
    pos = [((c.y + 0.5) * sy - 0.5, (c.x + 0.5) * sx - 0.5) for c in clicks if c.positive]
    neg = [((c.y + 0.5) * sy - 0.5, (c.x + 0.5) * sx - 0.5) for c in clicks if not c.positive]
    sigma = float((info.get("extra") or {}).get("sigma", 3.0))
    x = model_input(x01, p_small >= 0.5, pos, neg, sigma)
    if runtime.is_onnx(info):
        prob = softmax(net(x[None]))[0, 1]
    else:
        prob = _torch_forward(net, x)
    if (h, w) != size:
        prob = bilinear(prob[None], (h, w))[0]
    thr = float((info.get("thresholds") or {}).get("foreground", 0.5))
    points = [(c.y, c.x) for c in clicks]
    r_near, r_min, r_neg = _radii((h, w), None)
    new = prob >= thr if prior is None else _local_update(prior > 0, prob >= thr, points, r_near)
    return _honour_clicks(prob, new, points, [c.positive for c in clicks], r_min, r_neg)


def _torch_forward(net, x: np.ndarray) -> np.ndarray:
    """Lesion probability (model grid) from a torch refinement network, on one thread (see :func:`_load`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(x)[None]).float(), 1)[0, 1].numpy()
    finally:
        torch.set_num_threads(threads)


def _radii(shape: tuple[int, ...], spacing: Sequence[float] | None) -> tuple[tuple[float, ...], ...]:
    """Per-axis radii (grid units) of a click's reach: (changes accepted near it, the smallest region a
    positive click makes, how far a negative click clears). In-plane they scale with the slice (1/16,
    1/128, 1/12 of it: ~32, 4 and 43 px on 512²); along z of a volume they cover the same millimetres."""
    h, w = shape[-2:]
    near, small, clear = max(4, round(min(h, w) / 16)), max(2, round(min(h, w) / 128)), max(8, round(min(h, w) / 12))
    if len(shape) == 2:
        return (near, near), (small, small), (clear, clear)
    ratio = 1.0 if spacing is None else float(min(spacing[1], spacing[2])) / float(spacing[0])
    return tuple((r * ratio, r, r) for r in (near, small, clear))


def _ellipsoid(shape: tuple[int, ...], centre: Sequence[int], radii: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid (disc in 2-D) of per-axis ``radii`` around ``centre``; a radius below 1 keeps that axis
    to the centre's own index."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d = sum(((g - c) / max(float(r), 0.5)) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return d <= 1.0


def _local_update(prior: np.ndarray, new: np.ndarray, points: Sequence[Sequence[int]],
                  radii: Sequence[float]) -> np.ndarray:
    """Accept the network's changes to ``prior`` only where they answer a click: each connected region of
    change (added or removed voxels) is taken if it reaches within ``radii`` of a click (~1/16 of the
    slice), else the prior stays. A click then never erases or adds lesions elsewhere (the network
    re-segments the whole slice or volume on every click)."""
    changed = new != prior
    if not changed.any():
        return prior.copy()
    near = np.zeros(prior.shape, bool)
    for p in points:
        near |= _ellipsoid(prior.shape, p, radii)
    lbl, _ = components.label(changed)
    keep = np.unique(lbl[near & changed])
    out = prior.copy()
    take = np.isin(lbl, keep[keep > 0])
    out[take] = new[take]
    return out


def _honour_clicks(prob: np.ndarray, mask: np.ndarray, points: Sequence[Sequence[int]], positives: Sequence[bool],
                   r_min: Sequence[float], r_neg: Sequence[float]) -> np.ndarray:
    """Make each click hold: positives inside the mask, negatives outside (latest click wins on a voxel)."""
    m = mask.astype(bool, copy=True)
    for p, positive in zip(points, positives, strict=True):
        p = tuple(int(v) for v in p)
        small = _ellipsoid(m.shape, p, r_min)
        if positive and not m[p]:
            lbl, _ = components.label(prob >= 0.25)
            grown = (lbl == lbl[p]) if lbl[p] else np.zeros_like(m)
            m |= (grown & _ellipsoid(m.shape, p, r_neg)) | small
        elif not positive and m[p]:
            lbl, _ = components.label(m)
            m &= ~((lbl == lbl[p]) & _ellipsoid(m.shape, p, r_neg))
            m &= ~small
    return m.astype(np.uint8)


def refine_volume(volume_zyx: np.ndarray, mask_zyx: np.ndarray | None, clicks: Sequence[Click], *, is_hu: bool,
                  model: str = "refine", spacing: Sequence[float] | None = None) -> np.ndarray:
    """Refined lesion mask (z, y, x) uint8 of a volume after ``clicks`` (each with its slice index ``Click.z``).

    Same contract as :func:`refine` (whole click history, latest mask). With a 2-D refinement model (the
    shipped ``refine``) each clicked slice is refined with its own clicks and the other slices keep the
    mask; with a 3-D one (``kind: interactive`` trained with a 3-D network, e.g.
    ``configs/refine3d_phantom.yaml``) the whole volume is refined at once, so a click also reaches the
    neighbouring slices of the lesion. ``spacing`` (z, y, x mm) scales a click's reach along z.
    """
    vol = np.asarray(volume_zyx)
    if vol.ndim != 3:
        raise UnsupportedInput(f"refine_volume needs a volume (z, y, x), got shape {vol.shape}")
    if mask_zyx is not None and np.asarray(mask_zyx).shape != vol.shape:
        raise UnsupportedInput(f"refine_volume: mask shape {np.asarray(mask_zyx).shape} differs from {vol.shape}")
    out = np.zeros(vol.shape, np.uint8) if mask_zyx is None else (np.asarray(mask_zyx) > 0).astype(np.uint8)
    by_z: dict[int, list[Click]] = {}
    for c in clicks:
        if not isinstance(c, Click) or c.z is None:
            raise CovidCTError(f"refine_volume: every click needs a slice index z, got {c!r}")
        if not 0 <= c.z < vol.shape[0]:
            raise CovidCTError(f"click slice z={c.z} outside the volume's {vol.shape[0]} slices")
        if not (0 <= c.x < vol.shape[2] and 0 <= c.y < vol.shape[1]):
            raise CovidCTError(f"click ({c.x}, {c.y}) lies outside the {vol.shape[2]}x{vol.shape[1]} slices")
        by_z.setdefault(int(c.z), []).append(c)
    if not clicks:
        return out
    net, info = _load(model)
    if info.get("spatial_dims") == 3:
        return _refine_3d(vol, None if mask_zyx is None else out, clicks, bool(is_hu), net, info, spacing)
    for z, cl in by_z.items():
        out[z] = refine(vol[z], out[z] if mask_zyx is not None else None, cl, is_hu=is_hu, model=model)
    return out


def _refine_3d(vol: np.ndarray, prior: np.ndarray | None, clicks: Sequence[Click], is_hu: bool, net, info: dict,
               spacing: Sequence[float] | None) -> np.ndarray:
    """One pass of a 3-D refinement network over the whole volume (sliding windows of its training size)."""
    import torch
    from monai.inferers import sliding_window_inference

    if not is_hu:
        raise UnsupportedInput("3-D refinement models were trained on HU volumes; this input has display intensities")
    if not np.isfinite(vol).all():
        raise UnsupportedInput("refine_volume: the volume must hold finite numbers")
    ex = info.get("extra") or {}
    lo, hi = ex.get("hu_range", (-1000.0, 500.0))
    x01 = np.clip((vol.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    points = [(int(c.z), c.y, c.x) for c in clicks]
    pos = [p for p, c in zip(points, clicks, strict=True) if c.positive]
    neg = [p for p, c in zip(points, clicks, strict=True) if not c.positive]
    cur = np.zeros(vol.shape, np.uint8) if prior is None else prior
    x = torch.from_numpy(model_input(x01, cur, pos, neg, ex.get("sigma", 2.0)))[None]
    with torch.no_grad():
        logits = sliding_window_inference(x, roi_size=tuple(int(v) for v in info.get("input_size")), sw_batch_size=2,
                                          predictor=net, overlap=0.25, mode="gaussian")
        prob = torch.softmax(logits.float(), 1)[0, 1].numpy()
    thr = float((info.get("thresholds") or {}).get("foreground", 0.5))
    r_near, r_min, r_neg = _radii(vol.shape, spacing)
    new = prob >= thr if prior is None else _local_update(prior > 0, prob >= thr, points, r_near)
    return _honour_clicks(prob, new, points, [c.positive for c in clicks], r_min, r_neg)
