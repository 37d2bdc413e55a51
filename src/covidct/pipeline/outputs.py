"""Outputs stage: NIfTI masks, DICOM SEG, report.json, report.html and PNG overlays, written atomically.

Everything is built in a temp folder beside OUTDIR and moved in at the end, so a failed or interrupted
run leaves no half-written output. The DICOM SEG (the slowest writer) starts as soon as the masks are
final (:class:`EarlyOutputs`), overlapping the measures, the report and the other writers.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.pipeline.types import Analysis
from covidct.volume import CT

SegWriter = Callable[[np.ndarray, np.ndarray, Path], "Future[Path]"]


@dataclass
class EarlyOutputs:
    """The temp output folder and the DICOM SEG, started before the severity and report are computed."""

    tmp: Path
    seg: Future | None = None
    owner: ThreadPoolExecutor | None = None

    @classmethod
    def start(cls, outdir: Path, ct: CT, lungs: np.ndarray, lesions: np.ndarray, mode: str,
              seg_writer: SegWriter | None = None) -> EarlyOutputs:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        # mkdir, not mkdtemp: the folder is renamed into OUTDIR, so it gets the user's usual permissions (umask)
        tmp = outdir.parent / f".{outdir.name}.tmp-{uuid.uuid4().hex[:12]}"  # see remove_staging_folders
        tmp.mkdir()
        early = cls(tmp)
        if mode == "volume" and ct.kind == "dicom":
            path = early.tmp / "segmentation.dcm"
            if seg_writer is None:
                from covidct.report.dicomseg import write_dicom_seg

                early.owner = ThreadPoolExecutor(max_workers=1)
                early.seg = early.owner.submit(write_dicom_seg, ct, lungs, lesions, path)
            else:
                early.seg = seg_writer(lungs, lesions, path)
        return early

    def discard(self) -> None:
        """Remove the temp folder (after the SEG writer is done with it; its errors are reported elsewhere)."""
        if self.seg is not None:
            wait([self.seg])
        if self.owner is not None:
            self.owner.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_staging_folders(outdir: Path) -> None:
    """Remove the temp folders of ``outdir`` that killed runs left beside it (call only when nothing is
    writing ``outdir``: e.g. after the batch's workers were stopped mid-study)."""
    import glob

    for tmp in outdir.parent.glob(f".{glob.escape(outdir.name)}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def write_outputs(analysis: Analysis, outdir: Path, *, png: bool = False, html: bool = True, timings: dict | None = None,
                  early: EarlyOutputs | None = None, heatmap: bool = False) -> dict[str, str]:
    """Write every output into ``outdir`` atomically: built in a temp folder, then moved in.

    ``early``: the temp folder and DICOM SEG :meth:`Analyzer.__call__` started (else both start here).
    ``heatmap``: also the lesion probability (:func:`write_heatmaps`)."""
    import json

    from covidct.io import save_label_png, save_mask_nifti, save_overlay_png

    ct, lungs, lesions, report = analysis.ct, analysis.lungs, analysis.lesions, analysis.report
    t0 = time.perf_counter()
    outdir = Path(outdir)
    own = early is None
    if early is None:
        early = EarlyOutputs.start(outdir, ct, lungs, lesions, report["mode"])
    tmp = early.tmp
    try:
        from covidct.report import slice_rows, validate_report

        files: dict[str, str | None] = {"lungs": None, "lesions": None, "dicom_seg": None, "html": None}
        # The slow writers (gzip, DICOM SEG encoding, overlay rendering) spend most of their time in C code
        # that releases the GIL, so they run side by side; each writes its own file in the temp folder.
        with ThreadPoolExecutor(max_workers=4) as pool:
            images = None
            if html and report["mode"] == "volume":
                from covidct.report.html import images_section

                images = pool.submit(images_section, ct, lungs, lesions)
            if report["mode"] == "volume":
                writes = [pool.submit(save_mask_nifti, lungs, ct, tmp / "lungs.nii.gz"),
                          pool.submit(save_mask_nifti, lesions, ct, tmp / "lesions.nii.gz")]
                seg = early.seg
                report["slices"] = slice_rows(ct, lungs, lesions, analysis.slice_uncertainty)
                for w in writes:
                    w.result()
                files |= {"lungs": "lungs.nii.gz", "lesions": "lesions.nii.gz"}
                if seg is not None:
                    try:
                        seg.result()
                        files["dicom_seg"] = "segmentation.dcm"
                        from covidct.report.dicom_copy import NEW_UIDS_DIR

                        if (tmp / NEW_UIDS_DIR).is_dir():  # opt-in: the source's UIDs could not be referenced
                            report["warnings"].append(
                                f"the source series' UIDs could not be referenced: segmentation.dcm references a copy "
                                f"of the series with new UIDs, written to {NEW_UIDS_DIR}/ (import both into the PACS)")
                    except ValueError as exc:  # e.g. a .zip input whose files are gone: the rest still useful
                        report["warnings"].append(f"no DICOM SEG written: {str(exc).splitlines()[0]}")
            else:
                report["slices"] = slice_rows(ct, lungs, lesions, analysis.slice_uncertainty)
                save_label_png(lungs[0], tmp / "lungs.png")
                save_label_png(lesions[0], tmp / "lesions.png")
                files |= {"lungs": "lungs.png", "lesions": "lesions.png"}
            images_html = images.result() if images is not None else None
        from covidct.labels import LESION_COLORS, LUNG_COLORS

        if report["mode"] == "slice":
            colors = {**{k + 10: v for k, v in LUNG_COLORS.items()}, **LESION_COLORS}
            combined = np.where(lesions[0] > 0, lesions[0], np.where(lungs[0] > 0, lungs[0] + 10, 0)).astype(np.uint8)
            save_overlay_png(ct.array[0], combined, tmp / "overlay.png", colors=colors)
            files["overlays"] = "overlay.png"
        elif png:
            from covidct.report.figures import save_slice_overlays

            keep = np.flatnonzero(((lungs > 0) | (lesions > 0)).reshape(ct.n_slices, -1).any(1))
            save_slice_overlays(ct, lungs, lesions, tmp / "slices", slices=keep)
            files["overlays"] = "slices/"
        if heatmap:
            files |= write_heatmaps(analysis, tmp)
        if html:
            from covidct.report.html import write_html_report

            files["html"] = "report.html"
            report["outputs"] = files
            if timings is not None:  # the page shows the times up to the outputs stage
                report["timings_s"] = {k: round(float(v), 3) for k, v in timings.items()}
            write_html_report(ct, lungs, lesions, report, tmp / "report.html", images_html)
        files["json"] = "report.json"
        report["outputs"] = files
        if timings is not None:
            timings["outputs"] = time.perf_counter() - t0
            timings["total"] = sum(v for k, v in timings.items() if k != "total")
            report["timings_s"] = {k: round(float(v), 3) for k, v in timings.items()}
        validate_report(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        _move_into(tmp, outdir)
    finally:
        if own:
            early.discard()
    analysis.outdir = outdir
    analysis.files = files
    return files


def write_heatmaps(analysis: Analysis, folder: Path) -> dict[str, str | list[str] | None]:
    """The lesion probability: a volume gets ``lesion_probability.nii.gz`` (input grid) and
    ``heatmap/heatmap_NNNN.png`` per slice with lungs; a 2-D image ``lesion_probability.png`` and
    ``heatmap.png``, both at its exact size. Nothing (None entries) when no lesion model ran."""
    from PIL import Image

    from covidct.report import heatmap as hm

    ct, prob = analysis.ct, analysis.lesion_probability
    if prob is None:
        analysis.report["warnings"].append("no heatmap written: no lesion model ran (HU thresholds only)")
        return {"heatmap": None, "lesion_probability": None}
    if analysis.report["mode"] == "slice":
        hm.save_probability_png(prob[0], folder / "lesion_probability.png")
        Image.fromarray(hm.heatmap_rgb(ct.array[0], prob[0], ct.is_hu)).save(folder / "heatmap.png", format="PNG")
        return {"heatmap": "heatmap.png", "lesion_probability": "lesion_probability.png"}
    hm.save_probability_nifti(prob, ct, folder / "lesion_probability.nii.gz")
    hm.save_heatmap_pngs(ct, prob, analysis.lungs, folder / "heatmap")
    if not hm.probability_drew_lesions(analysis.report):
        analysis.report["warnings"].append(f"heatmap: {hm.MODEL_ONLY_NOTE}")
    return {"heatmap": "heatmap/", "lesion_probability": "lesion_probability.nii.gz"}


def _move_into(tmp: Path, outdir: Path) -> None:
    """Publish a finished temp folder: a rename when ``outdir`` is new, else file-by-file replaces."""
    if not outdir.exists():
        os.replace(tmp, outdir)
        return
    for p in sorted(tmp.rglob("*")):
        target = outdir / p.relative_to(tmp)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            os.replace(p, target)
