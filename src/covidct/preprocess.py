"""Preprocessing: HU windows, CLAHE, resampling, lung cropping, and the one model-input normalisation.

The heart of covidct is :func:`to_model_input`. All labelled training data here are 8-bit display
slices whose grey levels were produced by unknown, per-image windows (MedSeg/SIRM JPEGs) or by
per-slice min-max scaling plus CLAHE (Ma et al. slices), while users bring HU volumes. A model
trained on one and applied to the other sees shifted intensities. Rather than guessing each
source's window, covidct makes the input (nearly) independent of it:

1. put the data on a common [0, 1] scale: HU through the papers' fixed -1000..400 HU window
   (air and lung kept apart, bone/contrast saturated the way display images saturate them);
   8-bit display values divided by 255;
2. stretch each slice between its robust extremes (0.5th..99.5th percentile), which undoes the
   per-image contrast differences between display sources;
3. apply CLAHE (contrast-limited adaptive histogram equalisation). Histogram equalisation is
   invariant to monotone grey-level maps, so whatever window a display image was made with,
   equalised slices agree. The clip limit 7 is the one Ma et al.'s slices were made with and gave
   the closest lung histograms between display and HU sources (docs/BENCHMARKS.md).

The same function runs on training slices and on every slice of a user's HU volume. The check
on the real series (``benchmarks/normalisation_check.py``) compares lung-tissue histograms of
Ma/MedSeg display slices and of COVID-CT-MD P001 HU slices after this mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from covidct import components

if TYPE_CHECKING:
    import torch

# Named HU windows (level, width).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),  # -1350 .. 150
    "mediastinum": (40.0, 400.0),  # -160 .. 240
    "papers": (-300.0, 1400.0),  # -1000 .. 400, the window of the seed papers
}

MODEL_INPUT_WINDOW = "papers"
CLAHE_CLIP = 7.0  # chosen by benchmarks/normalisation_check.py (closest lung histograms across sources)
CLAHE_TILES = 8
PERCENTILES = (0.5, 99.5)


def window_range(preset: str | tuple[float, float]) -> tuple[float, float]:
    """(low, high) HU of a named window or an explicit (level, width)."""
    level, width = WINDOWS[preset] if isinstance(preset, str) else preset
    return level - width / 2.0, level + width / 2.0


def apply_window(hu: np.ndarray, preset: str | tuple[float, float] = "lung") -> np.ndarray:
    """HU → [0, 1] through a window (clipped)."""
    lo, hi = window_range(preset)
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x01, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def clahe(image_u8: np.ndarray, clip_limit: float = CLAHE_CLIP, tiles: int = CLAHE_TILES) -> np.ndarray:
    """OpenCV CLAHE on one 8-bit slice (H, W)."""
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tiles, tiles))
    return op.apply(np.ascontiguousarray(image_u8, dtype=np.uint8))


@dataclass(frozen=True)
class NormalisationConfig:
    """Parameters of :func:`to_model_input` (stored with every model so inference matches training)."""

    window: str = MODEL_INPUT_WINDOW
    percentiles: tuple[float, float] = PERCENTILES
    clahe_clip: float | None = CLAHE_CLIP
    clahe_tiles: int = CLAHE_TILES

    def as_dict(self) -> dict:
        return {
            "window": self.window,
            "percentiles": list(self.percentiles),
            "clahe_clip": self.clahe_clip,
            "clahe_tiles": self.clahe_tiles,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> NormalisationConfig:
        if not d:
            return cls()
        return cls(
            window=d.get("window", MODEL_INPUT_WINDOW),
            percentiles=tuple(d.get("percentiles", PERCENTILES)),  # type: ignore[arg-type]
            clahe_clip=d.get("clahe_clip", CLAHE_CLIP),
            clahe_tiles=int(d.get("clahe_tiles", CLAHE_TILES)),
        )


def _normalise_slice(x01: np.ndarray, cfg: NormalisationConfig) -> np.ndarray:
    lo, hi = np.percentile(x01, cfg.percentiles)
    if hi - lo < 1e-6:  # a blank slice: keep it blank rather than amplifying noise
        return np.zeros_like(x01, dtype=np.float32)
    y = np.clip((x01 - lo) / (hi - lo), 0.0, 1.0)
    if cfg.clahe_clip is None:
        return y.astype(np.float32)
    return clahe(to_uint8(y), cfg.clahe_clip, cfg.clahe_tiles).astype(np.float32) / 255.0


def to_model_input(image: np.ndarray, is_hu: bool, cfg: NormalisationConfig | None = None) -> np.ndarray:
    """Map a slice (H, W) or a stack (Z, H, W) of HU or 8-bit display values into model input space.

    Returns float32 in [0, 1], same shape. Each slice is normalised on its own (2-D models).
    """
    cfg = cfg or NormalisationConfig()
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"to_model_input expects (H, W) or (Z, H, W), got shape {arr.shape}")
    x01 = apply_window(arr, cfg.window) if is_hu else np.clip(arr / 255.0, 0.0, 1.0)
    if arr.ndim == 2:
        return _normalise_slice(x01, cfg)
    return np.stack([_normalise_slice(s, cfg) for s in x01]).astype(np.float32)


def lesion_types_by_density(labels: np.ndarray, image: np.ndarray, sigma_px: float, threshold: float) -> np.ndarray:
    """Lesion labels of one 8-bit display slice with GGO (1) and consolidation (2) re-decided from density.

    Consolidation is as dense as soft tissue; ground glass lies between aerated lung and soft tissue (on HU volumes
    the HU rule draws the line at -300 / -200 HU). A display image has no HU, so the density is the slice's grey
    level, Gaussian-smoothed (``sigma_px``) and stretched between the slice's own 0.5th and 99.5th percentiles as in
    :func:`to_model_input`: a pixel labelled GGO or consolidation is consolidation where it is >= ``threshold``, else
    GGO. Extent and every other label are kept. Chosen on training crops, judged on validation crops
    (docs/BENCHMARKS.md, "Lesion type from density on display slices"); the model's card names the settings."""
    from scipy import ndimage

    img = np.asarray(image, np.float32)
    lesion = (labels == 1) | (labels == 2)
    lo, hi = np.percentile(img, PERCENTILES)
    if hi - lo < 1e-6 or not lesion.any():  # a blank slice has no density to read
        return labels
    # smoothed on the lesions' box grown by the filter's reach: the same values there as over the whole slice
    box = bounding_box(lesion, margin=int(4.0 * sigma_px + 0.5) + 1)
    density = (ndimage.gaussian_filter(img[box], sigma_px, truncate=4.0) - lo) / (hi - lo)
    out = labels.copy()
    inside = lesion[box]
    out[box][inside] = np.where(density[inside] >= threshold, 2, 1).astype(labels.dtype)
    return out


# --- resampling ---------------------------------------------------------------------------


def resize_slices(stack: np.ndarray, size: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize (H, W) or (Z, H, W) in-plane to ``size`` (H, W). order 0 = nearest (labels)."""
    arr = np.asarray(stack)
    interp = cv2.INTER_NEAREST if order == 0 else (cv2.INTER_LINEAR if order == 1 else cv2.INTER_CUBIC)

    def one(s: np.ndarray) -> np.ndarray:
        return cv2.resize(s, (size[1], size[0]), interpolation=interp)

    if arr.ndim == 2:
        return one(arr)
    return np.stack([one(s) for s in arr])


def resample_volume(volume: np.ndarray, spacing: tuple[float, float, float], target: tuple[float, float, float], order: int = 1) -> np.ndarray:
    """Resample a (z, y, x) volume from ``spacing`` to ``target`` spacing (mm)."""
    from scipy import ndimage  # here, not at the top: a one-shot `refine` of a slice needs no SciPy (~0.2 s)

    zoom = [s / t for s, t in zip(spacing, target, strict=True)]
    return ndimage.zoom(volume, zoom, order=order, mode="nearest", grid_mode=False)


# --- lung masks, cropping, slicing ------------------------------------------------------------


def threshold_lung_mask(hu: np.ndarray, threshold: float = -400.0) -> np.ndarray:
    """Fast HU-threshold lung mask for a (z, y, x) HU volume (or one slice).

    Air below ``threshold`` that is inside the body (not connected to the outside air in its
    slice), minus small components. The baseline every learned lung model must beat and the
    fallback used to crop; dense lesions at the lung border are its known weakness.
    """
    vol = np.asarray(hu)
    squeeze = vol.ndim == 2
    if squeeze:
        vol = vol[None]
    out = inner_components(vol < threshold)
    if out.shape[0] > 2:
        lbl, n = components.label(out)
        if n:
            sizes = component_sizes(lbl, out, n)
            keep = sizes >= max(sizes[1:].max() * 0.05, 1)
            keep[0] = False
            out = keep[lbl]
    return out[0] if squeeze else out


def cut_lung_beyond(hu: np.ndarray, field: np.ndarray, z: int, step: int, threshold: float = -400.0) -> np.ndarray:
    """(k, y, x) bool for the slices beyond slice ``z`` (``step`` -1: below it, +1: above it): air inside the body,
    counting air that a tight reconstruction field of view cuts (it touches the image edge but no corner:
    :func:`off_corner_components`), that joins, in 3-D, the lung ``field`` (:func:`threshold_lung_mask`) of slice ``z``.

    Why: :func:`threshold_lung_mask` calls all air touching an image edge outside the body, so where a crop cuts the
    lungs over all their width (the wide bases) it finds none, and the slices would go unanalysed. A lung the crop
    cuts joins its own enclosed part; the air inside a CT table that spans the image's width joins nothing."""
    part = slice(0, z + 1) if step < 0 else slice(z, len(hu))
    air = off_corner_components(np.asarray(hu)[part] < threshold)
    lbl, n = components.label(air)
    joined = np.zeros(n + 1, bool)
    joined[lbl[-1 if step < 0 else 0][field[z]]] = True
    joined[0] = False
    out = joined[lbl]
    return out[:-1] if step < 0 else out[1:]


# 4-connected within a slice, nothing across slices: ndimage.label of a (z, y, x) volume with this
# structure numbers each slice's 2-D components (as labelling the slices one by one) in one call.
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # ndimage.generate_binary_structure(2, 1)


def component_sizes(labels: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of components 1..``n`` of ``labels`` (``ndimage.label`` of the bool ``mask``), entry 0 (the
    background) 0: ``np.bincount(labels.ravel())`` without the background, reading only the mask's voxels (4x faster
    for a lung filling a seventh of its box)."""
    return np.bincount(labels[np.asarray(mask, bool)], minlength=n + 1)


def inner_components(mask: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: the voxels of ``mask`` whose in-plane 4-connected component touches no edge of its slice.

    Each slice framed by a one-pixel ring of mask and flood-filled (4-connected, OpenCV) from the ring: what the
    fill reaches touches an edge. The same voxels as labelling the slices' components (``ndimage.label`` with
    :data:`IN_PLANE`) and dropping those on an edge, about 8x faster (it runs ~50 times per analysis)."""
    import cv2

    mask = np.asarray(mask, bool)
    z, h, w = mask.shape
    framed = np.ones((z, h + 2, w + 2), np.uint8)
    framed[:, 1:-1, 1:-1] = mask
    work = np.zeros((h + 4, w + 4), np.uint8)  # OpenCV's fill mask: 2 pixels larger than the image
    for s in framed:
        work[:] = 0
        cv2.floodFill(s, work, (0, 0), 2, flags=4)
    return framed[:, 1:-1, 1:-1] == 1


def off_corner_components(mask: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: the voxels of ``mask`` whose in-plane 4-connected component reaches no corner of its slice.

    A superset of :func:`inner_components` for a field of view that cuts the body: the air around the body reaches
    the image corners (they lie outside the reconstruction circle or in the air about the patient), while a lung cut
    by the image edge touches it only between chest wall. A slice whose corners are all body has no outside air."""
    import cv2

    out = np.asarray(mask, bool).astype(np.uint8)
    z, h, w = out.shape
    work = np.zeros((h + 2, w + 2), np.uint8)  # OpenCV's fill mask: 2 pixels larger than the image
    for s in out:
        work[:] = 0
        for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
            if s[y, x] == 1:
                cv2.floodFill(s, work, (x, y), 2, flags=4)
    return out == 1


def body_plane_box(hu: np.ndarray, threshold: float) -> tuple[slice, slice] | None:
    """In-plane (y, x) box, one voxel wider, of everything at or above ``threshold`` HU in any slice of ``hu``
    (z, y, x): outside it there is only air, so within it air touching the box's edge is air outside the body, as
    :func:`inner_components` finds on whole slices. None for slices of air only."""
    box = bounding_box((np.asarray(hu) >= threshold).any(axis=0)[None], margin=1)
    return None if box is None else (box[1], box[2])


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of every slice of a (z, y, x) mask (its default 4-connectivity), in one pass."""
    return mask | inner_components(~mask)


def kmeans_lung_mask(image: np.ndarray, erosion: int = 2, dilation: int = 6) -> np.ndarray:
    """The seed papers' lung-region method on one slice: binarise (k-means, k=2), morphology, keep inner air.

    Works on display or HU values; returns a bool (H, W) mask of the lung field (dilated) used to crop.
    """
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float32)
    data = x.reshape(-1, 1)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    _, labels, centers = cv2.kmeans(data, 2, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    dark = labels.reshape(x.shape) == int(np.argmin(centers.ravel()))
    # iterations=0 would mean "repeat until stable" in scipy, so skip zero explicitly
    if erosion > 0:
        dark = ndimage.binary_erosion(dark, iterations=erosion, border_value=1)
    if dilation > 0:
        dark = ndimage.binary_dilation(dark, iterations=dilation)
    lbl, n = components.label(dark)
    if n == 0:
        return dark
    border = np.unique(np.concatenate([lbl[0], lbl[-1], lbl[:, 0], lbl[:, -1]]))
    return ~np.isin(lbl, border) & (lbl > 0)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of a boolean mask, grown by ``margin`` voxels, or None if empty."""
    mask = np.asarray(mask)
    # per-axis projections: no coordinate list (np.argwhere of a lung mask is millions of rows)
    flat = mask.reshape(len(mask), -1).any(1)
    if not flat.any():
        return None
    box = []
    for axis, n in enumerate(mask.shape):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        nz = np.flatnonzero(flat if axis == 0 else mask.any(axis=other))
        box.append(slice(int(max(nz[0] - margin, 0)), int(min(nz[-1] + margin + 1, n))))
    return tuple(box)


def crop_to_lungs(image: np.ndarray, mask: np.ndarray, margin: int = 8) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Crop an image to its lung mask's bounding box (+ margin); returns (crop, box)."""
    box = bounding_box(mask, margin)
    if box is None:
        box = tuple(slice(0, s) for s in image.shape)
    return image[box], box


def lung_slices(mask_zyx: np.ndarray, margin: int = 0, min_pixels: int = 1) -> np.ndarray:
    """Indices of slices that contain lung (as in seed 002: empty-mask slices dropped), ± margin."""
    counts = np.asarray(mask_zyx).reshape(mask_zyx.shape[0], -1).sum(1)
    idx = np.flatnonzero(counts >= min_pixels)
    if idx.size == 0:
        return idx
    lo, hi = max(idx.min() - margin, 0), min(idx.max() + margin, mask_zyx.shape[0] - 1)
    return np.arange(lo, hi + 1)


# --- tensor resizing (model grid) ------------------------------------------------------------------


def resize_image_tensor(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (C, H, W) or (B, C, H, W) float images: area when shrinking, bilinear otherwise."""
    import torch

    squeeze = x.ndim == 3
    xb = x[None] if squeeze else x
    h, w = xb.shape[-2:]
    if (h, w) != tuple(size):
        mode = "area" if h >= size[0] and w >= size[1] else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        xb = torch.nn.functional.interpolate(xb.float(), size=tuple(size), mode=mode, **kw)
    return xb[0] if squeeze else xb


def resize_label_tensor(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (C, H, W) integer label maps."""
    import torch

    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return torch.nn.functional.interpolate(y[None].float(), size=tuple(size), mode="nearest-exact")[0].to(y.dtype)
