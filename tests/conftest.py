"""Suite-wide checks: every DICOM object a test writes under pytest's temp folders is validated.

After each test, the DICOM SEG (and SR) files that appeared under pytest's base temp folder since the
last check are run through ``dciodvfy`` (dicom3tools); any line it reports as ``Error`` fails that test
(its teardown). Without dciodvfy the check is skipped (``dicom_validator`` tells why). The synthetic CT
series the tests write as *input* are not checked: they are test data, not covidct's output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# SOP classes covidct writes: Segmentation Storage, and the SR classes (Basic/Enhanced/Comprehensive/3D).
WRITTEN_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
}
DCIODVFY = shutil.which("dciodvfy")
_seen: dict[Path, float] = {}
validated: list[Path] = []  # every object checked in this session (tests may assert on it)


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for ``path`` (it exits 0 even when it finds errors)."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _sop_class(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not DICOM, or a truncated test input
        return None
    return str(ds.get("SOPClassUID", "")) or None


def _new_written_objects(root: Path) -> list[Path]:
    found = []
    for p in root.rglob("*.dcm"):
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if _seen.get(p) == mtime:
            continue
        _seen[p] = mtime
        if _sop_class(p) in WRITTEN_SOP_CLASSES:
            found.append(p)
    return found


@pytest.fixture(autouse=True)
def dicom_validator(request, tmp_path_factory):
    """After the test: every new SEG/SR under the base temp folder passes dciodvfy without errors."""
    yield
    if DCIODVFY is None:
        return
    root = tmp_path_factory.getbasetemp()
    failures = []
    for path in _new_written_objects(root):
        validated.append(path)
        errors = dciodvfy_errors(path)
        if errors:
            failures.append(f"{path}: {len(errors)} dciodvfy error(s), first: {errors[0]}")
    assert not failures, "invalid DICOM written:\n" + "\n".join(failures)


def pytest_terminal_summary(terminalreporter) -> None:
    if DCIODVFY is None:
        terminalreporter.write_line("dciodvfy not installed: DICOM objects written by the tests were not validated")
    else:
        terminalreporter.write_line(f"dciodvfy: {len(validated)} DICOM SEG/SR object(s) written by the tests validated")
