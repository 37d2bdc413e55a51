"""Inference speed of the shipped 2-D models per 512² slice, fp32 vs bf16, batch sizes; bf16 agreement.

Times ``covidct.models.inference.predict_slices`` (normalisation + resize + forward + resize back,
i.e. everything a 512² slice goes through) inside one process after a warm-up, on real MedSeg
CT100 slices when ../shared/data is there, else on phantom slices. Agreement: the fraction of pixels
whose label is the same with bf16 as with fp32.

Usage: python benchmarks/segment_speed.py [--models lungs infection lesions] [--n 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def slices(n: int) -> tuple[np.ndarray, bool, str]:
    data = REPO.parent / "shared" / "data" / "medseg-ct100" / "images"
    if data.is_dir():
        from PIL import Image

        files = sorted(data.glob("*.png"))[:n]
        return np.stack([np.asarray(Image.open(f).convert("L"), np.float32) for f in files]), False, "MedSeg CT100 512² (8-bit)"
    from covidct.phantom import make_phantom

    ph = make_phantom(shape=(n, 512, 512), spacing=(5.0, 0.7, 0.7), seed=0)
    return ph.ct.array, True, "phantom 512² (HU)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lungs", "infection", "lesions"])
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    from covidct.models import zoo
    from covidct.models.inference import optimise_for_cpu, predict_slices

    imgs, is_hu, what = slices(args.n)
    print(f"{len(imgs)} slices: {what}; torch threads {torch.get_num_threads()}")
    print("| model | form | batch | fp32 ms/slice | bf16 ms/slice | bf16 label agreement with fp32 as loaded |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        if not zoo.has_model(name):
            print(f"| {name} | – | not shipped | | |")
            continue
        model, info = zoo.load(name)
        # "as loaded": the network as trained; "optimised": what analyze runs (batch norm folded, channels-last)
        reference = None
        for form, net in (("as loaded", model), ("optimised", optimise_for_cpu(model))):
            for bs in (1, 8, 16):
                row = {}
                labels = {}
                for bf16 in (False, True):
                    predict_slices(net, info, imgs[:2], is_hu, batch_size=bs, bf16=bf16)  # warm-up
                    t0 = time.perf_counter()
                    p = predict_slices(net, info, imgs, is_hu, batch_size=bs, bf16=bf16)
                    row[bf16] = (time.perf_counter() - t0) / len(imgs) * 1000
                    labels[bf16] = p.argmax(1)
                if reference is None:
                    reference = labels[False]
                agree = float((labels[True] == reference).mean())
                print(f"| {name} | {form} | {bs} | {row[False]:.1f} | {row[True]:.1f} | {agree:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
