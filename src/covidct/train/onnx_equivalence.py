"""Equivalence of a shipped ONNX network with its torch checkpoint, on the model's own validation data.

Recorded in the model card when a model is shipped (:func:`ship_onnx`, run by ``scripts/ship_model.py`` and
``scripts/export_onnx.py``).
Three predictions of every validation slice are compared:

- ``torch_fp32``: the checkpoint in float32;
- ``torch_bf16``: what ``analyze``/``segment`` ran before ONNX Runtime (batch norm folded, bf16 autocast);
- ``onnx``: the ONNX file through :mod:`covidct.models.onnx_runtime` (float32).

For segmentation models: pixel label agreement of ONNX with each torch variant, the Dice of each variant
against the reference masks (pooled over the slices, per class) and the Dice change. For classifiers:
label agreement and the AUC/accuracy of each. For the click-refinement model: the same as segmentation,
with one positive click at the centre of the largest reference lesion on an empty prior mask.
Needs torch and the training data (``/work/shared/data``); never used at inference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from covidct.models import onnx_runtime as ort_path

SEG_TASKS = {"lungs": "lungs", "infection": "infection", "lesions": "lesions", "refine": "infection"}


def validation_records(card: dict, part: str = "val") -> list[dict]:
    """The slices of one split part (default: validation) of the model described by ``card``."""
    from covidct.train.config import SourceConfig
    from covidct.train.datasets import load_records
    from covidct.train.schema import build

    config = card.get("config") or {}
    # the config's own schema reads each source (every field it has); each record once, not oversampled
    sources = [build(SourceConfig, {**src, "repeat": 1}, f"data.sources[{i}]") for i, src in
               enumerate((config.get("data") or {}).get("sources") or card.get("data", {}).get("sources", []))]
    records = load_records(sources)
    by_meta = ((config.get("data") or {}).get("split") or {}).get("by_meta")
    if by_meta:
        return [r for r in records if str((r.get("meta") or {}).get(by_meta)) == part]
    val = set((card.get("split") or {}).get(part) or [])
    return [r for r in records if str(r.get("group") or r["id"]) in val or r["id"] in val]


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * int((a & b).sum()) / s


def _labels(prob: np.ndarray, info: dict) -> np.ndarray:
    from covidct.models.inference import probabilities_to_labels

    thr = (info.get("thresholds") or {}).get("foreground")
    return probabilities_to_labels(prob, thr if prob.shape[0] == 2 else None)


def _segmentation_summary(preds: dict[str, list[np.ndarray]], truth: list[np.ndarray], classes: list[str]) -> dict:
    """Label agreement and pooled per-class Dice of each prediction set (lists of label maps)."""
    flat = {k: np.concatenate([p.ravel() for p in v]) for k, v in preds.items()}
    gt = np.concatenate([t.ravel() for t in truth])
    out: dict = {"n_slices": len(truth), "n_pixels": int(gt.size)}
    for ref in ("torch_fp32", "torch_bf16"):
        if ref in flat:
            out[f"label_agreement_vs_{ref}"] = float((flat["onnx"] == flat[ref]).mean())
            out[f"dice_onnx_vs_{ref}"] = {c: _dice(flat["onnx"] == k, flat[ref] == k) for k, c in enumerate(classes) if k}
    out["dice_vs_reference"] = {name: {c: _dice(v == k, gt == k) for k, c in enumerate(classes) if k}
                                for name, v in flat.items()}
    for ref in ("torch_fp32", "torch_bf16"):
        if ref in flat:
            d0, d1 = out["dice_vs_reference"][ref], out["dice_vs_reference"]["onnx"]
            out[f"dice_change_vs_{ref}"] = {c: None if d0[c] is None else round(d1[c] - d0[c], 6) for c in d0}
    return out


def check_segmentation(weights: str | Path, onnx_path: str | Path, records: list[dict], task: str) -> dict:
    from covidct.models.checkpoint import load_model
    from covidct.models.inference import optimise_for_cpu, predict_slices

    key = SEG_TASKS[task]
    recs = [r for r in records if r.get(key) is not None]
    net, info = load_model(weights)
    fast = optimise_for_cpu(net)
    onnx_net, _ = ort_path.load_onnx(onnx_path)
    images, flags = [r["image"] for r in recs], [bool(r["is_hu"]) for r in recs]
    preds: dict[str, list[np.ndarray]] = {"torch_fp32": [], "torch_bf16": [], "onnx": []}
    max_diff = 0.0
    for i in range(0, len(images), 16):  # chunks: full-size probabilities of every slice would not fit twice
        im, fl = images[i : i + 16], flags[i : i + 16]
        p32 = predict_slices(net, info, im, fl)
        pbf = predict_slices(fast, info, im, fl, bf16=True)
        pox = ort_path.predict_slices(onnx_net, info, im, fl)
        max_diff = max(max_diff, max(float(np.abs(a - b).max()) for a, b in zip(p32, pox, strict=True)))
        for name, ps in (("torch_fp32", p32), ("torch_bf16", pbf), ("onnx", pox)):
            preds[name].extend(_labels(p, info) for p in ps)
    truth = [np.asarray(r[key]).astype(np.uint8) for r in recs]
    out = _segmentation_summary(preds, truth, list(info.get("classes") or []))
    out["max_abs_probability_diff_vs_torch_fp32"] = max_diff
    return out


def check_refine(weights: str | Path, onnx_path: str | Path, records: list[dict]) -> dict:
    import torch
    from scipy import ndimage

    from covidct.interactive import model_input
    from covidct.models.checkpoint import load_model

    net, info = load_model(weights)
    onnx_net, _ = ort_path.load_onnx(onnx_path)
    size = tuple(info["input_size"])
    sigma = float((info.get("extra") or {}).get("sigma", 3.0))
    preds: dict[str, list[np.ndarray]] = {"torch_fp32": [], "onnx": []}
    truth, max_diff = [], 0.0
    for r in records:
        gt = (np.asarray(r["infection"]) > 0).astype(np.float32) if r.get("infection") is not None else None
        if gt is None or not gt.any():
            continue
        x01 = ort_path.prepare_slices([r["image"]], [bool(r["is_hu"])], info)[0, 0]
        small = ort_path.resize_image(gt, size) >= 0.5
        if not small.any():
            continue
        lbl, n = ndimage.label(small)
        biggest = 1 + int(np.argmax(ndimage.sum(small, lbl, range(1, n + 1))))
        cy, cx = ndimage.center_of_mass(lbl == biggest)
        x = model_input(x01, np.zeros(size, bool), [(cy, cx)], [], sigma)[None]
        with torch.no_grad():
            p32 = torch.softmax(net(torch.from_numpy(x)), 1).numpy()[0]
        pox = ort_path.softmax(onnx_net(x))[0]
        max_diff = max(max_diff, float(np.abs(p32 - pox).max()))
        preds["torch_fp32"].append(_labels(p32, info))
        preds["onnx"].append(_labels(pox, info))
        truth.append(small.astype(np.uint8))
    out = _segmentation_summary(preds, truth, list(info.get("classes") or []))
    out["max_abs_probability_diff_vs_torch_fp32"] = max_diff
    out["clicks"] = "one positive click at the centre of the largest reference lesion, empty prior mask"
    return out


def check_classifier(weights: str | Path, onnx_path: str | Path, records: list[dict]) -> dict:
    from covidct.classify import predict_proba
    from covidct.evaluate.classification import predict_labels, roc_auc
    from covidct.models.checkpoint import load_model
    from covidct.train.classify import class_target

    net, info = load_model(weights)
    onnx_net, _ = ort_path.load_onnx(onnx_path)
    recs = [r for r in records if class_target(r, info["task"]) is not None]
    y = np.asarray([class_target(r, info["task"]) for r in recs])
    images, flags = [r["image"] for r in recs], [bool(r["is_hu"]) for r in recs]
    p32 = predict_proba(net, info, images, flags)
    pox = np.concatenate([ort_path.softmax(onnx_net(ort_path.prepare_slices(images[i : i + 16], flags[i : i + 16], info)))
                          for i in range(0, len(images), 16)]).astype(np.float64)
    thr = float((info.get("thresholds") or {}).get("positive", 0.5)) if p32.shape[1] == 2 else None
    l32, lox = predict_labels(p32, thr), predict_labels(pox, thr)
    out = {"n_images": len(recs), "label_agreement_vs_torch_fp32": float((l32 == lox).mean()),
           "max_abs_probability_diff_vs_torch_fp32": float(np.abs(p32 - pox).max()),
           "accuracy": {"torch_fp32": float((l32 == y).mean()), "onnx": float((lox == y).mean())}}
    if p32.shape[1] == 2 and len(set(y.tolist())) == 2:
        out["auc"] = {"torch_fp32": roc_auc(y, p32[:, 1]), "onnx": roc_auc(y, pox[:, 1])}

    return out


def equivalence(weights: str | Path, onnx_path: str | Path, card: dict) -> dict:
    """The card's ``onnx.equivalence`` entry for one model (validation data from the card)."""
    task = str(card.get("task"))
    records = validation_records(card)
    if task in ("lungs", "infection", "lesions"):
        result = check_segmentation(weights, onnx_path, records, task)
    elif task == "refine":
        result = check_refine(weights, onnx_path, records)
    else:
        result = check_classifier(weights, onnx_path, records)
    return {"data": "the model's validation split (card: split.val / data.sources)", **result}


def ship_onnx(name: str, weights_dir: str | Path, check: bool = True) -> dict:
    """Export shipped model ``name`` (``weights_dir/name.pt``) to ``name.onnx`` and record it in its card.

    The card's ``onnx`` entry gets file, sha256, size, opset and, with ``check`` and the training data present,
    ``equivalence`` (:func:`equivalence`); without the data it says ``None``.
    """
    from covidct.data.sources import data_root
    from covidct.models.onnx_export import export_onnx

    weights_dir = Path(weights_dir)
    card_path = weights_dir / f"{name}.card.json"
    card = json.loads(card_path.read_text())
    weights = weights_dir / card.get("weights", f"{name}.pt")
    entry = export_onnx(weights, weights_dir / f"{name}.onnx")
    (weights_dir / f"{name}.int8.onnx").unlink(missing_ok=True)  # quantised from older weights: stale
    if check and data_root() is not None:
        t0 = time.perf_counter()
        entry["equivalence"] = equivalence(weights, weights_dir / entry["file"], card)
        entry["equivalence"]["seconds"] = round(time.perf_counter() - t0, 1)
    elif check:
        entry["equivalence"] = None  # no training data here: not checked (said rather than left out)
    entry["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    card["onnx"] = entry
    card_path.write_text(json.dumps(card, indent=1, default=str) + "\n")
    return entry
