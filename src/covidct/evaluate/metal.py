"""Metal implants and their streak artefacts simulated on a whole HU series (a model, not a scan).

Many chest CTs of the patients covidct is meant for hold metal: a pacemaker or defibrillator with its lead, spinal
fixation rods, a port. Metal stops most of the X-rays that cross it, and filtered back-projection spreads the missing
and noisy line integrals over the slice as dark and bright streaks; those that cross the lung change its HU, which an
HU lesion rule could read as ground glass or hide lesions under. No series with metal is in ../shared, so
:func:`metal_implant_simulated` adds one to a series: the metal itself (at the top of the stored range), and the
difference between the filtered back-projection of the line integrals a scanner would measure and of the true ones.

The measured line integrals, per slice (2-D parallel beam, 360 views over 180°, on a grid of about 256², the artefact
brought back to the series' grid bilinearly):
- beam hardening: the metal's part p of a line integral is measured as p / (1 + 0.1 p) (polychromatic X-rays harden
  in metal, so it looks less dense than it is);
- photon starvation: the counts behind tissue and metal are Poisson with ``photons`` · exp(−p) expected (at least 1
  count), on the rays that cross metal only, so the series' own noise is left as it was.
Attenuation at about 70 keV: water 0.0193 /mm, titanium 0.14 /mm, stainless steel 0.47 /mm.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from covidct import components
from covidct.evaluate.projection import BEAM_HARDENING, MU_WATER, VIEWS, fbp_error, working_size
from covidct.preprocess import component_sizes, fill_holes_in_plane

MU_METAL = {"titanium": 0.14, "steel": 0.47}
STORED_MAX_HU = 3071.0  # the top of a 12-bit CT's stored range, where metal saturates
IMPLANTS = ("pacemaker", "spinal rods")


def metal_implant_simulated(ct, implant: str = "pacemaker", photons: float = 1e5, seed: int = 0):
    """``(ct with the implant and its streaks, metal mask)``.

    ``implant``: ``"pacemaker"`` (a titanium can 50 × 7 mm in-plane and 45 mm tall under the skin of the left upper
    chest, its 2 mm steel lead running to the mediastinum and down to the heart) or ``"spinal rods"`` (two steel rods
    5.5 mm across, 30 mm apart, beside the spinous processes over the lower two thirds of the lungs). Placed from the
    series' own HU lung field and bones (canonical orientation: x to the patient's left, y posterior, z superior)."""
    from covidct.evaluate.hu_volumes import hu_lung_reference

    if implant not in IMPLANTS:
        raise ValueError(f"unknown implant {implant!r}; choose from {', '.join(IMPLANTS)}")
    hu = np.asarray(ct.array, np.float32)  # read only: the streaked copy is ``out``
    lung = hu_lung_reference(hu, ct.spacing)
    zs = np.flatnonzero(lung.any((1, 2)))
    if zs.size < 3:
        raise ValueError("no lung field found to place the implant")
    metal = np.zeros(hu.shape, np.float32)  # attenuation /mm of the metal in each voxel
    place = _pacemaker if implant == "pacemaker" else _spinal_rods
    place(hu, lung, zs, ct.spacing, metal)
    metal[lung] = 0.0  # an implant lies in the chest wall, the veins, the heart or the spine, never in the lung
    rng = np.random.default_rng(seed)
    out = hu.copy()
    for k in np.flatnonzero(metal.any((1, 2))):
        out[k] += _streaks(hu[k], metal[k], ct.spacing[1], photons, rng)
    mask = metal > 0
    out[mask] = STORED_MAX_HU
    out = np.clip(out, -1024.0, STORED_MAX_HU)
    return dataclasses.replace(ct, array=out, path=f"{ct.path}@{implant.replace(' ', '-')}"), mask


def body_of_slice(hu_slice: np.ndarray) -> np.ndarray:
    """The largest region denser than -500 HU of one slice, holes filled."""
    body = fill_holes_in_plane((hu_slice > -500)[None])[0]
    lab, n = components.label(body)
    if n == 0:
        return body
    return lab == int(np.argmax(component_sizes(lab, body, n)))


def _disc(metal: np.ndarray, k: int, cy: float, cx: float, radius_px: float, mu: float) -> None:
    yy, xx = np.ogrid[: metal.shape[1], : metal.shape[2]]
    metal[k][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2] = mu


def _pacemaker(hu, lung, zs, spacing, metal) -> None:
    dz, dy, dx = spacing
    z_lo, z_hi = int(zs.min()), int(zs.max())
    zc = z_lo + 0.8 * (z_hi - z_lo)  # below the clavicle: the upper lobe's level
    half_z = max(1, int(round(22.5 / dz)))
    kc = int(round(zc))
    ks = range(max(0, kc - half_z), min(len(hu), kc + half_z + 1))
    left = lung[kc, :, lung.shape[2] // 2 :]  # the patient's left lung (x runs to the left)
    xs = np.flatnonzero(left.any(0))
    cx = lung.shape[2] // 2 + (int(np.median(xs)) if xs.size else lung.shape[2] // 4)
    body = body_of_slice(hu[kc])
    front = np.flatnonzero(body[:, cx])
    y_skin = int(front.min()) if front.size else 0
    hx, hy = 25.0 / dx, 3.5 / dy
    # 12 mm under the skin, but in front of the lung under the can (6 mm where the chest wall is thick enough),
    # and under the skin
    under = lung[ks.start : ks.stop, :, max(0, int(cx - hx)) : int(cx + hx) + 1].any((0, 2))
    lung_front = int(np.flatnonzero(under).min()) if under.any() else hu.shape[1]
    cy = max(min(y_skin + 12.0 / dy, lung_front - 6.0 / dy - hy), y_skin + hy + 1.0 / dy)
    y0, y1 = int(round(cy - hy)), int(round(cy + hy)) + 1
    x0, x1 = int(round(cx - hx)), int(round(cx + hx)) + 1
    metal[ks.start : ks.stop, y0:y1, x0:x1] = MU_METAL["titanium"]
    # the lead: from the can's medial end to the superior vena cava (right of the midline, in the front third of the
    # mediastinum between the lungs), then down to the heart's level
    svc = _superior_vena_cava(lung[kc], dx)
    k_heart = int(round(z_lo + 0.3 * (z_hi - z_lo)))
    start = (cx - hx, cy)
    for t in np.linspace(0.0, 1.0, int(np.hypot(start[0] - svc[0], start[1] - svc[1])) + 1):
        _disc(metal, kc, start[1] + t * (svc[1] - start[1]), start[0] + t * (svc[0] - start[0]), 1.0 / dx,
              MU_METAL["steel"])
    for k in range(k_heart, kc):
        _disc(metal, k, svc[1], svc[0] + 15.0 / dx * (kc - k) / max(kc - k_heart, 1),
              1.0 / dx, MU_METAL["steel"])


def _superior_vena_cava(lung_slice: np.ndarray, dx: float) -> tuple[float, float]:
    """(x, y) in pixels: 10 mm right of the middle between the lungs' medial edges, a third of the way back from the
    lungs' front (where the superior vena cava runs)."""
    half = lung_slice.shape[1] // 2
    right = np.flatnonzero(lung_slice[:, :half].any(0))
    left = np.flatnonzero(lung_slice[:, half:].any(0)) + half
    mid = (right.max() + left.min()) / 2.0 if right.size and left.size else float(half)
    rows = np.flatnonzero(lung_slice.any(1))
    y = rows.min() + (rows.max() - rows.min()) / 3.0 if rows.size else lung_slice.shape[0] / 3.0
    return mid - 10.0 / dx, float(y)


def _spinal_rods(hu, lung, zs, spacing, metal) -> None:
    dz, dy, dx = spacing
    z_lo, z_hi = int(zs.min()), int(zs.max())
    ks = range(int(round(z_lo + 0.1 * (z_hi - z_lo))), int(round(z_lo + 0.75 * (z_hi - z_lo))) + 1)
    tips, centres = [], []
    for k in ks:
        body = body_of_slice(hu[k])
        cols = np.flatnonzero(body.any(0))
        if cols.size == 0:
            continue
        xc = int(round(cols.mean()))
        band = slice(max(0, xc - int(10 / dx)), xc + int(10 / dx) + 1)
        bone = np.flatnonzero((hu[k][:, band] > 250).any(1))
        if bone.size:
            tips.append(int(bone.max()))  # the spinous process: the most posterior bone near the midline
            centres.append(xc)
    if not tips:
        raise ValueError("no spine found to place the rods")
    y_rod = float(np.median(tips)) - 15.0 / dy  # beside the spinous processes, at the laminae
    x_mid = float(np.median(centres))
    for k in ks:
        for side in (-1, 1):
            _disc(metal, k, y_rod, x_mid + side * 15.0 / dx, 2.75 / dx, MU_METAL["steel"])


def _streaks(hu_slice: np.ndarray, metal_mu: np.ndarray, pixel_mm: float, photons: float,
             rng: np.random.Generator) -> np.ndarray:
    """HU error of one slice's reconstruction from the line integrals a scanner measures (module docstring)."""
    import cv2
    from skimage.transform import radon

    n = hu_slice.shape[0]
    f, small = working_size(hu_slice.shape)
    px = pixel_mm * f
    mu_tissue = np.clip(MU_WATER * (1.0 + cv2.resize(hu_slice, small, interpolation=cv2.INTER_AREA) / 1000.0), 0, None)
    mu_metal = cv2.resize(metal_mu, small, interpolation=cv2.INTER_AREA)
    p_tissue = radon(mu_tissue, VIEWS, circle=False) * px
    p_metal = radon(mu_metal, VIEWS, circle=False) * px
    measured = p_tissue + p_metal / (1.0 + BEAM_HARDENING * p_metal)
    rays = p_metal > 1e-3
    counts = np.maximum(rng.poisson(photons * np.exp(-measured[rays])), 1)
    measured[rays] = -np.log(counts / photons)
    d_hu = fbp_error((measured - p_tissue - p_metal) / px, VIEWS, (small[1], small[0]))
    return cv2.resize(d_hu, (hu_slice.shape[1], n), interpolation=cv2.INTER_LINEAR)
