"""Upload checks for the web service: file type by content, zip limits, safe names and paths.

Everything here looks at bytes, never at the name a browser sent: an upload is a DICOM file,
a zip (of a DICOM series, or of one NIfTI), a NIfTI volume (plain or gzipped) or a 2-D image,
or it is refused. A zip is checked here, at upload, with the same rules the command line and
``load_ct`` apply (``covidct.io.archive``: member count, total size, compression ratio, nested
archives, path traversal), only mapped to HTTP statuses; the extraction itself, with its real-byte
checks, is ``covidct.io.archive``'s too (see :func:`covidct.service.jobs.unpack_zip`).
"""

from __future__ import annotations

import gzip
import re
import secrets
import struct
from pathlib import Path

from covidct.errors import UnreadableInput, UnsafeArchive
from covidct.io.archive import ZipLimits, open_zip
from covidct.io.archive import check_zip as check_zip_directory

__all__ = ["ZipLimits", "UploadRejected", "check_zip", "sniff", "new_job_id", "valid_job_id", "display_name", "inside"]

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

# Where a sniffed upload is stored inside the job's input/ folder (our names, never the client's).
STORED_NAMES = {
    "dicom": "series/{n:05d}.dcm",
    "zip": "upload.zip",
    "nifti": "volume.nii",
    "nifti-gz": "volume.nii.gz",
    "mha": "volume.mha",
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


def _metaimage_with_its_data(path: Path, head: bytes) -> bool:
    """A MetaImage whose text header (starting with one of the tags ITK writes first) says its data follow in the
    same file (``ElementDataFile = LOCAL``): an .mha. An .mhd needs its raw file beside it, which one upload lacks."""
    if not head.lstrip().startswith((b"ObjectType", b"NDims")):
        return False
    from covidct.io.metaimage import header_tags

    return header_tags(path).get("elementdatafile", "").lower() == "local"


def sniff(path: Path) -> str:
    """The upload's type from its first bytes: dicom, zip, nifti, nifti-gz, mha, png, jpeg, tiff or bmp.

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
    if _metaimage_with_its_data(path, head):
        return "mha"
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
        "a NIfTI volume (.nii/.nii.gz), a MetaImage volume (.mha) or a PNG/JPEG/TIFF/BMP image",
    )


def check_zip(path: Path, limits: ZipLimits | None = None) -> int:
    """Check an uploaded zip with ``covidct.io.archive``'s rules (``limits``: default from the environment);
    returns the member count. 413 for a zip the limits refuse (too many members or bytes, a zip bomb's
    ratio, a nested archive, an escaping member); 422 for a corrupt, empty or encrypted archive."""
    try:
        with open_zip(path, "the uploaded zip", limits) as zf:
            files = check_zip_directory(zf, "the uploaded zip", limits)
            n = len(zf.infolist())
    except UnsafeArchive as e:
        raise UploadRejected(413, str(e)) from e
    except UnreadableInput as e:
        raise UploadRejected(422, str(e)) from e
    if not files:
        raise UploadRejected(422, "the uploaded zip holds no files")
    return n


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
