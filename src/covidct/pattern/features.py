"""Pattern features of the lung lesions: side, periphery, zone, dependency, foci, composition, nodules, effusion.

``measure_pattern(lungs, lesions, spacing, hu)`` returns plain numbers (name -> value); ``FEATURE_DOCS``
documents each one (unit, definition, literature threshold). covidct.pattern.category turns them into
the RSNA category, the CO-RADS score and the diagnosis.

Robustness to false lesions (before any threshold): the features are measured on *parenchymal
opacities*: GGO + consolidation inside the lungs after a morphological opening with a 3 mm ball
(structures thinner than 6 mm, i.e. vessels beyond the hila, linear atelectasis and mask rims, are not
opacities), without the connected opacities that lie almost entirely (>= 80 %) in the 10 mm above the
dependent lung edge (posterior for a supine patient; anterior when prone, the side lain on in decubitus: DICOM
Patient Position, covidct.volume.DEPENDENT_SIDE): those are dependent density (gravitational hypoventilation),
reported separately as ``dependent_density_ml`` and never taken as a peripheral COVID-19 opacity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.pattern.geometry import lung_geometry
from covidct.volume import SUPINE

OPENING_RADIUS_MM = 3.0  # opacities at least 6 mm across
DEPENDENT_BAND_MM = 10.0  # dependent density: a subpleural band up to ~1 cm thick at the dependent edge
DEPENDENT_SHARE = 0.8  # share of an opacity inside that band for it to count as dependent density
WORKING_SPACING_MM = 1.4  # in-plane spacing the features are measured at (fractions barely change)
FOCUS_MIN_ML = 1.0  # a focus: a connected opacity of at least 1 mL (a 12 mm ball)
ROUND_AXIS_RATIO = 0.5  # round: shortest / longest principal axis >= 0.5
NODULE_DIAMETER_MM = (6.0, 30.0)  # Fleischner glossary: a nodule is <= 3 cm; below 6 mm the opening removes it
SEGMENT_SHARE = 1.0 / 18.0  # an average bronchopulmonary segment is about 1/18 of the lungs

FEATURE_DOCS: dict[str, tuple[str, str, str]] = {
    # name: (unit, definition, literature / threshold)
    "opacity_ml": ("mL", "parenchymal opacity volume (GGO + consolidation; model masks: >= 6 mm thick; dependent density excluded)",
                   "RSNA negative: no opacity"),
    "opacity_percent": ("%", "opacity_ml / lung volume",
                        "abnormal when >= 1 % for the lesion models' masks (their highest false opacity on lesion-free phantoms, 0.82 %, rounded up); >= 0.4 % for the HU rule's masks of HU volumes (twice its highest on any lesion-free volume, 0.172 %, rounded up)"),
    "left_percent": ("%", "opacity in the left lung / left lung volume", ""),
    "right_percent": ("%", "opacity in the right lung / right lung volume", ""),
    "minor_side_share": ("0-1", "share of the opacity volume in the less involved lung",
                         "bilateral when >= 0.1 (each lung holds at least a tenth); RSNA typical: bilateral"),
    "peripheral_fraction": ("0-1", "share of opacity in the outer third of the lung (relative depth from the costal "
                            "pleura to the hilum <= 1/3, per axial slice)",
                            "peripheral predominant when >= 0.5 (RSNA typical: peripheral, the outer third as radiology reports use it)"),
    "lung_peripheral_fraction": ("0-1", "share of the lung volume itself in that outer third",
                                 "what an evenly spread (diffuse) opacity shows; 0.48-0.51 on the real volumes here"),
    "peripheral_odds_ratio": ("ratio", "odds of an opacity voxel lying in the outer third over the odds of a lung voxel "
                              "(how much more opacity per mL of lung the outer third holds than the rest; 1 = diffuse)",
                              "reported; not used by the rules (a diffuse opacity, about 1, can hold half of itself in the outer third)"),
    "perihilar_fraction": ("0-1", "share of opacity in the inner third (relative depth >= 2/3)",
                           "RSNA indeterminate: perihilar; central predominant when >= 0.4"),
    "lower_zone_fraction": ("0-1", "share of opacity in the lower third of each lung's cranio-caudal extent",
                            "lower-zone predominant when > upper and >= 0.4 (COVID-19 series report lower-lobe predominance)"),
    "upper_zone_fraction": ("0-1", "share of opacity in the upper third", ""),
    "posterior_fraction": ("0-1", "share of opacity in the posterior half of the lung (same slice and lung)",
                           "posterior predominant when >= 0.6 (COVID-19 series report posterior predominance)"),
    "dependent_density_ml": ("mL", "connected opacities >= 80 % within 10 mm of the dependent lung edge "
                             "(posterior when supine, anterior when prone: DICOM Patient Position)",
                             "dependent density is physiological, not pneumonia; excluded from the opacities"),
    "n_foci": ("count", "connected opacities of >= 1 mL", "multifocal when >= 3 (RSNA typical/indeterminate)"),
    "n_round_foci": ("count", "foci of at most one segment (1/18 of the lungs) with shortest/longest principal axis >= 0.5",
                     "RSNA typical: multifocal round GGO (>= 3 round GGO-predominant foci)"),
    "round_foci_sides": ("count 0-2", "lungs holding at least one of those round GGO-predominant foci",
                         "RSNA typical / CO-RADS 5: multifocal round GGO in both lungs (2)"),
    "largest_focus_share": ("0-1", "largest focus / opacity volume", "reported; not used by the rules"),
    "zones_involved": ("count 0-6", "lung thirds (3 per lung) holding >= 5 % of the opacity volume", "reported; not used by the rules"),
    "ggo_fraction": ("0-1", "GGO / (GGO + consolidation) of the opacity",
                     "GGO predominant when >= 0.5 (RSNA typical: GGO with or without consolidation)"),
    "largest_consolidation_percent": ("%", "largest connected consolidation (>= 6 mm thick) / lung volume",
                                      "lobar/segmental when >= half a segment (1/36 of the lungs, 2.8 %)"),
    "consolidation_focus_ggo_fraction": ("0-1", "GGO share of the opacity focus holding the largest consolidation",
                                         "RSNA atypical: consolidation without GGO (< 0.3)"),
    "effusion_ml": ("mL", "pleural effusion volume (label 3)", "present when >= 20 mL"),
    "effusion_sides": ("count 0-2", "sides with >= 10 mL of effusion", ""),
    "n_nodules": ("count", "discrete solid nodules: connected GGO/consolidation 6-30 mm across, round, >= 50 % "
                  "consolidation, surrounded by lung (>= 90 % of a 2-voxel ring inside the lungs)",
                  "RSNA atypical: discrete small nodules (nodular pattern when >= 3)"),
    "nodule_ml": ("mL", "volume of those nodules", ""),
    "septal_line_fraction": ("0-1", "share of the aerated outer-third lung made of thin (< 4 mm) dense lines "
                             "(-500 HU and above) outside lesions; null without HU",
                             "smooth septal thickening when >= 0.08 (set on phantoms, not on patients)"),
}


def _ball(spacing: tuple[float, float, float], r_mm: float) -> np.ndarray:
    rz, ry, rx = (max(0, int(np.floor(r_mm / s))) for s in spacing)
    z, y, x = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    return (z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= r_mm * r_mm + 1e-6


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        nz = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(nz[0]) - margin, 0), min(int(nz[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def _axis_ratio(coords: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Shortest / longest principal axis of a voxel set (1 = ball); 0 for fewer than 4 voxels."""
    if len(coords) < 4:
        return 0.0
    pts = coords * np.asarray(spacing)
    ev = np.linalg.eigvalsh(np.cov(pts.T) + np.eye(3) * (np.asarray(spacing) ** 2 / 12.0))
    return float(np.sqrt(max(ev[0], 0.0) / max(ev[-1], 1e-9)))


def working_grid(arrays: list[np.ndarray], spacing: tuple[float, float, float]) -> tuple[list[np.ndarray], tuple]:
    """Subsample in-plane to about ``WORKING_SPACING_MM`` (shares and counts barely change, time drops 4x)."""
    step = max(1, int(round(WORKING_SPACING_MM / max(spacing[1], 1e-6))))
    if step == 1:
        return arrays, tuple(float(s) for s in spacing)
    return [a[:, ::step, ::step] for a in arrays], (float(spacing[0]), spacing[1] * step, spacing[2] * step)


def measure_pattern(lungs: np.ndarray, lesions: np.ndarray, spacing: tuple[float, float, float],
                    hu: np.ndarray | None = None, opening_mm: float = OPENING_RADIUS_MM,
                    dependent: tuple[int, int] = SUPINE) -> dict:
    """All pattern features (see ``FEATURE_DOCS``) of one volume in covidct's canonical orientation.

    ``opening_mm``: the opening that keeps opacities at least twice as wide (it drops the lesion models'
    marks on vessels); 0 for lesion masks already cleaned of vessels (covidct's HU rule), where a second
    opening would remove fine and small real opacities (cap001: 1.25 % of the lungs -> 0.20 %). ``dependent``: the
    (axis, sign) of the side gravity pulls to (covidct.volume.dependent_side; supine by default)."""
    arrays = [np.asarray(lungs), np.asarray(lesions)] + ([np.asarray(hu)] if hu is not None else [])
    arrays, spacing = working_grid(arrays, spacing)
    lungs, lesions = arrays[0], arrays[1]
    hu = arrays[2] if hu is not None else None
    vml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    effusion = _effusion(lungs, lesions, vml)
    box = _crop_box(lungs > 0, margin=2)
    if box is None:
        return _empty(effusion)
    lungs, lesions = lungs[box], lesions[box]
    hu = None if hu is None else hu[box]
    geo = lung_geometry(lungs, spacing, dependent)
    inside = lungs > 0
    lung_ml = {lab: float(np.count_nonzero(lungs == lab)) * vml for lab in (LEFT_LUNG, RIGHT_LUNG)}
    infection = np.isin(lesions, (GGO, CONSOLIDATION)) & inside
    opened = ndimage.binary_opening(infection, _ball(spacing, opening_mm)) if opening_mm > 0 else infection

    comp, n = ndimage.label(opened, np.ones((3, 3, 3), bool))
    dependent = np.zeros(n + 1, bool)
    if n:
        in_band = opened & (geo.dependent_gap <= DEPENDENT_BAND_MM)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        band = np.bincount(comp[in_band], minlength=n + 1)
        dependent[1:] = band[1:] >= DEPENDENT_SHARE * sizes[1:]
    opacity = opened & ~dependent[comp]
    dependent_ml = float(np.count_nonzero(opened & dependent[comp])) * vml
    feats = {k: 0.0 for k in FEATURE_DOCS}
    feats.update(effusion)
    feats["dependent_density_ml"] = dependent_ml
    feats["septal_line_fraction"] = None if hu is None else _septal_line_fraction(hu, inside & ~infection, geo, spacing)
    feats.update(_nodules(infection, lesions, inside, spacing, vml))
    n_vox = int(np.count_nonzero(opacity))
    total_lung = lung_ml[LEFT_LUNG] + lung_ml[RIGHT_LUNG]
    feats["opacity_ml"] = n_vox * vml
    feats["opacity_percent"] = 100.0 * n_vox * vml / total_lung if total_lung else 0.0
    feats["lung_peripheral_fraction"] = float(np.mean(geo.relative_depth[inside] <= 1.0 / 3.0))
    if n_vox == 0:
        return _rounded(feats)
    side = lungs[opacity]
    per_side = {lab: float(np.count_nonzero(side == lab)) * vml for lab in (LEFT_LUNG, RIGHT_LUNG)}
    feats["left_percent"] = 100.0 * per_side[LEFT_LUNG] / lung_ml[LEFT_LUNG] if lung_ml[LEFT_LUNG] else 0.0
    feats["right_percent"] = 100.0 * per_side[RIGHT_LUNG] / lung_ml[RIGHT_LUNG] if lung_ml[RIGHT_LUNG] else 0.0
    feats["minor_side_share"] = min(per_side.values()) / (n_vox * vml)
    rel = geo.relative_depth[opacity]
    n_outer = int(np.count_nonzero(rel <= 1.0 / 3.0))
    feats["peripheral_fraction"] = n_outer / n_vox
    feats["peripheral_odds_ratio"] = peripheral_odds_ratio(n_outer, n_vox, feats["lung_peripheral_fraction"])
    feats["perihilar_fraction"] = float(np.mean(rel >= 2.0 / 3.0))
    zone = geo.zone[opacity]
    feats["lower_zone_fraction"] = float(np.mean(zone == 0))
    feats["upper_zone_fraction"] = float(np.mean(zone == 2))
    feats["posterior_fraction"] = float(np.mean(geo.ap_position[opacity] > 0.5))
    zone_counts = np.bincount((side.astype(np.int64) - 1) * 3 + np.clip(zone, 0, 2), minlength=6)
    feats["zones_involved"] = int(np.count_nonzero(zone_counts >= 0.05 * n_vox))
    kind = lesions[opacity]
    feats["ggo_fraction"] = float(np.mean(kind == GGO))
    feats.update(_foci(comp, opacity, lesions, lungs, spacing, vml, n_vox, total_lung))
    feats.update(_consolidation(lesions, comp, opacity, vml, total_lung))
    return _rounded(feats)


def peripheral_odds_ratio(n_outer: int, n_opacity: int, lung_share: float) -> float:
    """Odds of the opacity lying in the outer third over the lung's own odds (``lung_share``): 1 for an opacity
    spread evenly through the lung, above 1 when it favours the periphery. Why a ratio: the outer third holds
    about half the lung (0.48-0.51 on the real volumes), so a share of opacity of 0.5 is diffuse, not peripheral.
    Half a voxel is added to each side so that an opacity wholly in (or out of) the outer third stays finite."""
    if n_opacity == 0 or not 0.0 < lung_share < 1.0:
        return 0.0
    opacity_odds = (n_outer + 0.5) / (n_opacity - n_outer + 0.5)
    return float(opacity_odds / (lung_share / (1.0 - lung_share)))


def _foci(comp: np.ndarray, opacity: np.ndarray, lesions: np.ndarray, lungs: np.ndarray, spacing: tuple, vml: float,
          n_vox: int, total_lung_ml: float) -> dict:
    labels = np.where(opacity, comp, 0)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    foci = np.flatnonzero(sizes * vml >= FOCUS_MIN_ML)
    n_round, sides = 0, set()
    objects = ndimage.find_objects(labels)
    for i in foci:
        if sizes[i] * vml > SEGMENT_SHARE * total_lung_ml:
            continue  # larger than a segment: a confluent (lobar or diffuse) opacity, not one of RSNA's round foci
        sl = objects[i - 1]
        m = labels[sl] == i
        ggo = float(np.mean(lesions[sl][m] == GGO))
        if ggo >= 0.5 and _axis_ratio(np.argwhere(m), spacing) >= ROUND_AXIS_RATIO:
            n_round += 1
            # the lung holding most of it (a focus is rarely split by the midline)
            sides.add(int(np.bincount(lungs[sl][m], minlength=3)[1:].argmax()))
    return {"n_foci": int(foci.size), "n_round_foci": n_round, "round_foci_sides": len(sides),
            "largest_focus_share": float(sizes.max() / n_vox)}


def _consolidation(lesions: np.ndarray, comp: np.ndarray, opacity: np.ndarray, vml: float, total_lung: float) -> dict:
    cons = opacity & (lesions == CONSOLIDATION)
    lab, n = ndimage.label(cons, np.ones((3, 3, 3), bool))
    if n == 0:
        return {"largest_consolidation_percent": 0.0, "consolidation_focus_ggo_fraction": 0.0}
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    big = int(np.argmax(sizes))
    focus = int(np.bincount(comp[lab == big]).argmax())
    sl = ndimage.find_objects(comp, max_label=focus)[focus - 1]
    in_focus = comp[sl] == focus
    return {
        "largest_consolidation_percent": 100.0 * sizes[big] * vml / total_lung if total_lung else 0.0,
        "consolidation_focus_ggo_fraction": float(np.mean(lesions[sl][in_focus] == GGO)),
    }


def _nodules(infection: np.ndarray, lesions: np.ndarray, inside: np.ndarray, spacing: tuple, vml: float) -> dict:
    lab, n = ndimage.label(infection, np.ones((3, 3, 3), bool))
    lo, hi = NODULE_DIAMETER_MM
    count, volume = 0, 0.0
    ring_struct = np.ones((3, 3, 3), bool)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == i
        ml = float(m.sum()) * vml
        diameter = (6.0 * ml * 1000.0 / np.pi) ** (1.0 / 3.0)
        if not lo <= diameter <= hi:
            continue
        if np.mean(lesions[sl][m] == CONSOLIDATION) < 0.5 or _axis_ratio(np.argwhere(m), spacing) < ROUND_AXIS_RATIO:
            continue
        grown = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        mm = lab[grown] == i
        ring = ndimage.binary_dilation(mm, ring_struct, iterations=2) & ~mm
        if np.mean(inside[grown][ring]) >= 0.9:  # discrete: not against the pleura or the mediastinum
            count += 1
            volume += ml
    return {"n_nodules": count, "nodule_ml": volume}


def _septal_line_fraction(hu: np.ndarray, aerated: np.ndarray, geo, spacing: tuple) -> float:
    """Thin dense lines in the outer third of the aerated lung (interlobular septa, also small vessels)."""
    outer = aerated & (geo.relative_depth <= 1.0 / 3.0)
    if not outer.any():
        return 0.0
    dense = outer & (hu >= -500.0)
    r = [max(1, int(round(2.0 / s))) for s in spacing[1:]]
    disk = np.zeros((1, 2 * r[0] + 1, 2 * r[1] + 1), bool)
    yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1]
    # at least the 3x3 cross: a 2 mm disk on a coarser grid would be a single voxel (an opening that keeps all)
    disk[0] = (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= max(4.0, max(spacing[1:]) ** 2) + 1e-6
    thin = dense & ~ndimage.binary_opening(dense, disk)
    return float(np.count_nonzero(thin) / np.count_nonzero(outer))


def _effusion(lungs: np.ndarray, lesions: np.ndarray, vml: float) -> dict:
    eff = lesions == EFFUSION
    total = float(np.count_nonzero(eff)) * vml
    if total == 0:
        return {"effusion_ml": 0.0, "effusion_sides": 0}
    # the side of each effusion voxel: left of the midline between the lungs' centres of mass or right
    xs = np.arange(lungs.shape[2])
    n_left, n_right = ((lungs == lab).sum(axis=(0, 1)) for lab in (LEFT_LUNG, RIGHT_LUNG))
    n_eff = eff.sum(axis=(0, 1))
    if n_left.any() and n_right.any():
        mid = 0.5 * ((n_left * xs).sum() / n_left.sum() + (n_right * xs).sum() / n_right.sum())
        sides = [float(n_eff[xs >= mid].sum()) * vml, float(n_eff[xs < mid].sum()) * vml]
    else:
        sides = [total, 0.0]
    return {"effusion_ml": total, "effusion_sides": int(sum(s >= 10.0 for s in sides))}


def _empty(effusion: dict) -> dict:
    feats: dict = {k: 0.0 for k in FEATURE_DOCS}
    feats.update(effusion)
    feats["septal_line_fraction"] = None
    return _rounded(feats)


_COUNTS = ("n_foci", "n_round_foci", "round_foci_sides", "zones_involved", "effusion_sides", "n_nodules")


def _rounded(feats: dict) -> dict:
    out: dict = {}
    for k in FEATURE_DOCS:
        v = feats.get(k)
        if v is None:
            out[k] = None
        elif k in _COUNTS:
            out[k] = int(v)
        else:
            out[k] = round(float(v), 4)
    return out
