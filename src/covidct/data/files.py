"""Reading the development data sets' files: where the data folder is, CSVs, grey and label images, records.

Shared by the source adapters (:mod:`covidct.data.sources`, :mod:`covidct.data.covid_ct_md`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.errors import UnreadableInput

# Folder names of the sources inside the data root.
SOURCE_FOLDERS: dict[str, str] = {
    "ma2020": "ma2020-slices",
    "medseg-ct100": "medseg-ct100",
    "medseg-infnet": "medseg-infnet",
    "ucsd": "ucsd-covidct",
    "covid-ct-md": "covid-ct-md",
}


def data_root() -> Path | None:
    """The shared data folder: env ``COVIDCT_DATA``, else ``<repo>/../shared/data``, else None."""
    env = os.environ.get("COVIDCT_DATA")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return guess if guess.is_dir() else None


def source_root(root: str | Path | None, name: str) -> Path:
    """Resolve a loader's ``root`` (the source's own folder), defaulting to the data root."""
    if root is None:
        base = data_root()
        if base is None:
            raise UnreadableInput(
                f"no data folder for {name!r}: pass root= or set COVIDCT_DATA to the data folder"
            )
        root = base / SOURCE_FOLDERS[name]
    root = Path(root)
    if not root.is_dir():
        raise UnreadableInput(f"{name} data folder not found: {root}")
    return root


def need_file(path: Path) -> Path:
    if not path.exists():
        raise UnreadableInput(f"missing file: {path}")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(need_file(path), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def open_image(path: Path) -> Image.Image:
    try:
        img = Image.open(need_file(path))
        img.load()
    except UnreadableInput:
        raise
    except Exception as e:  # PIL raises several types for corrupt files
        raise UnreadableInput(f"cannot read image {path}: {e}") from e
    return img


def read_grey(path: Path) -> np.ndarray:
    """An image file as (H, W) float32 grey levels 0..255 (alpha composited on black)."""
    return to_grey(open_image(path))


def to_grey(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float greyscale: rescale to 0..255 rather than clipping.
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)).astype(np.float32)
    if img.mode == "L":
        return np.asarray(img, dtype=np.float32)
    if "A" in img.mode or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def read_indices(path: Path) -> np.ndarray:
    """A label PNG as raw (H, W) uint8 values: palette INDICES for mode "P", grey otherwise."""
    img = open_image(path)
    if img.mode not in ("P", "L", "1"):
        raise UnreadableInput(f"label image {path} has mode {img.mode}, expected P, L or 1")
    return np.asarray(img).astype(np.uint8)


def read_binary(path: Path) -> np.ndarray:
    """A 0/255 (or 0/1 palette) mask as uint8 0/1."""
    return (read_indices(path) > 0).astype(np.uint8)


def new_record(**kw: Any) -> dict:
    rec = {
        "image": None, "is_hu": False, "lungs": None, "infection": None, "lesions": None,
        "slice_label": None, "class_label": None, "case": "", "id": "", "source": "", "group": "",
        "meta": {},
    }  # fmt: skip
    rec.update(kw)
    return rec
