"""The phantom's lesions: COVID-like GGO/consolidation patches and a dependent pleural effusion.

Owns :class:`LesionSpec` (what to place: burden, which lungs, how much consolidation,
where the patches gather, the effusion) and :func:`place_lesions`, which paints a spec
into an anatomy's HU volume and returns the lesion labels. The default spec is the
pattern :func:`covidct.phantom.make_phantom` has always drawn (peripheral, posterior and
basal bilateral patches with consolidated cores, an effusion on a seed-drawn side);
other patterns are other specs.

Label rules (covidct.labels): GGO/consolidation voxels stay part of the lung label;
effusion voxels leave it (the fluid takes pleural space). Vessels crossing a GGO patch
keep their blood density and stay out of the GGO label; consolidation hides them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.phantom.anatomy import Anatomy
from covidct.phantom.geometry import Grid, smooth_field

EFFUSION_HU = 15.0
_SIDES = {"left": LEFT_LUNG, "right": RIGHT_LUNG}
_PLEURA_MM = 10.0  # reach of the subpleural (peripheral) pull


@dataclass(frozen=True)
class LesionSpec:
    """What lesions to place in the phantom's lungs. The defaults are make_phantom's own pattern.

    The patches are the highest values of a score per lung voxel: a smooth random field
    (blobs about ``blob_mm`` wide, in reference-anatomy mm) plus ``peripheral_weight`` times
    closeness to the pleura, ``posterior_weight`` times depth toward the back and
    ``basal_weight`` times closeness to the lung base. The top ``burden`` fraction of each
    lung in ``sides`` becomes lesion; the top ``consolidation_fraction`` of that is
    consolidation, the rest GGO. ``z_range`` (t, 0 = lung base, 1 = apex) keeps the patches
    to a band of heights while ``burden`` stays a fraction of the whole lung (capped by the
    band's size). ``effusion`` adds a dependent pleural effusion on ``effusion_side`` (drawn
    from the seed when None), ``effusion_depth_mm`` deep at the base.
    """

    burden: float = 0.15
    sides: tuple[str, ...] = ("left", "right")
    consolidation_fraction: float = 0.3
    blob_mm: float = 9.0
    peripheral_weight: float = 3.0
    posterior_weight: float = 0.4
    basal_weight: float = 0.5
    z_range: tuple[float, float] | None = None
    effusion: bool = True
    effusion_side: str | None = None
    effusion_depth_mm: float = 26.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.burden < 0.9:
            raise ValueError(f"lesion burden must be in [0, 0.9), got {self.burden}")
        if not set(self.sides) <= set(_SIDES):
            raise ValueError(f"lesion sides must be 'left' and/or 'right', got {self.sides}")
        if self.effusion_side not in (None, *_SIDES):
            raise ValueError(f"effusion_side must be 'left', 'right' or None, got {self.effusion_side!r}")
        if not 0.0 <= self.consolidation_fraction <= 1.0:
            raise ValueError(f"consolidation_fraction must be in [0, 1], got {self.consolidation_fraction}")
        if self.blob_mm <= 0 or self.effusion_depth_mm < 0:
            raise ValueError("blob_mm must be > 0 and effusion_depth_mm >= 0")
        if self.z_range is not None and not self.z_range[0] < self.z_range[1]:
            raise ValueError(f"z_range must be (low, high) with low < high, got {self.z_range}")


def place_lesions(spec: LesionSpec, g: Grid, rng: np.random.Generator, anatomy: Anatomy) -> tuple[np.ndarray, str | None]:
    """Paint ``spec``'s lesions into ``anatomy.vol`` (in place; effusion voxels also leave ``anatomy.lungs``).

    Returns the uint8 lesion labels and the effusion side ("left" | "right" | None).
    """
    les = np.zeros(g.shape, dtype=np.uint8)
    eff_side: str | None = None
    if spec.effusion:
        eff_side = _place_effusion(spec, g, rng, anatomy, les)
    if spec.burden > 0 and spec.sides:
        _place_patches(spec, g, rng, anatomy, les)
    return les, eff_side


def _place_effusion(spec: LesionSpec, g: Grid, rng: np.random.Generator, anatomy: Anatomy, les: np.ndarray) -> str:
    full, spacing = g.shape, g.spacing
    sp = np.asarray(spacing, dtype=np.float32)
    lung_lbl, vol = anatomy.lungs, anatomy.vol
    # Drawn even when the side is given, so the rest of the phantom does not depend on it.
    side = int(rng.choice([LEFT_LUNG, RIGHT_LUNG]))
    if spec.effusion_side is not None:
        side = _SIDES[spec.effusion_side]
    eff_side = "left" if side == LEFT_LUNG else "right"
    pleura = lung_lbl == side
    # Posterior-most lung voxel of each (z, x) column; the fluid fills a crescent
    # of that depth against the back wall, deepest at the bottom (dependent).
    ny = full[1]
    has = pleura.any(axis=1)
    ymax = ny - 1 - np.argmax(pleura[:, ::-1, :], axis=1)
    ymax = np.where(has, ymax, -1)
    depth_mm = spec.effusion_depth_mm * g.s * np.clip(1.0 - g.t1 / 0.45, 0.0, 1.0) ** 0.8
    yy = np.arange(ny)[None, :, None]
    eff = pleura & (yy * spacing[1] > (ymax[:, None, :] * spacing[1] - depth_mm[:, None, None]))
    eff &= has[:, None, :]
    les[eff] = EFFUSION
    lung_lbl[eff] = 0
    e_tex = smooth_field(rng, full, tuple(float(v) for v in 8.0 / sp))
    vol[eff] = np.clip(EFFUSION_HU + 6.0 * e_tex[eff], 2.0, 28.0)
    return eff_side


def _place_patches(spec: LesionSpec, g: Grid, rng: np.random.Generator, anatomy: Anatomy, les: np.ndarray) -> None:
    full = g.shape
    sp = np.asarray(g.spacing, dtype=np.float32)
    lung_lbl, vol = anatomy.lungs, anatomy.vol
    zyx = np.argwhere(lung_lbl > 0)
    if zyx.size == 0:
        return
    lo, hi = zyx.min(0), zyx.max(0) + 1
    bb = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub_shape = tuple(hi - lo)
    lungb = lung_lbl[bb]
    noise = smooth_field(rng, sub_shape, tuple(float(v) for v in spec.blob_mm * g.s / sp))
    periph = 1.0 - ndi.gaussian_filter((lungb > 0).astype(np.float32), tuple(float(v) for v in _PLEURA_MM / sp))
    post = np.broadcast_to(g.Y / 90.0, full)[bb]
    low = np.broadcast_to(1.0 - g.T, full)[bb]
    F = noise + spec.peripheral_weight * periph + spec.posterior_weight * post + spec.basal_weight * low
    sub_les = les[bb]
    sub_vol = vol[bb]
    vess_b = anatomy.vessels[bb]
    tex = smooth_field(rng, sub_shape, tuple(float(v) for v in 3.0 / sp))
    band = None
    if spec.z_range is not None:
        tb = np.broadcast_to(g.T, full)[bb]
        band = (tb >= spec.z_range[0]) & (tb <= spec.z_range[1])
    for side in (LEFT_LUNG, RIGHT_LUNG):
        if side not in (_SIDES[s] for s in spec.sides):
            continue
        inside = lungb == side
        n_lung = int(np.count_nonzero(inside))
        if band is not None:
            inside &= band
        if not inside.any():
            continue
        vals = F[inside]
        k = min(int(round(spec.burden * n_lung)), vals.size)
        if k == 0:
            continue
        order = np.sort(vals)
        thr = order[vals.size - k]
        n_core = int(round(spec.consolidation_fraction * k))
        if spec.consolidation_fraction > 0:
            n_core = max(1, n_core)  # densest share = consolidation (at least one voxel)
        top = order[-1]
        thr_c = order[vals.size - n_core] if n_core > 0 else top
        patch = inside & (F >= thr)
        core = inside & (F >= thr_c) if n_core > 0 else np.zeros_like(inside)
        s_g = np.clip((F - thr) / max(thr_c - thr, 1e-6), 0.0, 1.0)
        s_c = np.clip((F - thr_c) / max(top - thr_c, 1e-6), 0.0, 1.0)
        ggo_hu = np.clip(-680.0 + 330.0 * s_g + 25.0 * tex, -700.0, -320.0)
        con_hu = np.clip(-70.0 + 140.0 * np.sqrt(s_c) + 15.0 * tex, -95.0, 95.0)
        gg = patch & ~core & ~vess_b
        sub_vol[gg] = ggo_hu[gg]
        sub_vol[core] = con_hu[core]
        sub_les[gg] = GGO
        sub_les[core] = CONSOLIDATION
