"""Simulated user clicks for click-guided refinement: where a user would click, starting masks that look
like automatic results, a simulated interaction, and the Dice-after-k-clicks curve.

Used by the refinement training (:mod:`covidct.train.interactive`) and its benchmarks. Slices (H, W)
and volumes (z, H, W) alike; the clicks are encoded as :func:`covidct.interactive.model_input` does at
inference time (MONAI deepgrow's guidance maps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from covidct.interactive import model_input

if TYPE_CHECKING:
    from covidct.train.interactive import ClickConfig



def next_click(label: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> tuple[bool, tuple[int, ...]] | None:
    """(positive?, (row, col)) — (z, row, col) for a volume — of a simulated click on the larger error region,
    or None when no error.

    MONAI deepgrow's ``FindDiscrepancyRegionsd`` gives the missed / false regions; ``AddRandomGuidanced``
    draws a point with probability rising with its distance to the region border (a user clicks inside).
    """
    from monai.apps.deepgrow.transforms import AddRandomGuidanced, FindDiscrepancyRegionsd

    disc = FindDiscrepancyRegionsd.disparity(np.asarray(label)[None], np.asarray(pred)[None])
    arg = AddRandomGuidanced()
    arg.set_random_state(int(rng.integers(2**31)))
    pos, neg = arg.add_guidance(disc, True)
    nd = np.asarray(label).ndim
    if pos is not None:
        return True, tuple(int(v) for v in pos[-nd:])
    if neg is not None:
        return False, tuple(int(v) for v in neg[-nd:])
    return None


def corrupt_mask(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible automatic result: the label grown or shrunk, a piece missed, a false blob added.

    Works on a slice (H, W) or a volume (z, H, W); in a volume the boxes and blobs keep the in-plane sizes
    of a slice and scale along z with the number of slices.
    """
    from scipy import ndimage

    m = np.asarray(label) > 0
    h, w = m.shape[-2:]
    zscale = [m.shape[0] / h] if m.ndim == 3 else []
    k = int(rng.integers(0, 4))
    if k and rng.random() < 0.5:
        m = ndimage.binary_dilation(m, iterations=k)
    elif k:
        m = ndimage.binary_erosion(m, iterations=k)
    lbl, n = ndimage.label(m)
    if n and rng.random() < 0.6:  # miss whole lesions
        drop = rng.choice(np.arange(1, n + 1), size=max(1, int(rng.integers(1, n + 1)) // 2), replace=False)
        m &= ~np.isin(lbl, drop)
    if rng.random() < 0.5:  # miss a part of one
        centre = [int(rng.integers(0, s)) for s in m.shape]
        r = int(rng.integers(h // 16, h // 5))
        radii = [max(1, round(r * z)) for z in zscale] + [r, r]
        m[tuple(slice(max(c - q, 0), c + q) for c, q in zip(centre, radii, strict=True))] = False
    for _ in range(int(rng.integers(0, 3))):  # false blobs
        centre = [int(rng.integers(s // 8, 7 * s // 8)) for s in m.shape]
        ryx = rng.integers(h // 40 + 1, h // 10 + 2, 2)
        radii = [max(1.0, float(ryx[0]) * z) for z in zscale] + [float(r) for r in ryx]
        grids = np.ogrid[tuple(slice(0, s) for s in m.shape)]
        m |= sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
    return m.astype(np.uint8)




@torch.no_grad()
def _predict(model, x: np.ndarray, device) -> np.ndarray:
    model.eval()
    out = model(torch.from_numpy(x).to(device))
    return torch.softmax(out.float(), 1)[:, 1].cpu().numpy()


def simulate_batch(model, imgs: np.ndarray, labs: np.ndarray, ccfg: ClickConfig, rng: np.random.Generator,
                   device, rounds: int | None = None) -> np.ndarray:
    """(B, 4, H, W) inputs after a simulated interaction (first click on the start mask, then model rounds)."""
    b = len(imgs)
    n_rounds = rounds if rounds is not None else int(rng.integers(1, ccfg.max_rounds + 1))
    priors = [np.zeros_like(lab) if rng.random() < ccfg.prior_empty_prob else corrupt_mask(lab, rng) for lab in labs]
    clicks: list[tuple[list, list]] = [([], []) for _ in range(b)]
    x = None
    for rnd in range(n_rounds):
        for i in range(b):
            c = next_click(labs[i], priors[i], rng)
            if c is not None:
                clicks[i][0 if c[0] else 1].append(c[1])
        x = np.stack([model_input(imgs[i], priors[i], *clicks[i], ccfg.sigma) for i in range(b)])
        if rnd < n_rounds - 1:
            priors = list((_predict(model, x, device) >= 0.5).astype(np.uint8))
    return x


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    den = int(p.sum() + g.sum())
    return 1.0 if den == 0 else 2.0 * int((p & g).sum()) / den


@torch.no_grad()
def click_dice_curve(model, imgs: np.ndarray, labs: np.ndarray, n_clicks: list[int], sigma: float, device,
                     priors: np.ndarray | None = None, seed: int = 0) -> dict[int, float]:
    """Mean Dice after each number of simulated clicks (0 = the starting mask), one click per model run."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[float]] = {k: [] for k in n_clicks}
    for i in range(len(imgs)):
        g = labs[i] > 0
        cur = np.zeros_like(labs[i]) if priors is None else (priors[i] > 0).astype(np.uint8)
        pos, neg = [], []
        if 0 in out:
            out[0].append(_dice(cur > 0, g))
        for k in range(1, max(n_clicks) + 1):
            c = next_click(labs[i], cur, rng)
            if c is not None:
                (pos if c[0] else neg).append(c[1])
                x = model_input(imgs[i], cur, pos, neg, sigma)[None]
                cur = (_predict(model, x, device)[0] >= 0.5).astype(np.uint8)
            if k in out:
                out[k].append(_dice(cur > 0, g))
    return {k: float(np.mean(v)) for k, v in out.items()}
