"""Archive safety, shared by every entry point (CLI, ``load_ct``, the web service): one set of zip rules.

Checked on the zip's central directory **before** anything is extracted (:func:`check_zip`, milliseconds
even for a 2 GiB bomb), then again on the real bytes while extracting (:func:`safe_extract`: header sizes
can lie):

* member count <= ``max_members``;
* total uncompressed size <= ``max_total_bytes``;
* compression ratio: no member over 1 MiB expanding more than ``max_ratio`` times, and the whole archive
  (when it expands to more than 64 MiB) no more than ``max_ratio`` times its compressed size, which
  catches "many small members" bombs;
* no nested archive (a member named or starting like a zip/gzip/7z/rar/bz2/xz/zstd archive -- its first
  8 bytes are read, last, once the size rules passed; a gzipped NIfTI, ``.nii.gz``, is a volume);
* no member that would escape the extraction folder (absolute path, ``..``, drive letter), no symlink,
  no encrypted member.

Defaults (:class:`ZipLimits`) are overridden by arguments or the environment variables
``COVIDCT_ZIP_MAX_MEMBERS``, ``COVIDCT_ZIP_MAX_BYTES`` and ``COVIDCT_ZIP_MAX_RATIO``. A refusal raises
:class:`covidct.errors.UnsafeArchive` (exit code 10); a corrupt or encrypted archive ``UnreadableInput`` (2).
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from covidct.errors import UnreadableInput, UnsafeArchive

ENV_VARS = {
    "max_members": "COVIDCT_ZIP_MAX_MEMBERS",
    "max_total_bytes": "COVIDCT_ZIP_MAX_BYTES",
    "max_ratio": "COVIDCT_ZIP_MAX_RATIO",
}
# Members smaller than this are never called bombs for their ratio alone (a blank slice compresses ~1000x).
RATIO_MIN_MEMBER_BYTES = 1024**2
RATIO_MIN_TOTAL_BYTES = 64 * 1024**2
NESTED_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z", ".rar", ".gz", ".bz2", ".xz",
                   ".zst", ".jar", ".cab")
NESTED_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
VOLUME_SUFFIXES = (".nii.gz",)  # gzipped, but a volume covidct reads, not an archive


@dataclass(frozen=True)
class ZipLimits:
    """Limits on a zip input (checked on its central directory before anything is extracted)."""

    max_members: int = 20000
    max_total_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0  # uncompressed/compressed; CT slices compress ~2-10x, a blank slice up to ~1000x

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> ZipLimits:
        """The defaults, replaced by ``COVIDCT_ZIP_*`` environment variables, replaced by ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = env.get(ENV_VARS[f.name])
            if raw:
                try:
                    values[f.name] = float(raw) if f.name == "max_ratio" else int(float(raw))
                except ValueError as e:
                    raise UnsafeArchive(f"{ENV_VARS[f.name]}={raw!r} is not a number") from e
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _is_nested_name(name: str) -> bool:
    low = name.lower()
    return low.endswith(NESTED_SUFFIXES) and not low.endswith(VOLUME_SUFFIXES)


def _unsafe_name(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or bool(parts and ":" in parts[0])


def _mib(n: float) -> str:
    return f"{n / 1024**2:.0f} MiB"


def check_zip(zf: zipfile.ZipFile, shown: str | Path, limits: ZipLimits | None = None) -> list[zipfile.ZipInfo]:
    """Check an open zip's directory against ``limits`` (default: :meth:`ZipLimits.from_env`); returns its
    file members. Raises ``UnsafeArchive`` or, for an encrypted member, ``UnreadableInput``."""
    limits = limits or ZipLimits.from_env()
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeArchive(f"{shown}: zip has {len(infos)} members (limit {limits.max_members})")
    files = [i for i in infos if not i.is_dir()]
    total = sum(i.file_size for i in files)
    if total > limits.max_total_bytes:
        raise UnsafeArchive(f"{shown}: zip would extract to {_mib(total)} (limit {_mib(limits.max_total_bytes)})")
    for i in infos:
        if _unsafe_name(i.filename):
            raise UnsafeArchive(f"{shown}: unsafe zip member {i.filename!r} (would escape the extraction folder)")
        if stat.S_ISLNK(i.external_attr >> 16):
            raise UnsafeArchive(f"{shown}: zip member {i.filename!r} is a symbolic link; refused")
    for i in files:
        if _is_nested_name(i.filename):
            raise UnsafeArchive(f"{shown}: zip member {i.filename!r} is itself an archive; nested archives are "
                                "refused (extract it first)")
        if i.flag_bits & 0x1:
            raise UnreadableInput(f"{shown}: zip member {i.filename!r} is encrypted")
        if i.file_size > RATIO_MIN_MEMBER_BYTES and i.file_size > limits.max_ratio * max(i.compress_size, 1):
            raise UnsafeArchive(f"{shown}: zip member {i.filename!r} expands "
                                f"{i.file_size / max(i.compress_size, 1):.0f}x (limit {limits.max_ratio:g}x): "
                                "refused as a zip bomb")
    packed = sum(i.compress_size for i in files)
    if total > RATIO_MIN_TOTAL_BYTES and total > limits.max_ratio * max(packed, 1):
        raise UnsafeArchive(f"{shown}: zip expands {total / max(packed, 1):.0f}x overall (limit "
                            f"{limits.max_ratio:g}x): refused as a zip bomb")
    for i in files:  # last, once the sizes passed: a nested archive under another name, by its first bytes
        if not i.filename.lower().endswith(VOLUME_SUFFIXES) and _head(zf, i, shown).startswith(NESTED_MAGIC):
            raise UnsafeArchive(f"{shown}: zip member {i.filename!r} is itself an archive; nested archives are "
                                "refused (extract it first)")
    return files


def _head(zf: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str | Path) -> bytes:
    """A member's first bytes (decompresses one small block at most)."""
    try:
        with zf.open(info) as f:
            return f.read(8)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, NotImplementedError) as e:
        raise UnreadableInput(f"{shown}: zip member {info.filename!r} is corrupt or encrypted") from e


def declared_member_count(path: Path) -> int | None:
    """The member count the zip's end-of-central-directory record declares (read from the file's last 64 KiB,
    before ``zipfile`` parses a directory that may hold millions of entries); None when not found."""
    import struct

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536 - 22))
            tail = f.read()
    except OSError:
        return None
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    count = struct.unpack_from("<H", tail, at + 10)[0]
    if count == 0xFFFF:  # zip64: the real count is in the zip64 end record
        loc = tail.rfind(b"PK\x06\x06", 0, at)
        return struct.unpack_from("<Q", tail, loc + 32)[0] if loc >= 0 and loc + 40 <= len(tail) else None
    return count


def open_zip(path: Path, shown: str | Path | None = None, limits: ZipLimits | None = None) -> zipfile.ZipFile:
    """``zipfile.ZipFile(path)`` with covidct's errors for an unreadable or corrupt archive; refuses at once
    a zip that declares more than ``limits.max_members`` members (default from the environment)."""
    shown = shown or path
    limits = limits or ZipLimits.from_env()
    declared = declared_member_count(path)
    if declared is not None and declared > limits.max_members:
        raise UnsafeArchive(f"{shown}: zip has {declared} members (limit {limits.max_members})")
    try:
        return zipfile.ZipFile(path)
    except PermissionError as e:
        raise UnreadableInput(f"{shown}: permission denied") from e
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UnreadableInput(f"{shown}: not a readable zip file") from e


def safe_extract(zf: zipfile.ZipFile, root: Path, shown: str | Path, limits: ZipLimits | None = None) -> None:
    """:func:`check_zip`, then extract into ``root``, counting real bytes against the limits and refusing a
    member whose content is an archive (by its first bytes)."""
    limits = limits or ZipLimits.from_env()
    check_zip(zf, shown, limits)
    root = root.resolve()
    total = 0
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        target = (root / Path(*parts)).resolve() if parts else root
        if target != root and root not in target.parents:  # e.g. through a folder symlink already there
            raise UnsafeArchive(f"{shown}: unsafe zip member {name!r} (would escape the extraction folder)")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as dst:
                first = True
                while chunk := src.read(1 << 20):
                    if first and chunk.startswith(NESTED_MAGIC) and not name.lower().endswith(VOLUME_SUFFIXES):
                        raise UnsafeArchive(f"{shown}: zip member {name!r} is itself an archive; nested archives "
                                            "are refused (extract it first)")
                    first = False
                    total += len(chunk)  # header sizes can lie: count the real bytes
                    if total > limits.max_total_bytes:
                        raise UnsafeArchive(f"{shown}: zip extracts to more than {_mib(limits.max_total_bytes)}")
                    dst.write(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
            raise UnreadableInput(f"{shown}: zip member {name!r} is corrupt or encrypted") from e
