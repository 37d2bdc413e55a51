"""Which runtime runs a model at inference: ONNX Runtime for a shipped model with its ``.onnx``, else torch.

Every inference command (analyze, segment, classify, refine, the service) loads its networks through
:func:`load` and runs them through :func:`predict_slices`, so torch and MONAI are imported only when a
model has no ONNX file (a checkpoint or run folder straight from ``covidct train``) or when
``COVIDCT_RUNTIME=torch`` asks for the checkpoint (the reference path; ``analyze`` then runs batch norm
folded and bf16 autocast, as before ONNX). ``info["runtime"]`` says which one a model got.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from covidct.models import onnx_runtime as ox

RUNTIME_ENV = "COVIDCT_RUNTIME"  # "onnx" (default) or "torch"


def wanted_runtime(runtime: str | None = None) -> str:
    r = (runtime or os.environ.get(RUNTIME_ENV) or "onnx").strip().lower()
    return "torch" if r == "torch" else "onnx"


@lru_cache(maxsize=8)
def _onnx_cached(path: str, sha256: str, threads: int):
    return ox.load_onnx(path, sha256, threads)


def onnx_session(path: str | Path, sha256: str, threads: int):
    """The ONNX Runtime network of a shipped model's ONNX file with ``threads`` intra-op threads (cached per process)."""
    return _onnx_cached(str(path), sha256, int(threads))[0]


def onnx_entry(name_or_path: str | Path) -> tuple[Path, dict, dict] | None:
    """(ONNX file, its card entry, the card) when the model ships an ONNX file; None otherwise. A statically
    quantised int8 file is used where the card says it was adopted (``onnx.int8``, covidct.train.onnx_quantise)."""
    from covidct.models.zoo import resolve_model_path

    weights, card_path = resolve_model_path(name_or_path)
    if card_path is None:
        return None
    card = json.loads(Path(card_path).read_text())
    entry = card.get("onnx")
    if not entry or not (Path(weights).parent / entry["file"]).is_file():
        return None
    int8 = entry.get("int8") or {}
    if int8.get("adopted") and int8.get("file") and (Path(weights).parent / int8["file"]).is_file():
        entry = dict(entry, file=int8["file"], sha256=int8["sha256"], quantised="int8 static")
    return Path(weights).parent / entry["file"], entry, card


def load(name_or_path: str | Path, *, runtime: str | None = None, optimise: bool = False, threads: int | None = None):
    """(network, info) for a shipped name, a checkpoint or a run folder; cached per process.

    ONNX Runtime when the model ships an ``.onnx`` (checked against its card's sha256) and the torch
    runtime is not asked for (``threads``: intra-op threads, default :func:`onnx_runtime.cpu_threads`);
    otherwise the torch checkpoint (``optimise``: the batch-norm-folded, channels-last copy ``analyze``
    runs, for 2-D models).
    """
    from covidct.interrupts import stop_signals_held

    found = onnx_entry(name_or_path) if wanted_runtime(runtime) == "onnx" else None
    if found is not None:
        path, entry, card = found
        with stop_signals_held():
            net, info = _onnx_cached(str(path), entry["sha256"], int(threads or ox.cpu_threads()))
        info = dict(info)
        info.update(name=str(card.get("name") or path.stem), version=card.get("version", "0"),
                    sha256=card.get("sha256"), onnx_sha256=entry["sha256"], card=card,
                    spatial_dims=int((info.get("extra") or {}).get("spatial_dims", 2)))
        return net, info
    from covidct.models import zoo

    model, info = zoo.load(name_or_path)
    info = dict(info, runtime="torch")
    if optimise and info.get("spatial_dims") != 3 and (info.get("model") or {}).get("name") not in ("compact_cnn", "resnet50"):
        from covidct.models.inference import optimise_for_cpu

        model = optimise_for_cpu(model)
    return model, info


def is_onnx(info: dict) -> bool:
    return info.get("runtime") == "onnxruntime"


def prepare_slices(images: Sequence[np.ndarray], is_hu: Sequence[bool], info: dict) -> np.ndarray:
    """(N, 1, S, S) float32 model input (numpy; either runtime takes it)."""
    return ox.prepare_slices(images, is_hu, info)


def predict_slices(net, info: dict, images: np.ndarray | Sequence[np.ndarray], is_hu: bool | Sequence[bool],
                   batch_size: int = 8, prepared: np.ndarray | None = None, bf16: bool = True):
    """Softmax probabilities per slice with whichever runtime ``info`` says (see ``onnx_runtime.predict_slices``).

    ``bf16`` applies to the torch runtime only (its autocast on CPU); ONNX Runtime runs float32.
    """
    if is_onnx(info):
        return ox.predict_slices(net, info, images, is_hu, batch_size=batch_size, prepared=prepared)
    import torch

    from covidct.models.inference import predict_slices as torch_predict

    prep = None if prepared is None else torch.from_numpy(np.ascontiguousarray(prepared))
    return torch_predict(net, info, images, is_hu, batch_size=batch_size, bf16=bf16, prepared=prep)


def forward(net, info: dict, x: np.ndarray) -> np.ndarray:
    """Logits of a prepared batch (N, C, H, W) float32 with either runtime."""
    if is_onnx(info):
        return net(x)
    import torch

    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return (out[0] if isinstance(out, list | tuple) else out).float().numpy()


def probabilities_to_labels(prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Label map(s) from probabilities (C, H, W) or (N, C, H, W): ``prob[1] >= threshold`` for a binary model
    given its stored threshold, else argmax (as ``models.inference.probabilities_to_labels``)."""
    prob = np.asarray(prob)
    ch = prob.ndim - 3
    if prob.shape[ch] == 2 and threshold is not None:
        return (np.take(prob, 1, axis=ch) >= threshold).astype(np.uint8)
    return np.argmax(prob, axis=ch).astype(np.uint8)


def labels_for_task(probs: Sequence[np.ndarray], info: dict, task: str, threshold: float | None = None,
                    images: Sequence[np.ndarray] | None = None,
                    is_hu: bool | Sequence[bool] = False) -> list[np.ndarray]:
    """Label maps of per-slice probabilities (C, H, W) for ``task``: the one rule ``covidct segment`` and
    ``covidct evaluate`` share, so the same model on the same images gives the same masks and Dice.

    ``threshold`` defaults to the model's stored foreground threshold. A ``lesions`` model scored on
    ``infection`` counts a pixel infected when P(not background) >= threshold (0.5 without one); a binary
    model uses P(foreground) >= threshold; a multi-class model its argmax. On ``lesions``, with the slices
    (``images``, ``is_hu``), display slices get GGO and consolidation from density where the model's card asks
    for it (:func:`density_typing`).
    """
    if threshold is None:
        threshold = (info.get("thresholds") or {}).get("foreground")
    if task == "infection" and info.get("task") == "lesions":
        return [((1.0 - np.asarray(p)[0]) >= (threshold or 0.5)).astype(np.uint8) for p in probs]
    labels = [probabilities_to_labels(p, threshold if np.asarray(p).shape[0] == 2 else None) for p in probs]
    if task == "infection":
        labels = [(lab > 0).astype(np.uint8) for lab in labels]
    typing = density_typing(info) if task == "lesions" and images is not None else None
    if typing is not None:
        from covidct.preprocess import lesion_types_by_density

        hu = [is_hu] * len(labels) if isinstance(is_hu, bool) else list(is_hu)
        labels = [lab if h else lesion_types_by_density(lab, img, **typing)
                  for lab, img, h in zip(labels, images, hu, strict=True)]
    return labels


def density_typing(info: dict) -> dict | None:
    """The settings (``sigma_px``, ``threshold``) with which the model's card asks for GGO and consolidation on
    display slices to be told apart by density (:func:`covidct.preprocess.lesion_types_by_density`), or None
    (checkpoints without a card, HU inputs: the network's own types)."""
    typing = (info.get("card") or {}).get("density_typing")
    return None if not typing else {"sigma_px": float(typing["sigma_px"]), "threshold": float(typing["threshold"])}


def crops_model_name(card: dict | None) -> str | None:
    """The shipped model that reads 2-D slices cut tight around the lungs in the place of the model of ``card`` (its
    ``crops_model``; :data:`covidct.slice_view.CROP_SPAN`), when the card names one and it is shipped."""
    from covidct.models import zoo

    name = (card or {}).get("crops_model")
    return str(name) if name and zoo.has_model(name) else None
