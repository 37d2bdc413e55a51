"""Running the analysis models on the slices of one CT: 2-D models slice by slice (ONNX Runtime, or torch for a
checkpoint without an ONNX file: :mod:`covidct.models.runtime`), 3-D models by sliding window (torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covidct.pipeline.types import LoadedModel

# Slices per forward pass. ONNX Runtime (arena off) mallocs a run's intermediate tensors: for up to 5 slices of
# these 256² U-Nets glibc serves them again from its heap, from 6 on it maps them afresh every run and each
# page is faulted in (P001, 138 slices: 216,000 page
# faults and about 15 % more CPU time per network pass with 8; same outputs; docs/BENCHMARKS.md).
BATCH_SIZE = 4


class ModelRunner:
    """Runs the models for one CT; ``bf16``/``batch_size`` as :class:`~covidct.pipeline.Analyzer`.

    It keeps each slice's normalised model input (``cache``), so models sharing the normalisation
    settings do not repeat it (CLAHE on every slice is a sizeable part of a pass)."""

    def __init__(self, bf16: bool = True, batch_size: int = BATCH_SIZE) -> None:
        self.bf16 = bf16
        self.batch_size = batch_size
        self.cache: dict = {}

    def probabilities(self, model: LoadedModel, vol: np.ndarray, zs: np.ndarray, is_hu: bool,
                      spacing: Sequence[float] | None = None, role: str = "lungs", channel: int | None = None) -> np.ndarray:
        """(N, C, H, W) probabilities of slices ``vol[zs]``; a 3-D model sees them as one volume (sliding window).
        ``channel``: only that class's (N, H, W) probability is kept (the softmax still sees every class)."""
        info = model.info
        if model.is_3d:
            from covidct.models.volume_inference import predict_volume, probs_for_role

            prob = predict_volume(model.net, info, vol[zs], spacing, is_hu=is_hu, bf16=self.bf16)
            prob = probs_for_role(prob, info.get("classes", []), role)
            return prob if channel is None else np.ascontiguousarray(prob[:, channel])
        import json

        from covidct.models.runtime import predict_slices, prepare_slices

        key = (json.dumps(info.get("normalisation"), sort_keys=True), tuple(info.get("input_size") or (256, 256)), is_hu)
        rows = self.cache.setdefault(key, {})
        missing = [int(z) for z in zs if int(z) not in rows]
        if missing:
            rows.update(zip(missing, prepare_slices([vol[z] for z in missing], [is_hu] * len(missing), info), strict=True))
        # batch by batch into one output: neither a second copy of the inputs nor the classes not asked for
        # are held for the whole series (P001's lesion stage: about 100 MB less at its peak)
        out: np.ndarray | None = None
        for start in range(0, len(zs), self.batch_size):
            chunk = np.asarray(zs[start : start + self.batch_size])
            prob = predict_slices(model.net, info, vol[chunk], is_hu, batch_size=len(chunk), bf16=self.bf16,
                                  prepared=np.stack([rows[int(z)] for z in chunk]))
            prob = prob if channel is None else prob[:, channel]
            if out is None:
                out = np.empty((len(zs), *prob.shape[1:]), prob.dtype)
            out[start : start + len(chunk)] = prob
        if out is None:
            raise ValueError("no slices to run the model on")
        return out
