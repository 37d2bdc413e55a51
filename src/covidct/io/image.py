"""2-D display images (PNG/JPEG/BMP/TIFF) as one-slice volumes, and palette label PNGs.

Images are NOT reoriented: they are display images in whatever orientation the user gave, and
every output must keep the input's exact width and height. EXIF orientation is ignored for
the same reason (pixels are used as stored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidct.errors import UnreadableInput, UnsupportedInput
from covidct.volume import CT, SliceRef, affine_from_spacing

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# ITU-R BT.601 luma, the weights PIL's "L" conversion uses (kept in float here: no rounding).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise UnreadableInput(f"{path}: no such file")
    if path.is_dir():
        raise UnreadableInput(f"{path}: is a folder, expected an image file")
    try:
        if path.stat().st_size == 0:
            raise UnreadableInput(f"{path}: empty file (0 bytes)")
        im = Image.open(path)
        im.load()
    except UnreadableInput:
        raise
    except PermissionError as e:
        raise UnreadableInput(f"{path}: permission denied") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableInput(f"{path}: not a readable {path.suffix.lstrip('.').upper() or 'image'} image") from e
    return im


def image_to_grey(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    """PIL image -> (H, W) float32 grey levels 0..255 plus warnings.

    RGB -> luminance; alpha is composited on black; palette images via their colours;
    16-bit images whose values exceed 255 are scaled by their bit depth (12-bit if max <= 4095,
    else 16-bit) to 0..255; signed/float images outside 0..255 are min-max stretched.
    """
    warnings: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        warnings.append(f"image has {im.n_frames} frames; only the first was used")
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    arr = np.asarray(im)
    if arr.ndim == 3:
        ch = arr.shape[2]
        a = arr.astype(np.float32)
        if ch in (3, 4):
            grey = a[..., :3] @ _LUMA
        elif ch == 2:
            grey = a[..., 0]
        else:
            raise UnsupportedInput(f"image with {ch} channels is not supported")
        if ch in (2, 4):
            alpha = a[..., -1] / 255.0
            if (alpha < 1).any():
                warnings.append("transparent pixels were composited on black")
            grey = grey * alpha
    elif arr.ndim == 2:
        grey = arr.astype(np.float32)
        if arr.dtype != np.uint8 and grey.size and (grey.max() > 255 or grey.min() < 0):
            lo, hi = float(grey.min()), float(grey.max())
            if lo >= 0 and np.issubdtype(arr.dtype, np.integer) and hi <= 65535:
                # Unsigned 12/16-bit data: scale by the bit depth (keeps the image's own contrast).
                full = 4095.0 if hi <= 4095 else 65535.0
                grey = grey * (255.0 / full)
                warnings.append(f"{int(full).bit_length()}-bit image scaled to 0..255")
            else:  # signed or float data: no natural range, stretch min..max
                grey = (grey - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(grey)
                warnings.append(f"{mode} image with values {lo:g}..{hi:g} was stretched to 0..255")
    else:
        raise UnsupportedInput(f"image array of shape {arr.shape} is not supported")
    return np.clip(grey, 0, 255).astype(np.float32), warnings


def load_image_2d(path: str | Path) -> np.ndarray:
    """(H, W) grey float32 0..255 of a PNG/JPEG/BMP/TIFF (see ``image_to_grey``)."""
    path = Path(path)
    im = _open(path)
    try:
        grey, _ = image_to_grey(im)
    except UnsupportedInput as e:
        raise UnsupportedInput(f"{path}: {e}") from e
    return grey


def read_label_png(path: str | Path) -> np.ndarray:
    """(H, W) uint8 raw label values: palette INDICES for palette PNGs, grey values otherwise.

    Colour (RGB) label images are refused: their class meaning cannot be recovered reliably.
    """
    path = Path(path)
    im = _open(path)
    if im.mode in ("P", "PA", "L", "LA"):
        arr = np.asarray(im)
        return np.ascontiguousarray(arr[..., 0] if arr.ndim == 3 else arr).astype(np.uint8)
    if im.mode == "1":
        return np.asarray(im).astype(np.uint8)
    if im.mode.startswith("I"):
        arr = np.asarray(im)
        if arr.size and (arr.max() > 255 or arr.min() < 0):
            raise UnsupportedInput(f"{path}: label image values {arr.min()}..{arr.max()} do not fit 0..255")
        return arr.astype(np.uint8)
    raise UnsupportedInput(f"{path}: {im.mode} colour label image; expected a palette or grey label PNG")


def load_image_ct(path: Path) -> CT:
    """A 2-D image as a one-slice, non-HU CT (array (1, H, W), spacing unknown, not reoriented)."""
    im = _open(path)
    try:
        grey, warnings = image_to_grey(im)
    except UnsupportedInput as e:
        raise UnsupportedInput(f"{path}: {e}") from e
    h, w = grey.shape
    return CT(
        array=grey[None],
        spacing=(1.0, 1.0, 1.0),
        affine=affine_from_spacing((1.0, 1.0, 1.0)),
        is_hu=False,
        kind="image",
        path=str(path),
        spacing_known=False,
        slices=[SliceRef(index=0, z_mm=0.0, file=path.name)],
        meta={"format": im.format, "mode": im.mode, "width": w, "height": h},
        warnings=warnings,
        source_shape=(h, w),
    )
