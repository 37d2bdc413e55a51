"""Moving DICOM between a PACS and covidct: pull a study's CT series, look for covidct's results in a study,
push results.

A pulled study lands in a temporary folder, one sub-folder per series, each instance as received (the PACS's
stored transfer syntax, so nothing is transcoded); covidct's usual folder loader then picks the series
exactly as it does for a folder (:func:`covidct.io.load_ct`). Only CT series are fetched: a study's earlier
SEG/SR results, dose reports and secondary captures stay on the PACS.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset

from covidct.errors import NotCT, PacsError
from covidct.pacs.client import PacsSettings, connect, pacs_errors

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MODALITY, _SERIES_UID, _DESCRIPTION, _COUNT = "00080060", "0020000E", "0008103E", "00201209"
SR_DESCRIPTION_PREFIX = "covidct measurement report"


def check_uid(uid: str, what: str) -> str:
    """``uid`` stripped, or a one-line error when it is not a DICOM UID (a typo, a path, an accession no.)."""
    uid = (uid or "").strip()
    if not UID_PATTERN.match(uid) or len(uid) > 64:
        raise PacsError(f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def _value(item: dict, tag: str, default: str = "") -> str:
    values = item.get(tag, {}).get("Value") or [default]
    return str(values[0])


def list_series(client, settings: PacsSettings, study: str) -> list[dict]:
    """The study's series as ``{"uid", "modality", "description", "instances"}`` (QIDO-RS)."""
    with pacs_errors(settings, f"listing study {study}"):
        found = client.search_for_series(study, fields=["Modality", "SeriesDescription",
                                                         "NumberOfSeriesRelatedInstances"])
    return [{"uid": _value(s, _SERIES_UID), "modality": _value(s, _MODALITY).upper(),
             "description": _value(s, _DESCRIPTION), "instances": int(_value(s, _COUNT, "0") or 0)} for s in found]


def ct_series(series: list[dict], study: str, chosen: str | None = None) -> list[dict]:
    """The CT series to fetch (``chosen``: only that one), or a one-line error naming what the study holds."""
    if not series:
        raise PacsError(f"study {study} is not in the PACS (no series found)")
    if chosen is not None:
        picked = [s for s in series if s["uid"] == chosen]
        if not picked:
            raise PacsError(f"study {study} has no series {chosen}; it holds {len(series)}: "
                            + ", ".join(f"{s['modality']} {s['uid']}" for s in series[:6]))
        series = picked
    cts = [s for s in series if s["modality"] == "CT"]
    if not cts:
        found = ", ".join(sorted({s["modality"] or "?" for s in series}))
        raise NotCT(f"study {study} holds no CT series (found: {found}); covidct analyses CT only")
    return cts


def download_series(settings: PacsSettings, study: str, wanted: list[dict], root: Path, client=None) -> Path:
    """Fetch the ``wanted`` series of ``study`` (WADO-RS) into ``root/<SeriesInstanceUID>/``; returns ``root``."""
    client = client or connect(settings)
    for s in wanted:
        folder = Path(root) / s["uid"]
        folder.mkdir(parents=True, exist_ok=True)
        with pacs_errors(settings, f"retrieving series {s['uid']}"):
            # "*": the instances as stored, without transcoding on the server
            for k, ds in enumerate(client.iter_series(study, s["uid"], media_types=(("application/dicom", "*"),))):
                ds.save_as(folder / f"{k:05d}.dcm", enforce_file_format=True)
    return Path(root)


@contextmanager
def pulled_study(settings: PacsSettings, study: str, series: str | None = None, client=None,
                 parent: Path | None = None, fetch: bool = True) -> Iterator[tuple[Path, list[dict]]]:
    """A temporary folder (under ``parent`` if given) for the study's CT series (or ``series`` alone), and the
    series to fetch; with ``fetch`` they are downloaded into it first. The folder is removed afterwards."""
    client = client or connect(settings)
    wanted = ct_series(list_series(client, settings, study), study, series)
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="covidct_pacs_", dir=parent))
    try:
        if fetch:
            download_series(settings, study, wanted, root, client)
        yield root, wanted
    finally:
        shutil.rmtree(root, ignore_errors=True)


def covidct_results(client, settings: PacsSettings, study: str) -> list[str]:
    """Series UIDs of covidct measurement reports (SR) already in the study (QIDO-RS)."""
    with pacs_errors(settings, f"looking for results in study {study}"):
        found = client.search_for_series(study, search_filters={"Modality": "SR"},
                                         fields=["SeriesDescription"])
    return [_value(s, _SERIES_UID) for s in found if _value(s, _DESCRIPTION).startswith(SR_DESCRIPTION_PREFIX)]


def push(client, settings: PacsSettings, study: str, datasets: list[Dataset]) -> list[str]:
    """Store ``datasets`` into ``study`` (one STOW-RS request); returns their SOP Instance UIDs. A refusal of
    any instance is an error naming its reason code."""
    with pacs_errors(settings, f"storing results in study {study}"):
        response = client.store_instances(datasets, study_instance_uid=study)
    failed = getattr(response, "FailedSOPSequence", None) or []
    if failed:
        reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
                            for item in failed)
        raise PacsError(f"the PACS refused to store {len(failed)} of {len(datasets)} result(s): {reasons}")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def upload_folder(settings: PacsSettings, folder: Path, batch: int = 64) -> str:
    """STOW-RS every DICOM file under ``folder`` (tests, benchmarks, demos); returns the study UID."""
    import pydicom

    client = connect(settings)
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))
    studies: set[str] = set()
    for i in range(0, len(files), batch):
        datasets = [pydicom.dcmread(p) for p in files[i:i + batch]]
        studies |= {str(ds.StudyInstanceUID) for ds in datasets}
        with pacs_errors(settings, f"uploading {folder}"):
            client.store_instances(datasets)
    if len(studies) != 1:
        raise PacsError(f"{folder}: expected one study, found {len(studies)}")
    return studies.pop()


def replace_file(path: Path, ds: Dataset) -> None:
    """Write ``ds`` over ``path`` atomically."""
    from covidct.io.writers import atomic_write

    atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
