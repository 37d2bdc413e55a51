"""A synthetic chest CT in Hounsfield units with exact lung and lesion labels.

The phantom is the unit tests' main fixture, the demo's default input and a source of
labelled training slices, so it tries to look like a real chest CT: body with fat and
muscle, ribs, spine, scapulae, sternum, mediastinum (heart, aorta, pulmonary artery, SVC,
oesophagus), trachea and main bronchi, two lungs shaped by the apex and the diaphragm domes
with a branching vessel tree, organs under the domes (liver, stomach with gas, spleen) and,
on request, COVID-like lesions (peripheral ground-glass opacities with consolidated cores)
and a dependent pleural effusion. Everything is vectorised numpy/scipy.

Geometry: the volume is in covidct's canonical orientation (array (z, y, x); x = patient
right -> left, y = anterior -> posterior, z = inferior -> superior), centred on the origin in
x and y. Anatomy is laid out in millimetres and scaled to fit the field of view; the lungs
span the ``shape[0]`` central slices (apex at the top, diaphragm domes at the bottom) and
``margin_slices`` extra slices are added below (upper abdomen) and above (shoulders/neck).

Label conventions (covidct.labels): lungs 1 = LEFT, 2 = RIGHT; lesions 1 = GGO,
2 = consolidation, 3 = pleural effusion. GGO/consolidation voxels are part of the lung
label; effusion voxels are not (the fluid takes pleural space, the lung is compressed).
Vessels crossing a GGO patch keep their blood density and are left out of the GGO label
(consolidation hides vessels, so its label has no such holes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.volume import CT, SliceRef, affine_from_spacing

__all__ = ["Phantom", "make_phantom", "write_phantom"]

# Tissue densities (HU) of the noiseless volume.
AIR = -1000.0
FAT = -100.0
MED_FAT = -85.0
MUSCLE = 45.0
BLOOD = 40.0
LIVER = 60.0
SPLEEN = 50.0
BOWEL_WALL = 30.0
STOMACH = 25.0
LUNG = -860.0
EFFUSION_HU = 15.0
CORTICAL = 700.0
CANCELLOUS = 250.0
DISC = 90.0
CSF = 15.0
TABLE = 80.0
GAS = -950.0

# Reference body size (mm, before scaling to the field of view).
_CHEST_HALF = (165.0, 115.0)  # half width, half AP depth of the chest
_ABDOMEN_HALF = (158.0, 118.0)
_SHOULDER_HALF = (188.0, 100.0)
_FAT_MM = 12.0  # subcutaneous fat thickness
_WALL_MM = 32.0  # skin to pleura (fat + muscle + ribs)


@dataclass
class Phantom:
    """A synthetic chest CT with its exact labels.

    ``ct.array`` is the noisy, slightly blurred HU volume; ``clean`` is the same volume
    before blur and noise (what the tissue classes were painted with). ``truth`` holds the
    exact figures derived from the labels (see :func:`make_phantom`).
    """

    ct: CT
    lungs: np.ndarray
    lesions: np.ndarray
    body: np.ndarray
    truth: dict
    clean: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- helpers


def _smoothstep(a: float, b: float, t: np.ndarray) -> np.ndarray:
    u = np.clip((t - a) / (b - a), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]) -> np.ndarray:
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


class _Grid:
    """Anatomy coordinates (mm before scaling) broadcastable to the (z, y, x) volume."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], margin: int, n_lung: int):
        nz, ny, nx = shape
        dz, dy, dx = spacing
        self.shape = shape
        self.spacing = spacing
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
        ry = rx if ry is None else ry
        return ((self.X[0] - cx) / rx) ** 2 + ((self.Y[0] - cy) / ry) ** 2 <= 1.0

    def cylinder(self, cx: float, cy: float, r: float, t0: float, t1: float, ry: float | None = None) -> np.ndarray:
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


def _superellipse_r(X: np.ndarray, Y: np.ndarray, a: np.ndarray, b: np.ndarray, p: float = 2.4) -> np.ndarray:
    """Superellipse 'radius' (<= 1 inside) for per-slice half axes a, b of shape (z, 1, 1).

    Computed once per distinct (a, b) pair: most slices of the chest share their axes.
    """
    ab = np.stack([a.ravel(), b.ravel()], axis=1)
    uniq, inv = np.unique(ab, axis=0, return_inverse=True)
    planes = np.stack([(np.abs(X[0] / ua) ** p + np.abs(Y[0] / ub) ** p) ** (1.0 / p) for ua, ub in uniq])
    return planes.astype(np.float32)[inv.ravel()]


def _body_axes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half width and half depth of the body at height t (abdomen < 0 < chest < 1 < shoulders)."""
    w_abd = 1.0 - _smoothstep(-0.15, 0.05, t)
    w_sh = _smoothstep(0.95, 1.08, t)
    w_ch = 1.0 - w_abd - w_sh
    ax = w_abd * _ABDOMEN_HALF[0] + w_ch * _CHEST_HALF[0] + w_sh * _SHOULDER_HALF[0]
    ay = w_abd * _ABDOMEN_HALF[1] + w_ch * _CHEST_HALF[1] + w_sh * _SHOULDER_HALF[1]
    return ax.astype(np.float32), ay.astype(np.float32)


def _dome(X: np.ndarray, Y: np.ndarray, side: int) -> np.ndarray:
    """Height t of the diaphragm under the lung of this side (lung only where T > dome)."""
    sign = 1.0 if side == LEFT_LUNG else -1.0
    peak = 0.27 if side == LEFT_LUNG else 0.33  # the right dome rides higher (liver)
    bump = np.clip(1.0 - ((X - sign * 62.0) / 95.0) ** 2 - ((Y + 5.0) / 100.0) ** 2, 0.0, 1.0) ** 0.6
    base = 0.04 - 0.07 * (Y / 90.0)  # posterior costophrenic recesses reach lowest
    return np.maximum(base + peak * bump, 0.0)


def _vessel_tree(
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

    seg_parent = lobar[nearest(seg, lobar)]
    term_parent = seg[nearest(term, seg)]
    starts = np.concatenate([np.repeat(hil[None], n_lobar, 0), seg_parent, term_parent])
    ends = np.concatenate([lobar, seg, term])
    r0 = np.concatenate([np.full(n_lobar, 5.0), np.full(n_seg, 3.2), np.full(n_term, 2.0)])
    r1 = np.concatenate([np.full(n_lobar, 3.5), np.full(n_seg, 2.0), np.full(n_term, 0.7)])
    # Gently curved paths: quadratic Bezier with a random control point.
    ctrl = 0.5 * (starts + ends) + rng.normal(0.0, 6.0, size=starts.shape).astype(np.float32)
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


def make_phantom(
    shape: tuple[int, int, int] = (48, 192, 192),
    spacing: tuple[float, float, float] = (5.0, 1.8, 1.8),
    seed: int = 0,
    lesion_burden: float = 0.15,
    lesions: bool = True,
    effusion: bool = True,
    lungs: bool = True,
    noise_hu: float = 20.0,
    margin_slices: int = 0,
) -> Phantom:
    """Build a synthetic chest CT (HU, canonical orientation) with exact labels.

    ``shape``/``spacing`` are (z, y, x); the lungs span ``shape[0]`` slices and
    ``margin_slices`` lung-free slices are added below (upper abdomen: liver, stomach,
    bowel gas) and above (shoulders/neck), so the array has ``shape[0] + 2 * margin_slices``
    slices. ``lesion_burden`` is the fraction of each lung's volume covered by GGO +
    consolidation (met to within a few voxels, exact figures in ``truth``). ``lesions=False``
    gives a normal chest (no lesions, no effusion); ``effusion`` adds a dependent pleural
    effusion on one side when lesions are on; ``lungs=False`` fills the thorax with soft
    tissue and leaves out every gas pocket (a body with no air at all). Deterministic per seed.

    ``truth`` keys: ``voxel_volume_ml``; ``lung_volume_ml`` {left, right, total};
    ``lesion_volume_ml`` {ggo, consolidation, effusion, infection}; ``lesion_volume_ml_per_lung``
    {left, right: {ggo, consolidation, effusion, infection}}; ``involvement_percent``
    {left, right, total} = (GGO + consolidation) / lung volume * 100 (effusion excluded, it
    is not lung); ``effusion_side`` ("left" | "right" | None); plus the inputs.
    """
    shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
    spacing = tuple(float(v) for v in spacing)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1 or shape[1] < 32 or shape[2] < 32 or shape[0] < 4:
        raise ValueError(f"phantom shape must be (z>=4, y>=32, x>=32), got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be 3 positive numbers (mm), got {spacing}")
    if not 0.0 <= lesion_burden < 0.9:
        raise ValueError(f"lesion_burden must be in [0, 0.9), got {lesion_burden}")
    if noise_hu < 0 or margin_slices < 0:
        raise ValueError("noise_hu and margin_slices must be >= 0")

    rng = np.random.default_rng(seed)
    m = int(margin_slices)
    n_lung = shape[0]
    full = (n_lung + 2 * m, shape[1], shape[2])
    g = _Grid(full, spacing, m, n_lung)
    X, Y, T = g.X, g.Y, g.T
    sp = np.asarray(spacing, dtype=np.float32)

    vol = np.full(full, AIR, dtype=np.float32)

    # ---- body wall: skin/fat, muscle, thoracic (or abdominal) cavity
    bx, by = _body_axes(g.t1)
    bx, by = bx[:, None, None], by[:, None, None]
    body = _superellipse_r(X, Y, bx, by) <= 1.0
    inner_fat = _superellipse_r(X, Y, bx - _FAT_MM, by - _FAT_MM) <= 1.0
    cx, cy = bx - _WALL_MM, by - _WALL_MM + 4.0
    rc = _superellipse_r(X, Y, cx, cy)
    cavity = rc <= 1.0
    vol[body] = FAT
    vol[inner_fat] = MUSCLE
    vol[cavity] = MED_FAT
    vol[cavity & (T > 1.02)] = MUSCLE  # thoracic inlet / neck: mostly muscle

    # Table: a curved carbon-fibre board a few mm under the back.
    ytab = _CHEST_HALF[1] + 12.0 + 0.0012 * X**2
    table = (Y >= ytab) & (Y <= ytab + 7.0) & (np.abs(X) < 210.0) & ~body
    vol[np.broadcast_to(table, full)] = TABLE

    # ---- spine (all levels), paraspinal muscles, posterior elements, discs
    vb_y, vb_r = 60.0, 17.0
    para = (((np.abs(X) - 33.0) / 24.0) ** 2 + ((Y - 92.0) / 21.0) ** 2 <= 1.0) & inner_fat
    vol[para] = MUSCLE
    d_vb = np.sqrt(X**2 + (Y - vb_y) ** 2)
    d_can = np.sqrt(X**2 + (Y - 87.0) ** 2)
    disc = (np.mod(g.Zmm, 27.0) < 5.0)
    vb = np.broadcast_to(d_vb <= vb_r, full)
    vol[vb] = CORTICAL
    vol[np.broadcast_to(d_vb <= vb_r - 2.5, full)] = CANCELLOUS
    vol[vb & np.broadcast_to(disc, full)] = DISC
    arch = ((d_can <= 14.0) | ((np.abs(X) < 5.0) & (Y > 87.0) & (Y < 108.0))) & (Y > vb_y + 10.0)
    vol[np.broadcast_to(arch, full) & ~np.broadcast_to(disc, full)] = CORTICAL
    vol[np.broadcast_to(d_can <= 8.0, full)] = CSF
    spine_block = np.broadcast_to((d_vb <= vb_r + 4.0) | (d_can <= 18.0), full)

    # ---- ribs: oblique arcs in the chest wall whose position drifts with z; sternum
    rib_lo, rib_hi = 1.0 + 1.5 / cx, 1.0 + 10.0 / cx
    shell = (rc > rib_lo) & (rc < rib_hi) & (T > -0.25) & (T < 0.97)
    shell &= ~((Y < 0) & (np.abs(X) < 35.0)) & ~para  # costal cartilage next to the sternum; spine
    zi, yi, xi = np.nonzero(shell)
    xs, ys = g.X[0, 0, xi], g.Y[0, yi, 0]
    theta = np.arctan2(ys / cy.ravel()[zi], xs / cx.ravel()[zi])
    pattern = np.cos(14.0 * theta + 2.0 * np.pi * g.Zmm.ravel()[zi] / 34.0 * np.sign(xs + 1e-3))
    r_here = rc[zi, yi, xi]
    in_rib = pattern > 0.2
    in_marrow = (
        (pattern > 0.45) & (r_here > (rib_lo + 2.0 / cx).ravel()[zi]) & (r_here < (rib_hi - 2.0 / cx).ravel()[zi])
    )
    ribs = np.zeros(full, dtype=bool)
    marrow = np.zeros(full, dtype=bool)
    ribs[zi[in_rib], yi[in_rib], xi[in_rib]] = True
    marrow[zi[in_marrow], yi[in_marrow], xi[in_marrow]] = True
    vol[ribs] = CORTICAL
    vol[marrow] = CANCELLOUS
    sl = g.zslab(0.3, 0.97)
    st_y = -float(np.mean(cy)) - 5.0
    vol[sl][np.broadcast_to(g.disc2d(0.0, st_y, 20.0, 7.0), vol[sl].shape)] = CORTICAL
    vol[sl][np.broadcast_to(g.disc2d(0.0, st_y, 17.0, 4.5), vol[sl].shape)] = CANCELLOUS

    # Scapulae (upper posterior chest wall) and, above the lungs, clavicles and humeral heads.
    for sgn in (-1.0, 1.0):
        scap = g.bar((sgn * 52.0, 101.0), (sgn * 128.0, 74.0), 3.5, 0.55, 1.15)
        vol[scap & body] = CORTICAL
        clav = g.tube((sgn * 12.0, -88.0, 1.0), (sgn * 130.0, -60.0, 1.06), 7.0) & body
        vol[clav] = CORTICAL
        hum = g.tube((sgn * 150.0, 5.0, 1.04), (sgn * 150.0, 5.0, 1.6), 24.0) & body
        vol[hum] = CORTICAL
        vol[hum & g.tube((sgn * 150.0, 5.0, 1.04), (sgn * 150.0, 5.0, 1.6), 21.0)] = CANCELLOUS

    # ---- mediastinum: heart, great vessels, oesophagus, airways
    heart_c, heart_ax = (18.0, -16.0, 0.27), (62.0, 52.0, 0.20)
    hsl = g.zslab(heart_c[2] - 1.2 * heart_ax[2], heart_c[2] + 1.2 * heart_ax[2])
    hr = np.full(full, 9.0, dtype=np.float32)
    tz = (T[hsl] - heart_c[2]) / heart_ax[2]
    hr[hsl] = ((X - heart_c[0]) / heart_ax[0]) ** 2 + ((Y - heart_c[1]) / heart_ax[1]) ** 2 + tz**2
    heart_fat = (hr <= 1.18) & cavity
    heart = (hr <= 1.0) & cavity
    aorta = g.cylinder(22.0, 44.0, 12.0, -2.0, 0.80)  # descending
    aorta |= g.cylinder(-12.0, -22.0, 14.0, 0.45, 0.79)  # ascending
    aorta |= g.tube((-12.0, -22.0, 0.79), (22.0, 44.0, 0.79), 13.0)  # arch
    pa = g.cylinder(14.0, -34.0, 13.0, 0.48, 0.60)
    pa |= g.tube((14.0, -34.0, 0.58), (-48.0, -2.0, 0.56), 9.0)
    pa |= g.tube((14.0, -34.0, 0.59), (46.0, 6.0, 0.60), 9.0)
    svc = g.cylinder(-34.0, -14.0, 9.0, 0.52, 0.95)
    neck_vessels = np.zeros(full, dtype=bool)
    for sgn in (-1.0, 1.0):
        neck_vessels |= g.cylinder(sgn * 22.0, 0.0, 7.0, 0.82, 3.0)
    oesophagus = g.cylinder(-4.0, 40.0, 7.0, -0.15, 3.0)
    carina = (0.0, 20.0, 0.63)
    trachea = g.cylinder(0.0, 20.0, 9.0, carina[2], 3.0)
    trachea_wall = g.cylinder(0.0, 20.0, 11.0, carina[2] - 0.02, 3.0)
    hil_r, hil_l = (-50.0, 8.0, 0.53), (48.0, 12.0, 0.51)
    bronchi = g.tube(carina, hil_r, 6.5) | g.tube(carina, hil_l, 6.0)
    bronchi_wall = g.tube(carina, hil_r, 8.5) | g.tube(carina, hil_l, 8.0)
    airway = trachea | bronchi
    airway_wall = trachea_wall | bronchi_wall

    vol[heart_fat] = FAT
    vol[heart] = BLOOD
    for organ in (aorta, pa, svc, neck_vessels):
        vol[organ & inner_fat] = BLOOD
    vol[oesophagus & inner_fat] = MUSCLE

    # ---- below the diaphragm: liver, stomach (with gas), spleen, kidneys, bowel
    dome_r, dome_l = _dome(X, Y, RIGHT_LUNG), _dome(X, Y, LEFT_LUNG)
    dome = np.where(X < 0, dome_r, dome_l)
    abdomen = cavity & (T < dome) & ~heart_fat & ~spine_block & ~para
    liver = abdomen & (X < 18.0 - 0.45 * Y) & (T > -0.5)
    stomach = abdomen & (((X - 62.0) / 48.0) ** 2 + ((Y + 22.0) / 42.0) ** 2 <= 1.0) & ~liver & (T > -0.35)
    spleen = abdomen & (((X - 88.0) / 30.0) ** 2 + ((Y - 48.0) / 40.0) ** 2 <= 1.0) & (T > -0.3) & ~stomach
    kidneys = abdomen & (((np.abs(X) - 62.0) / 24.0) ** 2 + ((Y - 62.0) / 30.0) ** 2 <= 1.0) & (T < -0.12)
    vol[abdomen] = MED_FAT
    vol[liver] = LIVER
    vol[stomach] = STOMACH
    vol[spleen] = SPLEEN
    vol[kidneys & ~liver] = 35.0
    bowel_zone = abdomen & ~liver & ~stomach & ~spleen & ~kidneys & (T < -0.03)
    bowel_gas = np.zeros(full, dtype=bool)
    stomach_gas = np.zeros(full, dtype=bool)
    if bowel_zone.any():
        sig = tuple(float(v) for v in 9.0 * g.s / sp)
        loops = _smooth_field(rng, full, sig)
        vol[bowel_zone & (loops > 0.0)] = BOWEL_WALL
        bowel_gas = bowel_zone & (loops > 1.2)
    if stomach.any():
        # Gas rises to the front of the stomach in a supine patient.
        stomach_gas = stomach & (Y < -22.0 - 0.55 * 42.0)
    # Aorta and oesophagus pass behind the abdominal organs; repaint them.
    vol[aorta & inner_fat] = BLOOD
    vol[oesophagus & inner_fat & abdomen] = MUSCLE


    # ---- lungs
    lung_lbl = np.zeros(full, dtype=np.uint8)
    vessels = np.zeros(full, dtype=bool)
    vfrac = np.zeros(full, dtype=np.float32)
    if lungs:
        pad = 3.0  # pleura + fat between lung and mediastinal structures
        block = (hr <= 1.18 + 0.1) | aorta | g.cylinder(22.0, 44.0, 12.0 + pad, -2.0, 0.80)
        block |= g.cylinder(-12.0, -22.0, 14.0 + pad, 0.45, 0.79) | g.tube((-12.0, -22.0, 0.79), (22.0, 44.0, 0.79), 16.0)
        block |= g.cylinder(14.0, -34.0, 13.0 + pad, 0.48, 0.60) | pa | g.cylinder(-34.0, -14.0, 9.0 + pad, 0.52, 0.95)
        block |= g.cylinder(-4.0, 40.0, 7.0 + pad, -0.15, 3.0) | g.cylinder(0.0, 20.0, 11.0 + pad, 0.6, 3.0)
        block |= bronchi_wall | spine_block | para
        for side, sgn in ((LEFT_LUNG, 1.0), (RIGHT_LUNG, -1.0)):
            # Apex taper: a shrinking ellipse per side above mid-chest; right lung a bit wider.
            grow = 1.0 if side == LEFT_LUNG else 1.06
            tau = np.sqrt(np.clip((1.0 - T) / 0.36, 0.0, None)) * grow
            ell = ((X - sgn * 78.0) / (100.0 * tau + 1e-3)) ** 2 + ((Y - 12.0) / (112.0 * tau + 1e-3)) ** 2 <= 1.0
            side_half = (sgn * X) > 5.0
            dome_s = dome_l if side == LEFT_LUNG else dome_r
            region = cavity & side_half & ell & (T > dome_s) & (T > 0.0) & (T < 1.0) & ~block
            lung_lbl[region] = side
        # Keep each lung's main connected piece (drop slivers cut off by the mediastinum).
        for side in (LEFT_LUNG, RIGHT_LUNG):
            lab, n = ndi.label(lung_lbl == side)
            if n > 1:
                sizes = np.bincount(lab.ravel())
                sizes[0] = 0
                lung_lbl[(lab > 0) & (lab != int(np.argmax(sizes)))] = 0
        lung_any = lung_lbl > 0
        # Parenchyma: denser toward the back (gravity) plus a faint smooth mottling.
        zyx = np.argwhere(lung_any)
        lo, hi = zyx.min(0), zyx.max(0) + 1
        bb = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        mott = _smooth_field(rng, tuple(hi - lo), tuple(float(v) for v in 6.0 / sp))
        par = LUNG + 30.0 * np.broadcast_to(Y / 90.0, full)[bb] + 10.0 * mott
        sub = vol[bb]
        sub[lung_any[bb]] = par[lung_any[bb]]
        # Vessel trees from each hilum.
        for side, hil in ((LEFT_LUNG, hil_l), (RIGHT_LUNG, hil_r)):
            hv = np.array(
                [
                    (hil[2] * n_lung) + m - 0.5,
                    (hil[1] * g.s + (-0.03 * full[1] * spacing[1])) / spacing[1] + (full[1] - 1) / 2.0,
                    (hil[0] * g.s) / spacing[2] + (full[2] - 1) / 2.0,
                ]
            )
            side_mask = lung_lbl[bb] == side
            vfrac[bb] = np.maximum(vfrac[bb], _vessel_tree(rng, side_mask, hv - lo, sp))
        vessels = vfrac >= 0.5  # voxels that read as vessel (kept out of the GGO label)
        hit = vfrac > 0
        vol[hit] = vol[hit] * (1.0 - vfrac[hit]) + BLOOD * vfrac[hit]
        # Airways: lumen air (wall painted first; the lumen overrides it).
        vol[airway_wall & inner_fat & ~airway] = MUSCLE
        vol[airway & inner_fat] = AIR
        vol[stomach_gas] = GAS
        vol[bowel_gas] = GAS
    else:
        # No lungs: the thorax is solid (soft tissue and fat) and there is no gas anywhere.
        solid = cavity & ~abdomen & ~heart & ~heart_fat & ~aorta & ~pa & ~svc & ~spine_block & ~para
        tex = _smooth_field(rng, full, tuple(float(v) for v in 12.0 / sp))
        vol[solid] = np.where(tex[solid] > 0.3, MED_FAT, 35.0)
        vol[airway_wall & inner_fat] = MUSCLE

    # ---- lesions
    les = np.zeros(full, dtype=np.uint8)
    eff_side: str | None = None
    if lungs and lesions:
        if effusion:
            side = int(rng.choice([LEFT_LUNG, RIGHT_LUNG]))
            eff_side = "left" if side == LEFT_LUNG else "right"
            pleura = lung_lbl == side
            # Posterior-most lung voxel of each (z, x) column; the fluid fills a crescent
            # of that depth against the back wall, deepest at the bottom (dependent).
            ny = full[1]
            has = pleura.any(axis=1)
            ymax = ny - 1 - np.argmax(pleura[:, ::-1, :], axis=1)
            ymax = np.where(has, ymax, -1)
            depth_mm = 26.0 * g.s * np.clip(1.0 - g.t1 / 0.45, 0.0, 1.0) ** 0.8
            yy = np.arange(ny)[None, :, None]
            eff = pleura & (yy * spacing[1] > (ymax[:, None, :] * spacing[1] - depth_mm[:, None, None]))
            eff &= has[:, None, :]
            les[eff] = EFFUSION
            lung_lbl[eff] = 0
            e_tex = _smooth_field(rng, full, tuple(float(v) for v in 8.0 / sp))
            vol[eff] = np.clip(EFFUSION_HU + 6.0 * e_tex[eff], 2.0, 28.0)
        if lesion_burden > 0:
            zyx = np.argwhere(lung_lbl > 0)
            lo, hi = zyx.min(0), zyx.max(0) + 1
            bb = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            sub_shape = tuple(hi - lo)
            lungb = lung_lbl[bb]
            noise = _smooth_field(rng, sub_shape, tuple(float(v) for v in 9.0 * g.s / sp))
            periph = 1.0 - ndi.gaussian_filter((lungb > 0).astype(np.float32), tuple(float(v) for v in 10.0 / sp))
            post = np.broadcast_to(Y / 90.0, full)[bb]
            low = np.broadcast_to(1.0 - T, full)[bb]
            F = noise + 3.0 * periph + 0.4 * post + 0.5 * low
            sub_les = les[bb]
            sub_vol = vol[bb]
            vess_b = vessels[bb]
            tex = _smooth_field(rng, sub_shape, tuple(float(v) for v in 3.0 / sp))
            for side in (LEFT_LUNG, RIGHT_LUNG):
                inside = lungb == side
                if not inside.any():
                    continue
                vals = F[inside]
                k = int(round(lesion_burden * vals.size))
                if k == 0:
                    continue
                order = np.sort(vals)
                thr = order[vals.size - k]
                thr_c = order[vals.size - max(1, int(round(0.3 * k)))]  # densest 30% = consolidation
                top = order[-1]
                patch = inside & (F >= thr)
                core = inside & (F >= thr_c)
                s_g = np.clip((F - thr) / max(thr_c - thr, 1e-6), 0.0, 1.0)
                s_c = np.clip((F - thr_c) / max(top - thr_c, 1e-6), 0.0, 1.0)
                ggo_hu = np.clip(-680.0 + 330.0 * s_g + 25.0 * tex, -700.0, -320.0)
                con_hu = np.clip(-70.0 + 140.0 * np.sqrt(s_c) + 15.0 * tex, -95.0, 95.0)
                gg = patch & ~core & ~vess_b
                sub_vol[gg] = ggo_hu[gg]
                sub_vol[core] = con_hu[core]
                sub_les[gg] = GGO
                sub_les[core] = CONSOLIDATION

    clean = vol
    # ---- scanner: white noise then a slight blur (gives CT-like correlated noise). The
    # noise is pre-scaled by the blur's variance reduction so its final std is noise_hu.
    blur = (0.3, 0.6, 0.6)
    if noise_hu > 0:
        gain = 1.0
        for sg in blur:
            imp = np.zeros(31, dtype=np.float64)
            imp[15] = 1.0
            gain *= float(np.sqrt((ndi.gaussian_filter1d(imp, sg) ** 2).sum()))
        out = rng.standard_normal(full, dtype=np.float32)
        out *= np.float32(noise_hu / gain)
        out += clean
    else:
        out = clean.copy()
    out = ndi.gaussian_filter(out, blur)
    np.clip(out, -1024.0, 3071.0, out=out)

    dz, dy, dx = spacing
    origin = (
        round(-(full[2] - 1) / 2.0 * dx, 4),
        round(-(full[1] - 1) / 2.0 * dy, 4),
        round(-(full[0] - 1) / 2.0 * dz, 4),
    )
    affine = affine_from_spacing(spacing, origin)  # type: ignore[arg-type]
    ct = CT(
        array=out.astype(np.float32, copy=False),
        spacing=spacing,  # type: ignore[arg-type]
        affine=affine,
        is_hu=True,
        kind="array",
        path=None,
        slices=[SliceRef(index=k, z_mm=origin[2] + k * dz) for k in range(full[0])],
        meta={"source": "covidct.phantom", "seed": int(seed), "origin_lps": origin},
    )
    truth = _truth(lung_lbl, les, ct.voxel_volume_ml, eff_side)
    truth.update(
        seed=int(seed),
        lesion_burden_requested=float(lesion_burden if (lungs and lesions) else 0.0),
        lung_slices=(m, m + n_lung) if lungs else None,
        shape=full,
        spacing=spacing,
    )
    return Phantom(ct=ct, lungs=lung_lbl, lesions=les, body=np.ascontiguousarray(body), truth=truth, clean=clean)


def _truth(lung_lbl: np.ndarray, les: np.ndarray, vml: float, eff_side: str | None) -> dict:
    """Exact volumes and involvement figures from the label arrays."""
    counts = np.bincount((lung_lbl.astype(np.int64) * 4 + les).ravel(), minlength=12)

    def c(lung: int, lesion: int) -> int:
        return int(counts[lung * 4 + lesion])

    per: dict[str, dict[str, float]] = {}
    lung_ml: dict[str, float] = {}
    for name, lab in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
        lung_ml[name] = sum(c(lab, k) for k in range(4)) * vml
        per[name] = {
            "ggo": c(lab, GGO) * vml,
            "consolidation": c(lab, CONSOLIDATION) * vml,
            "infection": (c(lab, GGO) + c(lab, CONSOLIDATION)) * vml,
            "effusion": int(np.count_nonzero(les == EFFUSION)) * vml if eff_side == name else 0.0,
        }
    lung_ml["total"] = lung_ml["left"] + lung_ml["right"]
    tot = {k: per["left"][k] + per["right"][k] for k in ("ggo", "consolidation", "infection")}
    tot["effusion"] = int(np.count_nonzero(les == EFFUSION)) * vml

    def pct(a: float, b: float) -> float:
        return 100.0 * a / b if b > 0 else 0.0

    return {
        "voxel_volume_ml": vml,
        "lung_volume_ml": lung_ml,
        "lesion_volume_ml": tot,
        "lesion_volume_ml_per_lung": per,
        "involvement_percent": {
            "left": pct(per["left"]["infection"], lung_ml["left"]),
            "right": pct(per["right"]["infection"], lung_ml["right"]),
            "total": pct(tot["infection"], lung_ml["total"]),
        },
        "effusion_side": eff_side,
    }


# --------------------------------------------------------------------------- writers


def write_phantom(phantom: Phantom, outdir: str | Path, fmt: str = "nifti", shuffle_names: bool = True) -> Path:
    """Write the phantom as NIfTI (``phantom.nii.gz``) or a CT DICOM series (``dicom/``).

    Both formats also get ``phantom_lungs.nii.gz`` and ``phantom_lesions.nii.gz`` (uint8,
    same geometry) in ``outdir``. Returns the NIfTI file or the DICOM folder. Written through
    :func:`covidct.io.writers.staged_outputs`: an error or Ctrl-C never leaves a partial series behind.
    """
    import nibabel as nib

    from covidct.io.writers import staged_outputs

    if fmt not in ("nifti", "dicom"):
        raise ValueError(f"unknown phantom format {fmt!r} (use 'nifti' or 'dicom')")
    ct = phantom.ct
    hu = np.clip(np.rint(ct.array), -1024, 3071).astype(np.int16)
    with staged_outputs(outdir) as staging:

        def save(arr: np.ndarray, name: str) -> Path:
            img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), ct.affine)
            img.header.set_xyzt_units("mm")
            img.set_qform(ct.affine, code=1)
            img.set_sform(ct.affine, code=1)
            path = staging / name
            nib.save(img, str(path))
            return path

        save(phantom.lungs.astype(np.uint8), "phantom_lungs.nii.gz")
        save(phantom.lesions.astype(np.uint8), "phantom_lesions.nii.gz")
        main = save(hu, "phantom.nii.gz") if fmt == "nifti" else _write_dicom(hu, ct, staging / "dicom", shuffle_names)
    return Path(outdir) / main.name


def _write_dicom(hu: np.ndarray, ct: CT, folder: Path, shuffle_names: bool) -> Path:
    """One uncompressed CT Image Storage file per slice (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from covidct import __version__ as version

    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = hu.shape
    dz, dy, dx = ct.spacing
    # Canonical volume: LPS position of voxel (x=0, y=0, z=k) is (ox, oy, oz + k*dz).
    ras0 = ct.affine[:3, 3]
    ox, oy, oz = -float(ras0[0]), -float(ras0[1]), float(ras0[2])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)  # 0..4095 after the HU clip

    def ds_num(v: float) -> str:
        s = f"{v:.6g}"
        return s if len(s) <= 16 else f"{v:.10g}"[:16]

    for k in range(nz):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "COVIDCT_PHANTOM"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "covidct"
        ds.ManufacturerModelName = "synthetic chest phantom"
        ds.SoftwareVersions = str(version)
        ds.InstitutionName = "covidct"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic chest CT phantom"
        ds.SeriesDescription = "Phantom axial"
        ds.PatientName = "PHANTOM^"  # family name only; a caret avoids the retired PN form
        ds.PatientID = "PHANTOM"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = ds_num(dz)
        ds.KVP = "120"
        ds.DataCollectionDiameter = ds_num(max(nx * dx, ny * dy))
        ds.ReconstructionDiameter = ds_num(max(nx * dx, ny * dy))
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        # Numbered from the top of the chest down, as scanners usually do.
        ds.InstanceNumber = nz - k
        z = oz + k * dz
        ds.ImagePositionPatient = [ds_num(ox), ds_num(oy), ds_num(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = ds_num(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.PixelSpacing = [ds_num(dy), ds_num(dx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = ["-600", "40"]
        ds.WindowWidth = ["1500", "400"]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        name = f"IMG_{secrets.token_hex(8)}.dcm" if shuffle_names else f"IMG_{nz - k:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder
