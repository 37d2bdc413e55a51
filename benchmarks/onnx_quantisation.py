"""Quantisation trials for the shipped segmentation networks (ONNX Runtime, CPU): is any variant worth shipping?

    COVIDCT_DATA=/work/shared/data python benchmarks/onnx_quantisation.py [--models lungs infection lesions]
        [--calib 64] [--repeats 5] [-o OUT.json]

Variants of each model's float32 ONNX file: int8 dynamic (``quantize_dynamic``), int8 static QDQ
(``quantize_static``, per-channel weights, calibrated on ``--calib`` slices of the model's *training*
split), and float16 (``onnxruntime.transformers.float16``, inputs/outputs kept float32). Each is scored on
the validation split (pooled Dice per class against the reference masks, and its change against the
float32 network) and timed on one batch of 8 validation slices (median of ``--repeats``; variants
alternate so load on a shared machine hits all alike). Adopt only if Dice moves < 0.005 and it is faster.
Skips cleanly without the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_io import emit_json  # noqa: E402  (the script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _variants(fp32: Path, tmp: Path, calib: np.ndarray) -> dict[str, Path]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    out = {"fp32": fp32}
    pre = tmp / f"{fp32.stem}.pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    dyn = tmp / f"{fp32.stem}.int8dyn.onnx"
    quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8)
    out["int8_dynamic"] = dyn

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    st = tmp / f"{fp32.stem}.int8static.onnx"
    quantize_static(str(pre), str(st), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out["int8_static"] = st
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    h = tmp / f"{fp32.stem}.fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(h))
    out["fp16"] = h
    return out


def trial(name: str, calib_n: int, repeats: int) -> dict:
    from covidct.models import onnx_runtime as ox
    from covidct.models.zoo import WEIGHTS_DIR
    from covidct.train.onnx_equivalence import SEG_TASKS, _labels, _segmentation_summary, validation_records

    card = json.loads((WEIGHTS_DIR / f"{name}.card.json").read_text())
    fp32 = WEIGHTS_DIR / card["onnx"]["file"]
    _, info = ox.load_onnx(fp32)
    key = SEG_TASKS[card["task"]]
    rng = np.random.default_rng(0)
    train = [r for r in validation_records(card, "train") if r.get(key) is not None]
    pick = rng.choice(len(train), size=min(calib_n, len(train)), replace=False)
    calib = ox.prepare_slices([train[i]["image"] for i in pick], [bool(train[i]["is_hu"]) for i in pick], info)
    val = [r for r in validation_records(card, "val") if r.get(key) is not None]
    images, flags = [r["image"] for r in val], [bool(r["is_hu"]) for r in val]
    prepared = ox.prepare_slices(images, flags, info)
    truth = [np.asarray(r[key]).astype(np.uint8) for r in val]
    with tempfile.TemporaryDirectory() as d:
        paths = _variants(fp32, Path(d), calib)
        nets = {k: ox.OnnxNet(p) for k, p in paths.items()}
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        preds = {}
        for k, net in nets.items():
            labels = []
            for i in range(0, len(images), 16):
                probs = ox.predict_slices(net, info, images[i : i + 16], flags[i : i + 16], prepared=prepared[i : i + 16])
                labels.extend(_labels(p, info) for p in probs)
            preds[k] = labels
        batch = prepared[:8]
        times: dict[str, list[float]] = {k: [] for k in nets}
        for k in nets:
            nets[k](batch)  # warm-up
        for _ in range(repeats):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(batch)
                times[k].append(time.perf_counter() - t0)
    classes = list(info.get("classes") or [])
    res = {"n_val_slices": len(val), "n_calibration_slices": int(len(calib)), "size_bytes": sizes,
           "seconds_per_batch_of_8_median": {k: float(np.median(v)) for k, v in times.items()},
           "dice_vs_reference": {}, "dice_change_vs_fp32": {}}
    for k in nets:
        s = _segmentation_summary({"onnx": preds[k]}, truth, classes)["dice_vs_reference"]["onnx"]
        res["dice_vs_reference"][k] = s
    base = res["dice_vs_reference"]["fp32"]
    for k in nets:
        res["dice_change_vs_fp32"][k] = {c: None if base[c] is None else round(res["dice_vs_reference"][k][c] - base[c], 6)
                                         for c in base}
    return res


def main() -> int:
    from covidct.data.sources import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["lungs", "infection", "lesions"])
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    if data_root() is None:
        print("skipped: no data (set COVIDCT_DATA)")
        return 0
    out = {name: trial(name, args.calib, args.repeats) for name in args.models}
    return emit_json(out, args.output)


if __name__ == "__main__":
    sys.exit(main())
