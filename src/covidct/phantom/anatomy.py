"""The phantom's normal anatomy: tissue densities painted into an HU volume, and the lung labels.

Owns the tissue densities (HU), the reference body size, and the painting of the body
wall, table, skeleton (spine, ribs, sternum, scapulae, clavicles, humeral heads),
mediastinum (heart, great vessels, oesophagus, trachea and main bronchi), the organs under
the diaphragm domes, and the two lungs with their branching vessel trees. Lesions and the
pleural effusion are :mod:`covidct.phantom.lesions`' business; scanner noise is added by
:func:`covidct.phantom.make_phantom`.

The painting order matters (later structures overwrite earlier ones) and so does the
order of random draws (a phantom is deterministic per seed): keep both when editing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from covidct.labels import LEFT_LUNG, RIGHT_LUNG
from covidct.phantom.geometry import Grid, smooth_field, smoothstep, superellipse_r
from covidct.phantom.vessels import vessel_tree

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

# Airway landmarks (x, y mm; t height).
_CARINA = (0.0, 20.0, 0.63)
_HILUM_RIGHT = (-50.0, 8.0, 0.53)
_HILUM_LEFT = (48.0, 12.0, 0.51)


@dataclass
class Anatomy:
    """The noiseless HU volume and the masks later stages need."""

    vol: np.ndarray  # float32 HU, painted in place by the lesion stage too
    body: np.ndarray  # bool, inside the skin
    lungs: np.ndarray  # uint8 lung labels (covidct.labels)
    vessels: np.ndarray  # bool, lung voxels that read as vessel (kept out of the GGO label)


@dataclass
class _Torso:
    """Masks of the non-lung anatomy that the lung (or solid-thorax) painting works around."""

    inner_fat: np.ndarray
    cavity: np.ndarray
    para: np.ndarray
    spine_block: np.ndarray
    heart_radius: np.ndarray
    heart: np.ndarray
    heart_fat: np.ndarray
    aorta: np.ndarray
    pa: np.ndarray
    svc: np.ndarray
    bronchi_wall: np.ndarray
    airway: np.ndarray
    airway_wall: np.ndarray
    abdomen: np.ndarray
    stomach_gas: np.ndarray
    bowel_gas: np.ndarray
    dome_left: np.ndarray
    dome_right: np.ndarray


def paint_anatomy(g: Grid, rng: np.random.Generator, lungs: bool) -> Anatomy:
    """Paint a normal chest on ``g``; ``lungs=False`` fills the thorax with soft tissue and no gas."""
    full = g.shape
    vol = np.full(full, AIR, dtype=np.float32)
    body, torso = _paint_torso(g, rng, vol)
    if lungs:
        lung_lbl, vessels = _paint_lungs(g, rng, vol, torso)
    else:
        lung_lbl = np.zeros(full, dtype=np.uint8)
        vessels = np.zeros(full, dtype=bool)
        # No lungs: the thorax is solid (soft tissue and fat) and there is no gas anywhere.
        t = torso
        solid = t.cavity & ~t.abdomen & ~t.heart & ~t.heart_fat & ~t.aorta & ~t.pa & ~t.svc & ~t.spine_block & ~t.para
        sp = np.asarray(g.spacing, dtype=np.float32)
        tex = smooth_field(rng, full, tuple(float(v) for v in 12.0 / sp))
        vol[solid] = np.where(tex[solid] > 0.3, MED_FAT, 35.0)
        vol[t.airway_wall & t.inner_fat] = MUSCLE
    return Anatomy(vol=vol, body=body, lungs=lung_lbl, vessels=vessels)


def _body_axes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half width and half depth of the body at height t (abdomen < 0 < chest < 1 < shoulders)."""
    w_abd = 1.0 - smoothstep(-0.15, 0.05, t)
    w_sh = smoothstep(0.95, 1.08, t)
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


def _paint_torso(g: Grid, rng: np.random.Generator, vol: np.ndarray) -> tuple[np.ndarray, _Torso]:
    """Body wall, table, skeleton, mediastinum and upper abdomen, painted into ``vol``."""
    full = g.shape
    X, Y, T = g.X, g.Y, g.T
    sp = np.asarray(g.spacing, dtype=np.float32)

    # ---- body wall: skin/fat, muscle, thoracic (or abdominal) cavity
    bx, by = _body_axes(g.t1)
    bx, by = bx[:, None, None], by[:, None, None]
    body = superellipse_r(X, Y, bx, by) <= 1.0
    inner_fat = superellipse_r(X, Y, bx - _FAT_MM, by - _FAT_MM) <= 1.0
    cx, cy = bx - _WALL_MM, by - _WALL_MM + 4.0
    rc = superellipse_r(X, Y, cx, cy)
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
    disc = np.mod(g.Zmm, 27.0) < 5.0
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
    trachea = g.cylinder(0.0, 20.0, 9.0, _CARINA[2], 3.0)
    trachea_wall = g.cylinder(0.0, 20.0, 11.0, _CARINA[2] - 0.02, 3.0)
    bronchi = g.tube(_CARINA, _HILUM_RIGHT, 6.5) | g.tube(_CARINA, _HILUM_LEFT, 6.0)
    bronchi_wall = g.tube(_CARINA, _HILUM_RIGHT, 8.5) | g.tube(_CARINA, _HILUM_LEFT, 8.0)
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
        loops = smooth_field(rng, full, sig)
        vol[bowel_zone & (loops > 0.0)] = BOWEL_WALL
        bowel_gas = bowel_zone & (loops > 1.2)
    if stomach.any():
        # Gas rises to the front of the stomach in a supine patient.
        stomach_gas = stomach & (Y < -22.0 - 0.55 * 42.0)
    # Aorta and oesophagus pass behind the abdominal organs; repaint them.
    vol[aorta & inner_fat] = BLOOD
    vol[oesophagus & inner_fat & abdomen] = MUSCLE

    torso = _Torso(
        inner_fat=inner_fat,
        cavity=cavity,
        para=para,
        spine_block=spine_block,
        heart_radius=hr,
        heart=heart,
        heart_fat=heart_fat,
        aorta=aorta,
        pa=pa,
        svc=svc,
        bronchi_wall=bronchi_wall,
        airway=airway,
        airway_wall=airway_wall,
        abdomen=abdomen,
        stomach_gas=stomach_gas,
        bowel_gas=bowel_gas,
        dome_left=dome_l,
        dome_right=dome_r,
    )
    return body, torso


def _paint_lungs(g: Grid, rng: np.random.Generator, vol: np.ndarray, t: _Torso) -> tuple[np.ndarray, np.ndarray]:
    """Lungs with parenchyma, vessel trees and open airways; returns (lung labels, vessel mask)."""
    full = g.shape
    X, Y, T = g.X, g.Y, g.T
    spacing = g.spacing
    sp = np.asarray(spacing, dtype=np.float32)
    lung_lbl = np.zeros(full, dtype=np.uint8)
    vfrac = np.zeros(full, dtype=np.float32)
    pad = 3.0  # pleura + fat between lung and mediastinal structures
    block = (t.heart_radius <= 1.18 + 0.1) | t.aorta | g.cylinder(22.0, 44.0, 12.0 + pad, -2.0, 0.80)
    block |= g.cylinder(-12.0, -22.0, 14.0 + pad, 0.45, 0.79) | g.tube((-12.0, -22.0, 0.79), (22.0, 44.0, 0.79), 16.0)
    block |= g.cylinder(14.0, -34.0, 13.0 + pad, 0.48, 0.60) | t.pa | g.cylinder(-34.0, -14.0, 9.0 + pad, 0.52, 0.95)
    block |= g.cylinder(-4.0, 40.0, 7.0 + pad, -0.15, 3.0) | g.cylinder(0.0, 20.0, 11.0 + pad, 0.6, 3.0)
    block |= t.bronchi_wall | t.spine_block | t.para
    for side, sgn in ((LEFT_LUNG, 1.0), (RIGHT_LUNG, -1.0)):
        # Apex taper: a shrinking ellipse per side above mid-chest; right lung a bit wider.
        grow = 1.0 if side == LEFT_LUNG else 1.06
        tau = np.sqrt(np.clip((1.0 - T) / 0.36, 0.0, None)) * grow
        ell = ((X - sgn * 78.0) / (100.0 * tau + 1e-3)) ** 2 + ((Y - 12.0) / (112.0 * tau + 1e-3)) ** 2 <= 1.0
        side_half = (sgn * X) > 5.0
        dome_s = t.dome_left if side == LEFT_LUNG else t.dome_right
        region = t.cavity & side_half & ell & (T > dome_s) & (T > 0.0) & (T < 1.0) & ~block
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
    mott = smooth_field(rng, tuple(hi - lo), tuple(float(v) for v in 6.0 / sp))
    par = LUNG + 30.0 * np.broadcast_to(Y / 90.0, full)[bb] + 10.0 * mott
    sub = vol[bb]
    sub[lung_any[bb]] = par[lung_any[bb]]
    # Vessel trees from each hilum.
    n_lung, m = g.n_lung, g.margin
    for side, hil in ((LEFT_LUNG, _HILUM_LEFT), (RIGHT_LUNG, _HILUM_RIGHT)):
        hv = np.array(
            [
                (hil[2] * n_lung) + m - 0.5,
                (hil[1] * g.s + (-0.03 * full[1] * spacing[1])) / spacing[1] + (full[1] - 1) / 2.0,
                (hil[0] * g.s) / spacing[2] + (full[2] - 1) / 2.0,
            ]
        )
        side_mask = lung_lbl[bb] == side
        vfrac[bb] = np.maximum(vfrac[bb], vessel_tree(rng, side_mask, hv - lo, sp))
    vessels = vfrac >= 0.5  # voxels that read as vessel (kept out of the GGO label)
    hit = vfrac > 0
    vol[hit] = vol[hit] * (1.0 - vfrac[hit]) + BLOOD * vfrac[hit]
    # Airways: lumen air (wall painted first; the lumen overrides it).
    vol[t.airway_wall & t.inner_fat & ~t.airway] = MUSCLE
    vol[t.airway & t.inner_fat] = AIR
    vol[t.stomach_gas] = GAS
    vol[t.bowel_gas] = GAS
    return lung_lbl, vessels
