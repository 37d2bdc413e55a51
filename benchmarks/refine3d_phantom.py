"""3-D click-guided refinement on held-out phantom volumes: Dice after 0, 1, 3, 5 and 10 simulated clicks.

The 3-D refinement run (``covidct train configs/refine3d_phantom.yaml``) and the 3-D segmentation run
(``configs/unet3d_phantom_wide*.yaml``) use the same 18 phantom volumes and the same case split, so the test
volumes are unseen by both. Each click is simulated as in training (MONAI deepgrow: a point deep inside the
larger of the missed / false 3-D regions of the current mask) and goes through the public
``covidct.interactive.refine_volume`` with the whole click history, as a user's viewer would send it.

Starting masks: ``empty`` (no mask), ``auto`` (the segmentation run's infection class, plain sliding window)
and ``gross errors`` (the true mask corrupted as in training, :func:`covidct.train.clicks.corrupt_mask`:
whole lesions missed, a box cut out, false blobs, the rim grown or shrunk — what a weak automatic result
looks like). Prints a Markdown table and the seconds per click; exits 0 with a message when the run folders
are absent (runs/ is local).

    python benchmarks/refine3d_phantom.py [--refine runs/refine3d_phantom] [--seg runs/unet3d_phantom_wide_ft]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CLICKS = (0, 1, 3, 5, 10)


def dice(p: np.ndarray, g: np.ndarray) -> float:
    p, g = p > 0, g > 0
    den = int(p.sum() + g.sum())
    return 1.0 if den == 0 else 2.0 * int((p & g).sum()) / den


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refine", default="runs/refine3d_phantom")
    ap.add_argument("--seg", default="runs/unet3d_phantom_wide_ft")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if not (Path(a.refine) / "best.pt").is_file() or not (Path(a.seg) / "best.pt").is_file():
        print(f"refine3d_phantom: run folders {a.refine} / {a.seg} not found (train the configs first); skipping")
        return 0
    import torch

    from covidct.interactive import Click, refine_volume
    from covidct.models.checkpoint import load_model
    from covidct.models.volume_inference import predict_volume
    from covidct.train.clicks import corrupt_mask, next_click
    from covidct.train.config import DataConfig
    from covidct.train.schema import build
    from covidct.train.volumes import load_volume_records

    seg, seg_info = load_model(Path(a.seg) / "best.pt")
    seg.eval()
    _, ref_info = load_model(Path(a.refine) / "best.pt")
    data = build(DataConfig, (ref_info.get("config") or {}).get("data", {}), "data")
    test_ids = json.loads((Path(a.refine) / "split.json").read_text())["splits"]["test"]
    seg_test = json.loads((Path(a.seg) / "split.json").read_text())["splits"]["test"]
    if sorted(test_ids) != sorted(seg_test):
        print("refine3d_phantom: the two runs do not share their test volumes", file=sys.stderr)
        return 1
    recs = [r for r in load_volume_records(data.sources) if r["id"] in test_ids]
    classes = list(seg_info["classes"])
    rng = np.random.default_rng(0)
    starts_named = ("empty", "auto", "gross errors")
    scores: dict[str, dict[int, list[float]]] = {s: {k: [] for k in CLICKS} for s in starts_named}
    times: list[float] = []
    for r in recs:
        vol, lab = np.asarray(r["image"], np.float32), (np.asarray(r["lesions"]) > 0).astype(np.uint8)
        with torch.no_grad():
            prob = predict_volume(seg, seg_info, vol, r["spacing"])
        auto = (prob.argmax(0) == classes.index("infection")).astype(np.uint8)
        gross = corrupt_mask(lab, np.random.default_rng(len(times)))
        for start_name, start in zip(starts_named, (None, auto, gross), strict=True):
            cur = np.zeros_like(lab) if start is None else start.copy()
            clicks: list[Click] = []
            scores[start_name][0].append(dice(cur, lab))
            for k in range(1, max(CLICKS) + 1):
                c = next_click(lab, cur, rng)
                if c is not None:
                    pos, (z, y, x) = c
                    clicks.append(Click(int(x), int(y), bool(pos), z=int(z)))
                    t0 = time.perf_counter()
                    cur = refine_volume(vol, None if (start is None and len(clicks) == 1) else cur, clicks,
                                        is_hu=True, model=str(a.refine), spacing=r["spacing"])
                    times.append(time.perf_counter() - t0)
                if k in scores[start_name]:
                    scores[start_name][k].append(dice(cur, lab))
        print(f"{r['id']}: " + "; ".join(f"{s} {scores[s][0][-1]:.3f} -> 5 clicks {scores[s][5][-1]:.3f}, "
                                           f"10 clicks {scores[s][10][-1]:.3f}" for s in starts_named), flush=True)
    t = np.asarray(times)
    res = {"refine": a.refine, "seg": a.seg, "test_volumes": test_ids, "shape": list(recs[0]["image"].shape),
           "clicks": list(CLICKS),
           "dice": {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in scores.items()},
           "seconds_per_click": {"mean": float(t.mean()), "median": float(np.median(t)), "n": len(t)},
           "torch_threads": torch.get_num_threads()}
    print(f"\n{len(recs)} held-out phantom volumes {tuple(res['shape'])}; refine {a.refine}; automatic start {a.seg}\n")
    print("| start | " + " | ".join(f"{k} clicks" for k in CLICKS) + " |")
    print("|---|" + "---|" * len(CLICKS))
    for s, d in res["dice"].items():
        print(f"| {s} | " + " | ".join(f"{d[k]:.3f}" for k in CLICKS) + " |")
    s = res["seconds_per_click"]
    print(f"\nrefine_volume per click (warm process): mean {s['mean']:.3f} s, median {s['median']:.3f} s, n {s['n']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
