"""The report (``report.json``'s content, schema in ``covidct.report.schema``) from the measures and diagnosis."""

from __future__ import annotations

from datetime import UTC, datetime

from covidct import __version__
from covidct.report.schema import REPORT_SCHEMA_VERSION
from covidct.volume import CT


def model_entry(info: dict | None, fallback: str) -> dict:
    """The report's ``models[]`` entry of a loaded model's ``info`` (None: the HU rule named ``fallback``)."""
    if info is None:
        return {"name": fallback, "version": "rule", "sha256": None}
    return {"name": str(info.get("name")), "version": str(info.get("version", "0")), "sha256": info.get("sha256")}


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


def build_report(ct: CT, mode: str, sev: dict, diagnosis: dict, models: list[dict], timings: dict, warnings: list[str],
                 pattern: dict | None = None, analysed_box: tuple[slice, slice] | None = None,
                 lung_density: dict | None = None) -> dict:
    """The report of one analysis (``slices`` and ``outputs`` are filled in by the outputs stage); ``pattern``:
    the RSNA/CO-RADS pattern of the diagnosis stage (None for a slice); ``analysed_box``: the in-plane box the
    networks saw (:func:`covidct.pipeline.grid.lung_field_box`), None for the whole field; ``lung_density``:
    :func:`covidct.pipeline.densitometry.densitometry` (None where it does not apply)."""
    vml = sev["voxel_ml"]
    pl = sev["per_lung"]

    def ml(n: int) -> float | None:
        return None if vml is None else round(n * vml, 2)

    lesion_side = {
        side: {
            "ggo_ml": ml(pl[side]["ggo"]),
            "consolidation_ml": ml(pl[side]["consolidation"]),
            "effusion_ml": ml(pl[side]["effusion"]),
            "total_ml": ml(pl[side]["infection"] + pl[side]["effusion"]),
        }
        for side in ("left", "right")
    }
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "covidct_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "input": {
            "path": ct.path,
            "kind": ct.kind,
            "n_slices": ct.n_slices,
            "shape_zyx": list(ct.shape),
            "spacing_mm": [round(float(s), 4) for s in ct.spacing] if ct.spacing_known else None,
            "is_hu": bool(ct.is_hu),
            "display_window": ct.meta.get("display_window"),
            "patient_position": ct.meta.get("patient_position"),
            "series_uid": ct.meta.get("series_uid"),
            "patient_id": ct.meta.get("patient_id"),
            "study_date": ct.meta.get("study_date"),
            "analysed_box_yx": None if analysed_box is None else [[b.start, b.stop] for b in analysed_box],
        },
        "diagnosis": diagnosis,
        "lungs": {
            "left_ml": ml(pl["left"]["lung_vox"]),
            "right_ml": ml(pl["right"]["lung_vox"]),
            "total_ml": ml(pl["left"]["lung_vox"] + pl["right"]["lung_vox"]),
        },
        "lesions": {
            k: (None if vml is None else round(lesion_side["left"][k] + lesion_side["right"][k], 2))
            for k in ("ggo_ml", "consolidation_ml", "effusion_ml", "total_ml")
        }
        | lesion_side,
        "involvement_percent": {
            "left": _r(sev["involvement"]["left"], 3),
            "right": _r(sev["involvement"]["right"], 3),
            "total": _r(sev["involvement"]["total"], 3),
            "zones": {k: _r(v, 3) for k, v in sev["zones"].items()},
        },
        "severity": {
            "score": sev["score"],
            "max": 25,
            "method": (
                "Pan et al. 2020 CT severity score (5 lobes × 0–5) approximated from six zones: the right lung's "
                "upper/middle/lower thirds stand for RUL/RML/RLL, the left lung's upper two thirds for LUL and its "
                "lower third for LLL (no lobe segmentation yet)"
                if mode == "volume"
                else "not computed for a single slice (needs the whole lungs)"
            ),
            "lobes": sev["lobe_scores"],
            "lobes_percent": None if sev["lobes_percent"] is None else {k: _r(v, 3) for k, v in sev["lobes_percent"].items()},
        },
        "pattern": pattern,
        "densitometry": lung_density,
        "slices": [],
        "models": models,
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        "warnings": warnings,
        "outputs": {},
    }
    return report
