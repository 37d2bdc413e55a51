"""Output writers of ``covidct analyze``: report.json schema, DICOM SEG, HTML report, PNG overlays.

Heavy dependencies (highdicom, matplotlib, jsonschema) are imported only when a writer is
called, so ``import covidct.report`` stays cheap.
"""

from __future__ import annotations

import numpy as np

from covidct.labels import CONSOLIDATION, EFFUSION, GGO
from covidct.report.schema import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, validate_report
from covidct.volume import CT

__all__ = [
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "validate_report",
    "slice_counts",
    "slice_rows",
    "write_dicom_seg",
    "write_html_report",
    "save_slice_overlays",
]


SLICE_CLASSES = (GGO, CONSOLIDATION, EFFUSION)


def slice_counts(lungs: np.ndarray, lesions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of (z, y, x) masks: lung pixels (z,) and GGO / consolidation / effusion pixels (z, 3). Lesions are
    sparse: counted only on the slices holding any."""
    nz = len(lungs)
    lung_px = np.count_nonzero(lungs.reshape(nz, -1), axis=1)
    counts = np.zeros((nz, len(SLICE_CLASSES)), np.int64)
    ks = np.flatnonzero(lesions.reshape(nz, -1).any(axis=1))
    flat = lesions[ks].reshape(len(ks), lesions[0].size)  # not -1: no lesion at all gives 0 rows
    for i, c in enumerate(SLICE_CLASSES):
        counts[ks, i] = np.count_nonzero(flat == c, axis=1)
    return lung_px, counts


def slice_rows(ct: CT, lungs: np.ndarray, lesions: np.ndarray, uncertainty: list[dict] | None = None) -> list[dict]:
    """The report's ``slices`` list: per canonical slice, its source and areas in mm².

    ``lesion_mm2`` counts all lesion labels (GGO + consolidation + effusion), like
    ``lesions.total_ml``. Without known spacing (``ct.spacing_known`` False) areas are in pixels.
    ``uncertainty``: one ``{uncertain_mm2, lesion_entropy_bits}`` per slice (covidct.report.heatmap);
    both null without it.
    """
    if lungs.shape != ct.shape or lesions.shape != ct.shape:
        raise ValueError(f"mask shapes {lungs.shape}/{lesions.shape} do not match the CT {ct.shape}")
    px = float(ct.pixel_area_mm2) if ct.spacing_known else 1.0
    lung_px, counts = slice_counts(lungs, lesions)
    rows = []
    for k in range(ct.n_slices):
        ref = ct.slices[k] if k < len(ct.slices) else None
        z = ref.z_mm if ref is not None else float((ct.affine @ [0, 0, k, 1])[2])
        ggo, cons, eff = (float(v) * px for v in counts[k])
        rows.append(
            {
                "index": k,
                "file": ref.file if ref is not None else None,
                "sop_instance_uid": ref.sop_instance_uid if ref is not None else None,
                "z_mm": round(float(z), 3),
                "lung_mm2": round(float(lung_px[k]) * px, 2),
                "lesion_mm2": round(ggo + cons + eff, 2),
                "ggo_mm2": round(ggo, 2),
                "consolidation_mm2": round(cons, 2),
                "effusion_mm2": round(eff, 2),
                "uncertain_mm2": None,
                "lesion_entropy_bits": None,
            }
            | (uncertainty[k] if uncertainty is not None else {})
        )
    return rows


def __getattr__(name: str):
    if name == "write_dicom_seg":
        from covidct.report.dicomseg import write_dicom_seg

        return write_dicom_seg
    if name == "write_html_report":
        from covidct.report.html import write_html_report

        return write_html_report
    if name == "save_slice_overlays":
        from covidct.report.figures import save_slice_overlays

        return save_slice_overlays
    raise AttributeError(f"module 'covidct.report' has no attribute {name!r}")
