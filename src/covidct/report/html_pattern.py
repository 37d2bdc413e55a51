"""The HTML report's pattern section: RSNA category, CO-RADS score, the reasons and the pattern features."""

from __future__ import annotations

from html import escape

from covidct.pattern.features import FEATURE_DOCS

RSNA_NAMES = {
    "typical": "Typical appearance",
    "indeterminate": "Indeterminate appearance",
    "atypical": "Atypical appearance",
    "negative": "Negative for pneumonia",
}
CO_RADS_NAMES = {
    1: "normal or non-infectious",
    2: "typical of another infection",
    3: "equivocal",
    4: "high suspicion",
    5: "typical of COVID-19",
}
_COLOURS = {"typical": "#d9480f", "indeterminate": "#e8a400", "atypical": "#1c7ed6", "negative": "#2f9e44"}


def _value(v: object, unit: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if unit == "0-1":
        return f"{100.0 * float(v):.0f} %"
    return f"{float(v):.2f} {escape(unit)}" if unit in ("mL", "%") else f"{float(v):.3g}"


def pattern_section(report: dict) -> str:
    """The section, or an empty string when the report has no pattern (a single 2-D image)."""
    p = report.get("pattern")
    if not p:
        return ""
    cat, co_rads = str(p.get("rsna_category")), p.get("co_rads")
    reasons = "".join(f"<li>{escape(str(r))}</li>" for r in p.get("reasons", []))
    feats = p.get("features", {})
    rows = "".join(
        f"<tr><td><code>{escape(k)}</code></td><td class='num'>{_value(feats.get(k), doc[0])}</td>"
        f"<td class='muted'>{escape(doc[1])}{'; ' + escape(doc[2]) if doc[2] else ''}</td></tr>"
        for k, doc in FEATURE_DOCS.items()
        if k in feats
    )
    return (
        "<section id='pattern'><h2>Pattern (RSNA consensus, CO-RADS)</h2>"
        f"<div class='big' style='color:{_COLOURS.get(cat, '#1f2933')}'>{escape(RSNA_NAMES.get(cat, cat))}"
        f" · CO-RADS {escape(str(co_rads))}</div>"
        f"<div class='sub'>RSNA category <code>{escape(cat)}</code> (Simpson et al. 2020); CO-RADS {escape(str(co_rads))}"
        f": {escape(CO_RADS_NAMES.get(co_rads, ''))} (Prokop et al. 2020). Automated from the masks; a reader must "
        "confirm.</div>"
        f"<h3>Reasons</h3><ul>{reasons}</ul>"
        f"<h3>Features</h3><table><tr><th>feature</th><th class='num'>value</th><th>definition; threshold</th></tr>"
        f"{rows}</table></section>"
    )
