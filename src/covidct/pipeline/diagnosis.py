"""Diagnosis stage: COVID-19 / other pneumonia / normal, and the RSNA / CO-RADS pattern behind it.

A volume gets its diagnosis from the lesion pattern (:func:`diagnose`, covidct.pattern); a single 2-D
image, which has no 3-D pattern, keeps the rule on the measured findings (:func:`diagnose_from_findings`).
"""

from __future__ import annotations

import numpy as np

from covidct.labels import DIAGNOSIS_CLASSES
from covidct.pattern import OPACITY_PERCENT, OPACITY_PERCENT_HU_RULE, OPENING_RADIUS_MM, analyse_pattern
from covidct.pipeline import hu_rules
from covidct.volume import CT, dependent_side

PATTERN_METHOD = (
    "from the lesion pattern (covidct.pattern; rules with literature thresholds, not fitted to patients): "
    "P(abnormal) from the parenchymal opacity (50 % at {abnormal_percent:g} % of the lungs) and non-COVID findings; COVID-19 "
    "against other pneumonia from where and what the opacities are: the CO-RADS score's pooled COVID-19 frequency "
    "(Kwee et al. 2021 meta-analysis), moved a little by the pattern (RSNA consensus, CO-RADS): see `pattern`"
)

# The highest false involvement the shipped models gave on the benchmark's lesion-free phantoms (3.71 %,
# docs/BENCHMARKS.md; P001's infection-free slices: 3.41 %), rounded up: below it, findings cannot be told
# from the models' false positives.
FALSE_INVOLVEMENT_PCT = 4.0
# The same for the HU lesion rule of whole HU volumes (pipeline.hu_rules): the pattern's abnormal level (twice
# the rule's highest false involvement on a lesion-free volume, rounded up), so warning and diagnosis agree.
HU_RULE_FALSE_INVOLVEMENT_PCT = OPACITY_PERCENT_HU_RULE


def low_involvement_warnings(sev: dict, hu_rule: bool = False) -> list[str]:
    """A warning when the total involvement is within the measured false-positive level of the lesions' source
    (the lesion models, or the HU rule with ``hu_rule``)."""
    level = HU_RULE_FALSE_INVOLVEMENT_PCT if hu_rule else FALSE_INVOLVEMENT_PCT
    total = float(sev["involvement"]["total"])
    if total >= level:
        return []
    where = ("what the HU lesion rule may mark in lesion-free lungs (pieces of thick vessels, dependent density; "
             "measured on phantoms and healthy real series)" if hu_rule else
             "what the lesion models mark in lesion-free lungs (vessels, lung bases; measured on phantoms and on a "
             "real series' infection-free slices)")
    return [
        f"total involvement {total:.1f} % is below {level:g} %, about {where}: at this level the lesion figures, "
        "severity score and diagnosis cannot be told from false positives"
    ]


# A scan that stops inside the lungs (an abdominal CT with the lung bases, a cardiac or neck CT, a series cut short)
# has lung on its first or last slice. A few cm² there are the tip of a costophrenic recess or of an apex the scan
# just reaches (P001's first slice: 8.4 cm², 2 % of its largest slice's lung; the demo phantom's top slice 7 %); this
# share of the largest slice's lung means a noticeable part of the lungs lies outside the scan (the TotalSegmentator
# abdominal example: its top slice holds its largest lung area). Chosen on those cases (docs/BENCHMARKS.md,
# twenty-third session).
CUT_LUNG_SHARE = 0.10


def coverage_warnings(lungs: np.ndarray, spacing: tuple[float, float, float]) -> list[str]:
    """A warning when the lung mask of a volume runs on past its top or bottom slice (canonical z: index 0 at the
    feet end): its measures then describe the scanned part of the lungs only."""
    area = (np.asarray(lungs) > 0).reshape(len(lungs), -1).sum(1)
    if len(area) < 3 or not area.any():
        return []
    cm2 = float(spacing[1]) * float(spacing[2]) / 100.0
    ends = [(f"its top slice (the head end: {area[-1] * cm2:.0f} cm² of lung on it)", area[-1]),
            (f"its bottom slice (the feet end: {area[0] * cm2:.0f} cm² of lung on it)", area[0])]
    cut = [name for name, a in ends if a >= CUT_LUNG_SHARE * area.max()]
    if not cut:
        return []
    return [f"the scan cuts the lungs at {' and at '.join(cut)}: part of the lungs lies outside it, so the lung "
            "volumes, involvement, zones, severity score and pattern describe the scanned part only"]


# In healthy adults the left lung is about 10-20 % smaller than the right (normal001: 0.86 of it; the other real
# series here 0.8-1.1). A lung mask under half the other lung's volume means airless lung that the mask leaves out
# (collapse, a large pleural effusion or consolidation: not measured, docs/BENCHMARKS.md "Diffuse disease", twentieth
# session) or a removed lung or lobes.
SMALL_LUNG_RATIO = 0.5


def asymmetry_warnings(sev: dict) -> list[str]:
    """A warning when one lung's mask is under ``SMALL_LUNG_RATIO`` of the other's volume."""
    vox = {side: int(sev["per_lung"][side]["lung_vox"]) for side in ("left", "right")}
    small, big = sorted(vox, key=vox.get)
    if vox[big] == 0 or vox[small] >= SMALL_LUNG_RATIO * vox[big]:
        return []
    return [f"the {small} lung measures {100.0 * vox[small] / vox[big]:.0f} % of the {big} lung's volume: part of it may be "
            "airless (collapse, a large pleural effusion or consolidation, which the lung mask leaves out and covidct "
            "does not measure) or removed, so the lesion figures and the reading may miss disease there"]


# How much of the true lesion volume the HU rule finds, measured on synthetic chest phantoms with voxel truth (seed 0 at
# 5 mm and at 2.5 mm slices; docs/BENCHMARKS.md, "How conservative the HU rule's extent is"): what it marks is right
# (precision 0.98), but it finds a fraction, and consolidated lung outside the lung mask is never scored.
HU_RULE_FOUND_GGO = (0.20, 0.44)
HU_RULE_FOUND_CONSOLIDATION = (0.04, 0.13)


def conservative_extent_warnings(sev: dict, hu_rule: bool) -> list[str]:
    """For a whole HU volume with lesions above the HU rule's false-positive level: its lesion figures are lower bounds
    (below that level :func:`low_involvement_warnings` speaks instead)."""
    if not hu_rule or float(sev["involvement"]["total"]) < HU_RULE_FALSE_INVOLVEMENT_PCT:
        return []
    g, c = HU_RULE_FOUND_GGO, HU_RULE_FOUND_CONSOLIDATION
    return [
        "lesion volumes, involvement and severity are lower bounds: the HU rule that draws GGO and consolidation on "
        f"whole HU volumes found {100 * g[0]:.0f}-{100 * g[1]:.0f} % of the GGO and {100 * c[0]:.0f}-{100 * c[1]:.0f} % "
        "of the consolidation of synthetic phantoms with voxel truth (what it marks is right), and consolidated lung "
        "outside the lung mask is not scored"
    ]


# The HU rule's settings were chosen on 2-2.5 mm slices and checked on 2-7.5 mm ones. Its 3-D opening reaches one slice
# up and down, so on thinner slices it removes less of the vessels' partial-volume shells: the two healthy series here,
# interpolated to 0.67 and 0.625 mm slices, got 47 and 21 mL of lesions and read as pneumonia (docs/BENCHMARKS.md,
# sixteenth session; no real thin-slice series was at hand to measure).
THIN_SLICE_MM = 1.95


def thin_slice_warnings(ct: CT, hu_rule: bool) -> list[str]:
    """For a whole HU volume with slices thinner than the HU rule was chosen on: its lesions may include vessels (it
    replaces :func:`conservative_extent_warnings`, measured on 2.5 and 5 mm slices)."""
    if not hu_rule or not ct.spacing_known or float(ct.spacing[0]) >= THIN_SLICE_MM:
        return []
    return [
        f"{float(ct.spacing[0]):.3g} mm slices: the HU rule that draws GGO and consolidation was chosen on 2-2.5 mm "
        "slices; on thinner ones it can also mark the partial volume of vessels as GGO (a healthy series interpolated "
        "to 1.0 and 0.67 mm slices got 19 and 47 mL of lesions and read as pneumonia; a pneumonia series at 1.0 mm "
        "read as COVID-19), so its figures here are not lower bounds and the reading may be wrong; a 2-5 mm "
        "reconstruction of the same study is read more reliably"
    ]


# Slices thinner than this share of their spacing leave gaps between them (an incremental or sequential acquisition, or
# a subset of a series' slices); contiguous and overlapping reconstructions have a thickness of the spacing or more.
GAPPED_THICKNESS_SHARE = 0.6


def gapped_slice_warnings(ct: CT, hu_rule: bool) -> list[str]:
    """For a whole HU volume whose slices (DICOM SliceThickness) are much thinner than the distance between them: the HU
    rule's 3-D vessel filter reads neighbouring slices as contiguous, and over the gaps it removes lesions."""
    thick = ct.meta.get("slice_thickness")
    dz = float(ct.spacing[0])
    if not hu_rule or not ct.spacing_known or not thick or float(thick) > GAPPED_THICKNESS_SHARE * dz:
        return []
    return [
        f"the slices are {float(thick):.3g} mm thick but {dz:.3g} mm apart (an incremental or sequential acquisition, or "
        "a subset of a series' slices): the HU rule that draws GGO and consolidation filters vessels over neighbouring "
        "slices as if they touched, and over the gaps it also removes lesions (a pneumonia series read on every third "
        "of its 2 mm slices lost 75-76 % of its GGO and read as normal; a COVID-19 series on every fifth lost 63-74 %), "
        "so lesion figures are under-counted and the reading may be wrong; a contiguous reconstruction of the study is "
        "read more reliably"
    ]


# Metal (a pacemaker and its leads, spinal rods, a port, a central line's tip) and undiluted iodinated contrast lie far
# above bone, which reaches at most about 2000 HU in the real series here (docs/BENCHMARKS.md, "Metal implants"); their
# streak artefacts change the HU values of the lung around them. Ten 1 mm³ voxels or more: not a stray bright voxel.
METAL_HU = 2500.0
METAL_MIN_ML = 0.01


def metal_warnings(ct: CT, lungs: np.ndarray, hu_rule: bool) -> list[str]:
    """For a whole HU volume holding metal or undiluted contrast (above ``METAL_HU``) on slices with lung (``lungs`` >
    0): its streaks change the HU values the HU rule reads, near it and along the streaks (in the slice's plane)."""
    if not hu_rule:
        return []
    with_lung = lungs.reshape(len(lungs), -1).any(1)
    zs = np.flatnonzero(with_lung)
    if zs.size == 0:
        return []
    dense = ct.array[zs[0] : zs[-1] + 1] >= METAL_HU  # over the lungs' slab only
    dense[~with_lung[zs[0] : zs[-1] + 1]] = False
    ml = float(np.count_nonzero(dense)) * ct.voxel_volume_ml
    if ml < METAL_MIN_ML:
        return []
    n = int(np.count_nonzero(dense.any((1, 2))))
    return [
        f"metal or undiluted contrast ({ml:.2g} mL above {METAL_HU:.0f} HU, on {n} of the {zs.size} slices with lung): "
        "its streak artefacts change the HU values of the lung around it, so lesions there may be added or missed "
        "(a pacemaker and spinal rods simulated on the four real series here moved their lesion volumes by -7.6 to "
        "+2.6 mL; the healthy ones still read normal, the borderline pneumonia series read as COVID-19 with the rods)"
    ]


def density_warnings(notes: dict | None) -> list[str]:
    """For a whole HU volume whose aerated lung is denser than in any volume the HU rule was measured on (the rule's
    ``notes``, :func:`covidct.pipeline.hu_rules.hu_lesions`): after a shallow breath or on expiration, or with disease
    over much of the lung. Says whether the GGO floor was raised (only with ``ggo_follows_aerated``, off by default)."""
    notes = notes or {}
    dense = notes.get("aerated_lung_hu")
    if dense is None or dense <= hu_rules.INSPIRED_LUNG_HU:
        return []
    lift = notes.get("ggo_floor_lift_hu") or 0.0
    best = notes.get("best_aerated_lung_hu")
    if lift >= 0.5:
        floor = (f"the rule raised its GGO floor by {lift:.0f} HU, as far as the best-aerated lung is denser too, so the "
                 "faintest GGO may be missed")
    elif best is not None and best <= hu_rules.DENSEST_BEST_AERATED_HU:
        # a shallow breath makes all of the lung denser; disease leaves its best-aerated part as it is
        floor = (f"its best-aerated part is as aerated as in those series (1st percentile {best:.0f} HU), which points to "
                 "disease over much of the lung rather than a shallow breath; the rule's GGO floor is kept")
    else:
        floor = ("the rule's GGO floor is fixed, so if this is a shallow breath, healthy lung (mostly at the dependent "
                 "bases) may be counted as GGO (healthy series simulated 100 HU denser: 36 and 106 mL, read as "
                 "pneumonia) and the lesion figures and diagnosis may be too high; `covidct analyze "
                 "--ggo-floor-follows-lung` reads such a scan with the floor raised as far as the best-aerated lung is "
                 "denser")
    return [
        f"the aerated lung is denser than in any series the HU rule was measured on (its 10th percentile {dense:.0f} "
        f"HU against at most {hu_rules.DENSEST_AERATED_HU:.0f}): after a shallow breath or on expiration healthy lung "
        f"reads as GGO, and disease over much of the lung raises this figure too; {floor}. A scan in full "
        "inspiration is read more reliably"
    ]


def noise_warnings(notes: dict | None) -> list[str]:
    """For a whole HU volume whose lung is noisier than any series the HU rule was chosen on (the rule's ``notes``,
    :func:`covidct.pipeline.hu_rules.hu_lesions`), as with a sharp "lung" reconstruction kernel, a low dose or the arms
    down (``benchmarks/arms_down.py``); contrast-filled lung vessels raise the measure too (docs/BENCHMARKS.md)."""
    noise = (notes or {}).get("lung_noise_hu")
    if noise is None or noise <= hu_rules.SOFT_KERNEL_NOISE_HU:
        return []
    return [
        f"the lung is noisier than in the soft-kernel series the HU rule was chosen on ({noise:.0f} HU against at most "
        f"{hu_rules.SOFT_KERNEL_NOISE_HU:.0f}; a sharp 'lung' reconstruction kernel, a low dose or the arms down beside "
        "the chest? contrast in the lung vessels of a pulmonary angiography raises this figure too): noise breaks "
        "faint GGO up, so lesions may be under-counted and the reading may change (a pneumonia series under a "
        "simulated sharp kernel lost 19-45 % of its lesion volume and read as COVID-19; the four real series here with "
        "the arms down simulated moved by -2.7 to +0.5 mL and kept their readings); a soft-tissue kernel "
        "reconstruction of the same study, where there is one, is read more reliably"
    ]


# Soft-tissue-dense tissue (above the fluid range up to 80 HU) against the dependent lung inside the rib cage and outside
# the lung mask (covidct.pipeline.pleural; pieces of at least 5 mL that touch the lung): airless lung (dependent
# consolidation, atelectasis) or a dense effusion, in neither the lung mask nor the lesion figures. The synthetic
# phantoms' paravertebral muscle, which lies inside their rib line, gives up to 65 mL (docs/BENCHMARKS.md,
# forty-second session): a warning from 100 mL.
AIRLESS_WARN_ML = 100.0


def airless_warnings(notes: dict | None) -> list[str]:
    """For a supine whole HU volume with at least ``AIRLESS_WARN_ML`` of soft-tissue-dense tissue between the lungs and
    the ribs, outside the lung mask (the HU rule's ``notes``, from :func:`covidct.pipeline.lesions.segment_lesions`)."""
    ml = (notes or {}).get("airless_outside_lungs_ml")
    if ml is None or ml < AIRLESS_WARN_ML:
        return []
    return [
        f"{ml:.0f} mL of soft-tissue-dense tissue (30-80 HU) lies against the dependent lung inside the rib cage, "
        "outside the lung mask: airless lung (dependent consolidation or collapse, as in severe pneumonia or ARDS) or a "
        "dense pleural effusion. It is in neither the lung volumes nor the lesion figures, severity score and reading "
        "(healthy lungs with such consolidation simulated over 15-30 % of them read normal in three of four cases): check "
        "the scan"
    ]


def diagnose_from_findings(sev: dict) -> dict:
    """COVID-19 / other pneumonia / normal from the lesion findings (an interpretable rule, not fitted to data).

    P(abnormal) rises with total involvement: a logistic curve in log10(involvement) centred at
    ``FALSE_INVOLVEMENT_PCT``, the involvement the models mark in lesion-free lungs (measured on
    phantoms, and matched by a real series' infection-free slices), so that their false positives
    alone are not taken as disease (a centre at 1 % called every normal phantom COVID-19);
    within abnormal, the COVID-19 share rises with the typical CT pattern of the RSNA consensus:
    bilateral, ground-glass-predominant opacities. Used for a single 2-D image only (a volume's diagnosis reads
    the pattern); a peripheral term read a 3-D depth that a single image never had (always 0 there), and went
    with it.
    """
    inv = max(float(sev["involvement"]["total"]), 1e-4)
    p_abn = 1.0 / (1.0 + np.exp(-3.0 * (np.log10(inv) - np.log10(FALSE_INVOLVEMENT_PCT))))
    typical = 0.25 + 0.25 * float(sev["bilateral"]) + 0.25 * float(sev["ggo_fraction"])
    typical = min(max(typical, 0.05), 0.95)
    probs = {"covid19": p_abn * typical, "pneumonia": p_abn * (1 - typical), "normal": 1.0 - p_abn}
    label = max(probs, key=probs.get)
    return {
        "label": label,
        "probabilities": {k: round(float(probs[k]), 4) for k in DIAGNOSIS_CLASSES},
        "method": (
            f"rule on lesion findings (not fitted to data): P(abnormal) from total involvement (logistic, 50 % at "
            f"{FALSE_INVOLVEMENT_PCT:g} %, the models' false-positive level in lesion-free lungs); "
            "COVID-19 share from bilateral, GGO-predominant pattern (RSNA typical appearance)"
        ),
    }


def pattern_reading(ct: CT) -> dict:
    """How the pattern reads this CT's lesion masks (keyword arguments of covidct.pattern.analyse_pattern):
    the HU rule's masks (already cleaned of vessels in 3-D) without a second opening and abnormal from its own
    false-positive level; the lesion models' masks opened by the 3 mm ball, abnormal from theirs."""
    if hu_rules.applies(ct.is_hu, ct.n_slices):
        return {"opening_mm": 0.0, "abnormal_percent": OPACITY_PERCENT_HU_RULE}
    return {"opening_mm": OPENING_RADIUS_MM, "abnormal_percent": OPACITY_PERCENT}


def diagnose(ct: CT, lungs: np.ndarray, lesions: np.ndarray, sev: dict, mode: str) -> tuple[dict, dict | None]:
    """The report's ``diagnosis`` and ``pattern``: from the lesion pattern for a volume; for a single 2-D
    image the findings rule and no pattern (``None``)."""
    if mode != "volume":
        return diagnose_from_findings(sev), None
    reading = pattern_reading(ct)
    res = analyse_pattern(lungs, lesions, ct.spacing, ct.array if ct.is_hu else None, dependent=dependent_side(ct),
                          **reading)
    method = PATTERN_METHOD.format(abnormal_percent=reading["abnormal_percent"])
    return {"label": res.label, "probabilities": res.probabilities, "method": method}, res.report()
