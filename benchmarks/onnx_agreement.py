"""Agreement of the ONNX Runtime masks with the torch path, per class: against torch float32 and torch bf16.

    COVIDCT_DATA=/work/shared/data python benchmarks/onnx_agreement.py [-o OUT.json]

Issue 20 asks the ONNX path's lung and lesion masks to agree with "the torch path" (Dice >= 0.995 per class on
P001 and the phantoms). The torch path ``analyze`` ran before ONNX Runtime used bf16 autocast, which is not part
of the trained (float32) model, so both references are measured: ``torch_fp32`` (the checkpoint with batch norm
folded, float32: ``COVIDCT_RUNTIME=torch``, ``Analyzer(bf16=False)``) and ``torch_bf16`` (the same with bf16
autocast, ``COVIDCT_RUNTIME=torch covidct analyze`` today).

Per case (P001 when the data is present; phantoms of three seeds/shapes, written and read back as ``analyze``
would) it runs the three analysers in one process and reports, for the final masks (input grid), the Dice of
every class present in either mask, and, per network on the working grid's lung slices, the label agreement of
its argmax and the largest probability difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_io import emit_json  # noqa: E402  (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PHANTOMS = [  # name, make_phantom options (as benchmarks/exact_outputs.py's cases)
    ("phantom_s0_default", {"seed": 0}),
    ("phantom_s1_32x160_b30", {"seed": 1, "shape": (32, 160, 160), "lesion_burden": 0.3}),
    ("phantom_s4_64x256_b20", {"seed": 4, "shape": (64, 256, 256), "spacing": (2.5, 1.4, 1.4), "lesion_burden": 0.2}),
]
LUNG_NAMES = {1: "left", 2: "right"}
LESION_NAMES = {1: "GGO", 2: "consolidation", 3: "effusion"}


def dice_per_class(a: np.ndarray, b: np.ndarray, names: dict[int, str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c, name in names.items():
        x, y = a == c, b == c
        s = int(x.sum()) + int(y.sum())
        out[name] = None if s == 0 else round(2.0 * int((x & y).sum()) / s, 5)
    return out


def analysers():
    """name -> Analyzer; the runtime is chosen at load time from ``COVIDCT_RUNTIME``."""
    from covidct.pipeline import Analyzer

    made = {}
    for name, runtime, bf16 in (("onnx", "onnx", False), ("torch_fp32", "torch", False), ("torch_bf16", "torch", True)):
        os.environ["COVIDCT_RUNTIME"] = runtime
        made[name] = Analyzer(bf16=bf16)
    os.environ.pop("COVIDCT_RUNTIME", None)
    return made


def network_agreement(made: dict, ct) -> dict:
    """Per network, on the working grid's lung slices of the ONNX path: argmax agreement and max |dp| of each
    torch variant against ONNX Runtime (same prepared inputs)."""
    from covidct.pipeline.grid import working_grid
    from covidct.pipeline.predict import ModelRunner

    work, _ = working_grid(ct)
    lungs = made["onnx"].segment_lungs(work)
    zs = np.flatnonzero(lungs.reshape(len(lungs), -1).any(1))
    out: dict = {}
    for role in ("lungs", "lesions", "infection"):
        probs = {}
        for name, an in made.items():
            model = an.models[role]
            if model is None:
                continue
            runner = ModelRunner(bf16=an.bf16)
            probs[name] = runner.probabilities(model, work.array, zs, work.is_hu, work.spacing, role)
        ref = probs["onnx"]
        lab = ref.argmax(1)
        out[role] = {"slices": int(len(zs))}
        for name in ("torch_fp32", "torch_bf16"):
            other = probs[name]
            out[role][name] = {"label_agreement": round(float((other.argmax(1) == lab).mean()), 6),
                               "max_abs_dp": float(np.abs(other - ref).max())}
    return out


def cases(data: Path | None, work: Path):
    from covidct.phantom import make_phantom, write_phantom

    if data is not None and (data / "covid-ct-md" / "P001").is_dir():
        yield "P001", data / "covid-ct-md" / "P001"
    for name, opts in PHANTOMS:
        yield name, write_phantom(make_phantom(**opts), work / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("--no-networks", action="store_true", help="skip the per-network agreement")
    args = ap.parse_args()
    from covidct.data.sources import data_root
    from covidct.pipeline.load import load_input

    data = data_root()
    made = analysers()
    res: dict = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_before": os.getloadavg(),
                 "runtimes": {k: v.models["lesions"].info.get("runtime") for k, v in made.items()}, "cases": {}}
    if data is None:
        res["P001"] = "skipped: no data folder (set COVIDCT_DATA)"
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in cases(data, Path(tmp)):
            ct = load_input(src)
            masks = {k: an(ct) for k, an in made.items()}
            case: dict = {"shape": list(ct.shape), "is_hu": bool(ct.is_hu)}
            for ref in ("torch_fp32", "torch_bf16"):
                case[f"onnx_vs_{ref}"] = {
                    "lungs": dice_per_class(masks["onnx"].lungs, masks[ref].lungs, LUNG_NAMES),
                    "lesions": dice_per_class(masks["onnx"].lesions, masks[ref].lesions, LESION_NAMES)}
            case["torch_fp32_vs_torch_bf16"] = {
                "lungs": dice_per_class(masks["torch_fp32"].lungs, masks["torch_bf16"].lungs, LUNG_NAMES),
                "lesions": dice_per_class(masks["torch_fp32"].lesions, masks["torch_bf16"].lesions, LESION_NAMES)}
            case["voxels"] = {k: {"lungs": {n: int((m.lungs == c).sum()) for c, n in LUNG_NAMES.items()},
                                  "lesions": {n: int((m.lesions == c).sum()) for c, n in LESION_NAMES.items()}}
                              for k, m in masks.items()}
            case["identical_onnx_torch_fp32"] = bool(np.array_equal(masks["onnx"].lungs, masks["torch_fp32"].lungs)
                                                     and np.array_equal(masks["onnx"].lesions, masks["torch_fp32"].lesions))
            if not args.no_networks:
                case["networks"] = network_agreement(made, ct)
            res["cases"][name] = case
            print(name, json.dumps({k: v for k, v in case.items() if k.startswith(("onnx_vs", "identical"))}), flush=True)
    res["load_after"] = os.getloadavg()
    return emit_json(res, args.output)


if __name__ == "__main__":
    sys.exit(main())
