"""One study from the PACS: its results given stable UIDs, the DICOM SR written, both pushed back.

Stable UIDs: the SEG's and SR's series and instance UIDs are derived from the source CT series, the covidct
version and the models' checksums (:func:`covidct.report.sr.stable_uid`). Analysing the same series again
with the same software therefore produces the same UIDs, and sending them again (a retry, a watcher killed
after its push, two watchers racing) replaces the earlier copy instead of adding a duplicate; a new covidct
version or model makes a new result, as it should.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pydicom

from covidct.errors import CovidCTError, PacsError
from covidct.pacs.client import PacsSettings, connect
from covidct.pacs.transfer import covidct_results, pulled_study, push, replace_file

SEG_FILE, SR_FILE = "segmentation.dcm", "report.sr.dcm"


def _result_key(report: dict, series_uid: str) -> str:
    models = ",".join(str(m.get("sha256", m.get("name", ""))) for m in report.get("models", []))
    return f"{series_uid}/{report.get('covidct_version', '')}/{models}"


def finish_results(outdir: Path, pulled: Path, sources: list | None = None) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    """Give ``outdir``'s SEG stable UIDs (rewritten in place) and write ``report.sr.dcm`` beside it, from
    report.json and the source headers (``sources``, else read from the series' files under ``pulled``);
    returns (SEG, SR)."""
    from covidct.report.sr import build_measurement_report, stable_uid

    seg_path = outdir / SEG_FILE
    if not seg_path.is_file():
        raise CovidCTError(f"{outdir}: no DICOM SEG was written, so there is nothing to report in DICOM")
    report = json.loads((outdir / "report.json").read_text())
    seg = pydicom.dcmread(seg_path)
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    key = _result_key(report, series_uid)
    seg.SeriesInstanceUID = stable_uid(key, "seg-series")
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = stable_uid(key, "seg")
    replace_file(seg_path, seg)
    if not sources or str(sources[0].SeriesInstanceUID) != series_uid:
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((pulled / series_uid).glob("*.dcm"))]
    if not sources:
        raise CovidCTError(f"the source series {series_uid} was not among the pulled files")
    sr = build_measurement_report(report, sources, seg)
    replace_file(outdir / SR_FILE, sr)
    return seg, sr


def process_study(settings: PacsSettings, study: str, outdir: Path, *, push_results: bool = True,
                  model_args: dict | None = None, html: bool = True, pull_parent: Path | None = None) -> dict:
    """Pull ``study``, analyse it into ``outdir``, write the SR and push SEG + SR (in whatever process runs
    this; models are loaded once per process). Returns a row: study, status (done / skipped (results in
    PACS) / failed), error, seconds, pushed (the SOP Instance UIDs stored)."""
    from covidct import pipeline

    t0 = time.perf_counter()
    row = {"study": study, "status": "done", "error": "", "seconds": 0.0, "pushed": [], "outdir": str(outdir)}
    try:
        client = connect(settings)
        if push_results and covidct_results(client, settings, study):
            row["status"] = "skipped (results in PACS)"
        else:
            with pulled_study(settings, study, client=client, parent=pull_parent) as (folder, _):
                analyzer = pipeline.shared_analyzer(**(model_args or {}))
                pipeline.analyze(folder, outdir, analyzer=analyzer, html=html)
                seg, sr = finish_results(Path(outdir), folder)
            if push_results:
                row["pushed"] = push(client, settings, study, [seg, sr])
    except CovidCTError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # the loader names the temporary folder the study was pulled into; the study's UID says more
        row.update(status="failed", error=re.sub(r"\S*covidct_pacs_[^:\s]*", f"study {study}", message))
    except Exception as exc:  # one study's bug must not stop a watcher
        row.update(status="failed", error=f"internal error: {type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def push_finished(settings: PacsSettings, study: str, outdir: Path, pulled: Path, client=None,
                  sources: list | None = None) -> list[str]:
    """``analyze --pacs --push``: stable UIDs + SR for ``outdir``, then both stored into ``study``."""
    seg, sr = finish_results(outdir, pulled, sources)
    if client is None:
        client = connect(settings)
    if str(seg.StudyInstanceUID) != study:
        raise PacsError(f"the result belongs to study {seg.StudyInstanceUID}, not {study}")
    return push(client, settings, study, [seg, sr])
