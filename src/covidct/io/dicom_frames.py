"""Multi-frame CT in one file (Enhanced CT, Legacy Converted Enhanced CT): its frames as single-frame slices.

Enhanced CT keeps what a classic CT series repeats in every file (position, orientation, pixel spacing, slice
thickness, rescale, kernel, kVp) in functional groups: one shared item for the whole file and one item per frame.
Each frame here gets a header of its own with those attributes flattened onto it (the frame's groups over the shared
ones) and the file's other attributes, so that the frames go through exactly the checks, ordering, reorientation and
provenance of a series of files (:func:`covidct.io.dicom_volume.build_volume`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.io.dicom_decode import _f, _has_preamble, _int, _pixels, _to_hu

FRAME_ATTR = "covidct_frame"  # the frame's 1-based number (Referenced Frame Number), kept on its header

# Not copied onto a frame's header: the pixels and the groups themselves (flattened instead).
_SKIPPED = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData"), Tag("NumberOfFrames"),
            Tag("SharedFunctionalGroupsSequence"), Tag("PerFrameFunctionalGroupsSequence")}


def frame_count(ds: Dataset | None) -> int:
    """NumberOfFrames (1 when absent or unreadable, or without a header)."""
    if ds is None:
        return 1
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _flatten(group: Dataset | None, into: Dataset) -> None:
    """Copy the attributes of each macro of one functional-group item (its sequences' first items) onto ``into``."""
    if group is None:
        return
    for elem in group:
        if elem.VR == "SQ" and elem.value:
            for sub in elem.value[0]:
                into[sub.tag] = sub


def split_frames(ds: Dataset, pixels: np.ndarray) -> list[tuple[int, Dataset, np.ndarray]]:
    """``(frame number, header, pixels)`` of every frame of a multi-frame image ``ds`` whose decoded pixel data is
    ``pixels`` (frames, rows, columns). A frame's header holds the file's attributes with the shared functional
    groups and then the frame's own flattened onto it (a frame's value wins)."""
    n = frame_count(ds)
    if pixels.ndim != 3 or pixels.shape[0] != n:
        raise ValueError(f"pixel data of shape {pixels.shape} for {n} frames")
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_seq[0] if len(shared_seq) else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per) != n:
        # without them every frame would carry the file's one position (or none): nothing places the frames
        raise UnsupportedInput(f"multi-frame DICOM with {len(per)} per-frame functional groups for {n} frames "
                               "(Enhanced CT gives each frame its position): the frames cannot be placed")
    base = Dataset()
    for elem in ds:
        if elem.tag not in _SKIPPED:
            base[elem.tag] = elem
    _flatten(shared, base)
    out = []
    for k in range(n):
        frame = Dataset()
        frame.update(base)
        frame.file_meta = getattr(ds, "file_meta", Dataset())
        _flatten(per[k], frame)
        setattr(frame, FRAME_ATTR, k + 1)
        out.append((k + 1, frame, pixels[k]))
    return out


def decode_frames(path: Path, shown: str) -> list[tuple[Path, Dataset, np.ndarray]]:
    """The frames of one multi-frame CT file (Enhanced CT) as slices: ``(path, frame header, HU)`` in frame order."""
    try:
        ds = pydicom.dcmread(path, force=not _has_preamble(path))
        if _int(ds, "SamplesPerPixel", 1) != 1:
            raise UnsupportedInput(f"colour DICOM image (SamplesPerPixel {_f(ds, 'SamplesPerPixel')})")
        px = _pixels(ds)
        if px.ndim == 2 and frame_count(ds) == 1:
            px = px[None]
        frames = split_frames(ds, px)
    except UnsupportedInput as e:
        raise UnsupportedInput(f"{shown}: {e}") from e
    except UnreadableInput:
        raise
    except Exception as e:  # noqa: BLE001 - truncated pixel data, missing codec, damaged functional groups
        raise UnreadableInput(f"{shown}: multi-frame DICOM unreadable ({e})") from e
    del ds.PixelData
    return [(path, header, _to_hu(header, frame, f"{path.name} frame {k}")) for k, header, frame in frames]
