"""RSNA category, CO-RADS score, reasons and the three-class diagnosis, from the pattern features.

Rules, not fitted to patients (every threshold is a literature definition or says where it comes from):
- RSNA expert consensus (Simpson et al., Radiol Cardiothorac Imaging 2020): *typical* = peripheral,
  bilateral GGO with or without consolidation, or multifocal round GGO (here: in both lungs, as CO-RADS 5
  asks; unilateral is CO-RADS 4); *indeterminate* = no typical
  features but multifocal, diffuse, perihilar or unilateral GGO with or without consolidation;
  *atypical* = no typical or indeterminate features and isolated lobar/segmental consolidation without
  GGO, discrete small nodules, or smooth septal thickening with pleural effusion; *negative* = no CT
  features of pneumonia.
- CO-RADS (Prokop et al., Radiology 2020): 1 normal or non-infectious, 2 typical of another infection,
  3 equivocal, 4 high suspicion (typical features but unilateral), 5 typical of COVID-19.
- Diagnosis: P(abnormal) from the opacity amount plus the non-COVID findings (confluent consolidation,
  nodules, effusion); P(COVID-19 | abnormal) from the pattern alone: the pooled COVID-19 frequency of the CO-RADS
  score in patients suspected of COVID-19 (Kwee, Adams, Kwee, Radiol Cardiothorac Imaging 2021;3:e200510, a
  meta-analysis of 9 studies, 3283 patients), moved within ±0.45 log-odds by the pattern's bounded evidence terms
  (hand-set weights in the direction of the consensus). So the amount never decides COVID vs other, and an abnormal
  scan's label follows the category: CO-RADS ≥ 4 reads COVID-19 (the cut-off with the best pooled balance there, sensitivity
  85.8 %, specificity 84.6 %), CO-RADS 2–3 another pneumonia.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from covidct.labels import DIAGNOSIS_CLASSES

# --- thresholds (see FEATURE_DOCS in features.py for the definitions) ------------------------------
# Parenchymal opacity (>= 6 mm thick, dependent density excluded) that counts as abnormal: the highest
# false opacity of the shipped models on lesion-free 256² phantoms was 0.82 % (docs/BENCHMARKS.md, pattern
# section), rounded up. (On 192² phantoms the models mark 4-5 %: masks that false, no threshold rescues.)
# P(abnormal) is 0.5 here, 0.1 at half and 0.9 at twice this.
OPACITY_PERCENT = 1.0
# For the HU rule's lesion masks of whole HU volumes (covidct.pipeline.hu_rules): twice the highest false
# involvement of the HU rule on any lesion-free volume of benchmarks/hu_volumes.py (real and phantom, every slice
# thickness: 0.172 %, normal001 on 6 mm slices), rounded up (docs/BENCHMARKS.md, "HU rule's abnormal level"). It
# was 0.7 %, from phantoms whose vessel trees painted blobs no lung has (0.62 %).
OPACITY_PERCENT_HU_RULE = 0.4
BILATERAL_SHARE = 0.1
PERIPHERAL = 0.5
PERIHILAR = 0.4
GGO_PREDOMINANT = 0.5
GGO_ABSENT = 0.3
POSTERIOR = 0.6
LOWER_ZONE = 0.4
MULTIFOCAL = 3
ROUND_FOCI = 3
SEGMENTAL_PERCENT = 100.0 / 36.0  # half an average bronchopulmonary segment (1/18 of the lungs)
NODULAR_PATTERN = 3
EFFUSION_ML = 20.0
SEPTAL_LINES = 0.08

RSNA_CATEGORIES = ("typical", "indeterminate", "atypical", "negative")

# How far the features that decide the category moved when the lesion masks of the two infected real volumes
# (P001, cap001) were changed by about one voxel: grown or shrunk in-plane, or the HU rule's GGO floor moved by
# ±25 HU (benchmarks/pattern_real.py, docs/BENCHMARKS.md, seventeenth session), rounded up. A category that one of
# these moves would change is reported as borderline. (feature: (step, relative)): a relative step scales the value.
MASK_SENSITIVITY: dict[str, tuple[float, bool]] = {
    "opacity_percent": (0.7, True),  # -58 % .. +65 % of the value
    "minor_side_share": (0.07, False),  # up to 0.063
    "peripheral_fraction": (0.02, False),  # up to 0.016
    "ggo_fraction": (0.1, False),  # up to 0.097
    "n_round_foci": (4.0, False),  # up to 4 (cap001: 5 -> 1 with the GGO floor 25 HU higher)
}
_SENSITIVITY_NAMES = {"opacity_percent": "opacity amount", "minor_side_share": "share of the less involved lung",
                      "peripheral_fraction": "peripheral share", "ggo_fraction": "GGO share",
                      "n_round_foci": "number of round GGO foci"}


@dataclass
class PatternResult:
    """The RSNA category, CO-RADS score, the reasons for them and the diagnosis they lead to."""

    rsna_category: str
    co_rads: int
    features: dict
    reasons: list[str] = field(default_factory=list)
    probabilities: dict = field(default_factory=dict)
    label: str = "normal"
    margins: dict = field(default_factory=dict)
    borderline: list[str] = field(default_factory=list)

    def report(self) -> dict:
        """The report.json ``pattern`` object."""
        return {"rsna_category": self.rsna_category, "co_rads": self.co_rads, "features": dict(self.features),
                "reasons": list(self.reasons), "borderline": list(self.borderline)}


def _pct(x: float, threshold: float | None = None) -> str:
    """``x`` in percent, whole numbers unless rounding would put it on the other side of ``threshold`` (0.496 against
    0.5 reads "49.6 %", not "50 %" beside "not peripheral")."""
    for digits in range(4):
        text = f"{100.0 * x:.{digits}f}"
        if threshold is None or (x >= threshold) == (float(text) / 100.0 >= threshold):
            break
    return f"{text} %"


def _findings(f: dict, abnormal_percent: float = OPACITY_PERCENT) -> dict[str, bool]:
    """Yes/no findings from the features (each a literature definition, see FEATURE_DOCS)."""
    septal = f.get("septal_line_fraction")
    return {
        "opacity": f["opacity_percent"] >= abnormal_percent,
        "bilateral": f["minor_side_share"] >= BILATERAL_SHARE,
        "peripheral": f["peripheral_fraction"] >= PERIPHERAL,
        "perihilar": f["perihilar_fraction"] >= PERIHILAR,
        "ggo": f["ggo_fraction"] >= GGO_PREDOMINANT,
        "no_ggo": f["ggo_fraction"] < GGO_ABSENT,
        "posterior": f["posterior_fraction"] >= POSTERIOR,
        "lower": f["lower_zone_fraction"] >= LOWER_ZONE and f["lower_zone_fraction"] > f["upper_zone_fraction"],
        "multifocal": f["n_foci"] >= MULTIFOCAL,
        "round": f["n_round_foci"] >= ROUND_FOCI and f["round_foci_sides"] >= 2,  # in both lungs, as CO-RADS 5 asks
        "segmental": f["largest_consolidation_percent"] >= SEGMENTAL_PERCENT,
        "consolidation_without_ggo": f["consolidation_focus_ggo_fraction"] < GGO_ABSENT,
        "nodular": f["n_nodules"] >= NODULAR_PATTERN,
        "effusion": f["effusion_ml"] >= EFFUSION_ML,
        "septal": septal is not None and septal >= SEPTAL_LINES,
    }


def _describe(f: dict, y: dict) -> str:
    parts = ["bilateral" if y["bilateral"] else "unilateral",
             f"{_pct(f['peripheral_fraction'], PERIPHERAL)} peripheral" + (" (perihilar predominant)" if y["perihilar"] else "")]
    if y["lower"]:
        parts.append("lower-zone predominant")
    if y["posterior"]:
        parts.append(f"{_pct(f['posterior_fraction'], POSTERIOR)} posterior")
    kind = "GGO" if y["ggo"] else "consolidation-predominant opacity"
    parts.append(f"{'multifocal ' if y['multifocal'] else ''}{'round ' if y['round'] else ''}{kind} "
                 f"({_pct(f['ggo_fraction'], GGO_PREDOMINANT)} GGO, {f['n_foci']} foci, {f['opacity_percent']:.1f} % of the lungs)")
    return ", ".join(parts)


def rsna_category(f: dict, abnormal_percent: float = OPACITY_PERCENT,
                  dependent_edge: str = "posterior") -> tuple[str, int, list[str]]:
    """(RSNA category, CO-RADS score, reasons) from the pattern features; ``abnormal_percent``: the opacity that
    counts as abnormal (``OPACITY_PERCENT``, or ``OPACITY_PERCENT_HU_RULE`` for the HU rule's masks);
    ``dependent_edge``: the lung edge gravity pulls to, named in the reasons (covidct.volume.DEPENDENT_NAMES)."""
    y = _findings(f, abnormal_percent)
    reasons: list[str] = []
    if f["dependent_density_ml"] >= 1.0:
        reasons.append(f"{f['dependent_density_ml']:.0f} mL of dependent ({dependent_edge} subpleural band) density not "
                       "counted as opacity")
    abnormal = y["opacity"] or y["segmental"] or y["nodular"] or y["effusion"]
    if not abnormal:
        note = f"; {f['n_nodules']} discrete nodule(s), not a pneumonia pattern" if f["n_nodules"] else ""
        reasons.insert(0, f"no parenchymal opacity above {abnormal_percent:g} % of the lungs "
                          f"({f['opacity_percent']:.2f} %){note} → negative for pneumonia")
        return "negative", 1, reasons
    if y["opacity"] and y["ggo"] and ((y["bilateral"] and y["peripheral"]) or (y["round"] and y["bilateral"] and not y["perihilar"])):
        why = _describe(f, y)
        if not (y["bilateral"] and y["peripheral"]):
            why += f", {f['n_round_foci']} round GGO foci"
        reasons.insert(0, f"{why} → typical")
        if y["effusion"]:
            reasons.append(f"pleural effusion {f['effusion_ml']:.0f} mL (uncommon in COVID-19)")
        return "typical", 5, reasons
    atypical = []
    if y["segmental"] and y["consolidation_without_ggo"] and not y["ggo"]:
        atypical.append(f"confluent consolidation of {f['largest_consolidation_percent']:.1f} % of the lungs "
                        f"(≥ half a segment) with {_pct(f['consolidation_focus_ggo_fraction'])} GGO around it "
                        "(lobar/segmental)")
    if y["nodular"] and not y["ggo"]:
        atypical.append(f"{f['n_nodules']} discrete small nodules ({f['nodule_ml']:.1f} mL)")
    if y["effusion"] and y["septal"] and not (y["opacity"] and y["ggo"]):
        atypical.append(f"pleural effusion {f['effusion_ml']:.0f} mL with septal lines "
                        f"({_pct(f['septal_line_fraction'])} of the outer lung)")
    if atypical and not (y["opacity"] and y["ggo"] and y["multifocal"]):
        reasons.insert(0, "; ".join(atypical) + " → atypical")
        return "atypical", 2, reasons
    if not y["opacity"]:  # an effusion or consolidation finding without the opacity pattern behind it
        found = atypical or [f"pleural effusion {f['effusion_ml']:.0f} mL" if y["effusion"] else
                             f"{f['n_nodules']} discrete nodules" if y["nodular"] else "confluent consolidation"]
        reasons.insert(0, "; ".join(found) + f" with opacity {f['opacity_percent']:.1f} % of the lungs → indeterminate")
        return "indeterminate", 3, reasons
    missing = [w for w, ok in (("not bilateral", y["bilateral"]), ("not peripheral", y["peripheral"]),
                               ("not GGO-predominant", y["ggo"])) if not ok]
    reasons.insert(0, f"{_describe(f, y)}; {', '.join(missing)} → indeterminate")
    if y["ggo"] and y["peripheral"] and not y["bilateral"]:
        reasons.append("peripheral GGO of typical appearance but unilateral → CO-RADS 4")
        return "indeterminate", 4, reasons
    return "indeterminate", 3, reasons


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def abnormal_logit(f: dict, abnormal_percent: float = OPACITY_PERCENT) -> float:
    """Log-odds of an abnormal (pneumonia) CT: opacity amount plus the non-COVID pneumonia findings."""
    y = _findings(f, abnormal_percent)
    amount = math.log2(max(f["opacity_percent"], 1e-3) / abnormal_percent) * math.log(9.0)
    # each non-COVID finding alone makes the CT abnormal (P 0.88); they add up with the opacity amount
    findings = 2.0 * (y["segmental"] + y["nodular"] + y["effusion"])
    return max(amount, findings) if findings else amount


# (feature evidence in [-1, 1], weight in log-odds): the RSNA typical pattern pushes towards COVID-19
def covid_logit(f: dict) -> float:
    """Log-odds of COVID-19 against another pneumonia, from the pattern only (not from the amount)."""
    y = _findings(f)
    terms = [
        (1.5, _clip((f["peripheral_fraction"] - PERIPHERAL) / 0.2)),
        (1.5, _clip((f["ggo_fraction"] - GGO_PREDOMINANT) / 0.2)),
        # bronchopneumonia is often bilateral too: bilaterality alone weighs less
        (0.5, _clip((f["minor_side_share"] - BILATERAL_SHARE) / 0.1)),
        (0.5, _clip(f["n_round_foci"] / ROUND_FOCI) * (f["round_foci_sides"] >= 2)),  # round GGO in both lungs
        (0.25, _clip((f["posterior_fraction"] - 0.5) / 0.2)),
        # central (perihilar) distribution is more common in other pneumonias
        (1.0, -_clip((f["perihilar_fraction"] - 0.2) / 0.2)),
    ]
    logit = sum(w * e for w, e in terms)
    # discrete nodules are the opacities themselves: their (peripheral) position says nothing for COVID-19
    return logit - 1.5 * y["segmental"] * (not y["ggo"]) - 3.0 * y["nodular"] - 1.0 * y["effusion"]


# Pooled frequency of COVID-19 (RT-PCR or clinical diagnosis) per CO-RADS score in patients suspected of COVID-19
# (Kwee et al. 2021, above). The category a reader acts on sets P(COVID-19 | abnormal); the pattern's own evidence
# only moves it within ±WITHIN_CATEGORY_LOGIT, so CO-RADS 5 never reads as another pneumonia, CO-RADS 2-3 never as
# COVID-19. The frequencies carry that population's prevalence (2020, suspected COVID-19): elsewhere they shift.
CO_RADS_COVID_FREQUENCY = {1: 0.088, 2: 0.111, 3: 0.246, 4: 0.619, 5: 0.896}
# less than CO-RADS 4's distance from even odds (logit 0.619 = 0.49), so the label follows the score
WITHIN_CATEGORY_LOGIT = 0.45
PATTERN_EVIDENCE_SCALE = 4.0  # covid_logit of about ±4 (strong evidence) uses most of the ±0.45


def covid_given_abnormal_logit(f: dict, co_rads: int) -> float:
    """Log-odds of COVID-19 against another pneumonia: the CO-RADS score's pooled frequency, moved by the pattern."""
    p = CO_RADS_COVID_FREQUENCY[co_rads]
    return math.log(p / (1.0 - p)) + WITHIN_CATEGORY_LOGIT * math.tanh(covid_logit(f) / PATTERN_EVIDENCE_SCALE)


def borderline_features(f: dict, reading: tuple[str, int], abnormal_percent: float = OPACITY_PERCENT) -> list[str]:
    """The features whose move by their ``MASK_SENSITIVITY`` step, one at a time and either way, would change the
    reading (RSNA category, CO-RADS score): it is then borderline (it may differ with slightly different masks)."""
    out = []
    for name, (step, relative) in MASK_SENSITIVITY.items():
        value = f.get(name)
        if value is None:
            continue
        for sign in (-1.0, 1.0):
            moved = value * (1.0 + sign * step) if relative else value + sign * step
            if name == "n_round_foci":
                moved = max(0, int(round(moved)))
            elif not relative:  # a share
                moved = min(max(moved, 0.0), 1.0)
            if rsna_category(dict(f, **{name: moved}), abnormal_percent)[:2] != tuple(reading):
                out.append(name)
                break
    return out


def classify_pattern(features: dict, abnormal_percent: float = OPACITY_PERCENT,
                     dependent_edge: str = "posterior") -> PatternResult:
    """RSNA category, CO-RADS, reasons and COVID-19 / other pneumonia / normal probabilities (``abnormal_percent``,
    ``dependent_edge``: see :func:`rsna_category`)."""
    category, co_rads, reasons = rsna_category(features, abnormal_percent, dependent_edge)
    borderline = borderline_features(features, (category, co_rads), abnormal_percent)
    if borderline:
        shown = ", ".join(f"{_SENSITIVITY_NAMES[n]} ({_shown(n, features[n])})" for n in borderline)
        reasons.append(f"borderline: {shown} near a threshold; lesion masks one voxel larger or smaller could "
                       "change the category or CO-RADS score")
    a, c = abnormal_logit(features, abnormal_percent), covid_given_abnormal_logit(features, co_rads)
    p_abn, p_cov = _sigmoid(a), _sigmoid(c)
    probs = {"covid19": p_abn * p_cov, "pneumonia": p_abn * (1.0 - p_cov), "normal": 1.0 - p_abn}
    label = max(DIAGNOSIS_CLASSES, key=lambda k: probs[k])
    reasons.append(f"P(abnormal) {p_abn:.2f} from opacity {features['opacity_percent']:.2f} % of the lungs "
                   f"(0.5 at {abnormal_percent:g} %); P(COVID-19 | abnormal) {p_cov:.2f}: CO-RADS {co_rads}'s pooled "
                   f"COVID-19 frequency {100 * CO_RADS_COVID_FREQUENCY[co_rads]:.1f} % (Kwee et al. 2021), moved by the pattern")
    return PatternResult(
        rsna_category=category, co_rads=co_rads, features=dict(features), reasons=reasons,
        probabilities={k: round(float(probs[k]), 4) for k in DIAGNOSIS_CLASSES}, label=label,
        margins={"abnormal_logit": round(a, 3), "covid_logit": round(c, 3)}, borderline=borderline,
    )


def _shown(name: str, value: float) -> str:
    if name == "n_round_foci":
        return str(int(value))
    if name == "opacity_percent":
        return f"{value:.2f} % of the lungs"
    return _pct(value, {"minor_side_share": BILATERAL_SHARE, "peripheral_fraction": PERIPHERAL,
                        "ggo_fraction": GGO_PREDOMINANT}[name])
