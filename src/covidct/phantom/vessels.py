"""The phantom's pulmonary vessel trees (branching, tapering, partial-volume aware).

Owns :func:`vessel_tree`: a three-level tree grown from a hilum into one lung, returned as
the blood fraction of each voxel so thin vessels stay resolution independent.
"""

from __future__ import annotations

import numpy as np


def vessel_tree(
    rng: np.random.Generator, lung: np.ndarray, hilum_vox: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """A three-level branching vessel tree from the hilum into one lung.

    Returns the blood fraction of each voxel (0..1; below 1 for sub-voxel vessels).
    """
    idx = np.argwhere(lung)
    if idx.shape[0] < 50:
        return np.zeros(lung.shape, dtype=np.float32)
    pts_mm = idx.astype(np.float32) * spacing
    hil = hilum_vox.astype(np.float32) * spacing
    # Branch counts follow the lung's physical volume (an adult lung is ~1.8 L here).
    vol_ml = idx.shape[0] * float(np.prod(spacing)) / 1000.0
    n_term = int(np.clip(900.0 * vol_ml / 1800.0, 30, 1200))
    n_lobar, n_seg = 6, max(8, n_term // 15)
    total = n_lobar + n_seg + n_term
    pick = rng.choice(idx.shape[0], size=total, replace=idx.shape[0] < total)
    cand = pts_mm[pick]
    # Lobar branch points: pulled halfway toward the hilum (they are central).
    lobar = hil + 0.5 * (cand[:n_lobar] - hil)
    seg_t = cand[n_lobar : n_lobar + n_seg]
    seg = hil + 0.8 * (seg_t - hil)
    term = cand[n_lobar + n_seg :]

    def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.argmin(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), axis=1)

    def bezier(s: np.ndarray, c: np.ndarray, e: np.ndarray, u: np.ndarray) -> np.ndarray:
        u = u[:, None]
        return (1 - u) ** 2 * s + 2 * (1 - u) * u * c + u**2 * e

    # Children branch off along the outer part of their parent, thinner than it: all children leaving from
    # the parent's end would meet there in a star of ~15 overlapping tubes, a dense blob no lung has (it
    # reads as a nodule or consolidation on HU; docs/BENCHMARKS.md, "HU volumes, second candidate").
    lobar_ctrl = 0.5 * (hil + lobar) + rng.normal(0.0, 6.0, size=lobar.shape).astype(np.float32)
    sp_par = nearest(seg, lobar)
    sp_u = rng.uniform(0.5, 1.0, n_seg).astype(np.float32)
    seg_start = bezier(np.repeat(hil[None], n_seg, 0), lobar_ctrl[sp_par], lobar[sp_par], sp_u)
    seg_ctrl = 0.5 * (seg_start + seg) + rng.normal(0.0, 6.0, size=seg.shape).astype(np.float32)
    tp_par = nearest(term, seg)
    tp_u = rng.uniform(0.6, 1.0, n_term).astype(np.float32)
    term_start = bezier(seg_start[tp_par], seg_ctrl[tp_par], seg[tp_par], tp_u)
    term_ctrl = 0.5 * (term_start + term) + rng.normal(0.0, 6.0, size=term.shape).astype(np.float32)
    starts = np.concatenate([np.repeat(hil[None], n_lobar, 0), seg_start, term_start])
    ends = np.concatenate([lobar, seg, term])
    ctrl = np.concatenate([lobar_ctrl, seg_ctrl, term_ctrl])
    r0 = np.concatenate([np.full(n_lobar, 5.0), np.full(n_seg, 2.6), np.full(n_term, 1.2)])
    r1 = np.concatenate([np.full(n_lobar, 3.5), np.full(n_seg, 1.6), np.full(n_term, 0.6)])
    step = 0.4 * float(spacing.min())
    length = np.linalg.norm(ends - starts, axis=1)
    n = int(np.clip(length.max() / step, 8, 600))
    u = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :, None]
    path = (1 - u) ** 2 * starts[:, None] + 2 * (1 - u) * u * ctrl[:, None] + u**2 * ends[:, None]
    rad = (r0[:, None] * (1 - u[..., 0]) + r1[:, None] * u[..., 0]).ravel()
    vox = np.rint(path.reshape(-1, 3) / spacing).astype(np.int64)
    ds = np.repeat(length / (n - 1), n)  # path length each sample stands for (mm)
    ok = np.all((vox >= 0) & (vox < np.array(lung.shape)), axis=1)
    vox, rad, ds = vox[ok], rad[ok], ds[ok]
    dims = np.array(lung.shape)
    # Vessels thinner than a voxel: deposit each sample's blood volume into its voxel
    # (partial volume, resolution independent).
    thin = rad < float(spacing.min())
    flat = np.ravel_multi_index(tuple(vox[thin].T), lung.shape)
    dep = np.bincount(flat, weights=np.pi * rad[thin] ** 2 * ds[thin], minlength=lung.size)
    out = np.minimum(dep / float(np.prod(spacing)), 1.0).astype(np.float32).reshape(lung.shape)
    # Thicker vessels: paint a voxelised ball around each sample by scattering its offsets.
    for r in (1.6, 2.4, 3.2, 4.2):
        sel = ~thin & (rad >= r - 0.4) & ((rad < r + 0.4) | (r > 4.0))
        if not sel.any():
            continue
        centres = np.unique(vox[sel], axis=0)
        half = np.floor(r / spacing).astype(int)
        grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
        offs = grid[(((grid * spacing) / r) ** 2).sum(1) <= 1.0]
        pts = (centres[:, None, :] + offs[None, :, :]).reshape(-1, 3)
        out[tuple(pts[np.all((pts >= 0) & (pts < dims), axis=1)].T)] = 1.0
    return np.where(lung, out, 0.0).astype(np.float32)
