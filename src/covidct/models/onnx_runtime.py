"""Inference with ONNX Runtime: the shipped networks without torch or MONAI.

A shipped model ``<name>.onnx`` (written by :mod:`covidct.models.onnx_export` when a model is shipped)
holds the network in float32 and, in its metadata (``covidct_info``), everything the checkpoint says
about using it (task, classes, input size, normalisation, thresholds). This module only needs numpy,
OpenCV and ``onnxruntime``; it mirrors :mod:`covidct.models.inference` step for step:

- slices are normalised with :func:`covidct.preprocess.to_model_input` and resized to the model's input
  size exactly as ``preprocess.resize_image_tensor`` does (torch's ``area`` = adaptive average pooling
  when shrinking, bilinear with half-pixel centres otherwise);
- softmax probabilities are resized back to each slice's size (bilinear, renormalised).

The CPU execution provider runs with one intra-op thread per CPU this process may use (``COVIDCT_THREADS``
overrides it; ``analyze --workers N`` shares the CPUs out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidct.errors import ModelError

INFO_KEY = "covidct_info"  # ONNX metadata_props key holding the checkpoint's info (JSON)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# ONNX Runtime's CPU memory arena off: it keeps the largest activations of a batch for the life of the process
# (P001 in one process: peak RSS 1377 MB with, 1137 MB without; 40 slices' time unchanged within the noise of a
# loaded machine, 1.5-2.3 s vs 2.0-2.7 s; docs/BENCHMARKS.md)
MEMORY_ARENA = False


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (the model card's check), without importing torch; the one implementation."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def slices_and_flags(images: np.ndarray | Sequence[np.ndarray], is_hu: bool | Sequence[bool]
                     ) -> tuple[bool, list[np.ndarray], list[bool]]:
    """``predict_slices``' inputs as (given as one array?, the list of (H, W) slices, one HU flag per slice)."""
    as_array = isinstance(images, np.ndarray)
    if as_array and images.ndim == 2:
        images = images[None]
    imgs = list(images)
    flags = [bool(is_hu)] * len(imgs) if isinstance(is_hu, bool | np.bool_) else [bool(f) for f in is_hu]
    if len(flags) != len(imgs):
        raise ValueError("predict_slices: is_hu must be one flag or one per image")
    return as_array, imgs, flags


def cpu_threads() -> int:
    """Intra-op threads: ``COVIDCT_THREADS`` if set, else the CPUs this process may run on."""
    env = os.environ.get("COVIDCT_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxNet:
    """One ONNX network in an ONNX Runtime CPU session: ``net(x)`` maps (N, C, H, W) float32 to logits."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or cpu_threads())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between ops: on a shared or loaded machine spinning threads steal the CPU the other
        # thread needs (measured: 32 slices 2.3-3.7 s without vs 3.7-4.9 s with, 2 loaded cores; BENCHMARKS.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_cpu_mem_arena = MEMORY_ARENA
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for a bad file
            raise ModelError(f"cannot load ONNX model {self.path}: {str(e).splitlines()[0]}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info: dict = json.loads(meta[INFO_KEY]) if INFO_KEY in meta else {}
        self.input_name = self.session.get_inputs()[0].name
        self.input_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


def load_onnx(path: str | Path, sha256: str | None = None, threads: int | None = None) -> tuple[OnnxNet, dict]:
    """(network, info) of an ONNX file; ``sha256`` (from the model card) is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    if sha256 is not None:
        if sha256_file(path) != sha256:
            raise ModelError(f"{path.name} does not match its model card (sha256)")
    net = OnnxNet(path, threads)
    info = dict(net.info)
    info["path"] = str(path)
    info["runtime"] = "onnxruntime"
    return net, info


# --- pre/post-processing in numpy (the same arithmetic as the torch path) ------------------------------


def _adaptive_mean(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """torch's adaptive average pooling along one axis: bin i averages [floor(i n/out), ceil((i+1) n/out))."""
    n = x.shape[axis]
    if n % out == 0:
        f = n // out
        shape = (*x.shape[:axis], out, f, *x.shape[axis + 1 :])
        return x.reshape(shape).mean(axis=axis + 1, dtype=np.float32)
    i = np.arange(out)
    starts, ends = (i * n) // out, -((-(i + 1) * n) // out)
    cs = np.cumsum(x, axis=axis, dtype=np.float64)
    cs = np.concatenate([np.zeros_like(np.take(cs, [0], axis=axis)), cs], axis=axis)
    sums = np.take(cs, ends, axis=axis) - np.take(cs, starts, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = out
    return (sums / (ends - starts).reshape(shape)).astype(np.float32)


def bilinear(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (..., H, W) float32 with half-pixel centres (torch ``align_corners=False``)."""
    import cv2

    h, w = int(size[0]), int(size[1])
    lead = x.shape[:-2]
    flat = np.ascontiguousarray(x.reshape(-1, *x.shape[-2:]).transpose(1, 2, 0), dtype=np.float32)
    out = np.empty((h, w, flat.shape[2]), np.float32)
    for k in range(0, flat.shape[2], 4):  # cv2.resize: at most 4 channels per call for every interpolation
        r = cv2.resize(np.ascontiguousarray(flat[:, :, k : k + 4]), (w, h), interpolation=cv2.INTER_LINEAR)
        out[:, :, k : k + 4] = r.reshape(h, w, -1)
    return out.transpose(2, 0, 1).reshape(*lead, h, w)


def area_resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(..., H, W) to ``size`` by adaptive averaging in both directions (torch's ``mode="area"``)."""
    x = np.asarray(x, dtype=np.float32)
    return _adaptive_mean(_adaptive_mean(x, int(size[0]), x.ndim - 2), int(size[1]), x.ndim - 1)


def resize_image(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(..., H, W) float images to ``size``: area when shrinking, bilinear otherwise (as the training path)."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return area_resize(x, size)
    return bilinear(x, size)


def prepare_slices(images: Sequence[np.ndarray], is_hu: Sequence[bool], info: dict) -> np.ndarray:
    """(N, 1, S, S) float32 model input; the numpy twin of ``models.inference.prepare_slices``."""
    from covidct.preprocess import NormalisationConfig, to_model_input

    norm = NormalisationConfig.from_dict(info.get("normalisation"))
    size = tuple(info.get("input_size") or (256, 256))
    out = [resize_image(to_model_input(np.asarray(im), bool(f), norm), size)[None]
           for im, f in zip(images, is_hu, strict=True)]
    return np.stack(out) if out else np.zeros((0, 1, *size), np.float32)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def resize_probabilities(p: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, h, w) probabilities to (C, H, W), bilinear, renormalised to sum to one."""
    if tuple(p.shape[-2:]) == tuple(shape):
        return p
    q = bilinear(p, shape)
    return q / np.maximum(q.sum(0, keepdims=True), 1e-8)


def mirror_averaged(info: dict) -> bool:
    """Whether the model's card asks for left-right mirror averaging at test time (``test_time_mirror``: the crop
    models, chosen on validation crops, docs/BENCHMARKS.md, thirty-sixth session). Checkpoints without a card never."""
    return bool((info.get("card") or {}).get("test_time_mirror"))


def predict_slices(
    net: OnnxNet,
    info: dict,
    images: np.ndarray | Sequence[np.ndarray],
    is_hu: bool | Sequence[bool],
    batch_size: int = 8,
    prepared: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Softmax probabilities (C, H, W) float32 per slice, as ``models.inference.predict_slices`` returns them.

    ``images`` (N, H, W) -> (N, C, H, W); a list of (H, W) arrays of any sizes -> a list. ``prepared``: the
    output of :func:`prepare_slices` for these images, when already computed.
    """
    as_array, imgs, flags = slices_and_flags(images, is_hu)
    mirror = mirror_averaged(info)
    out: list[np.ndarray] = []
    stacked: np.ndarray | None = None
    for start in range(0, len(imgs), batch_size):
        chunk = imgs[start : start + batch_size]
        x = (prepared[start : start + batch_size] if prepared is not None
             else prepare_slices(chunk, flags[start : start + batch_size], info))
        prob = softmax(net(x), axis=1)
        if mirror:  # the mean with the mirror image's probabilities, mirrored back
            prob = (prob + softmax(net(np.ascontiguousarray(x[..., ::-1])), axis=1)[..., ::-1]) / 2
        if as_array and tuple(prob.shape[-2:]) == tuple(images.shape[-2:]):
            if stacked is None:
                stacked = np.empty((len(imgs), *prob.shape[1:]), np.float32)
            stacked[start : start + len(chunk)] = prob
            continue
        out.extend(resize_probabilities(p, np.asarray(im).shape[-2:]) for p, im in zip(prob, chunk, strict=True))
    if stacked is not None:
        return stacked
    return np.stack(out) if as_array else out
