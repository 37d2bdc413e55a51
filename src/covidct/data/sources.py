"""Adapters for the development data sets under ``/work/shared/data`` (see its README).

Every loader returns a list of plain dict records (MONAI style, so
``monai.data.Dataset(records, transform)`` works), loaded eagerly as numpy arrays::

    {"image": (H, W) float32,   # 8-bit display grey levels 0..255, or HU when is_hu
     "is_hu": bool,
     "lungs": (H, W) uint8 0/1 | None,
     "infection": (H, W) uint8 0/1 | None,
     "lesions": (H, W) uint8 0..3 | None,   # 1 GGO, 2 consolidation, 3 effusion
     "slice_label": 0/1 | None, "class_label": int | None,
     "case": str, "id": str, "source": str, "group": str, "meta": dict}

``group`` is the unit that must stay on one side of a split (a patient where known).
This module owns the record contract, the file readers every adapter shares, Ma et al. and MedSeg,
and :func:`load_source` (by name); UCSD and COVID-CT-MD have their own modules (``ucsd``,
``covid_ct_md``).
All images are put in covidct's canonical 2-D view (radiological display: front of the
patient at the top, patient's right on the image's left; see covidct.volume).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
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

# Same-patient MedSeg slice pairs identified by eye (data README, medseg-infnet section).
MEDSEG_SAME_PATIENT_PAIRS: tuple[tuple[int, int], ...] = (
    (4, 17), (5, 46), (6, 26), (10, 43), (12, 28), (17, 91), (21, 53),
    (33, 97), (35, 67), (40, 65), (44, 61), (49, 95), (91, 93),
)  # fmt: skip
# infnet_map.csv runner-up matches above this score are treated as same-patient neighbours.
MEDSEG_NEIGHBOUR_SCORE = 0.75

# Ma et al. cases 10-19 are stored upside down (spine at the top, left/right correct): a
# vertical flip (not a 180-degree rotation) restores the radiological view. Checked by eye:
# after flipping rows the liver is on the image's left, stomach/spleen and the descending
# aorta on the image's right, as in cases 0-9 (see benchmarks/check_data.py).
MA_FLIPPED_CASES: frozenset[int] = frozenset(range(10, 20))
MA_SAME_PATIENT: dict[int, str] = {10: "ma-10-11", 11: "ma-10-11"}


# --------------------------------------------------------------------------- helpers


def data_root() -> Path | None:
    """The shared data folder: env ``COVIDCT_DATA``, else ``<repo>/../shared/data``, else None."""
    env = os.environ.get("COVIDCT_DATA")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return guess if guess.is_dir() else None


def _source_root(root: str | Path | None, name: str) -> Path:
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


def _need(path: Path) -> Path:
    if not path.exists():
        raise UnreadableInput(f"missing file: {path}")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(_need(path), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(_need(path))
        img.load()
    except UnreadableInput:
        raise
    except Exception as e:  # PIL raises several types for corrupt files
        raise UnreadableInput(f"cannot read image {path}: {e}") from e
    return img


def read_grey(path: Path) -> np.ndarray:
    """An image file as (H, W) float32 grey levels 0..255 (alpha composited on black)."""
    return _to_grey(_open(path))


def _to_grey(img: Image.Image) -> np.ndarray:
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
    img = _open(path)
    if img.mode not in ("P", "L", "1"):
        raise UnreadableInput(f"label image {path} has mode {img.mode}, expected P, L or 1")
    return np.asarray(img).astype(np.uint8)


def read_binary(path: Path) -> np.ndarray:
    """A 0/255 (or 0/1 palette) mask as uint8 0/1."""
    return (read_indices(path) > 0).astype(np.uint8)


def _record(**kw: Any) -> dict:
    rec = {
        "image": None, "is_hu": False, "lungs": None, "infection": None, "lesions": None,
        "slice_label": None, "class_label": None, "case": "", "id": "", "source": "", "group": "",
        "meta": {},
    }  # fmt: skip
    rec.update(kw)
    return rec


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def medseg_groups(indices: Iterable[int], extra_pairs: Iterable[tuple[int, int]] = ()) -> dict[int, str]:
    """Same-patient groups of MedSeg slice indices, e.g. ``{4: "medseg-4-17-91-93", 5: ...}``.

    Unites the README's listed pairs and ``extra_pairs`` (transitively: 4-17 and 17-91 and
    91-93 make one group). The group name lists its members in ascending order.
    """
    uf = _UnionFind()
    indices = [int(i) for i in indices]
    for i in indices:
        uf.find(i)
    for a, b in (*MEDSEG_SAME_PATIENT_PAIRS, *extra_pairs):
        uf.union(int(a), int(b))
    members: dict[int, list[int]] = {}
    for i in list(uf.parent):
        members.setdefault(uf.find(i), []).append(i)
    names = {r: "medseg-" + "-".join(str(m) for m in sorted(ms)) for r, ms in members.items()}
    return {i: names[uf.find(i)] for i in indices}


def _neighbour_pairs(rows: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Runner-up matches in infnet_map.csv above MEDSEG_NEIGHBOUR_SCORE (same-patient neighbours)."""
    pairs = []
    for r in rows:
        if r.get("second_best_score") and float(r["second_best_score"]) > MEDSEG_NEIGHBOUR_SCORE:
            pairs.append((int(r["ct100_index"]), int(r["second_best_index"])))
    return pairs


# --------------------------------------------------------------------------- Ma et al. slices


def load_ma2020(root: str | Path | None = None) -> list[dict]:
    """Ma et al. COVID-19-CT-Seg slices (dstaroff 256x256 PNGs) with lung and infection masks.

    Cases 10-19 are flipped vertically into the radiological view; ``meta["flipped"]`` says so.
    """
    root = _source_root(root, "ma2020")
    out = []
    for row in _read_csv(root / "cases.csv"):
        fname, case = row["file"], int(row["case"])
        img = read_grey(root / "ct" / fname)
        lungs = read_binary(root / "lungs" / fname)
        inf = read_binary(root / "infection" / fname)
        flip = case in MA_FLIPPED_CASES
        if flip:
            img, lungs, inf = (np.ascontiguousarray(a[::-1]) for a in (img, lungs, inf))
        out.append(
            _record(
                image=img, lungs=lungs, infection=inf,
                case=f"ma-{case}", id=Path(fname).stem, source="ma2020",
                group=MA_SAME_PATIENT.get(case, f"ma-{case}"),
                meta={"file": fname, "case_index": case, "position": int(row["position"]), "flipped": flip},
            )  # fmt: skip
        )
    return out


# --------------------------------------------------------------------------- MedSeg (CT100 + Inf-Net)

_INFNET_DIRS = {
    "train": (
        "TrainingSet/LungInfection-Train/Doctor-label/Imgs",
        "TrainingSet/LungInfection-Train/Doctor-label/GT",
        "TrainingSet/MultiClassInfection-Train/GT",
    ),
    "test": (
        "TestingSet/LungInfection-Test/Imgs",
        "TestingSet/LungInfection-Test/GT",
        "TestingSet/MultiClassInfection-Test/GT",
    ),
}


def _infnet_box(row: dict[str, str]) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) box of a CT100 slice that Inf-Net cropped (``infnet = ct100[y0:y1, x0:x1].T``)."""
    return int(row["box_x0"]), int(row["box_y0"]), int(row["box_x1"]), int(row["box_y1"])


def load_medseg_ct100(
    root: str | Path | None = None, infnet_root: str | Path | None = None, effusion_from_extra: bool = True,
    min_effusion_px: int = 50, lungs_dir: str | Path | None = None,
) -> list[dict]:
    """The 100 full 512x512 MedSeg slices (JCS "COVID-19-CT100") with binary infection masks.

    ``lesions`` (1 GGO, 2 consolidation) come from Inf-Net's multi-class GT put back into the
    512x512 frame (``infnet = ct100[y0:y1, x0:x1].T``), when ``infnet_root`` (default: the
    sibling ``medseg-infnet/``) exists. Infection pixels of the CT100 mask that Inf-Net leaves
    unlabelled ("extra, denser regions", perhaps effusion, unconfirmed) stay 0 in ``lesions``
    and are given as ``meta["extra_region"]`` (uint8 mask) / ``meta["extra_region_pixels"]``.

    With ``effusion_from_extra`` (default) those extra regions become class 3 (pleural effusion)
    in ``lesions``: checked by eye and by position/density on all 25 slices (posterior, dependent,
    crescent-shaped strips along the chest wall at water density; docs/BENCHMARKS.md), which is
    what MedSeg's effusion class looks like. Isolated specks under 50 px are left unlabelled.

    ``lungs_dir``: a folder of lung masks ``tr_lung_NNNN.png`` (0/255; made by
    ``scripts/pseudo_lung_labels.py``, CT100 has none of its own); a slice with a file there gets
    ``lungs``, the others keep None.
    """
    root = _source_root(root, "medseg-ct100")
    rows = _read_csv(root / "infnet_map.csv")
    groups = medseg_groups([int(r["ct100_index"]) for r in rows], _neighbour_pairs(rows))
    iroot = Path(infnet_root) if infnet_root is not None else root.parent / SOURCE_FOLDERS["medseg-infnet"]
    have_infnet = iroot.is_dir()
    out = []
    for r in rows:
        idx = int(r["ct100_index"])
        img = read_grey(root / r["ct100_image"])
        inf = read_binary(root / "masks" / f"tr_mask_{idx:04d}.png")
        if img.shape != inf.shape:
            raise UnreadableInput(f"CT100 slice {idx}: image {img.shape} and mask {inf.shape} differ")
        split = r["infnet_split"]
        meta: dict[str, Any] = {
            "infnet_split": split,
            "in_jcs_train": r["in_jcs_train"] == "1",
            "in_jcs_test": r["in_jcs_test"] == "1",
            "extra_region": None,
            "extra_region_pixels": None,
        }
        lesions = None
        if split in _INFNET_DIRS and r["box_x0"]:
            x0, y0, x1, y1 = _infnet_box(r)
            meta["infnet_box_xyxy"] = (x0, y0, x1, y1)
            if have_infnet:
                gt = read_indices(iroot / _INFNET_DIRS[split][2] / f"{idx}.png")
                if gt.T.shape != (y1 - y0, x1 - x0):
                    raise UnreadableInput(f"CT100 slice {idx}: Inf-Net GT {gt.shape} does not fit box")
                lesions = np.zeros_like(inf)
                lesions[y0:y1, x0:x1] = gt.T
                extra = ((inf > 0) & (lesions == 0)).astype(np.uint8)
                meta["extra_region"] = extra
                meta["extra_region_pixels"] = int(extra.sum())
                if effusion_from_extra and extra.sum() >= min_effusion_px:
                    lesions[extra > 0] = 3
                # Inf-Net labels outside the CT100 mask would mean a mapping error; keep count.
                meta["infnet_outside_mask_pixels"] = int(((lesions > 0) & (inf == 0)).sum())
        lung_file = None if lungs_dir is None else Path(lungs_dir) / f"tr_lung_{idx:04d}.png"
        lungs = read_binary(lung_file) if lung_file is not None and lung_file.is_file() else None
        if lungs is not None and lungs.shape != img.shape:
            raise UnreadableInput(f"CT100 slice {idx}: lung mask {lungs.shape} and image {img.shape} differ")
        out.append(
            _record(
                image=img, infection=inf, lesions=lesions, lungs=lungs,
                case=str(idx), id=str(idx), source="medseg-ct100", group=groups[idx], meta=meta,
            )  # fmt: skip
        )
    return out


def load_medseg_infnet(
    root: str | Path | None = None, split: str = "train", multiclass: bool = False, effusion_from_ct100: bool = False,
    min_effusion_px: int = 50,
) -> list[dict]:
    """Inf-Net's MedSeg crops (train 50 / test 48), transposed back into the radiological view.

    ``infection`` is the doctor binary GT; with ``multiclass`` also ``lesions`` (1 GGO,
    2 consolidation). With ``effusion_from_ct100`` the crop's ``lesions`` also get class 3 (pleural effusion) where
    the full CT100 slice's infection mask, cut by the crop's box, is infected and Inf-Net's labels are not (at least
    ``min_effusion_px`` pixels), as :func:`load_medseg_ct100` labels them: a crop trained beside its full slice then
    teaches the same classes. Groups use the README's same-patient pairs, plus the high runner-up
    matches of ``../medseg-ct100/infnet_map.csv`` when that file exists (as load_medseg_ct100).
    """
    if split not in _INFNET_DIRS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _source_root(root, "medseg-infnet")
    img_dir, gt_dir, mc_dir = (root / d for d in _INFNET_DIRS[split])
    if not img_dir.is_dir():
        raise UnreadableInput(f"Inf-Net image folder not found: {img_dir}")
    stems = sorted((p.stem for p in img_dir.glob("*.jpg")), key=lambda s: (len(s), s))
    map_csv = root.parent / SOURCE_FOLDERS["medseg-ct100"] / "infnet_map.csv"
    map_rows = _read_csv(map_csv) if map_csv.exists() else []
    groups = medseg_groups([int(s) for s in stems if s.isdigit()], _neighbour_pairs(map_rows))
    boxes = ({int(r["ct100_index"]): _infnet_box(r) for r in map_rows if r["box_x0"]}
             if effusion_from_ct100 and multiclass else {})
    out = []
    for s in stems:
        img = read_grey(img_dir / f"{s}.jpg").T
        inf = read_binary(gt_dir / f"{s}.png").T
        lesions = read_indices(mc_dir / f"{s}.png").T if multiclass else None
        box = boxes.get(int(s)) if s.isdigit() else None
        if box is not None and lesions is not None:  # infnet = ct100[y0:y1, x0:x1].T: the box is this view's crop
            x0, y0, x1, y1 = box
            full = read_binary(map_csv.parent / "masks" / f"tr_mask_{int(s):04d}.png")[y0:y1, x0:x1]
            extra = (full > 0) & (lesions == 0) if full.shape == lesions.shape else np.zeros(lesions.shape, bool)
            if extra.sum() >= min_effusion_px:
                lesions = np.where(extra, np.uint8(3), lesions).astype(lesions.dtype)
        out.append(
            _record(
                image=np.ascontiguousarray(img), infection=np.ascontiguousarray(inf),
                lesions=None if lesions is None else np.ascontiguousarray(lesions),
                case=s, id=s, source="medseg-infnet",
                group=groups.get(int(s), f"medseg-{s}") if s.isdigit() else f"medseg-{s}",
                meta={"infnet_split": split, "file": str((img_dir / f"{s}.jpg").relative_to(root))},
            )  # fmt: skip
        )
    return out


# --------------------------------------------------------------------------- dispatch


def load_source(name: str, root: str | Path | None = None, **kw: Any) -> list[dict]:
    """Load a source by name: ma2020, medseg-ct100, medseg-infnet, ucsd, covid-ct-md, nifti."""
    from covidct.data.covid_ct_md import load_covid_ct_md
    from covidct.data.nifti import load_nifti_dataset
    from covidct.data.ucsd import load_ucsd

    loaders = {
        "ma2020": load_ma2020,
        "medseg-ct100": load_medseg_ct100,
        "medseg-infnet": load_medseg_infnet,
        "ucsd": load_ucsd,
        "covid-ct-md": load_covid_ct_md,
    }
    if name == "nifti":
        if root is None:
            raise UnreadableInput("the nifti source needs root= (the data set folder)")
        return load_nifti_dataset(root, **kw)
    if name not in loaders:
        raise UnreadableInput(f"unknown data source {name!r}; known: {', '.join([*loaders, 'nifti'])}")
    return loaders[name](root, **kw)
