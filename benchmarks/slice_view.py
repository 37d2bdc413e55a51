"""How often ``covidct.slice_view`` calls a slice transposed: real slices in the radiological view and transposed.

    python benchmarks/slice_view.py [--json OUT]

For every 8-bit slice of Ma et al. (all cases), MedSeg CT100 and Inf-Net's MedSeg crops (train and test), as the
data adapters give them (the radiological view) and transposed, the decision of ``looks_transposed`` with the
shipped lungs model: transposed / side by side / undecided. A slice in the radiological view called transposed is
a wrong turn (it would be analysed in the wrong layout); a transposed slice not called so is analysed as before.
Skips (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

SOURCES = (("ma2020", {}), ("medseg-ct100", {}), ("medseg-infnet", {"split": "train"}),
           ("medseg-infnet", {"split": "test"}))


def _slices(name: str, kw: dict) -> list[np.ndarray]:
    from covidct.data import load_source
    from covidct.data.sources import read_grey

    out = []
    for rec in load_source(name, **kw):
        img = rec["image"]
        img = np.asarray(img if isinstance(img, np.ndarray) else read_grey(img))
        out.append(img[0] if img.ndim == 3 else img)
    return out


def _decision(mask: np.ndarray) -> str:
    from covidct.slice_view import lungs_one_above_the_other

    turned = lungs_one_above_the_other(mask)
    return "undecided" if turned is None else "transposed" if turned else "side by side"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from covidct.data import data_root
    from covidct.models import runtime

    if data_root() is None:
        print("skip: ../shared/data not found")
        return 0
    net, info = runtime.load("lungs")
    rows = []
    print("| slices | n | radiological view: transposed (wrong) / side by side / undecided | transposed: transposed / "
          "side by side (missed) / undecided |")
    print("|---|---|---|---|")
    for name, kw in SOURCES:
        t0 = time.perf_counter()
        images = _slices(name, kw)
        counts = {}
        for layout, imgs in (("as given", images), ("transposed", [np.ascontiguousarray(i.T) for i in images])):
            # looks_transposed's own path (one slice at a time), batched here for speed: the same masks
            probs = runtime.predict_slices(net, info, [i.astype(np.float32) for i in imgs], False, batch_size=8,
                                           bf16=False)
            masks = runtime.labels_for_task(probs, info, "lungs")
            counts[layout] = Counter(_decision(m > 0) for m in masks)
        label = name + (f" ({kw['split']})" if kw else "")
        a, t = counts["as given"], counts["transposed"]
        print(f"| {label} | {len(images)} | {a['transposed']} / {a['side by side']} / {a['undecided']} | "
              f"{t['transposed']} / {t['side by side']} / {t['undecided']} |  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        rows.append({"source": label, "n": len(images), "as_given": dict(a), "transposed": dict(t)})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
