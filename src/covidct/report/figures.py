"""Pictures for people: lung-window slices with lung contours and lesion fill, and the axial lesion profile.

HU volumes are shown in the lung window (-1350..150 HU); 2-D display images (``is_hu``
False) are shown exactly as they are. Colours come from ``covidct.labels``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LESION_COLORS, LESION_NAMES, LUNG_COLORS
from covidct.volume import CT

LUNG_WINDOW = (-1350.0, 150.0)
LESION_ALPHA = 0.5


def to_grey(image_hw: np.ndarray, is_hu: bool) -> np.ndarray:
    """uint8 grey levels: lung window for HU, the values as they are for display images."""
    img = np.asarray(image_hw, dtype=np.float32)
    if is_hu:
        lo, hi = LUNG_WINDOW
        img = (img - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _display_size(
    shape_hw: tuple[int, int], spacing_yx: tuple[float, float], min_width: int
) -> tuple[int, int]:
    """(height, width) in screen pixels: square physical pixels, upscaled to at least ``min_width``."""
    h, w = shape_hw
    dy, dx = spacing_yx
    hh = h * dy / dx if dx > 0 and dy > 0 else float(h)
    scale = max(1.0, min_width / w)
    return max(1, int(round(hh * scale))), max(1, int(round(w * scale)))


def overlay_rgb(
    image_hw: np.ndarray,
    lungs_hw: np.ndarray,
    lesions_hw: np.ndarray,
    is_hu: bool,
    *,
    spacing_yx: tuple[float, float] = (1.0, 1.0),
    min_width: int = 0,
) -> np.ndarray:
    """(H, W, 3) uint8: grey slice, lesions filled (alpha 0.5), left/right lung outlines.

    With ``min_width`` the slice is first resized (image bilinear, masks nearest) so that
    outlines stay one screen pixel thin on small inputs.
    """
    from scipy.ndimage import binary_dilation, binary_fill_holes
    from skimage.segmentation import find_boundaries

    grey = to_grey(image_hw, is_hu)
    lungs = np.asarray(lungs_hw, dtype=np.uint8)
    lesions = np.asarray(lesions_hw, dtype=np.uint8)
    size_hw = _display_size(grey.shape, spacing_yx, min_width)
    if size_hw != grey.shape:
        wh = (size_hw[1], size_hw[0])
        grey = np.asarray(Image.fromarray(grey).resize(wh, Image.BILINEAR))
        lungs = np.asarray(Image.fromarray(lungs).resize(wh, Image.NEAREST))
        lesions = np.asarray(Image.fromarray(lesions).resize(wh, Image.NEAREST))
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for value, colour in LESION_COLORS.items():
        m = lesions == value
        if m.any():
            rgb[m] = (1.0 - LESION_ALPHA) * rgb[m] + LESION_ALPHA * np.asarray(colour, dtype=np.float32)
    thick = max(1, int(round(size_hw[1] / 300)))  # 1 px up to ~450 px wide, 2 px at 512
    for value, colour in LUNG_COLORS.items():
        m = lungs == value
        if m.any():
            # Outline the lung's outer border only, not every vessel hole inside the mask.
            m = binary_fill_holes(m)
            edge = find_boundaries(m, mode="inner")
            if thick > 1:
                edge = binary_dilation(edge, iterations=thick - 1) & m
            rgb[edge] = colour
    return np.rint(rgb).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # level 3: on P001's overlays 2.5x faster than 6 and even a little smaller; optimize=True is 10x slower
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def representative_slices(lungs: np.ndarray, lesions: np.ndarray, n: int = 5) -> list[int]:
    """Up to ``n`` slice indices (sorted): the largest-lesion slices, spread out, plus the mid-lung slice.

    Picks greedily by lesion area (GGO + consolidation + effusion) keeping picks at least
    ``n_slices / (3 n)`` apart, so that neighbouring near-identical slices are not all shown;
    fills up with evenly spaced lung slices when there are few lesions.
    """
    nz = lungs.shape[0]
    lung_area = (lungs > 0).sum(axis=(1, 2))
    lesion_area = (lesions > 0).sum(axis=(1, 2))
    lung_z = np.flatnonzero(lung_area)
    lo, hi = (int(lung_z[0]), int(lung_z[-1])) if lung_z.size else (0, nz - 1)
    mid = (lo + hi) // 2
    picks: list[int] = [mid]
    gap = max(1, nz // (3 * n)) if nz > n else 0
    for k in np.argsort(-lesion_area, kind="stable"):
        if len(picks) >= n or lesion_area[k] == 0:
            break
        if all(abs(int(k) - p) > gap for p in picks):
            picks.append(int(k))
    if len(picks) < min(n, 4):  # few lesions: show the lung from top to bottom
        for k in np.linspace(lo, hi, num=min(n, 4) + 2)[1:-1]:
            k = int(round(k))
            if len(picks) < min(n, nz) and k not in picks:
                picks.append(k)
    return sorted(set(picks))


def lesion_profile_png(ct: CT, lungs: np.ndarray, lesions: np.ndarray) -> bytes:
    """PNG plot of lung and lesion area (cm²) per slice against the slice position (mm), head up."""
    # the object API, not pyplot: no global figure state, so reports can be drawn in worker threads
    from matplotlib.figure import Figure

    px_cm2 = ct.pixel_area_mm2 / 100.0
    nz = ct.n_slices
    if len(ct.slices) == nz:
        z = np.array([s.z_mm for s in ct.slices], dtype=float)
    else:
        z = np.array([(ct.affine @ [0, 0, k, 1])[2] for k in range(nz)], dtype=float)
    lung = (lungs > 0).sum(axis=(1, 2)) * px_cm2
    areas = [(lesions == c).sum(axis=(1, 2)) * px_cm2 for c in (GGO, CONSOLIDATION, EFFUSION)]

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    ax.plot(lung, z, color="#6b7280", lw=1.2, label="lung")
    left = np.zeros(nz)
    for c, a in zip((GGO, CONSOLIDATION, EFFUSION), areas, strict=True):
        col = np.asarray(LESION_COLORS[c]) / 255.0
        ax.fill_betweenx(z, left, left + a, color=col, alpha=0.85, lw=0, label=LESION_NAMES[c], step="mid")
        left = left + a
    ax.set_xlabel("area per slice (cm²)")
    ax.set_ylabel("slice position z (mm, head up)")
    ax.set_xlim(left=0)
    if nz > 1:
        ax.set_ylim(z.min(), z.max())
    ax.grid(alpha=0.3, lw=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_slice_overlays(
    ct: CT, lungs: np.ndarray, lesions: np.ndarray, outdir: str | Path, every: int = 1, slices=None
) -> list[Path]:
    """One PNG per ``every``-th slice (``slice_0000.png``..., canonical index) with lung/lesion overlays.

    Images keep the volume's pixel grid (one image pixel per voxel); HU input is shown in the
    lung window. ``slices`` (indices) restricts the output to those slices.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if lungs.shape != ct.shape or lesions.shape != ct.shape:
        raise ValueError(f"mask shapes {lungs.shape}/{lesions.shape} do not match the CT {ct.shape}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(0, ct.n_slices, every) if slices is None else [int(i) for i in slices][::every]:
        rgb = overlay_rgb(ct.array[k], lungs[k], lesions[k], ct.is_hu)
        p = outdir / f"slice_{k:04d}.png"
        Image.fromarray(rgb).save(p, format="PNG")
        paths.append(p)
    return paths
