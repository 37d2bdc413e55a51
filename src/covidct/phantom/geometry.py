"""The phantom's coordinate grid, shape primitives and smooth random fields.

Owns :class:`Grid` (anatomy millimetres broadcastable to the (z, y, x) volume, slabs,
discs, cylinders, bars and tubes), the superellipse used for body outlines and the
smooth random fields that give tissues, bowel loops and lesions their texture. Pure
geometry: no tissue densities and no labels live here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def smoothstep(a: float, b: float, t: np.ndarray) -> np.ndarray:
    """0 below ``a``, 1 above ``b``, a smooth cubic in between."""
    u = np.clip((t - a) / (b - a), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]) -> np.ndarray:
    """Unit-variance smooth random field (Gaussian-filtered white noise).

    Wide kernels are applied on a coarser grid and linearly upsampled (same look, much
    faster than filtering the full grid).
    """
    f = np.array([max(1, int(sg // 2.5)) for sg in sigma_vox])
    small = tuple(int(np.ceil(n / k)) + 1 if k > 1 else n for n, k in zip(shape, f, strict=True))
    sig = tuple(float(sg / k) for sg, k in zip(sigma_vox, f, strict=True))
    out = ndi.gaussian_filter(rng.standard_normal(small, dtype=np.float32), sig, mode="reflect")
    for ax, (n, k) in enumerate(zip(shape, f, strict=True)):
        if k == 1:
            continue
        # Separable linear upsampling along this axis.
        pos = np.arange(n, dtype=np.float32) / k
        lo = np.minimum(pos.astype(np.int64), out.shape[ax] - 2)
        w = (pos - lo).astype(np.float32).reshape([-1 if i == ax else 1 for i in range(out.ndim)])
        out = np.take(out, lo, axis=ax) * (1 - w) + np.take(out, lo + 1, axis=ax) * w
    s = float(out.std())
    return out / s if s > 0 else out


class Grid:
    """Anatomy coordinates (mm before scaling) broadcastable to the (z, y, x) volume."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], margin: int, n_lung: int):
        nz, ny, nx = shape
        dz, dy, dx = spacing
        self.shape = shape
        self.spacing = spacing
        self.margin = margin  # lung-free slices below (and above) the lungs
        self.n_lung = n_lung  # slices the lungs span
        fov_x, fov_y = nx * dx, ny * dy
        # Scale the reference anatomy to the field of view (never much larger than an adult).
        self.s = float(min(fov_x / 390.0, fov_y / 300.0, 1.1))
        y_centre_mm = -0.03 * fov_y  # body a little anterior so the table fits below it
        x_mm = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0) * dx
        y_mm = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0) * dy - y_centre_mm
        self.X = (x_mm / self.s)[None, None, :]
        self.Y = (y_mm / self.s)[None, :, None]
        # t: 0 at the bottom of the lung region, 1 at its top (lung apex).
        k = np.arange(nz, dtype=np.float32)
        self.t1 = (k - margin + 0.5) / float(n_lung)
        self.T = self.t1[:, None, None]
        self.lung_height = n_lung * dz / self.s  # anatomy mm spanned by t in [0, 1]
        self.Zmm = (k * dz)[:, None, None]  # physical z for periodic structures (discs, ribs)

    def zslab(self, t0: float, t1: float) -> slice:
        """The slice range whose t lies within [t0, t1]."""
        idx = np.nonzero((self.t1 >= t0) & (self.t1 <= t1))[0]
        if idx.size == 0:
            return slice(0, 0)
        return slice(int(idx[0]), int(idx[-1]) + 1)

    def disc2d(self, cx: float, cy: float, rx: float, ry: float | None = None) -> np.ndarray:
        """An in-plane (y, x) ellipse mask centred on (cx, cy)."""
        ry = rx if ry is None else ry
        return ((self.X[0] - cx) / rx) ** 2 + ((self.Y[0] - cy) / ry) ** 2 <= 1.0

    def cylinder(self, cx: float, cy: float, r: float, t0: float, t1: float, ry: float | None = None) -> np.ndarray:
        """An ellipse extruded over the slices with t in [t0, t1]."""
        m = np.zeros(self.shape, dtype=bool)
        m[self.zslab(t0, t1)] = self.disc2d(cx, cy, r, ry)
        return m

    def bar(self, p0: tuple[float, float], p1: tuple[float, float], r: float, t0: float, t1: float) -> np.ndarray:
        """A 2-D thick segment p0-p1 (x, y) extruded over the slices with t in [t0, t1]."""
        m = np.zeros(self.shape, dtype=bool)
        ax, ay = p0
        bx_, by_ = p1[0] - ax, p1[1] - ay
        u = np.clip(((self.X[0] - ax) * bx_ + (self.Y[0] - ay) * by_) / (bx_ * bx_ + by_ * by_), 0.0, 1.0)
        m[self.zslab(t0, t1)] = (self.X[0] - ax - u * bx_) ** 2 + (self.Y[0] - ay - u * by_) ** 2 <= r * r
        return m

    def tube(self, p0: tuple[float, float, float], p1: tuple[float, float, float], r: float) -> np.ndarray:
        """Voxels within r of the segment p0-p1; points are (x, y, t) in anatomy units."""
        m = np.zeros(self.shape, dtype=bool)
        h = self.lung_height
        a = np.array([p0[0], p0[1], p0[2] * h], dtype=np.float32)
        b = np.array([p1[0], p1[1], p1[2] * h], dtype=np.float32)
        pad = r / h
        sl = self.zslab(min(p0[2], p1[2]) - pad, max(p0[2], p1[2]) + pad)
        if sl.stop <= sl.start:
            return m
        Z = self.T[sl] * h
        ab = b - a
        denom = float(ab @ ab) or 1.0
        u = ((self.X - a[0]) * ab[0] + (self.Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / denom
        u = np.clip(u, 0.0, 1.0)
        d2 = (self.X - a[0] - u * ab[0]) ** 2 + (self.Y - a[1] - u * ab[1]) ** 2 + (Z - a[2] - u * ab[2]) ** 2
        m[sl] = d2 <= r * r
        return m


def superellipse_r(X: np.ndarray, Y: np.ndarray, a: np.ndarray, b: np.ndarray, p: float = 2.4) -> np.ndarray:
    """Superellipse 'radius' (<= 1 inside) for per-slice half axes a, b of shape (z, 1, 1).

    Computed once per distinct (a, b) pair: most slices of the chest share their axes.
    """
    ab = np.stack([a.ravel(), b.ravel()], axis=1)
    uniq, inv = np.unique(ab, axis=0, return_inverse=True)
    planes = np.stack([(np.abs(X[0] / ua) ** p + np.abs(Y[0] / ub) ** p) ** (1.0 / p) for ua, ub in uniq])
    return planes.astype(np.float32)[inv.ravel()]
