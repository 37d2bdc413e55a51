"""The in-memory CT volume every covidct module passes around.

Conventions (see DEVELOPERS.md):
- ``array`` has shape (z, y, x). For HU input it holds Hounsfield units (float32); for a
  2-D display image (PNG/JPG...) it holds the 8-bit grey levels 0..255 as float32 and
  ``is_hu`` is False.
- covidct keeps volumes in one canonical orientation internally: columns (x) run from the
  patient's right to left, rows (y) from anterior to posterior, slices (z) from inferior to
  superior (DICOM LPS order). A slice ``array[k]`` therefore looks like a radiological
  display: front at the top, patient's right on the image's left.
- ``affine`` maps voxel indices (x, y, z) of ``array.transpose(2, 1, 0)`` to RAS+ world
  millimetres (the NIfTI/nibabel convention). ``source_*`` remember how the input file was
  laid out so that masks can be written back exactly on the input's grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SliceRef:
    """Where one slice of the volume came from (in the volume's z order)."""

    index: int
    z_mm: float
    file: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class CT:
    """A chest CT (or a single slice) with its geometry and provenance."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    is_hu: bool
    kind: str  # "dicom" | "nifti" | "image" | "itk" | "array"
    path: str | None = None
    spacing_known: bool = True
    slices: list[SliceRef] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # How to go back to the input file's own voxel layout: the input array (in its
    # file's axis order) equals ``np.transpose(flip(canonical_xyz, source_flips), source_axes)``.
    # See covidct.io.to_source_layout.
    source_affine: np.ndarray | None = None
    source_axes: tuple[int, int, int] = (0, 1, 2)
    source_flips: tuple[bool, bool, bool] = (False, False, False)
    source_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"CT.array must be 3-D (z, y, x), got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError("CT.affine must be 4x4")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def is_2d(self) -> bool:
        return self.array.shape[0] == 1

    @property
    def voxel_volume_ml(self) -> float:
        dz, dy, dx = self.spacing
        return dz * dy * dx / 1000.0

    @property
    def pixel_area_mm2(self) -> float:
        return self.spacing[1] * self.spacing[2]

    @property
    def name(self) -> str:
        """A short name for outputs: the input's file or folder name without extensions."""
        if not self.path:
            return "ct"
        p = Path(self.path)
        n = p.name
        for ext in (".nii.gz", ".nii", ".zip", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".mha", ".mhd", ".nrrd", ".nhdr"):
            if n.lower().endswith(ext):
                return n[: -len(ext)] or "ct"
        return n or "ct"

    def with_array(self, array: np.ndarray, *, is_hu: bool | None = None) -> CT:
        """A copy with another array on the same grid (e.g. a mask), sharing geometry."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} != CT shape {self.array.shape}")
        return CT(
            array=array,
            spacing=self.spacing,
            affine=self.affine.copy(),
            is_hu=self.is_hu if is_hu is None else is_hu,
            kind=self.kind,
            path=self.path,
            spacing_known=self.spacing_known,
            slices=list(self.slices),
            meta=dict(self.meta),
            warnings=list(self.warnings),
            source_affine=None if self.source_affine is None else self.source_affine.copy(),
            source_axes=self.source_axes,
            source_flips=self.source_flips,
            source_shape=self.source_shape,
        )


def affine_from_spacing(spacing_zyx: tuple[float, float, float], origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine for an axis-aligned canonical (LPS-ordered) volume with this spacing.

    Canonical x runs to patient left (LPS +x = RAS -x), y to posterior (RAS -y), z superior.
    """
    dz, dy, dx = spacing_zyx
    ox, oy, oz = origin_lps
    return np.array(
        [
            [-dx, 0.0, 0.0, -ox],
            [0.0, -dy, 0.0, -oy],
            [0.0, 0.0, dz, oz],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


# Which side of the canonical (z, y, x) array gravity pulls to, from DICOM Patient Position (0018,5100): (array axis,
# +1 where the dependent side is at the high index end, -1 at the low end). Dependent density (gravitational
# hypoventilation) and free pleural fluid lie on that side: posterior for a supine patient, anterior when prone,
# the side lain on in decubitus (canonical x runs from the patient's right to left). Without the attribute (NIfTI,
# images, a header without it) the patient is taken as supine, as in nearly every chest CT.
SUPINE = (1, 1)
DEPENDENT_SIDE: dict[str, tuple[int, int]] = {
    "HFS": SUPINE, "FFS": SUPINE,
    "HFP": (1, -1), "FFP": (1, -1),
    "HFDL": (2, 1), "FFDL": (2, 1),
    "HFDR": (2, -1), "FFDR": (2, -1),
}
DEPENDENT_NAMES = {(1, 1): "posterior", (1, -1): "anterior", (2, 1): "left", (2, -1): "right"}


def dependent_side(ct_or_meta: CT | dict) -> tuple[int, int]:
    """(axis, sign) of the dependent side of a CT (or its ``meta``): see ``DEPENDENT_SIDE``; supine when unknown."""
    meta = ct_or_meta.meta if isinstance(ct_or_meta, CT) else ct_or_meta
    return DEPENDENT_SIDE.get(str(meta.get("patient_position") or "").strip().upper(), SUPINE)
