"""The report.json schema (JSON Schema draft 2020-12) and its validator.

``REPORT_SCHEMA`` is the single source of truth; ``docs/report-schema.json`` is a copy
written by ``python -m covidct.report.schema docs/report-schema.json`` (a test checks that
the two are identical). ``docs/report.md`` describes every field for people.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

REPORT_SCHEMA_VERSION = "1.8"

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_PCT = {"type": "number", "minimum": 0, "maximum": 100}
_PCT_OR_NULL = {"type": ["number", "null"], "minimum": 0, "maximum": 100}
_NONNEG = {"type": "number", "minimum": 0}
_ML = {"type": ["number", "null"], "minimum": 0}
_STR_OR_NULL = {"type": ["string", "null"]}
_PROB = {"type": "number", "minimum": 0, "maximum": 1}
_BITS_OR_NULL = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_ZONES = ("left_upper", "left_middle", "left_lower", "right_upper", "right_middle", "right_lower")
_LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
_LESION_KEYS = ("ggo_ml", "consolidation_ml", "effusion_ml", "total_ml")
_TIMINGS = ("load", "lungs", "lesions", "severity", "diagnosis", "outputs", "total")


def _obj(props: dict[str, Any], *, required: list[str] | None = None, description: str | None = None) -> dict:
    """An object with these properties, all required unless ``required`` says otherwise; extra keys OK."""
    out: dict[str, Any] = {"type": "object"}
    if description:
        out["description"] = description
    out["properties"] = props
    out["required"] = list(props) if required is None else required
    return out


_LESION_SIDE = _obj({k: _ML for k in _LESION_KEYS})
_DENSITY_CLASSES = ("emphysema", "inflated", "infiltrated", "collapsed", "vessels")
_DENSITY_REGIONS = ("ventral", "dorsal", "upper", "middle", "lower")
_DENSITY_SUMMARY = _obj({"classes_ml": _obj({c: _ML for c in _DENSITY_CLASSES}), "affected_percent": _PCT_OR_NULL})
_DENSITY_SIDE = {
    "type": ["object", "null"],
    "properties": {
        "lung_ml": _ML,
        "mean_hu": _NUM,
        "perc15_hu": _NUM,
        "laa950_percent": _PCT_OR_NULL,
        **_DENSITY_SUMMARY["properties"],
        "regions": _obj({r: _DENSITY_SUMMARY for r in _DENSITY_REGIONS}),
    },
    "required": ["lung_ml", "mean_hu", "perc15_hu", "laa950_percent", "classes_ml", "affected_percent", "regions"],
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/covidct/covidct/docs/report-schema.json",
    "title": "covidct report",
    "description": (
        "Result of `covidct analyze` for one CT (report.json). Volumes in millilitres, areas in "
        "square millimetres, positions in millimetres, times in seconds. Research use only."
    ),
    "type": "object",
    "properties": {
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "covidct_version": {"type": "string", "minLength": 1},
        "created": {
            "type": "string",
            "format": "date-time",
            # Checked by pattern too: jsonschema does not enforce "format" by default.
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$",
        },
        "mode": {"enum": ["volume", "slice"]},
        "input": _obj(
            {
                "path": _STR_OR_NULL,
                "kind": {"type": "string", "minLength": 1},
                "n_slices": {"type": "integer", "minimum": 1},
                "shape_zyx": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1},
                    "minItems": 3,
                    "maxItems": 3,
                },
                "spacing_mm": {
                    "type": ["array", "null"],
                    "items": {"type": "number", "exclusiveMinimum": 0},
                    "minItems": 3,
                    "maxItems": 3,
                },
                "is_hu": {"type": "boolean"},
                "display_window": {
                    "type": ["object", "null"],
                    "description": "a display-range or HU + 1024 volume mapped to approximate HU: the map found (else null)",
                },
                "patient_position": {
                    "type": ["string", "null"],
                    "description": "DICOM Patient Position (HFS, HFP, ...): the dependent side; null when not given",
                },
                "series_uid": _STR_OR_NULL,
                "patient_id": _STR_OR_NULL,
                "study_date": {
                    "type": ["string", "null"],
                    "pattern": r"^\d{4}-\d{2}-\d{2}$",
                    "description": "the scan's date (DICOM StudyDate, else SeriesDate or AcquisitionDate), "
                                   "YYYY-MM-DD; null when the input does not say; new in 1.8",
                },
                "analysed_box_yx": {
                    "type": ["array", "null"],
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "[[row start, row stop], [column start, column stop]] of the in-plane box centred on "
                                   "the lungs that the networks saw, where the lungs are narrow in a wide field of view; "
                                   "null: the whole field",
                },
            },
            # display_window is new in 1.5, patient_position in 1.6 and analysed_box_yx in 1.7: covidct always writes
            # them, a report of an earlier version lacks them
            required=["path", "kind", "n_slices", "shape_zyx", "spacing_mm", "is_hu", "series_uid", "patient_id"],
        ),
        "diagnosis": _obj(
            {
                "label": {"enum": ["covid19", "pneumonia", "normal"]},
                "probabilities": _obj({"covid19": _PROB, "pneumonia": _PROB, "normal": _PROB}),
                "method": {"type": "string", "minLength": 1},
            }
        ),
        "pattern": {
            "type": ["object", "null"],
            "description": "RSNA category, CO-RADS score, the pattern features and the reasons (null for a 2-D image)",
            "properties": {
                "rsna_category": {"enum": ["typical", "indeterminate", "atypical", "negative"]},
                "co_rads": {"type": "integer", "minimum": 1, "maximum": 5},
                "features": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {"type": ["number", "null"]},
                },
                "reasons": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                "borderline": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
            "required": ["rsna_category", "co_rads", "features", "reasons"],
        },
        "densitometry": {
            "type": ["object", "null"],
            "description": "the lung's Hounsfield units: mean lung density, Perc15, LAA-950 and 3D Slicer Lung CT "
                           "Analyzer's five HU classes, per lung and region (null: no whole HU volume); new in 1.8",
            "properties": {
                "method": {"type": "string", "minLength": 1},
                "classes_hu": _obj({c: {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2}
                                    for c in _DENSITY_CLASSES}),
                "left": _DENSITY_SIDE,
                "right": _DENSITY_SIDE,
                "total": _DENSITY_SIDE,
            },
            "required": ["method", "classes_hu", "left", "right", "total"],
        },
        "lungs": _obj({"left_ml": _ML, "right_ml": _ML, "total_ml": _ML}),
        "lesions": _obj({**{k: _ML for k in _LESION_KEYS}, "left": _LESION_SIDE, "right": _LESION_SIDE}),
        "involvement_percent": _obj(
            {
                "left": _PCT,
                "right": _PCT,
                "total": _PCT,
                "zones": {
                    "type": ["object", "null"],
                    "properties": {z: _PCT_OR_NULL for z in _ZONES},
                    "required": list(_ZONES),
                },
            }
        ),
        "severity": _obj(
            {
                "score": {"type": ["integer", "null"], "minimum": 0, "maximum": 25},
                "max": {"const": 25},
                "method": {"type": "string", "minLength": 1},
                "lobes": {
                    "type": ["object", "null"],
                    "properties": {lobe: {"type": "integer", "minimum": 0, "maximum": 5} for lobe in _LOBES},
                    "required": list(_LOBES),
                },
            }
        ),
        "slices": {
            "type": "array",
            "items": _obj(
                {
                    "index": {"type": "integer", "minimum": 0},
                    "file": _STR_OR_NULL,
                    "sop_instance_uid": _STR_OR_NULL,
                    "z_mm": _NUM,
                    "lung_mm2": _NONNEG,
                    "lesion_mm2": _NONNEG,
                    "ggo_mm2": _NONNEG,
                    "consolidation_mm2": _NONNEG,
                    "effusion_mm2": _NONNEG,
                    "uncertain_mm2": _ML,
                    "lesion_entropy_bits": _BITS_OR_NULL,
                }
            ),
        },
        "uncertainty": _obj(
            {
                "method": {"type": "string", "minLength": 1},
                "band": {"type": "array", "items": _PROB, "minItems": 2, "maxItems": 2},
                "threshold_percent": _PCT,
                "uncertain_ml": _ML,
                "uncertain_percent_of_lungs": _PCT_OR_NULL,
                "mean_entropy_bits": _BITS_OR_NULL,
                "high": {"type": "boolean"},
            },
            description="How unsure the lesion models are inside the lungs (null figures: no lesion model ran).",
        ),
        "models": {
            "type": "array",
            "items": _obj(
                {"name": {"type": "string"}, "version": {"type": "string"}, "sha256": _STR_OR_NULL}
            ),
        },
        "timings_s": _obj({k: _NONNEG for k in _TIMINGS}),
        "warnings": {"type": "array", "items": {"type": "string"}},
        "outputs": {
            "type": "object",
            "properties": {
                "lungs": _STR_OR_NULL,
                "lesions": _STR_OR_NULL,
                "dicom_seg": _STR_OR_NULL,
                "html": _STR_OR_NULL,
            },
            "required": ["lungs", "lesions", "dicom_seg", "html"],
            # Further outputs (e.g. "png_dir") are file/folder names or lists of them.
            "additionalProperties": {
                "type": ["string", "null", "array"],
                "items": {"type": "string"},
            },
        },
    },
    "required": [
        "schema_version",
        "covidct_version",
        "created",
        "mode",
        "input",
        "diagnosis",
        "pattern",
        "lungs",
        "lesions",
        "involvement_percent",
        "severity",
        "slices",
        "uncertainty",
        "models",
        "timings_s",
        "warnings",
        "outputs",
    ],
    # A single 2-D image has no volumes and no severity score.
    "if": {"properties": {"mode": {"const": "slice"}}, "required": ["mode"]},
    "then": {
        "properties": {
            "input": {"properties": {"spacing_mm": {"type": "null"}}},
            "lungs": {"properties": {k: {"type": "null"} for k in ("left_ml", "right_ml", "total_ml")}},
            "lesions": {"properties": {k: {"type": "null"} for k in _LESION_KEYS}},
            "severity": {"properties": {"score": {"type": "null"}}},
            "pattern": {"type": "null"},
            "densitometry": {"type": "null"},
        }
    },
}


def _fmt_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first failing path (e.g. ``$.diagnosis.label``) if invalid.

    Checks the JSON Schema plus two things a schema cannot say: the three diagnosis
    probabilities sum to 1 (within 1e-3), and no number is NaN or infinite.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(report, dict):
        raise ValueError(f"$: report must be a JSON object, got {type(report).__name__}")
    bad = _non_finite(report, [])
    if bad is not None:
        raise ValueError(f"{_fmt_path(bad)}: number is NaN or infinite (not valid JSON)")
    validator = Draft202012Validator(REPORT_SCHEMA)
    err = best_match(validator.iter_errors(report))
    if err is not None:
        raise ValueError(f"{_fmt_path(err.absolute_path)}: {err.message}")
    probs = report["diagnosis"]["probabilities"]
    total = sum(float(probs[k]) for k in ("covid19", "pneumonia", "normal"))
    if abs(total - 1.0) > 1e-3:
        raise ValueError(f"$.diagnosis.probabilities: probabilities sum to {total:.4f}, expected 1")


def _non_finite(obj: Any, path: list) -> list | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, [*path, k])
            if found is not None:
                return found
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _non_finite(v, [*path, i])
            if found is not None:
                return found
    return None


def schema_json() -> str:
    """The schema as the exact text of docs/report-schema.json."""
    return json.dumps(REPORT_SCHEMA, indent=2) + "\n"


if __name__ == "__main__":  # regenerate docs/report-schema.json
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/report-schema.json")
    target.write_text(schema_json(), encoding="utf-8")
    print(f"wrote {target}")
