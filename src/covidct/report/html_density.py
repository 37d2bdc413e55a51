"""The HTML report's lung density section: densitometry and Lung CT Analyzer's HU classes per lung and region."""

from __future__ import annotations

from html import escape

_SIDES = (("left", "Left lung"), ("right", "Right lung"), ("total", "Both lungs"))
_CLASSES = ("emphysema", "inflated", "infiltrated", "collapsed", "vessels")
_REGIONS = ("ventral", "dorsal", "upper", "middle", "lower")


def _num(v: object, fmt: str) -> str:
    return "—" if v is None else format(float(v), fmt)


def densitometry_section(report: dict) -> str:
    """The section, or an empty string when the report has no densitometry (a 2-D image, display values)."""
    d = report.get("densitometry")
    if not d:
        return ""
    sides = [(k, name, d.get(k)) for k, name in _SIDES if d.get(k)]
    ranges = d.get("classes_hu", {})
    heads = "".join(
        f"<th class='num'>{escape(c)} mL<br><span class='muted'>{_num(ranges[c][0], '.0f')}..{_num(ranges[c][1], '.0f')}"
        "</span></th>" if c in ranges else f"<th class='num'>{escape(c)} mL</th>"
        for c in _CLASSES
    )
    main = "".join(
        f"<tr><td>{name}</td><td class='num'>{_num(s['lung_ml'], '.1f')}</td><td class='num'>{_num(s['mean_hu'], '.0f')}"
        f"</td><td class='num'>{_num(s['perc15_hu'], '.0f')}</td><td class='num'>{_num(s['laa950_percent'], '.2f')}</td>"
        + "".join(f"<td class='num'>{_num(s['classes_ml'][c], '.1f')}</td>" for c in _CLASSES)
        + f"<td class='num'>{_num(s['affected_percent'], '.1f')}</td></tr>"
        for _, name, s in sides
    )
    regions = "".join(
        f"<tr><td>{name}</td>"
        + "".join(f"<td class='num'>{_num(s['regions'][r]['affected_percent'], '.1f')}</td>" for r in _REGIONS)
        + "</tr>"
        for _, name, s in sides
    )
    return (
        "<section id='densitometry'><h2>Lung density</h2>"
        "<div class='sub'>Hounsfield units inside the lung mask: mean lung density, Perc15 (15th percentile) and "
        "LAA-950 (share below −950 HU, the emphysema index), and 3D Slicer Lung CT Analyzer's classes at its default "
        "ranges (HU), with its <em>affected</em> share: infiltrated + collapsed of the lung without vessels. These "
        "count voxels in HU ranges, not lesions: healthy lungs are not 0 % affected (vessels' edges, dependent "
        "density), and airless lung outside the mask is not counted.</div>"
        "<table><tr><th></th><th class='num'>lung mL</th><th class='num'>mean HU</th><th class='num'>Perc15 HU</th>"
        f"<th class='num'>LAA-950 %</th>{heads}<th class='num'>affected %</th></tr>{main}</table>"
        "<h3>Affected % by region</h3><div class='sub'>Ventral / dorsal: each lung's front and back halves; upper / "
        "middle / lower: thirds of its height.</div>"
        "<table><tr><th></th>" + "".join(f"<th class='num'>{r}</th>" for r in _REGIONS) + f"</tr>{regions}</table>"
        "</section>"
    )
