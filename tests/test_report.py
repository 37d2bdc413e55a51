"""Tests for covidct.report: report.json schema, DICOM SEG, HTML report, PNG overlays."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidct import __version__
from covidct.io import load_ct
from covidct.phantom import make_phantom, write_phantom
from covidct.pipeline.densitometry import densitometry
from covidct.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, slice_rows, validate_report
from covidct.report.schema import schema_json

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(12, 64, 64), spacing=(5.0, 3.0, 3.0), seed=0)


@pytest.fixture(scope="module")
def dicom_ct(phantom, tmp_path_factory):
    """The phantom written as a DICOM series (shuffled file names) and loaded back."""
    folder = write_phantom(phantom, tmp_path_factory.mktemp("ph"), fmt="dicom")
    return load_ct(folder)


def _report(ct, lungs, lesions, mode: str = "volume") -> dict:
    """A complete, plausible report for these masks (what the pipeline produces)."""
    from covidct.report.heatmap import uncertainty as uncertainty_of

    prob = (lesions > 0).astype(np.float32) * 0.9  # a stand-in lesion probability
    uncertainty, per_slice = uncertainty_of(prob, lungs, 2.0 if mode == "volume" else None, 1.0)
    vml = ct.voxel_volume_ml
    vol = mode == "volume"

    def ml(mask) -> float | None:
        return round(float(mask.sum()) * vml, 2) if vol else None

    side = {}
    for name, lab in (("left", 1), ("right", 2)):
        inl = lungs == lab
        side[name] = {
            "ggo_ml": ml((lesions == 1) & inl),
            "consolidation_ml": ml((lesions == 2) & inl),
            "effusion_ml": ml((lesions == 3) & inl),
            "total_ml": ml((lesions > 0) & inl),
        }

    def pct(a, b) -> float:
        return round(100.0 * float(a.sum()) / float(b.sum()), 2) if b.sum() else 0.0

    inf = (lesions == 1) | (lesions == 2)
    zones = {
        f"{s}_{z}": 5.0 * i
        for i, (s, z) in enumerate((s, z) for s in ("left", "right") for z in ("upper", "middle", "lower"))
    }
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "covidct_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "input": {
            "path": str(ct.path),
            "kind": ct.kind,
            "n_slices": ct.n_slices,
            "shape_zyx": list(ct.shape),
            "spacing_mm": list(ct.spacing) if vol else None,
            "is_hu": ct.is_hu,
            "series_uid": ct.meta.get("series_uid"),
            "patient_id": ct.meta.get("patient_id"),
        },
        "diagnosis": {
            "label": "covid19",
            "probabilities": {"covid19": 0.71, "pneumonia": 0.2, "normal": 0.09},
            "method": "test fixture",
        },
        "pattern": {
            "rsna_category": "typical",
            "co_rads": 5,
            "features": {"opacity_percent": 2.6, "peripheral_fraction": 0.71, "n_foci": 10, "septal_line_fraction": None},
            "reasons": ["bilateral, 71 % peripheral, multifocal round GGO → typical <b>"],
        }
        if vol
        else None,
        "densitometry": densitometry(ct, lungs) if vol else None,
        "lungs": {"left_ml": ml(lungs == 1), "right_ml": ml(lungs == 2), "total_ml": ml(lungs > 0)},
        "lesions": {
            "ggo_ml": ml(lesions == 1),
            "consolidation_ml": ml(lesions == 2),
            "effusion_ml": ml(lesions == 3),
            "total_ml": ml(lesions > 0),
            **side,
        },
        "involvement_percent": {
            "left": pct(inf & (lungs == 1), lungs == 1),
            "right": pct(inf & (lungs == 2), lungs == 2),
            "total": pct(inf & (lungs > 0), lungs > 0),
            "zones": zones if vol else None,
        },
        "severity": {
            "score": 9 if vol else None,
            "max": 25,
            "method": "CT severity score (Pan et al. 2020), 0-5 per lobe"
            if vol
            else "not available for a single 2-D image",
            "lobes": {"RUL": 2, "RML": 1, "RLL": 3, "LUL": 1, "LLL": 2} if vol else None,
        },
        "slices": slice_rows(ct, lungs, lesions, per_slice),
        "uncertainty": uncertainty,
        "models": [{"name": "lesions-unet", "version": "1.0", "sha256": "ab" * 32}],
        "timings_s": {
            "load": 0.1,
            "lungs": 0.5,
            "lesions": 1.2,
            "severity": 0.01,
            "diagnosis": 0.2,
            "outputs": 0.3,
            "total": 2.31,
        },
        "warnings": ["example <warning> & escaping"],
        "outputs": {
            "lungs": "lungs.nii.gz",
            "lesions": "lesions.nii.gz",
            "dicom_seg": "segmentation.dcm",
            "html": "report.html",
        },
    }


# ----------------------------------------------------------------------------- schema


def test_schema_file_matches_code():
    on_disk = json.loads((REPO / "docs" / "report-schema.json").read_text(encoding="utf-8"))
    assert on_disk == REPORT_SCHEMA
    assert (REPO / "docs" / "report-schema.json").read_text(encoding="utf-8") == schema_json()


def test_docs_describe_every_top_level_field():
    text = (REPO / "docs" / "report.md").read_text(encoding="utf-8")
    for key in REPORT_SCHEMA["properties"]:
        assert f"`{key}`" in text, key


def test_valid_reports_pass(dicom_ct, phantom):
    rep = _report(dicom_ct, phantom.lungs, phantom.lesions)
    validate_report(rep)
    validate_report(json.loads(json.dumps(rep)))  # survives a JSON round trip
    rep["outputs"]["png_dir"] = "png"
    rep["extra_key"] = {"anything": 1}  # more keys are allowed
    validate_report(rep)
    sl = _report(dicom_ct, phantom.lungs, phantom.lesions, mode="slice")
    validate_report(sl)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda r: r["diagnosis"].__setitem__("label", "flu"), "$.diagnosis.label"),
        (
            lambda r: r["diagnosis"]["probabilities"].__setitem__("normal", 1.5),
            "$.diagnosis.probabilities.normal",
        ),
        (lambda r: r["diagnosis"]["probabilities"].__setitem__("normal", 0.5), "$.diagnosis.probabilities"),
        (lambda r: r["lesions"]["left"].pop("ggo_ml"), "$.lesions.left"),
        (lambda r: r["slices"][3].__setitem__("lung_mm2", -1.0), "$.slices[3].lung_mm2"),
        (lambda r: r["slices"][3].__setitem__("lesion_entropy_bits", 1.5), "$.slices[3].lesion_entropy_bits"),
        (lambda r: r["uncertainty"].pop("high"), "$.uncertainty"),
        (lambda r: r["severity"].__setitem__("score", 30), "$.severity.score"),
        (lambda r: r["lungs"].__setitem__("left_ml", float("nan")), "$.lungs.left_ml"),
        (lambda r: r.__setitem__("created", "yesterday"), "$.created"),
        (lambda r: r.__setitem__("schema_version", "0.9"), "$.schema_version"),
        (lambda r: r.pop("timings_s"), "$"),
        (lambda r: r["pattern"].__setitem__("rsna_category", "probable"), "$.pattern.rsna_category"),
        (lambda r: r["pattern"].__setitem__("co_rads", 6), "$.pattern.co_rads"),
        (lambda r: r["pattern"].__setitem__("reasons", []), "$.pattern.reasons"),
        (lambda r: r["pattern"]["features"].__setitem__("n_foci", "many"), "$.pattern.features.n_foci"),
        (lambda r: r["densitometry"]["left"].__setitem__("laa950_percent", 101.0), "$.densitometry.left.laa950_percent"),
        (lambda r: r["densitometry"]["total"]["regions"].pop("dorsal"), "$.densitometry.total.regions"),
    ],
)
def test_broken_report_names_the_path(dicom_ct, phantom, mutate, path):
    rep = copy.deepcopy(_report(dicom_ct, phantom.lungs, phantom.lesions))
    mutate(rep)
    with pytest.raises(ValueError) as e:
        validate_report(rep)
    assert str(e.value).startswith(path + ":"), str(e.value)


def test_slice_mode_forbids_volumes(dicom_ct, phantom):
    rep = _report(dicom_ct, phantom.lungs, phantom.lesions, mode="slice")
    rep["lungs"]["total_ml"] = 12.0
    with pytest.raises(ValueError, match=r"^\$\.lungs\.total_ml"):
        validate_report(rep)
    rep = _report(dicom_ct, phantom.lungs, phantom.lesions, mode="slice")
    rep["densitometry"] = densitometry(dicom_ct, phantom.lungs)
    with pytest.raises(ValueError, match=r"^\$\.densitometry"):
        validate_report(rep)


def test_slice_rows(dicom_ct, phantom):
    rows = slice_rows(dicom_ct, phantom.lungs, phantom.lesions)
    assert len(rows) == dicom_ct.n_slices
    k = int(np.argmax((phantom.lesions == 1).sum(axis=(1, 2))))
    assert rows[k]["ggo_mm2"] == pytest.approx((phantom.lesions[k] == 1).sum() * 9.0)
    assert rows[k]["sop_instance_uid"] == dicom_ct.slices[k].sop_instance_uid
    assert rows[k]["file"] and (Path(dicom_ct.path) / rows[k]["file"]).is_file()


# ----------------------------------------------------------------------------- DICOM SEG


def _check_seg(seg_path: Path, ct, expected_frames: dict[str, list[np.ndarray]]) -> None:
    """Every source instance's SEG frames equal the expected per-segment masks."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    labels = [d.SegmentLabel for d in seg.SegmentSequence]
    assert labels == list(expected_frames)
    nums = list(range(1, len(labels) + 1))
    for uid in ct.meta["source_sop_uids"]:
        got = seg.get_pixels_by_source_instance(
            [uid], segment_numbers=nums, assert_missing_frames_are_empty=True
        )
        for j, label in enumerate(labels):
            assert np.array_equal(got[0, ..., j].astype(bool), expected_frames[label][uid]), (label, uid)


def _expected(ct, lungs, lesions, to_src) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for label, m in (
        ("Left lung", lungs == 1),
        ("Right lung", lungs == 2),
        ("Ground-glass opacity", lesions == 1),
        ("Consolidation", lesions == 2),
        ("Pleural effusion", lesions == 3),
    ):
        if label.endswith("lung") or m.any():
            out[label] = {s.sop_instance_uid: to_src(m[k]) for k, s in enumerate(ct.slices)}
    return out


def test_dicom_seg_round_trip(dicom_ct, phantom, tmp_path):
    from covidct.report.dicomseg import write_dicom_seg

    out = write_dicom_seg(dicom_ct, phantom.lungs, phantom.lesions, tmp_path / "out" / "segmentation.dcm")
    assert out.is_file() and not list(out.parent.glob(".*tmp"))
    _check_seg(out, dicom_ct, _expected(dicom_ct, phantom.lungs, phantom.lesions, lambda a: a))
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(Path(dicom_ct.path) / dicom_ct.slices[0].file, stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == dicom_ct.meta["series_uid"]
    codes = {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in ds.SegmentSequence}
    assert codes["Left lung"] == "44029006" and codes["Right lung"] == "3341006"
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "covidct"

    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not installed (apt-get install -y dicom3tools)")
    res = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, errors


def test_dicom_seg_only_present_lesions(dicom_ct, phantom, tmp_path):
    from covidct.report.dicomseg import write_dicom_seg

    lesions = np.where(phantom.lesions == 2, 2, 0).astype(np.uint8)  # consolidation only
    out = write_dicom_seg(dicom_ct, phantom.lungs, lesions, tmp_path / "seg.dcm")
    _check_seg(out, dicom_ct, _expected(dicom_ct, phantom.lungs, lesions, lambda a: a))


def _rewrite_series(src: Path, dst: Path, layout: str) -> None:
    """Copy a standard axial series into another pixel layout describing the same anatomy."""
    dst.mkdir()
    for f in src.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        px = ds.pixel_array
        dy, dx = (float(v) for v in ds.PixelSpacing)
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        if layout == "flipped":  # rows run right-to-left, columns posterior-to-anterior
            px = px[::-1, ::-1]
            ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
            ds.ImagePositionPatient = [x0 + (px.shape[1] - 1) * dx, y0 + (px.shape[0] - 1) * dy, z]
        else:  # "transposed": rows run anterior-to-posterior
            px = px.T
            ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
            ds.PixelSpacing = [dx, dy]
        px = np.ascontiguousarray(px)
        ds.Rows, ds.Columns = px.shape
        ds.PixelData = px.tobytes()
        ds.save_as(dst / f.name)


@pytest.mark.parametrize("layout", ["flipped", "transposed"])
def test_dicom_seg_maps_back_to_source_layout(dicom_ct, phantom, tmp_path, layout):
    from covidct.report.dicomseg import write_dicom_seg

    _rewrite_series(Path(dicom_ct.path), tmp_path / "series", layout)
    ct = load_ct(tmp_path / "series")
    assert np.array_equal(ct.array, dicom_ct.array)  # same canonical volume
    to_src = (lambda a: a[::-1, ::-1]) if layout == "flipped" else (lambda a: a.T)
    out = write_dicom_seg(ct, phantom.lungs, phantom.lesions, tmp_path / "seg.dcm")
    _check_seg(out, ct, _expected(ct, phantom.lungs, phantom.lesions, to_src))


def test_dicom_seg_rejects_non_dicom(phantom, tmp_path):
    from covidct.report.dicomseg import write_dicom_seg

    with pytest.raises(ValueError, match="DICOM input"):
        write_dicom_seg(phantom.ct, phantom.lungs, phantom.lesions, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


# ----------------------------------------------------------------------------- HTML, overlays


def test_html_report_is_self_contained(dicom_ct, phantom, tmp_path):
    from covidct.report.html import RESEARCH_NOTICE, write_html_report

    rep = _report(dicom_ct, phantom.lungs, phantom.lesions)
    out = write_html_report(dicom_ct, phantom.lungs, phantom.lesions, rep, tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert RESEARCH_NOTICE in text
    assert "COVID-19 pneumonia" in text and "<code>covid19</code>" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    imgs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) >= 4  # at least 4 slices
    # the axial profile: inline SVG (no plotting library), with its axes, the lung line and a band per lesion class
    svg = re.search(r'<svg class="profile".*?</svg>', text, re.S)
    assert svg is not None and "area per slice (cm²)" in svg.group(0) and "<polyline" in svg.group(0)
    assert svg.group(0).count("<polygon") == len({int(v) for v in np.unique(phantom.lesions)} - {0})
    assert "example &lt;warning&gt; &amp; escaping" in text
    assert "71.0 %" in text and "9 <span" in text
    # the pattern: category, CO-RADS, escaped reasons, features with their definitions
    assert "Typical appearance · CO-RADS 5" in text and "→ typical &lt;b&gt;" in text
    assert "<code>peripheral_fraction</code>" in text and "outer third" in text
    # lung density: its table with the Lung CT Analyzer classes' ranges and the regions
    section = re.search(r"<section id='densitometry'>.*?</section>", text, re.S).group(0)
    total = rep["densitometry"]["total"]
    assert "LAA-950" in section and "-750..-400" in section and "dorsal" in section
    assert f"<td>Both lungs</td><td class='num'>{total['lung_ml']:.1f}</td><td class='num'>{total['mean_hu']:.0f}" in section


def test_html_report_single_image(tmp_path):
    from covidct.report.html import write_html_report
    from covidct.volume import CT, affine_from_spacing

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(1, 40, 48)).astype(np.float32)
    ct = CT(
        array=img,
        spacing=(1.0, 1.0, 1.0),
        affine=affine_from_spacing((1, 1, 1)),
        is_hu=False,
        kind="image",
        path=str(tmp_path / "x.png"),
        spacing_known=False,
    )
    lungs = np.zeros(img.shape, np.uint8)
    lungs[0, 10:30, 5:20], lungs[0, 10:30, 28:44] = 2, 1
    lesions = np.zeros(img.shape, np.uint8)
    lesions[0, 15:20, 8:14] = 1
    rep = _report(ct, lungs, lesions, mode="slice")
    validate_report(rep)
    text = write_html_report(ct, lungs, lesions, rep, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "not scored" in text and "single 2-D image" in text
    assert rep["pattern"] is None and "CO-RADS" not in text
    assert rep["densitometry"] is None and "id='densitometry'" not in text
    assert len(re.findall(r"data:image/png;base64", text)) == 1


def test_slice_overlays(dicom_ct, phantom, tmp_path):
    from PIL import Image

    from covidct.labels import LESION_COLORS
    from covidct.report.figures import save_slice_overlays

    paths = save_slice_overlays(dicom_ct, phantom.lungs, phantom.lesions, tmp_path / "png")
    assert [p.name for p in paths] == [f"slice_{k:04d}.png" for k in range(dicom_ct.n_slices)]
    k = int(np.argmax((phantom.lesions == 2).sum(axis=(1, 2))))
    im = np.asarray(Image.open(paths[k]).convert("RGB"))
    assert im.shape == (64, 64, 3)
    # Consolidation pixels away from the lung outline are tinted towards the consolidation colour.
    from scipy.ndimage import distance_transform_edt

    depth = np.where(phantom.lesions[k] == 2, distance_transform_edt(phantom.lungs[k] > 0), 0)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    assert depth[y, x] > 1
    r, g, b = (int(v) for v in im[y, x])
    assert r > g and r > b and LESION_COLORS[2][0] > LESION_COLORS[2][1]
    assert len(save_slice_overlays(dicom_ct, phantom.lungs, phantom.lesions, tmp_path / "p3", every=5)) == 3
