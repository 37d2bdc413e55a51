"""The phantom's pulmonary vessel trees (bifurcating, tapering, partial-volume aware).

Owns :func:`vessel_tree`: a tree grown from a hilum that fills one lung by halving territories
(radii by Murray's law), returned as the blood fraction of each voxel so thin vessels stay
resolution independent.
"""

from __future__ import annotations

import numpy as np


def vessel_tree(
    rng: np.random.Generator, lung: np.ndarray, hilum_vox: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """A bifurcating vessel tree from the hilum that fills one lung.

    Returns the blood fraction of each voxel (0..1; below 1 for sub-voxel vessels).
    """
    idx = np.argwhere(lung)
    if idx.shape[0] < 50:
        return np.zeros(lung.shape, dtype=np.float32)
    # Territories are sets of lung points; each branch serves one and splits it in two at its end.
    n_pts = min(idx.shape[0], _TERRITORY_POINTS)
    pts = idx[rng.choice(idx.shape[0], size=n_pts, replace=False)].astype(np.float32) * spacing
    ml_per_pt = idx.shape[0] * float(np.prod(spacing)) / 1000.0 / n_pts
    branches = _branches(rng, pts, ml_per_pt, hilum_vox.astype(np.float32) * spacing)
    if branches is None:  # a lung too small for even its main branches to be drawn
        return np.zeros(lung.shape, dtype=np.float32)
    return _render(lung, spacing, *branches)


# Lung points that stand for the lung's volume when territories are split (enough for ~1 mL terminals).
_TERRITORY_POINTS = 30000
# Murray's law: a branch's radius follows the cube root of the volume it serves; one serving
# 1 L has a 4.5 mm radius (lobar arteries are 7-10 mm across, segmental 4-6 mm, ~0.2 L each).
_RADIUS_1L_MM = 4.5
_MIN_RADIUS_MM = 0.5  # narrower vessels are not drawn (far below a CT voxel)


def _branches(rng: np.random.Generator, pts: np.ndarray, ml_per_pt: float, hilum: np.ndarray):
    """Branches (start, end, Bezier control, radius at start and end; mm) grown by halving territories; None
    when no branch is wide enough to draw.

    Why bifurcations: real pulmonary arteries divide mostly in two, so three tubes meet at a branch
    point. Giving one parent ten or more children in the same place paints a dense blob no lung has,
    which reads as a nodule or consolidation on HU (docs/BENCHMARKS.md, "phantom vessel trees").
    """
    out: list[tuple] = []
    stack = [(hilum, np.arange(pts.shape[0]), True)]
    while stack:
        start, ter, root = stack.pop()
        p = pts[ter]
        radius = _RADIUS_1L_MM * (ter.size * ml_per_pt / 1000.0) ** (1.0 / 3.0)
        if radius < _MIN_RADIUS_MM:
            continue
        centre = p.mean(0)
        leaf = ter.size < 8
        # a branch runs part of the way toward its territory's centre (a leaf all the way), then divides;
        # the root (the main pulmonary artery of the side) divides at the hilum, outside the lung
        end = start if root else centre if leaf else start + 0.45 * (centre - start)
        if not root:
            bend = rng.normal(0.0, 0.08 * float(np.linalg.norm(end - start)) + 0.3, size=3).astype(np.float32)
            out.append((start, end, 0.5 * (start + end) + bend, radius, 0.85 * radius))
        if leaf:
            continue
        # split across the territory's longest axis (its first principal direction), through its centre
        q = p - centre
        axis = np.linalg.svd(q[:: max(1, q.shape[0] // 2000)], full_matrices=False)[2][0]
        side = q @ axis > 0
        for part in (ter[side], ter[~side]):
            if part.size:
                stack.append((end, part, False))
    return tuple(np.array(v, dtype=np.float32) for v in zip(*out, strict=True)) if out else None


def _render(lung: np.ndarray, spacing: np.ndarray, starts: np.ndarray, ends: np.ndarray, ctrl: np.ndarray,
            r0: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """The blood fraction of each voxel of ``lung``'s grid along the branches' Bezier paths (mm)."""
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
    for r in (0.8, 1.6, 2.4, 3.2, 4.0, 4.8):
        sel = ~thin & (rad >= r - 0.4) & ((rad < r + 0.4) | (r > 4.5))
        if not sel.any():
            continue
        centres = np.unique(vox[sel], axis=0)
        half = np.floor(r / spacing).astype(int)
        grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
        offs = grid[(((grid * spacing) / r) ** 2).sum(1) <= 1.0]
        pts = (centres[:, None, :] + offs[None, :, :]).reshape(-1, 3)
        out[tuple(pts[np.all((pts >= 0) & (pts < dims), axis=1)].T)] = 1.0
    return np.where(lung, out, 0.0).astype(np.float32)
