"""Seconds per 3-D training step (4 patches, forward + backward + Adam) for the 3-D configs' models and patches.

    python benchmarks/seg3d_step_time.py [--steps 3] [configs/unet3d_covid19_20.yaml ...]

Synthetic inputs (no data needed); the first step (allocation warm-up) is not counted. Prints a Markdown
table with the time per epoch implied by each config's steps per epoch (``steps_per_epoch``, or one pass
over ``--n-volumes`` training volumes).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import yaml


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="*", default=["configs/unet3d_covid19_20.yaml", "configs/unet3d_ma2020.yaml"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--n-volumes", type=int, default=160, help="training volumes when steps_per_epoch is null")
    a = ap.parse_args()
    from covidct.models.registry import build_model
    from covidct.train.volumes import TASKS3D, load_seg3d_config

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| config | model | patch (z, y, x) | s / step | steps / epoch | time / epoch |")
    print("|---|---|---|---|---|---|")
    for path in a.configs:
        cfg, _ = load_seg3d_config(yaml.safe_load(open(path)))
        n_cls = len(TASKS3D[cfg.task])
        model = build_model(cfg.model["name"], 1, n_cls, **(cfg.model.get("kwargs") or {}))
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.rand(cfg.train.batch_size, 1, *cfg.volume.patch)
        y = torch.randint(0, n_cls, (cfg.train.batch_size, *cfg.volume.patch))
        times = []
        for i in range(a.steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        s = sum(times) / len(times)
        vols = max(1, cfg.train.batch_size // cfg.volume.num_samples)
        steps = cfg.train.steps_per_epoch or math.ceil(a.n_volumes / vols)
        print(f"| {path} | {cfg.model['name']} | {cfg.volume.patch} | {s:.1f} | {steps} | {s * steps / 60:.0f} min |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
