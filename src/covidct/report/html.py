"""A one-file HTML report a clinician can open anywhere: inline CSS, images as PNG data URIs, no network."""

from __future__ import annotations

import base64
import os
import uuid
from html import escape
from pathlib import Path

import numpy as np

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, LESION_COLORS, LUNG_COLORS, RIGHT_LUNG
from covidct.report.figures import lesion_profile_svg, overlay_rgb, png_bytes, representative_slices
from covidct.report.heatmap import probability_drew_lesions
from covidct.report.html_density import densitometry_section
from covidct.report.html_pattern import pattern_section
from covidct.volume import CT, DEPENDENT_NAMES, dependent_side

RESEARCH_NOTICE = "Research use only — not for diagnosis."
_DIAG_NAMES = {"covid19": "COVID-19 pneumonia", "pneumonia": "Other pneumonia", "normal": "Normal"}
_DIAG_COLOURS = {"covid19": "#d9480f", "pneumonia": "#e8a400", "normal": "#2f9e44"}
_ZONE_ORDER = ("right_upper", "left_upper", "right_middle", "left_middle", "right_lower", "left_lower")

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2933;
 font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1080px;margin:0 auto;padding:24px 20px 48px}
header h1{font-size:26px;margin:0 0 4px;font-weight:650;letter-spacing:-.01em}
.sub{color:#52606d;font-size:13px}
.notice{background:#fff4e6;border:1px solid #ffa94d;border-left:6px solid #e8590c;color:#7a2e00;
 padding:10px 14px;border-radius:6px;font-weight:650;margin:14px 0 18px}
section{background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:16px 20px;margin:14px 0}
h2{font-size:17px;margin:0 0 12px;font-weight:650;color:#102a43}
h3{font-size:14px;margin:14px 0 8px;color:#334e68;font-weight:600}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{color:#52606d;font-weight:600;font-size:13px}
td.num,th.num{text-align:right}
.kv th{width:190px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
@media (max-width:760px){.grid2{grid-template-columns:1fr}}
.big{font-size:24px;font-weight:700}
.bar{display:grid;grid-template-columns:180px 1fr 70px;align-items:center;gap:10px;margin:5px 0}
.track{background:#eef0f3;border-radius:4px;height:14px;overflow:hidden} .fill{height:100%;border-radius:4px}
.val{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
.swatch{display:inline-block;width:13px;height:13px;border-radius:3px;vertical-align:-2px;margin-right:5px}
.legend span{margin-right:16px;font-size:13px;white-space:nowrap}
.line{display:inline-block;width:16px;height:0;border-top:3px solid;vertical-align:3px;margin-right:5px}
.slices{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px;margin-top:10px}
.slices.one{grid-template-columns:minmax(300px,600px)}
figure{margin:0;background:#111;border-radius:8px;overflow:hidden}
figure img{display:block;width:100%;height:auto;image-rendering:auto}
figcaption{color:#e4e7eb;font-size:12px;padding:6px 9px;background:#1f2933}
.profile{max-width:560px;width:100%;height:auto} .muted{color:#7b8794}
ul.warn{margin:0;padding-left:20px;color:#8a4b00}
footer{color:#7b8794;font-size:12px;text-align:center;margin-top:22px}
"""


def _fmt(v: object, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return '<span class="muted">—</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float | np.integer | np.floating):
        return f"{float(v):,.{digits}f}{unit}"
    return escape(str(v))


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _bar(label: str, value: float | None, vmax: float, colour: str, text: str) -> str:
    width = 0.0 if value is None or vmax <= 0 else max(0.0, min(100.0, 100.0 * float(value) / vmax))
    return (
        f'<div class="bar"><div>{label}</div><div class="track"><div class="fill" '
        f'style="width:{width:.1f}%;background:{colour}"></div></div><div class="val">{text}</div></div>'
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _input_section(r: dict) -> str:
    inp = r.get("input", {})
    sp = inp.get("spacing_mm")
    spacing = " × ".join(f"{float(s):.2f}" for s in sp) + " mm (z × y × x)" if sp else _fmt(None)
    shape = inp.get("shape_zyx")
    rows = [
        ("Input", _fmt(inp.get("path"))),
        ("Format", _fmt(inp.get("kind"))),
        (
            "Analysis mode",
            _fmt({"volume": "3-D volume", "slice": "single 2-D image"}.get(r.get("mode"), r.get("mode"))),
        ),
        ("Slices", _fmt(inp.get("n_slices"), 0)),
        ("Array size", " × ".join(str(int(s)) for s in shape) + " (z × y × x)" if shape else _fmt(None)),
        ("Voxel spacing", spacing),
        ("Hounsfield units", _hu_text(inp)),
        ("Patient ID", _fmt(inp.get("patient_id"))),
        ("Series UID", _fmt(inp.get("series_uid"))),
    ]
    if r.get("mode") == "volume":
        rows.insert(-2, ("Patient position", _position_text(inp.get("patient_position"))))
    box = inp.get("analysed_box_yx")
    if box:  # a wide field of view: the networks saw the lungs' box only (covidct.pipeline.grid.lung_field_box)
        (y0, y1), (x0, x1) = box
        rows.insert(-2, ("Field analysed", _fmt(f"rows {y0}–{y1 - 1}, columns {x0}–{x1 - 1}: a box centred on the "
                                                "lungs, which are narrow in this wide field of view")))
    return f"<section><h2>Input</h2>{_kv(rows)}</section>"


def _position_text(position: str | None) -> str:
    """DICOM Patient Position and the dependent side it gives (supine when not given)."""
    side = DEPENDENT_NAMES[dependent_side({"patient_position": position})]
    shown = position if position else "not given, read as supine"
    return _fmt(f"{shown} (dependent side: {side})")


def _hu_text(inp: dict) -> str:
    """Whether the values are HU; for a display-range volume mapped to HU, the map found (covidct.display_hu)."""
    win = inp.get("display_window")
    if not win:
        return _fmt(inp.get("is_hu"))
    anchor = "fat, −100 HU" if win.get("fat_value") is not None else "soft tissue, +40 HU"
    if win.get("fat_value") is not None and win.get("tissue_value") is None:
        anchor += "; the window's top clips soft tissue"
    return _fmt(f"approximate: mapped from display values (outside air −1000 HU, {anchor}; "
                f"{float(win['hu_per_unit']):.2f} HU per grey level)")


def _diagnosis_section(r: dict) -> str:
    d = r.get("diagnosis", {})
    label = d.get("label")
    probs = d.get("probabilities", {})
    bars = "".join(
        _bar(
            escape(_DIAG_NAMES[k]),
            probs.get(k),
            1.0,
            _DIAG_COLOURS[k],
            _fmt(100 * probs.get(k, 0.0), 1, " %"),
        )
        for k in ("covid19", "pneumonia", "normal")
    )
    colour = _DIAG_COLOURS.get(label, "#1f2933")
    return (
        "<section><h2>Classification</h2>"
        f'<div class="big" style="color:{colour}">{escape(_DIAG_NAMES.get(label, str(label)))}</div>'
        f'<div class="sub">label <code>{escape(str(label))}</code> · method: {_fmt(d.get("method"))}</div>'
        f"<h3>Class probabilities</h3>{bars}</section>"
    )


def _volumes_section(r: dict) -> str:
    lu, le = r.get("lungs", {}), r.get("lesions", {})
    left, right = le.get("left", {}), le.get("right", {})
    lung_tbl = (
        '<table><tr><th></th><th class="num">Left</th><th class="num">Right</th>'
        '<th class="num">Total</th></tr>'
        f'<tr><td>Lung volume (mL)</td><td class="num">{_fmt(lu.get("left_ml"))}</td>'
        f'<td class="num">{_fmt(lu.get("right_ml"))}</td>'
        f'<td class="num">{_fmt(lu.get("total_ml"))}</td></tr></table>'
    )
    rows = []
    for key, name, colour in (
        ("ggo_ml", "Ground-glass opacity", LESION_COLORS[GGO]),
        ("consolidation_ml", "Consolidation", LESION_COLORS[CONSOLIDATION]),
        ("effusion_ml", "Pleural effusion", LESION_COLORS[EFFUSION]),
        ("total_ml", "All lesions", None),
    ):
        sw = f'<span class="swatch" style="background:{_rgb(colour)}"></span>' if colour else ""
        strong = ("<strong>", "</strong>") if colour is None else ("", "")
        rows.append(
            f"<tr><td>{sw}{strong[0]}{name}{strong[1]}</td><td class='num'>{_fmt(left.get(key))}</td>"
            f"<td class='num'>{_fmt(right.get(key))}</td>"
            f"<td class='num'>{strong[0]}{_fmt(le.get(key))}{strong[1]}</td></tr>"
        )
    lesion_tbl = (
        '<table><tr><th>Lesion volume (mL)</th><th class="num">Left</th><th class="num">Right</th>'
        f'<th class="num">Total</th></tr>{"".join(rows)}</table>'
    )
    note = ""
    if r.get("mode") == "slice":
        note = (
            '<p class="sub">Volumes need a 3-D scan with known spacing; not available for a single image.</p>'
        )
    return f"<section><h2>Lung and lesion volumes</h2>{lung_tbl}<h3>Lesions</h3>{lesion_tbl}{note}</section>"


def _involvement_section(r: dict) -> str:
    inv = r.get("involvement_percent", {})
    what = "of lung area" if r.get("mode") == "slice" else "of lung volume"
    colour = _rgb(LESION_COLORS[CONSOLIDATION])
    lungs = "".join(
        _bar(name, inv.get(key), 100.0, col, _fmt(inv.get(key), 1, " %"))
        for key, name, col in (
            ("left", "Left lung", _rgb(LUNG_COLORS[LEFT_LUNG])),
            ("right", "Right lung", _rgb(LUNG_COLORS[RIGHT_LUNG])),
            ("total", "Both lungs", colour),
        )
    )
    zones = inv.get("zones")
    zone_html = ""
    if zones and any(v is not None for v in zones.values()):
        zone_html = "<h3>By zone (upper / middle / lower thirds of each lung)</h3>" + "".join(
            _bar(
                escape(z.replace("_", " ").capitalize()),
                zones.get(z),
                100.0,
                colour,
                _fmt(zones.get(z), 1, " %"),
            )
            for z in _ZONE_ORDER
        )
    u = r.get("uncertainty") or {}
    # where the HU rule drew the lesions the model's uncertainty is not the masks' (covidct.report.heatmap)
    whose = "Model uncertainty" if probability_drew_lesions(r) else (
        "Lesion model uncertainty (on a whole HU volume the HU rule, not this model, draws GGO and consolidation)")
    unsure = "" if u.get("uncertain_percent_of_lungs") is None else (
        f"<p class='sub'>{whose}: {_fmt(u['uncertain_percent_of_lungs'], 1, ' %')} {what} has a lesion "
        f"probability between 0.3 and 0.7 (mean entropy {_fmt(u.get('mean_entropy_bits'), 3, ' bit')}).</p>")
    return (
        "<section><h2>Involvement</h2><p class='sub'>Ground-glass opacity + consolidation, "
        f"in percent {what} "
        f"(pleural effusion excluded).</p>{lungs}{zone_html}{unsure}</section>"
    )


def _severity_section(r: dict) -> str:
    s = r.get("severity", {})
    score, smax = s.get("score"), s.get("max", 25)
    head = (
        f'<div class="big">{int(score)} <span class="sub">/ {int(smax)}</span></div>'
        if score is not None
        else '<div class="big muted">not scored</div>'
    )
    lobes = s.get("lobes")
    tbl = ""
    if lobes:
        names = {
            "RUL": "Right upper",
            "RML": "Right middle",
            "RLL": "Right lower",
            "LUL": "Left upper",
            "LLL": "Left lower",
        }
        cells = "".join(
            f"<tr><td>{names[k]} lobe ({k})</td><td class='num'>{_fmt(lobes.get(k), 0)} / 5</td></tr>"
            for k in ("RUL", "RML", "RLL", "LUL", "LLL")
        )
        tbl = f"<h3>Per lobe</h3><table style='max-width:360px'>{cells}</table>"
    return (
        f"<section><h2>Severity score</h2>{head}<div class='sub'>{_fmt(s.get('method'))}</div>{tbl}</section>"
    )


def _legend() -> str:
    items = [
        f'<span><i class="line" style="border-color:{_rgb(LUNG_COLORS[LEFT_LUNG])}"></i>left lung</span>',
        f'<span><i class="line" style="border-color:{_rgb(LUNG_COLORS[RIGHT_LUNG])}"></i>right lung</span>',
    ]
    for c, name in (
        (GGO, "ground-glass opacity"),
        (CONSOLIDATION, "consolidation"),
        (EFFUSION, "pleural effusion"),
    ):
        items.append(f'<span><i class="swatch" style="background:{_rgb(LESION_COLORS[c])}"></i>{name}</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def images_section(ct: CT, lungs: np.ndarray, lesions: np.ndarray) -> str:
    """The page's images (overlays of representative slices, lesion profile): its slowest part, which
    :func:`covidct.pipeline.write_outputs` renders while the masks are being written."""
    px_cm2 = ct.pixel_area_mm2 / 100.0
    spacing_yx = (ct.spacing[1], ct.spacing[2])
    figs = []
    for k in representative_slices(lungs, lesions, n=6)[::-1]:  # head first
        rgb = overlay_rgb(ct.array[k], lungs[k], lesions[k], ct.is_hu, spacing_yx=spacing_yx, min_width=512)
        z = ct.slices[k].z_mm if k < len(ct.slices) else None
        area = float((lesions[k] > 0).sum()) * px_cm2
        cap = f"slice {k + 1} of {ct.n_slices}"
        if z is not None and ct.n_slices > 1:
            cap += f" · z = {z:.1f} mm"
        if ct.spacing_known:
            cap += f" · lesions {area:.1f} cm²"
        figs.append(
            f'<figure><img alt="slice {k + 1}" src="{_data_uri(png_bytes(rgb))}">'
            f"<figcaption>{escape(cap)}</figcaption></figure>"
        )
    grid = "slices" if len(figs) > 1 else "slices one"  # a single image gets more room
    window = "lung window −1350 … 150 HU" if ct.is_hu else "image shown as supplied"
    profile = ""
    if ct.n_slices > 1:
        profile = (
            "<h3>Lesion area along the body axis</h3>" + lesion_profile_svg(ct, lungs, lesions)
        )
    return (
        f"<section><h2>Images</h2>{profile}<h3>Representative slices ({window}; patient's right on the image "
        f"left, front at the top)</h3>{_legend()}<div class='{grid}'>{''.join(figs)}</div></section>"
    )


def _tail_sections(r: dict) -> str:
    models = r.get("models") or []
    mrows = (
        "".join(
            f"<tr><td>{escape(str(m.get('name')))}</td><td>{escape(str(m.get('version')))}</td>"
            f"<td><code>{(escape(str(m['sha256'])[:16]) + '…') if m.get('sha256') else '—'}</code></td></tr>"
            for m in models
        )
        or "<tr><td colspan='3' class='muted'>no model files (rule-based methods only)</td></tr>"
    )
    warnings = r.get("warnings") or []
    wl = (
        ("<ul class='warn'>" + "".join(f"<li>{escape(str(w))}</li>" for w in warnings) + "</ul>")
        if warnings
        else "<p class='muted'>none</p>"
    )
    t = r.get("timings_s") or {}
    trows = "".join(
        f"<tr><td>{escape(k)}</td><td class='num'>{_fmt(v, 2, ' s')}</td></tr>" for k, v in t.items()
    )
    outs = r.get("outputs") or {}
    orows = "".join(
        f"<tr><td>{escape(k)}</td><td>{_fmt(', '.join(v) if isinstance(v, list) else v)}</td></tr>"
        for k, v in outs.items()
    )
    return (
        f"<section><h2>Warnings</h2>{wl}</section>"
        "<div class='grid2'>"
        "<section><h2>Models</h2><table><tr><th>Name</th><th>Version</th><th>SHA-256</th></tr>"
        f"{mrows}</table>"
        f"<h3>Output files</h3><table>{orows}</table></section>"
        f"<section><h2>Timings</h2><table style='max-width:320px'>{trows}</table></section>"
        "</div>"
    )


def render_html(ct: CT, lungs: np.ndarray, lesions: np.ndarray, report: dict, images_html: str | None = None) -> str:
    """The report page as one string (see ``write_html_report``); ``images_html``: :func:`images_section`
    when already rendered."""
    lungs = np.asarray(lungs)
    lesions = np.asarray(lesions)
    if lungs.shape != ct.shape or lesions.shape != ct.shape:
        raise ValueError(f"mask shapes {lungs.shape}/{lesions.shape} do not match the CT {ct.shape}")
    name = escape(ct.name)
    created = escape(str(report.get("created", "")))
    version = escape(str(report.get("covidct_version", "")))
    body = "".join(
        [
            _input_section(report),
            "<div class='grid2'>",
            _diagnosis_section(report),
            _severity_section(report),
            "</div>",
            pattern_section(report),
            _volumes_section(report),
            _involvement_section(report),
            densitometry_section(report),
            images_html if images_html is not None else images_section(ct, lungs, lesions),
            _tail_sections(report),
        ]
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>covidct report — {name}</title><style>{_CSS}</style></head><body><main>"
        f"<header><h1>Chest CT analysis — {name}</h1>"
        f"<div class='sub'>covidct {version} · created {created} · report schema "
        f"{escape(str(report.get('schema_version', '')))}</div></header>"
        f"<div class='notice' role='note'>{RESEARCH_NOTICE} Automated measurements from a research "
        "tool; they have not been validated for clinical use and must be checked by a qualified reader.</div>"
        f"{body}<footer>{RESEARCH_NOTICE} Generated by covidct {version}.</footer></main></body></html>\n"
    )


def write_html_report(ct: CT, lungs: np.ndarray, lesions: np.ndarray, report: dict, path: str | Path,
                      images_html: str | None = None) -> Path:
    """Write the self-contained report page (no network access needed to view it); atomic."""
    text = render_html(ct, lungs, lesions, report, images_html)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
