"""NRRD input (3D Slicer's format: .nrrd, or a detached .nhdr header) read with pynrrd.

NRRD geometry: voxel index (i, j, k) maps to ``space origin + sum(index[a] * space directions[a])``
in the named ``space`` (usually left-posterior-superior, as DICOM). pynrrd returns the data with the
file's first (fastest) axis first, so the array's axes already match the direction rows. The world
frame is converted to RAS+ and handed to the orientation helpers every reader shares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.io.nifti import _one_line, volume_ct
from covidct.volume import CT

# sign flips taking each NRRD world space to RAS+ (x, y, z)
_TO_RAS = {
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
}


def nrrd_affine_ras(header: dict) -> tuple[np.ndarray, list[str]]:
    """The 4x4 voxel-to-RAS affine of a 3-D NRRD header, and warnings when geometry had to be assumed."""
    warnings: list[str] = []
    space = str(header.get("space", "")).lower()
    directions = header.get("space directions")
    if space and directions is not None:
        if space not in _TO_RAS:
            raise UnsupportedInput(f"NRRD space '{space}' is not a patient space covidct can orient")
        dirs = np.asarray(directions, dtype=np.float64)
        if dirs.shape != (3, 3) or not np.isfinite(dirs).all():
            raise UnsupportedInput("NRRD 'space directions' must be three 3-D vectors (one per axis)")
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
        if origin.shape != (3,) or not np.isfinite(origin).all():
            origin = np.zeros(3)
            warnings.append("NRRD 'space origin' missing or invalid; origin set to 0")
        lps = np.eye(4)
        lps[:3, :3] = dirs.T  # column a = direction (with length = spacing) of voxel axis a
        lps[:3, 3] = origin
        return np.diag([*_TO_RAS[space], 1.0]) @ lps, warnings
    spacings = np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=np.float64)
    if spacings.shape != (3,) or not np.all(np.isfinite(spacings) & (spacings > 0)):
        spacings = np.ones(3)
    warnings.append("NRRD without patient space/directions: axes assumed to be L, P, S (as DICOM)")
    return np.diag([-spacings[0], -spacings[1], spacings[2], 1.0]), warnings


def load_nrrd(path: Path) -> CT:
    """Load a 3-D scalar NRRD CT into canonical orientation (see ``covidct.volume``)."""
    import nrrd

    try:
        data, header = nrrd.read(str(path))
    except (nrrd.NRRDError, OSError, EOFError, ValueError, TypeError) as e:
        raise UnreadableInput(f"{path}: not a readable NRRD file ({_one_line(e)})") from e
    if data.ndim != 3:
        raise UnsupportedInput(f"{path}: NRRD of shape {data.shape}; covidct needs one 3-D scalar volume")
    try:
        affine, warnings = nrrd_affine_ras(header)
    except UnsupportedInput as e:
        raise UnsupportedInput(f"{path}: {e}") from e
    return volume_ct(data, affine, path, "nrrd", warnings, meta={"source_dtype": str(data.dtype)},
                     source_shape=tuple(int(s) for s in data.shape))
