"""Phantoms of each radiological pattern of the RSNA consensus, for the pattern tests and benchmarks.

``make_pattern_phantom(preset)`` builds a phantom whose lesions follow one pattern; ``EXPECTED`` says
which RSNA category a reader would give it. Presets:
- ``typical``: bilateral, peripheral (subpleural), posterior and basal GGO patches with small consolidated cores;
- ``unilateral``: the same in the right lung only;
- ``lobar``: confluent consolidation of the right lower zone (lobar pneumonia), no GGO;
- ``nodules``: discrete solid nodules 6-14 mm across, inside both lungs, nothing else;
- ``effusion_septal``: bilateral dependent pleural effusions and smooth thickened interlobular septa
  (a polyhedral net of 2 mm dense lines around 10-25 mm lobules; not labelled as lesion), as in oedema;
- ``normal``: no lesions.
``lobar`` is a :class:`LesionSpec` pattern painted by :func:`make_phantom`; the round subpleural GGO
patches, nodules, septa and effusions are painted here onto a lesion-free phantom (with the scanner noise
added to them): LesionSpec's peripheral pull also reaches the mediastinal pleura, which a reader calls
central, so the typical patches are placed against the costal pleura explicitly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.phantom.build import Phantom, make_phantom, truth_from_labels
from covidct.phantom.lesions import EFFUSION_HU, LesionSpec

EXPECTED: dict[str, str] = {
    "typical": "typical",
    "unilateral": "indeterminate",
    "lobar": "atypical",
    "nodules": "atypical",
    "effusion_septal": "atypical",
    "normal": "negative",
}
PRESETS = tuple(EXPECTED)

_SPECS: dict[str, LesionSpec] = {
    "lobar": LesionSpec(burden=0.12, sides=("right",), consolidation_fraction=1.0, blob_mm=60.0,
                        peripheral_weight=0.0, posterior_weight=0.5, basal_weight=4.0, z_range=(0.0, 0.45),
                        effusion=False),
}
NODULE_HU = 40.0
GGO_HU = -600.0
SEPTUM_HU = -150.0


def make_pattern_phantom(preset: str, shape: tuple[int, int, int] = (56, 192, 192),
                         spacing: tuple[float, float, float] = (4.0, 1.8, 1.8), seed: int = 0,
                         noise_hu: float = 20.0) -> Phantom:
    """A phantom of one pattern preset (see the module docstring); deterministic per seed."""
    if preset not in EXPECTED:
        raise ValueError(f"unknown pattern preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset in _SPECS:
        ph = make_phantom(shape, spacing, seed=seed, lesion_spec=_SPECS[preset], noise_hu=noise_hu)
    else:
        ph = make_phantom(shape, spacing, seed=seed, lesions=False, noise_hu=noise_hu)
    rng = np.random.default_rng(10_000 + seed)
    eff_side = ph.truth.get("effusion_side")
    if preset in ("typical", "unilateral"):
        sides = (LEFT_LUNG, RIGHT_LUNG) if preset == "typical" else (RIGHT_LUNG,)
        _paint_subpleural_ggo(ph, rng, sides, noise_hu)
    elif preset == "nodules":
        _paint_nodules(ph, rng, noise_hu)
    elif preset == "effusion_septal":
        _paint_septa(ph, rng, noise_hu)
        for side in (LEFT_LUNG, RIGHT_LUNG):
            _paint_effusion(ph, side, rng, noise_hu)
        eff_side = "both"
    if preset not in _SPECS:
        keep = {k: ph.truth[k] for k in ("seed", "lesion_burden_requested", "lung_slices", "shape", "spacing")}
        ph.truth = truth_from_labels(ph.lungs, ph.lesions, ph.ct.voxel_volume_ml, eff_side) | keep
    ph.truth["pattern_preset"] = preset
    return ph


def _noisy(rng: np.random.Generator, value: float, n: int, noise_hu: float) -> np.ndarray:
    return (value + noise_hu * rng.standard_normal(n)).astype(np.float32)


def _paint_subpleural_ggo(ph: Phantom, rng: np.random.Generator, sides: tuple[int, ...], noise_hu: float,
                          n: int = 8) -> None:
    """Round GGO patches (24-36 mm) against the lateral or posterior (costal) pleura, mostly basal; some
    with a small consolidated core. Vessels crossing the GGO keep their density and stay unlabelled."""
    sp = np.asarray(ph.ct.spacing)
    lung = ph.lungs > 0
    depth = ndi.distance_transform_edt(lung, sampling=tuple(sp))
    vessel = lung & (ph.clean > -500.0) if ph.clean is not None else np.zeros_like(lung)
    zz, yy, xx = np.indices(lung.shape, sparse=True)
    for side in sides:
        m = ph.lungs == side
        zs, ys, xs = np.nonzero(m)
        x_mid, x_half = xs.mean(), 0.5 * (xs.max() - xs.min())
        lateral = (xs - x_mid) * (1 if side == LEFT_LUNG else -1) > 0.3 * x_half  # left lung: larger x
        posterior = ys > np.percentile(ys, 70)
        z_rel = (zs - zs.min()) / max(zs.max() - zs.min(), 1)
        ok = (lateral | posterior) & (z_rel < 0.75) & (depth[zs, ys, xs] >= 6.0) & (depth[zs, ys, xs] <= 12.0)
        cand = np.flatnonzero(ok)
        w = (1.2 - z_rel[cand]) ** 2  # basal predominance
        chosen = rng.choice(cand, size=min(n, cand.size), replace=False, p=w / w.sum())
        for i in chosen:
            c = np.array([zs[i], ys[i], xs[i]])
            r = float(rng.uniform(12.0, 18.0))
            d2 = ((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2
            patch = (d2 <= r * r) & m
            ggo = patch & ~vessel & (ph.lesions == 0)
            ph.lesions[ggo] = GGO
            ph.ct.array[ggo] = _noisy(rng, GGO_HU, int(ggo.sum()), noise_hu + 25.0)
            if rng.random() < 0.4:
                core = (d2 <= (0.35 * r) ** 2) & m
                ph.lesions[core] = CONSOLIDATION
                ph.ct.array[core] = _noisy(rng, NODULE_HU, int(core.sum()), noise_hu)


def _paint_nodules(ph: Phantom, rng: np.random.Generator, noise_hu: float, n: int = 8) -> None:
    """Solid round nodules, 6-14 mm across, at least 12 mm inside the lung (discrete, not pleural)."""
    sp = np.asarray(ph.ct.spacing)
    depth = ndi.distance_transform_edt(ph.lungs > 0, sampling=tuple(sp))
    candidates = np.argwhere(depth >= 12.0)
    if len(candidates) == 0:
        return
    zz, yy, xx = np.indices(ph.lungs.shape, sparse=True)
    placed: list[np.ndarray] = []
    for idx in rng.permutation(len(candidates)):
        c = candidates[idx]
        if any(np.linalg.norm((c - p) * sp) < 35.0 for p in placed):
            continue  # keep them discrete
        r = float(rng.uniform(3.0, 7.0))
        ball = ((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2 <= r * r
        ball &= ph.lungs > 0
        ph.lesions[ball] = CONSOLIDATION
        ph.ct.array[ball] = _noisy(rng, NODULE_HU, int(ball.sum()), noise_hu)
        placed.append(c)
        if len(placed) == n:
            break


def _paint_septa(ph: Phantom, rng: np.random.Generator, noise_hu: float) -> None:
    """Thickened interlobular septa: the borders of random polyhedral lobules (10-25 mm) in the lungs."""
    sp = np.asarray(ph.ct.spacing)
    lung = ph.lungs > 0
    # lobule centres on a jittered ~16 mm lattice; each voxel belongs to its nearest centre
    step = np.maximum(np.round(16.0 / sp).astype(int), 1)
    seeds = np.zeros(lung.shape, bool)
    grid = np.stack(np.meshgrid(*(np.arange(0, n, s) for n, s in zip(lung.shape, step, strict=True)),
                                indexing="ij"), -1).reshape(-1, 3)
    jitter = rng.integers(-(step // 3), step // 3 + 1, size=grid.shape)
    pts = np.clip(grid + jitter, 0, np.asarray(lung.shape) - 1)
    seeds[tuple(pts.T)] = True
    _, idx = ndi.distance_transform_edt(~seeds, sampling=tuple(sp), return_indices=True)
    owner = np.ravel_multi_index(tuple(idx), lung.shape)
    border = np.zeros(lung.shape, bool)
    for axis in (1, 2):  # in-plane borders: a line in every axial slice, about 2 mm thick
        diff = np.diff(owner, axis=axis) != 0
        pad = [(0, 0)] * 3
        pad[axis] = (0, 1)
        border |= np.pad(diff, pad)
    border &= lung & (ph.lesions == 0)
    ph.ct.array[border] = _noisy(rng, SEPTUM_HU, int(border.sum()), noise_hu)


def _paint_effusion(ph: Phantom, side: int, rng: np.random.Generator, noise_hu: float, depth_mm: float = 30.0) -> None:
    """A dependent effusion against the posterior wall of one lung, deepest at the base."""
    pleura = ph.lungs == side
    zs = np.flatnonzero(pleura.any(axis=(1, 2)))
    if zs.size == 0:
        return
    dy = ph.ct.spacing[1]
    t = np.clip((np.arange(ph.lungs.shape[0]) - zs[0]) / max(zs[-1] - zs[0], 1), 0.0, 1.0)
    depth = depth_mm * np.clip(1.0 - t / 0.45, 0.0, 1.0) ** 0.8  # per slice, zero above 45 % of the height
    has = pleura.any(axis=1)
    ymax = pleura.shape[1] - 1 - np.argmax(pleura[:, ::-1, :], axis=1)
    yy = np.arange(pleura.shape[1])[None, :, None]
    eff = pleura & has[:, None, :] & ((ymax[:, None, :] - yy) * dy < depth[:, None, None])
    ph.lesions[eff] = EFFUSION
    ph.lungs[eff] = 0
    ph.ct.array[eff] = _noisy(rng, EFFUSION_HU, int(eff.sum()), noise_hu)
