"""Building a phantom: the :class:`Phantom` record, :func:`make_phantom` and the exact truth figures.

Owns the order of the build (anatomy -> lesions -> scanner noise and blur -> geometry),
argument checking, the CT record the rest of covidct reads, and :func:`truth_from_labels`
(exact volumes and involvement from the label arrays). What is painted lives in
:mod:`covidct.phantom.anatomy` and :mod:`covidct.phantom.lesions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.phantom.anatomy import paint_anatomy
from covidct.phantom.geometry import Grid
from covidct.phantom.lesions import LesionSpec, place_lesions
from covidct.volume import CT, SliceRef, affine_from_spacing


@dataclass
class Phantom:
    """A synthetic chest CT with its exact labels.

    ``ct.array`` is the noisy, slightly blurred HU volume; ``clean`` is the same volume
    before blur and noise (what the tissue classes were painted with). ``truth`` holds the
    exact figures derived from the labels (see :func:`make_phantom`).
    """

    ct: CT
    lungs: np.ndarray
    lesions: np.ndarray
    body: np.ndarray
    truth: dict
    clean: np.ndarray | None = field(default=None, repr=False)


def make_phantom(
    shape: tuple[int, int, int] = (48, 192, 192),
    spacing: tuple[float, float, float] = (5.0, 1.8, 1.8),
    seed: int = 0,
    lesion_burden: float = 0.15,
    lesions: bool = True,
    effusion: bool = True,
    lungs: bool = True,
    noise_hu: float = 20.0,
    margin_slices: int = 0,
    lesion_spec: LesionSpec | None = None,
) -> Phantom:
    """Build a synthetic chest CT (HU, canonical orientation) with exact labels.

    ``shape``/``spacing`` are (z, y, x); the lungs span ``shape[0]`` slices and
    ``margin_slices`` lung-free slices are added below (upper abdomen: liver, stomach,
    bowel gas) and above (shoulders/neck), so the array has ``shape[0] + 2 * margin_slices``
    slices. ``lesion_burden`` is the fraction of each lung's volume covered by GGO +
    consolidation (met to within a few voxels, exact figures in ``truth``). ``lesions=False``
    gives a normal chest (no lesions, no effusion); ``effusion`` adds a dependent pleural
    effusion on one side when lesions are on; ``lungs=False`` fills the thorax with soft
    tissue and leaves out every gas pocket (a body with no air at all). Deterministic per seed.

    ``truth`` keys: ``voxel_volume_ml``; ``lung_volume_ml`` {left, right, total};
    ``lesion_volume_ml`` {ggo, consolidation, effusion, infection}; ``lesion_volume_ml_per_lung``
    {left, right: {ggo, consolidation, effusion, infection}}; ``involvement_percent``
    {left, right, total} = (GGO + consolidation) / lung volume * 100 (effusion excluded, it
    is not lung); ``effusion_side`` ("left" | "right" | None); plus the inputs.

    ``lesion_spec`` (used when ``lesions`` is on) asks for a particular lesion pattern and
    replaces ``lesion_burden``/``effusion``; the default is ``LesionSpec(lesion_burden,
    effusion=effusion)``, the COVID-like pattern above.
    """
    shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
    spacing = tuple(float(v) for v in spacing)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1 or shape[1] < 32 or shape[2] < 32 or shape[0] < 4:
        raise ValueError(f"phantom shape must be (z>=4, y>=32, x>=32), got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be 3 positive numbers (mm), got {spacing}")
    if not 0.0 <= lesion_burden < 0.9:
        raise ValueError(f"lesion_burden must be in [0, 0.9), got {lesion_burden}")
    if noise_hu < 0 or margin_slices < 0:
        raise ValueError("noise_hu and margin_slices must be >= 0")

    rng = np.random.default_rng(seed)
    m = int(margin_slices)
    n_lung = shape[0]
    full = (n_lung + 2 * m, shape[1], shape[2])
    g = Grid(full, spacing, m, n_lung)
    anatomy = paint_anatomy(g, rng, lungs)
    if lungs and lesions:
        spec = lesion_spec if lesion_spec is not None else LesionSpec(burden=lesion_burden, effusion=effusion)
        les, eff_side = place_lesions(spec, g, rng, anatomy)
    else:
        spec = None
        les, eff_side = np.zeros(full, dtype=np.uint8), None
    vol, lung_lbl, body = anatomy.vol, anatomy.lungs, anatomy.body

    clean = vol
    # ---- scanner: white noise then a slight blur (gives CT-like correlated noise). The
    # noise is pre-scaled by the blur's variance reduction so its final std is noise_hu.
    blur = (0.3, 0.6, 0.6)
    if noise_hu > 0:
        gain = 1.0
        for sg in blur:
            imp = np.zeros(31, dtype=np.float64)
            imp[15] = 1.0
            gain *= float(np.sqrt((ndi.gaussian_filter1d(imp, sg) ** 2).sum()))
        out = rng.standard_normal(full, dtype=np.float32)
        out *= np.float32(noise_hu / gain)
        out += clean
    else:
        out = clean.copy()
    out = ndi.gaussian_filter(out, blur)
    np.clip(out, -1024.0, 3071.0, out=out)

    dz, dy, dx = spacing
    origin = (
        round(-(full[2] - 1) / 2.0 * dx, 4),
        round(-(full[1] - 1) / 2.0 * dy, 4),
        round(-(full[0] - 1) / 2.0 * dz, 4),
    )
    affine = affine_from_spacing(spacing, origin)  # type: ignore[arg-type]
    ct = CT(
        array=out.astype(np.float32, copy=False),
        spacing=spacing,  # type: ignore[arg-type]
        affine=affine,
        is_hu=True,
        kind="array",
        path=None,
        slices=[SliceRef(index=k, z_mm=origin[2] + k * dz) for k in range(full[0])],
        meta={"source": "covidct.phantom", "seed": int(seed), "origin_lps": origin},
    )
    truth = truth_from_labels(lung_lbl, les, ct.voxel_volume_ml, eff_side)
    truth.update(
        seed=int(seed),
        lesion_burden_requested=float(spec.burden if spec is not None else 0.0),
        lung_slices=(m, m + n_lung) if lungs else None,
        shape=full,
        spacing=spacing,
    )
    return Phantom(ct=ct, lungs=lung_lbl, lesions=les, body=np.ascontiguousarray(body), truth=truth, clean=clean)


def truth_from_labels(lung_lbl: np.ndarray, les: np.ndarray, vml: float, eff_side: str | None) -> dict:
    """Exact volumes and involvement figures from the label arrays."""
    counts = np.bincount((lung_lbl.astype(np.int64) * 4 + les).ravel(), minlength=12)

    def c(lung: int, lesion: int) -> int:
        return int(counts[lung * 4 + lesion])

    per: dict[str, dict[str, float]] = {}
    lung_ml: dict[str, float] = {}
    for name, lab in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
        lung_ml[name] = sum(c(lab, k) for k in range(4)) * vml
        per[name] = {
            "ggo": c(lab, GGO) * vml,
            "consolidation": c(lab, CONSOLIDATION) * vml,
            "infection": (c(lab, GGO) + c(lab, CONSOLIDATION)) * vml,
            "effusion": int(np.count_nonzero(les == EFFUSION)) * vml if eff_side == name else 0.0,
        }
    lung_ml["total"] = lung_ml["left"] + lung_ml["right"]
    tot = {k: per["left"][k] + per["right"][k] for k in ("ggo", "consolidation", "infection")}
    tot["effusion"] = int(np.count_nonzero(les == EFFUSION)) * vml

    def pct(a: float, b: float) -> float:
        return 100.0 * a / b if b > 0 else 0.0

    return {
        "voxel_volume_ml": vml,
        "lung_volume_ml": lung_ml,
        "lesion_volume_ml": tot,
        "lesion_volume_ml_per_lung": per,
        "involvement_percent": {
            "left": pct(per["left"]["infection"], lung_ml["left"]),
            "right": pct(per["right"]["infection"], lung_ml["right"]),
            "total": pct(tot["infection"], lung_ml["total"]),
        },
        "effusion_side": eff_side,
    }
