"""Upload checks for the web service: file type by content, zip limits, safe names and paths.

Everything here looks at bytes, never at the name a browser sent: an upload is a DICOM file,
a zip (of a DICOM series, or of one NIfTI), a NIfTI volume (plain or gzipped) or a 2-D image,
or it is refused. Zip members are only *inspected* here (count, declared sizes, compression
ratio); the extraction itself, with its zip-slip, symlink and real-byte checks, is
``covidct.io``'s (see :func:`covidct.service.jobs.unpack_zip`).
"""

from __future__ import annotations

import gzip
import re
import secrets
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

# Where a sniffed upload is stored inside the job's input/ folder (our names, never the client's).
STORED_NAMES = {
    "dicom": "series/{n:05d}.dcm",
    "zip": "upload.zip",
    "nifti": "volume.nii",
    "nifti-gz": "volume.nii.gz",
    "png": "image.png",
    "jpeg": "image.jpg",
    "tiff": "image.tif",
    "bmp": "image.bmp",
}


class UploadRejected(Exception):
    """An upload the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ZipLimits:
    """Limits on an uploaded zip (checked on its central directory before anything is extracted)."""

    max_members: int = 20000
    max_total_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0  # uncompressed/compressed per member; CT slices compress ~2-10x


def new_job_id() -> str:
    """An unguessable job id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.fullmatch(job_id))


def _nifti_header_ok(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic 'n+1') or NIfTI-2 (540, 'n+2'), either byte order."""
    if len(head) >= 348:
        for order in ("<", ">"):
            if struct.unpack(f"{order}i", head[:4])[0] == 348 and head[344:348] == b"n+1\x00":
                return True
    if len(head) >= 540:
        for order in ("<", ">"):
            if struct.unpack(f"{order}i", head[:4])[0] == 540 and head[4:8] == b"n+2\x00":
                return True
    return False


def sniff(path: Path) -> str:
    """The upload's type from its first bytes: dicom, zip, nifti, nifti-gz, png, jpeg, tiff or bmp.

    Raises :class:`UploadRejected` (415) for anything else, including a gzip that is not a NIfTI.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        raise UploadRejected(400, "the uploaded file is empty")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"PK\x05\x06"):
        raise UploadRejected(422, "the uploaded zip is empty")
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(540)
        except (OSError, EOFError) as e:
            raise UploadRejected(422, "the uploaded gzip file is corrupt") from e
        if _nifti_header_ok(inner):
            return "nifti-gz"
        raise UploadRejected(415, "the uploaded gzip file is not a NIfTI volume")
    if _nifti_header_ok(head):
        return "nifti"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"BM") and len(head) > 26:
        return "bmp"
    raise UploadRejected(
        415,
        "unsupported file content: expected a DICOM file (with its 'DICM' preamble), a zip of a DICOM series, "
        "a NIfTI volume (.nii/.nii.gz) or a PNG/JPEG/TIFF/BMP image",
    )


def check_zip(path: Path, limits: ZipLimits) -> int:
    """Inspect a zip's central directory against ``limits``; returns the member count.

    413 for too many members, too many bytes, or a compression ratio only a zip bomb has; 422 for
    a corrupt or encrypted archive. Header sizes can lie: the extraction counts real bytes again.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UploadRejected(422, "the uploaded zip is corrupt (cannot read its directory)") from e
    files = [i for i in infos if not i.is_dir()]
    if not files:
        raise UploadRejected(422, "the uploaded zip holds no files")
    if len(infos) > limits.max_members:
        raise UploadRejected(413, f"the zip has {len(infos)} members (limit {limits.max_members})")
    total = sum(i.file_size for i in files)
    if total > limits.max_total_bytes:
        raise UploadRejected(
            413, f"the zip would extract to {total / 1024**2:.0f} MiB (limit {limits.max_total_bytes / 1024**2:.0f} MiB)"
        )
    for i in files:
        if i.flag_bits & 0x1:
            raise UploadRejected(422, f"zip member {i.filename!r} is encrypted")
        if i.file_size > 1024**2 and i.file_size > limits.max_ratio * max(i.compress_size, 1):
            raise UploadRejected(
                413, f"zip member {i.filename!r} expands {i.file_size / max(i.compress_size, 1):.0f}x: refused as a zip bomb"
            )
    return len(infos)


def display_name(name: str | None) -> str:
    """A client's file name cut down for display only (never used as a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ()+]", "_", base)[:120]
    return base or "upload"


def inside(root: Path, candidate: Path) -> Path:
    """``candidate`` resolved, if it lies inside ``root`` (resolved); else ValueError."""
    root_r = root.resolve()
    cand = candidate.resolve()
    cand.relative_to(root_r)  # raises ValueError when outside
    return cand
