"""covidct's analysis time on P001 beside two reference networks run in the same process (random weights).

No weights can be downloaded here, so the references run with random weights (timing only):
- lungmask R231: its U-Net (lungmask.resunet.UNet as lungmask builds it) on every slice resized to
  256², batch 20 — lungmask's own inference set-up; its CPU pre/post-processing is not included,
  so this is a lower bound of lungmask's time;
- MONAI COVID-19-20 challenge baseline: 3-D BasicUNet, volume resampled to 1.25 × 1.25 × 5 mm,
  sliding window 192 × 192 × 16, Gaussian blending (overlap 0.5, sw_batch_size 4).
covidct: ``Analyzer()(ct)`` without writing outputs (lungs + lesions + severity + diagnosis).

Usage: python benchmarks/baselines_speed.py [--data DIR]   (needs `pip install --no-deps lungmask`
for the lungmask row; skips cleanly without ../shared/data)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _lungmask_unet():
    """lungmask's U-Net class, loaded from its file (the package's __init__ needs SimpleITK, which we skip)."""
    import importlib.util

    spec = importlib.util.find_spec("lungmask")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lungmask")
    path = Path(list(spec.submodule_search_locations)[0]) / "resunet.py"
    mod_spec = importlib.util.spec_from_file_location("lungmask_resunet", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.UNet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    folder = args.data / "covid-ct-md" / "P001"
    if not folder.is_dir():
        print(f"skip: {folder} not found")
        return 0
    from covidct.io import load_ct
    from covidct.pipeline import Analyzer

    ct = load_ct(folder)
    analyzer = Analyzer()
    analyzer(ct, None)  # warm-up
    t0 = time.perf_counter()
    analyzer(ct, None)
    t_covidct = time.perf_counter() - t0
    rows = [("covidct analyze (lungs + lesions + severity, no file outputs)", t_covidct)]

    torch.manual_seed(0)
    try:
        UNet = _lungmask_unet()
        net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False).eval()
        x = torch.nn.functional.interpolate(torch.from_numpy(np.clip(ct.array, -1024, 600))[:, None], size=(256, 256), mode="area")
        with torch.no_grad():
            net(x[:2])
            t0 = time.perf_counter()
            for i in range(0, len(x), 20):
                net(x[i : i + 20])
        rows.append(("lungmask R231 network only (random weights, 256², batch 20)", time.perf_counter() - t0))
    except ImportError:
        print("lungmask not installed: pip install --no-deps lungmask (benchmark only)")

    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNet

    from covidct.preprocess import resample_volume

    net3d = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2).eval()
    t0 = time.perf_counter()
    vol = resample_volume(ct.array, ct.spacing, (5.0, 1.25, 1.25))
    x = torch.from_numpy(np.clip((vol + 1000) / 500, -1, 1).astype(np.float32)).permute(2, 1, 0)[None, None]
    with torch.no_grad():
        sliding_window_inference(x, (192, 192, 16), 4, net3d, overlap=0.5, mode="gaussian")
    rows.append(("MONAI COVID-19-20 baseline BasicUNet 3-D, sliding window 192×192×16 (random weights, incl. resampling)", time.perf_counter() - t0))
    print(f"P001 {ct.shape}, torch threads {torch.get_num_threads()}")
    print("| method | seconds | covidct time as a ratio |")
    print("|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {t_covidct / s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
