"""Static int8 quantisation of a shipped ONNX network, adopted only where it keeps Dice and is faster.

ONNX Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, uint8 activations) calibrated on
slices of the model's *training* split; then, on its validation split, the pooled Dice per class of the
int8 and the float32 networks against the reference masks and a paired timing (the two alternate on one
batch of 8 validation slices). The rule (issue 20): adopt when every class's Dice moves by less than
``max_dice_change`` (0.005) and the int8 network is faster. The result goes into the card as
``onnx.int8`` (``adopted`` true/false); :func:`covidct.models.runtime.onnx_entry` runs the int8 file only
when adopted. ``benchmarks/onnx_quantisation.py`` tries the other variants (int8 dynamic, float16).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from covidct.models import onnx_runtime as ox
from covidct.train.onnx_equivalence import SEG_TASKS, _labels, _segmentation_summary, validation_records


def _calibration(card: dict, info: dict, key: str, n: int, seed: int) -> np.ndarray:
    train = [r for r in validation_records(card, "train") if r.get(key) is not None]
    pick = np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False)
    return ox.prepare_slices([train[i]["image"] for i in pick], [bool(train[i]["is_hu"]) for i in pick], info)


def quantise_static(fp32: Path, out: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{ox.INPUT_NAME: calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    import onnx

    model = onnx.load(str(out))  # keep the covidct_info metadata of the float network
    src = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    onnx.helper.set_model_props(model, src)
    onnx.save_model(model, str(out))


def ship_int8(name: str, weights_dir: str | Path, n_calib: int = 64, seed: int = 0, repeats: int = 10,
              max_dice_change: float = 0.005) -> dict:
    """Quantise ``name.onnx`` to ``name.int8.onnx``, score and time it, and record ``onnx.int8`` in the card."""
    weights_dir = Path(weights_dir)
    card_path = weights_dir / f"{name}.card.json"
    card = json.loads(card_path.read_text())
    fp32 = weights_dir / card["onnx"]["file"]
    net32, info = ox.load_onnx(fp32, card["onnx"]["sha256"])
    key = SEG_TASKS[str(card["task"])]
    calib = _calibration(card, info, key, n_calib, seed)
    out = weights_dir / f"{name}.int8.onnx"
    quantise_static(fp32, out, calib)
    net8 = ox.OnnxNet(out)
    val = [r for r in validation_records(card, "val") if r.get(key) is not None]
    images, flags = [r["image"] for r in val], [bool(r["is_hu"]) for r in val]
    prepared = ox.prepare_slices(images, flags, info)
    preds: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
    for tag, net in (("fp32", net32), ("int8", net8)):
        for i in range(0, len(images), 16):
            probs = ox.predict_slices(net, info, images[i : i + 16], flags[i : i + 16], prepared=prepared[i : i + 16])
            preds[tag].extend(_labels(p, info) for p in probs)
    truth = [np.asarray(r[key]).astype(np.uint8) for r in val]
    classes = list(info.get("classes") or [])
    dice = {tag: _segmentation_summary({"onnx": p}, truth, classes)["dice_vs_reference"]["onnx"] for tag, p in preds.items()}
    change = {c: None if dice["fp32"][c] is None else round(dice["int8"][c] - dice["fp32"][c], 6) for c in dice["fp32"]}
    agree = _segmentation_summary({"onnx": preds["int8"], "torch_fp32": preds["fp32"]}, truth, classes)
    batch, times = prepared[:8], {"fp32": [], "int8": []}
    net32(batch), net8(batch)  # warm-up
    for _ in range(repeats):
        for tag, net in (("fp32", net32), ("int8", net8)):
            t0 = time.perf_counter()
            net(batch)
            times[tag].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    keeps_dice = all(v is not None and abs(v) < max_dice_change for v in change.values())
    entry = {"file": out.name, "sha256": ox.sha256_file(out), "size_bytes": out.stat().st_size,
             "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations",
             "calibration": f"{len(calib)} slices of the training split (seed {seed})",
             "validation": {"n_slices": len(val), "dice_vs_reference": dice, "dice_change_vs_fp32": change,
                            "label_agreement_vs_fp32": agree["label_agreement_vs_torch_fp32"],
                            "dice_int8_vs_fp32_masks": agree["dice_onnx_vs_torch_fp32"]},
             "seconds_per_batch_of_8": {"median": med, "repeats": repeats, "paired": True},
             "rule": f"adopt if every |Dice change| < {max_dice_change} and int8 is faster",
             "adopted": bool(keeps_dice and med["int8"] < med["fp32"]),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if not entry["adopted"]:
        out.unlink()  # not shipped: the card keeps the trial's figures
        entry["file"] = None
    card["onnx"]["int8"] = entry
    card_path.write_text(json.dumps(card, indent=1, default=str) + "\n")
    return entry
