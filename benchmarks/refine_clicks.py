"""Click-guided refinement: Dice after 0, 1, 3, 5 and 10 simulated clicks, and the time per click.

Data: the refine model's own validation split (reproduced from the config stored in its checkpoint) and the
48 Inf-Net test slices (MedSeg CT100 slices with ``infnet_split == "test"``, 512², never used in training).
Clicks are simulated as in training (MONAI deepgrow: a point deep inside the larger of the missed / false
regions of the current mask), at the image's own resolution, each through the public
``covidct.interactive.refine`` with the whole click history - exactly what a user of the viewer does.

Starting masks (0 clicks): ``empty`` (no mask, first click only) and ``auto`` (the automatic result of an
infection / lesion model given with ``--auto``, default the shipped ``infection`` or ``lesions`` model when
present). Prints Markdown tables; saves docs/figures/refine_clicks.png. Exits 0 with a message when the
data folder is absent.

    python benchmarks/refine_clicks.py [--model refine] [--auto runs/infection] [--n-val 48]
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


def auto_masks(name: str, images: list[np.ndarray]) -> list[np.ndarray]:
    from covidct.models import zoo
    from covidct.models.inference import predict_slices, probabilities_to_labels

    model, info = zoo.load(name)
    probs = predict_slices(model, info, images, False, batch_size=8)
    thr = (info.get("thresholds") or {}).get("foreground")
    out = []
    for p in probs:
        lab = probabilities_to_labels(p, thr)
        if "ggo" in info.get("classes", []):
            lab = np.isin(lab, (1, 2))  # infection = GGO + consolidation (not effusion)
        out.append((lab > 0).astype(np.uint8))
    return out


def curve(images, labels, starts, model: str, seed: int = 0) -> tuple[dict[int, float], list[float]]:
    from covidct.interactive import Click, refine
    from covidct.train.clicks import next_click

    rng = np.random.default_rng(seed)
    scores: dict[int, list[float]] = {k: [] for k in CLICKS}
    times: list[float] = []
    for img, lab, start in zip(images, labels, starts, strict=True):
        cur = np.zeros_like(lab) if start is None else start.copy()
        clicks: list[Click] = []
        scores[0].append(dice(cur, lab))
        for k in range(1, max(CLICKS) + 1):
            c = next_click(lab, cur, rng)
            if c is not None:
                (pos, (r, col)) = c
                clicks.append(Click(int(col), int(r), bool(pos)))
                t0 = time.perf_counter()
                cur = refine(img, None if (start is None and len(clicks) == 1) else cur, clicks, is_hu=False,
                             model=model)
                times.append(time.perf_counter() - t0)
            if k in scores:
                scores[k].append(dice(cur, lab))
    return {k: float(np.mean(v)) for k, v in scores.items()}, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="refine")
    ap.add_argument("--auto", default=None, help="infection/lesion model for the automatic starting mask")
    ap.add_argument("--n-val", type=int, default=48, help="validation slices (first of a fixed shuffle)")
    ap.add_argument("--figure", default="docs/figures/refine_clicks.png")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()

    from covidct.data import data_root

    if data_root() is None or not (data_root() / "medseg-ct100").is_dir():
        print("refine_clicks: data folder not found (set COVIDCT_DATA or use /work/shared/data); skipping")
        return 0
    import torch

    from covidct.data import load_source
    from covidct.models import zoo
    from covidct.train import datasets as ds
    from covidct.train.config import DataConfig
    from covidct.train.schema import build

    torch.set_num_threads(max(1, torch.get_num_threads()))
    _, info = zoo.load(a.model)
    cfg = info.get("config") or {}
    data = build(DataConfig, cfg.get("data", {}), "data")
    recs = ds.load_records(data.sources)
    split = ds.split_records(recs, data.split.fractions, data.split.seed)
    by_id = {r["id"]: r for r in recs}
    val = [by_id[i] for i in split["val"] if ds.task_label(by_id[i], "infection") is not None]
    val = [val[i] for i in np.random.default_rng(0).permutation(len(val))[: a.n_val]]
    test = [r for r in load_source("medseg-ct100") if r["meta"]["infnet_split"] == "test"]
    auto = a.auto or next((n for n in ("infection", "lesions") if zoo.has_model(n)), None)

    sets = {"validation": val, "Inf-Net test (48)": test}
    results: dict = {"model": str(info.get("path")), "auto_model": auto, "clicks": list(CLICKS), "sets": {}}
    all_times: list[float] = []
    for name, rs in sets.items():
        imgs = [np.asarray(r["image"], np.float32) for r in rs]
        labs = [ds.task_label(r, "infection") for r in rs]
        starts = {"empty": [None] * len(rs)}
        if auto:
            starts["auto"] = auto_masks(auto, imgs)
        results["sets"][name] = {"n": len(rs), "size": f"{imgs[0].shape[1]}x{imgs[0].shape[0]}"}
        for sname, st in starts.items():
            sc, times = curve(imgs, labs, st, a.model)
            results["sets"][name][sname] = sc
            all_times += times if imgs[0].shape == (512, 512) else []
            print(f"{name} / {sname}: " + ", ".join(f"{k}: {v:.3f}" for k, v in sc.items()), flush=True)
    if all_times:
        t = np.asarray(all_times)
        results["seconds_per_click_512"] = {"mean": float(t.mean()), "median": float(np.median(t)),
                                            "p95": float(np.percentile(t, 95)), "n": len(t)}

    print(f"\nmodel: {results['model']}; automatic start: {auto or 'none available'}\n")
    print("| data | start | n | " + " | ".join(f"{k} clicks" for k in CLICKS) + " |")
    print("|---|---|---|" + "---|" * len(CLICKS))
    for name, r in results["sets"].items():
        for sname in ("empty", "auto"):
            if sname in r:
                print(f"| {name} ({r['size']}) | {sname} | {r['n']} | "
                      + " | ".join(f"{r[sname][k]:.3f}" for k in CLICKS) + " |")
    if "seconds_per_click_512" in results:
        s = results["seconds_per_click_512"]
        print(f"\nrefine() per click on 512² slices (warm process): mean {s['mean']:.3f} s, median {s['median']:.3f} s, "
              f"p95 {s['p95']:.3f} s over {s['n']} calls")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for name, r in results["sets"].items():
        for sname, style in (("empty", "--"), ("auto", "-")):
            if sname in r:
                ax.plot(CLICKS, [r[sname][k] for k in CLICKS], style, marker="o", label=f"{name}, start {sname}")
    ax.set_xlabel("simulated clicks")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Click-guided refinement")
    fig.tight_layout()
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure)
    print(f"\nfigure: {a.figure}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
