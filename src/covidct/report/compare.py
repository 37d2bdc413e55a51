"""Follow-up: two reports of one patient side by side (``covidct compare BEFORE AFTER``).

Reads two ``report.json`` (or the ``analyze`` output folders holding them) and lines up what a follow-up reading
asks: lung and lesion volumes, involvement per lung and zone, the severity score, the pattern and the diagnosis, and
the lung's density, each with its change. Only report figures are compared (no registration of the scans), so the
warnings say when the two are not comparable: other patients, other slice thickness, a scan that cuts the lungs.
"""

from __future__ import annotations

import json
from pathlib import Path

from covidct.errors import UnreadableInput, UnsupportedInput

THIN_SLICE_MM = 1.95  # below this the HU rule's figures are not the lower bounds measured on 2-6 mm slices
SPACING_TOLERANCE_MM = 0.5  # slice spacings further apart than this: lesion volumes are not like for like
MIN_RELATIVE_ML = 1.0  # a relative change of a smaller volume says nothing (false positives reach this)
_ZONES = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle", "left_lower")


def load_report(path: str | Path) -> dict:
    """``path``'s report: a report.json, or an ``analyze`` output folder holding one. One-line errors."""
    p = Path(path)
    f = p / "report.json" if p.is_dir() else p
    try:
        report = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnreadableInput(f"{path}: no report.json there (give an analyze output folder or its report.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableInput(f"{f}: not a readable covidct report ({exc.__class__.__name__})") from None
    version = str(report.get("schema_version", "")) if isinstance(report, dict) else ""
    if not version.startswith("1."):
        raise UnsupportedInput(f"{f}: not a covidct report of schema 1.x (schema_version {version or 'missing'})")
    if report.get("mode") != "volume":
        raise UnsupportedInput(f"{f}: a single-slice report has no volumes to follow up; compare two volume reports")
    return report


def _get(report: dict, *keys: str):
    for k in keys:
        if not isinstance(report, dict):
            return None
        report = report.get(k)
    return report


def _row(name: str, unit: str, before, after) -> dict:
    change = relative = None
    if isinstance(before, int | float) and isinstance(after, int | float) and not isinstance(before, bool):
        change = after - before if isinstance(before, int) and isinstance(after, int) else round(after - before, 3)
        if unit == "mL" and before >= MIN_RELATIVE_ML:
            relative = round(100.0 * change / float(before), 1)
    return {"name": name, "unit": unit, "before": before, "after": after, "change": change,
            "change_percent": relative}


def _warnings(before: dict, after: dict) -> list[str]:
    out = []
    ids = [_get(r, "input", "patient_id") for r in (before, after)]
    if all(ids) and ids[0] != ids[1]:
        out.append(f"the patient IDs differ ({ids[0]} / {ids[1]}): are these the same patient?")
    dz = [(_get(r, "input", "spacing_mm") or [None])[0] for r in (before, after)]
    if all(dz) and abs(dz[0] - dz[1]) > SPACING_TOLERANCE_MM:
        out.append(f"slice spacing differs ({dz[0]:g} / {dz[1]:g} mm): lesion volumes depend on slice thickness "
                   "(docs/BENCHMARKS.md, thick- and thin-slice rows), so part of the change may be the reconstruction")
    if any(d is not None and d < THIN_SLICE_MM for d in dz):
        out.append(f"a scan has slices thinner than {THIN_SLICE_MM:g} mm, where the HU lesion rule may count vessels: "
                   "compare 2-5 mm reconstructions where the study has them")
    if any(_get(r, "input", "is_hu") is False for r in (before, after)):
        out.append("a scan was analysed in display values, not HU: its figures are not comparable with an HU scan's")
    dates = [_get(r, "input", "study_date") for r in (before, after)]
    if all(dates) and dates[1] < dates[0]:
        out.append(f"AFTER was scanned before BEFORE ({dates[1]} < {dates[0]}): the changes read backwards")
    for name, r in (("BEFORE", before), ("AFTER", after)):
        if any("cuts the lungs" in w for w in r.get("warnings", [])):
            out.append(f"{name}'s scan cuts the lungs: its volumes describe the scanned part only")
        if (r.get("pattern") or {}).get("borderline"):
            out.append(f"{name}'s reading is borderline (report.json pattern.borderline)")
    return out


def compare_reports(before: dict, after: dict) -> dict:
    """The follow-up table of two volume reports: ``rows`` (name, unit, before, after, change, and change_percent
    for volumes of at least :data:`MIN_RELATIVE_ML` before), ``interval_days`` (from the scans' dates, None when either is missing) and ``warnings``."""
    from datetime import date

    rows = [_row(f"lung volume {s}", "mL", _get(before, "lungs", f"{s}_ml"), _get(after, "lungs", f"{s}_ml"))
            for s in ("left", "right", "total")]
    for key, name in (("ggo_ml", "ground-glass opacity"), ("consolidation_ml", "consolidation"),
                      ("effusion_ml", "pleural effusion"), ("total_ml", "lesions, all classes")):
        rows.append(_row(name, "mL", _get(before, "lesions", key), _get(after, "lesions", key)))
    for s in ("left", "right", "total"):
        rows.append(_row(f"involvement {s}", "%", _get(before, "involvement_percent", s),
                         _get(after, "involvement_percent", s)))
    for z in _ZONES:
        rows.append(_row(f"involvement {z.replace('_', ' ')}", "%", _get(before, "involvement_percent", "zones", z),
                         _get(after, "involvement_percent", "zones", z)))
    rows.append(_row("severity score (0-25)", "", _get(before, "severity", "score"), _get(after, "severity", "score")))
    for key, name in (("mean_hu", "mean lung density"), ("laa950_percent", "LAA-950"),
                      ("affected_percent", "Lung CT Analyzer affected")):
        unit = "HU" if key == "mean_hu" else "%"
        b, a = _get(before, "densitometry", "total", key), _get(after, "densitometry", "total", key)
        if b is not None or a is not None:
            rows.append(_row(name, unit, b, a))
    rows.append(_row("RSNA category", "", _get(before, "pattern", "rsna_category"), _get(after, "pattern", "rsna_category")))
    rows.append(_row("CO-RADS", "", _get(before, "pattern", "co_rads"), _get(after, "pattern", "co_rads")))
    rows.append(_row("diagnosis", "", _get(before, "diagnosis", "label"), _get(after, "diagnosis", "label")))
    dates = [_get(r, "input", "study_date") for r in (before, after)]
    interval = None
    if all(dates):
        try:
            interval = (date.fromisoformat(dates[1]) - date.fromisoformat(dates[0])).days
        except ValueError:
            interval = None
    return {"before": {"path": _get(before, "input", "path"), "study_date": dates[0]},
            "after": {"path": _get(after, "input", "path"), "study_date": dates[1]},
            "interval_days": interval, "rows": rows, "warnings": _warnings(before, after)}


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def format_table(result: dict) -> str:
    """The comparison as a plain-text table for a terminal."""
    lines = []
    b, a = result["before"], result["after"]
    when = f", {result['interval_days']} days apart" if result["interval_days"] is not None else ""
    lines.append(f"BEFORE: {b['path']} ({b['study_date'] or 'date unknown'})")
    lines.append(f"AFTER:  {a['path']} ({a['study_date'] or 'date unknown'}){when}")
    width = max(len(r["name"]) for r in result["rows"]) + 2
    lines.append(f"{'':{width}}{'before':>12}{'after':>12}{'change':>12}")
    for r in result["rows"]:
        unit = f" {r['unit']}" if r["unit"] else ""
        change = "" if r["change"] is None else f"{r['change']:+d}" if isinstance(r["change"], int) else f"{r['change']:+.2f}"
        if r["change_percent"] is not None:
            change += f" ({r['change_percent']:+.0f} %)"
        elif r["change"] is None and r["before"] != r["after"]:
            change = "changed"
        lines.append(f"{r['name'] + unit:{width}}{_cell(r['before']):>12}{_cell(r['after']):>12}  {change}")
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
