"""MetaImage input (ITK's format: one .mha file, or a .mhd header beside its raw data) read with metaimageio.

grand-challenge.org distributes its CT challenges in .mha (STOIC 2021's COVID-19 CTs among them) and LUNA16 in
.mhd/.raw. MetaImage geometry is ITK's: voxel index (i, j, k) maps to
``Offset + TransformMatrix @ (ElementSpacing * index)`` in the left-posterior-superior (LPS) patient frame, the
matrix's columns being the axes' directions (metaimageio returns it so). ``AnatomicalOrientation`` is a label that
ITK does not use for geometry, so neither does covidct. The data's first (fastest) axis is x.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.io.nifti import _one_line, volume_ct
from covidct.volume import CT

HEADER_MAX_BYTES = 65536
# what metaimageio raises on a malformed header or data file
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, zlib.error, UnicodeDecodeError)


def header_tags(path: Path) -> dict[str, str]:
    """The tags of a MetaImage text header (lower-cased names, their values as written), read up to its last tag
    ``ElementDataFile`` (the data follow) and from at most ``HEADER_MAX_BYTES`` (junk is not scanned further)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_MAX_BYTES)
    tags: dict[str, str] = {}
    for raw in head.splitlines():
        key, sep, value = raw.decode("latin-1").partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
    return tags


def declared_shape(path: Path) -> tuple[int, ...] | None:
    """The ``DimSize`` a MetaImage header declares (x, y, z, ...), read from its text before any data (a compressed
    file declaring more voxels than memory holds is refused before it is inflated); None when it declares none."""
    try:
        return tuple(int(v) for v in header_tags(path)["dimsize"].split())
    except (KeyError, ValueError):
        return None


def load_metaimage(path: Path) -> CT:
    """Load a 3-D scalar MetaImage CT (.mha, or .mhd with its data file) into canonical orientation."""
    import metaimageio

    from covidct.io.sanity import check_size

    try:
        shape = declared_shape(path)
    except OSError as e:
        raise UnreadableInput(f"{path}: cannot be read ({_one_line(e)})") from e
    if shape is None:
        raise UnreadableInput(f"{path}: not a MetaImage file (no DimSize in its header)")
    if len(shape) != 3:
        raise UnsupportedInput(f"{path}: {len(shape)}-D MetaImage; covidct needs one 3-D scalar volume")
    check_size(shape, str(path))
    try:
        image, meta = metaimageio.read(str(path))
    except _READ_ERRORS as e:
        raise UnreadableInput(f"{path}: not a readable MetaImage file ({_one_line(e)})") from e
    if image.ndim != 3 or (meta.get("ElementNumberOfChannels") or 1) > 1:
        raise UnsupportedInput(f"{path}: MetaImage of shape {image.shape} with {meta.get('ElementNumberOfChannels') or 1} "
                               "channel(s); covidct needs one 3-D scalar volume")
    warnings: list[str] = []
    spacing = np.asarray(meta.get("ElementSpacing") if meta.get("ElementSpacing") is not None else np.ones(3), float)
    origin = next((np.asarray(meta[k], float) for k in ("Offset", "Position", "Origin") if meta.get(k) is not None),
                  np.zeros(3))
    direction = next((np.asarray(meta[k], float) for k in ("TransformMatrix", "Orientation", "Rotation")
                      if meta.get(k) is not None), np.eye(3))
    if spacing.shape != (3,) or origin.shape != (3,) or direction.shape != (3, 3):
        raise UnsupportedInput(f"{path}: MetaImage geometry (ElementSpacing, Offset, TransformMatrix) is not 3-D")
    if meta.get("ElementSpacing") is None:
        warnings.append("MetaImage without ElementSpacing: voxels taken to be 1 mm")
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]  # column a: the direction of voxel axis a, its length the spacing
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    data_xyz = np.asarray(image, dtype=np.float32).transpose(2, 1, 0)
    return volume_ct(data_xyz, affine, path, "itk", warnings,
                     meta={"source_dtype": str(np.asarray(image).dtype)}, source_shape=tuple(int(s) for s in shape))
