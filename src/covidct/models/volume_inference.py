"""3-D inference: a volumetric model's class probabilities for a whole HU volume (sliding window).

What running a shipped 3-D model needs, apart from training: the settings stored with its checkpoint,
resampling to the model's spacing and back, Gaussian-blended sliding windows with optional test-time
mirroring (MONAI), and the layout ``covidct.pipeline`` expects for each role (lungs, lesions).
``covidct.train.volumes`` trains these models and validates with the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from covidct.errors import UnsupportedInput


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None) -> tuple[int, ...]:
    """Grid size after resampling ``shape`` at ``spacing`` to the ``target`` spacing (None: unchanged)."""
    if target is None:
        return tuple(int(s) for s in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def volume_settings(info: dict) -> dict:
    """The 3-D settings stored with a checkpoint (``extra``): spacing, hu_range, patch, overlap, blend."""
    ex = info.get("extra") or {}
    if int(ex.get("spatial_dims", info.get("spatial_dims", 2))) != 3:
        raise UnsupportedInput(f"model {info.get('name', '?')} is not a 3-D model")
    return {"spacing": ex.get("spacing"), "hu_range": ex.get("hu_range", [-1000.0, 500.0]),
            "patch": ex.get("patch", info.get("input_size")), "overlap": float(ex.get("overlap", 0.25)),
            "blend": ex.get("blend", "gaussian"), "sw_batch_size": int(ex.get("sw_batch_size", 4)),
            "mirror_axes": [int(a) for a in ex.get("mirror_axes") or []]}


@torch.no_grad()
def sliding_window_probs(model: torch.nn.Module, x: torch.Tensor, patch: Sequence[int], *, overlap: float = 0.25,
                         blend: str = "gaussian", sw_batch_size: int = 4, bf16: bool = False,
                         mirror_axes: Sequence[int] = ()) -> torch.Tensor:
    """Softmax probabilities (B, C, z, y, x) of a preprocessed (B, 1, z, y, x) volume, Gaussian-blended windows;
    with ``mirror_axes`` (volume axes 0 z, 1 y, 2 x) the mean over every combination of those flips."""
    import itertools

    if mirror_axes:
        dims = [int(a) + 2 for a in mirror_axes]
        flips = [list(c) for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]
        total = None
        for f in flips:
            xi = torch.flip(x, f) if f else x
            p = sliding_window_probs(model, xi, patch, overlap=overlap, blend=blend, sw_batch_size=sw_batch_size,
                                     bf16=bf16)
            p = torch.flip(p, f) if f else p
            total = p if total is None else total + p
        return total / len(flips)
    from monai.inferers import sliding_window_inference

    dev = next(model.parameters()).device

    def predictor(t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(t.to(dev))
        return (out[0] if isinstance(out, list | tuple) else out).float()

    logits = sliding_window_inference(x, roi_size=tuple(int(p) for p in patch), sw_batch_size=sw_batch_size,
                                      predictor=predictor, overlap=overlap, mode=blend, padding_mode="constant",
                                      cval=0.0)
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def predict_volume(model: torch.nn.Module, info: dict, volume_zyx: np.ndarray, spacing: Sequence[float], *,
                   is_hu: bool = True, bf16: bool = False, mirror_axes: Sequence[int] | None = None) -> np.ndarray:
    """Class probabilities (C, z, y, x) float32 on the input's own grid for a HU volume.

    The volume is resampled to the model's spacing, clipped/scaled as in training, run through
    sliding-window inference, and the probabilities are resampled back (trilinear) to the input grid.
    ``mirror_axes``: test-time mirroring (None: the model's own setting, ``volume.mirror_axes`` of its config).
    """
    import torch.nn.functional as F

    s = volume_settings(info)
    vol = np.asarray(volume_zyx, np.float32)
    if vol.ndim != 3:
        raise UnsupportedInput(f"a 3-D model needs a volume (z, y, x), got shape {vol.shape}")
    if not is_hu:
        raise UnsupportedInput("3-D models were trained on HU volumes; this input has display intensities")
    lo, hi = s["hu_range"]
    x = torch.from_numpy(np.clip((vol - lo) / (hi - lo), 0.0, 1.0))[None, None]
    size = resampled_shape(vol.shape, spacing, s["spacing"])
    if tuple(size) != vol.shape:
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    prob = sliding_window_probs(model, x, s["patch"], overlap=s["overlap"], blend=s["blend"],
                                sw_batch_size=s["sw_batch_size"], bf16=bf16,
                                mirror_axes=s["mirror_axes"] if mirror_axes is None else mirror_axes)
    if tuple(prob.shape[2:]) != vol.shape:
        prob = F.interpolate(prob, size=vol.shape, mode="trilinear", align_corners=False)
        prob = prob / prob.sum(1, keepdim=True).clamp_min(1e-8)
    return prob[0].cpu().numpy().astype(np.float32)


def probs_for_role(prob_czyx: np.ndarray, classes: Sequence[str], role: str) -> np.ndarray:
    """Per-slice probabilities (z, C', y, x) of a 3-D model in the layout the analyze pipeline expects.

    ``role="lungs"``: [background, lung] with lung = every lung class (infection inside the lung counts as
    lung, as in covidct's lung label). ``role="lesions"``: the model's lesion classes when it has them
    (none/GGO/consolidation/effusion), else [none, infection].
    """
    p = np.asarray(prob_czyx)
    cl = list(classes)
    if role == "lungs":
        idx = [i for i, c in enumerate(cl) if c in ("lung", "left_lung", "right_lung", "infection")]
        if not any(c in ("lung", "left_lung", "right_lung") for c in cl):
            raise UnsupportedInput(f"model classes {cl} have no lung class: it cannot segment lungs")
        fg = p[idx].sum(0)
        out = np.stack([1.0 - fg, fg])
    elif role == "lesions":
        if "ggo" in cl:
            out = p
        elif "infection" in cl:
            fg = p[cl.index("infection")]
            out = np.stack([1.0 - fg, fg])
        else:
            raise UnsupportedInput(f"model classes {cl} have no lesion class: it cannot segment lesions")
    else:
        raise ValueError(f"role must be lungs or lesions, got {role!r}")
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3)).astype(np.float32)
