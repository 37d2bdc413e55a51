"""Generic adapter for a user's own 3-D NIfTI data set (paths only: volumes are big).

Layouts recognised (checked in this order):

* ``ma2020``: Ma et al. COVID-19-CT-Seg: ``COVID-19-CT-Seg_20cases/*.nii.gz`` with masks of the
  same name in ``Infection_Mask/`` (preferred, 0/1) or ``Lung_and_Infection_Mask/``
  (1 left lung, 2 right lung, 3 infection); ``Lung_Mask/`` is given as ``lungs`` when present.
* ``nnunet``: ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``.
* ``covid19-20``: COVID-19-20 challenge, ``<case>_ct.nii.gz`` + ``<case>_seg.nii.gz`` side by side,
  in the root or in ``Train/`` / ``Validation/``.
* ``images-labels``: ``images/*.nii.gz`` + ``labels/*.nii.gz`` paired by file name.

Records: ``{"image": path, "label": path, "lungs": path | None, "case", "id", "group",
"source": "nifti", "meta": {"layout", "label_values"}}``.
"""

from __future__ import annotations

from pathlib import Path

from covidct.errors import UnreadableInput

_EXTS = (".nii.gz", ".nii")


def _stem(p: Path) -> str | None:
    for ext in _EXTS:
        if p.name.lower().endswith(ext):
            return p.name[: -len(ext)]
    return None


def _volumes(folder: Path) -> dict[str, Path]:
    """NIfTI files of a folder by name without extension (hidden files skipped)."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            s = _stem(p)
            if s is not None and p.is_file() and not p.name.startswith("."):
                out[s] = p
    return out


def _rec(case: str, image: Path, label: Path, layout: str, label_values: dict, lungs: Path | None = None) -> dict:
    return {
        "image": str(image), "label": str(label), "lungs": None if lungs is None else str(lungs),
        "case": case, "id": case, "group": case, "source": "nifti",
        "meta": {"layout": layout, "label_values": label_values},
    }  # fmt: skip


_BINARY = {0: "background", 1: "infection"}


def _ma(root: Path) -> list[dict]:
    imgs = _volumes(root / "COVID-19-CT-Seg_20cases")
    inf, both, lung = (_volumes(root / d) for d in ("Infection_Mask", "Lung_and_Infection_Mask", "Lung_Mask"))
    out = []
    for case, p in imgs.items():
        if case in inf:
            out.append(_rec(case, p, inf[case], "ma2020", _BINARY, lung.get(case)))
        elif case in both:
            values = {0: "background", 1: "left_lung", 2: "right_lung", 3: "infection"}
            out.append(_rec(case, p, both[case], "ma2020", values, lung.get(case)))
    return out


def _nnunet(root: Path) -> list[dict]:
    labels = _volumes(root / "labelsTr")
    out = []
    for name, p in _volumes(root / "imagesTr").items():
        # nnU-Net appends a 4-digit channel id; only the first channel is the CT.
        case = name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name
        if name != case and not name.endswith("_0000"):
            continue
        if case in labels:
            out.append(_rec(case, p, labels[case], "nnunet", {}))
    return out


def _covid19_20(root: Path) -> list[dict]:
    out = []
    for folder in (root, root / "Train", root / "Validation"):
        vols = _volumes(folder)
        for name, p in vols.items():
            if name.endswith("_ct") and name[:-3] + "_seg" in vols:
                case = name[:-3]
                out.append(_rec(case, p, vols[case + "_seg"], "covid19-20", _BINARY))
    return out


def _images_labels(root: Path) -> list[dict]:
    labels = _volumes(root / "labels")
    return [_rec(c, p, labels[c], "images-labels", {}) for c, p in _volumes(root / "images").items() if c in labels]


def detect_nifti_layout(root: str | Path) -> str | None:
    """The layout name of a NIfTI data set folder, or None when none is recognised."""
    root = Path(root)
    if (root / "COVID-19-CT-Seg_20cases").is_dir():
        return "ma2020"
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "nnunet"
    for folder in (root, root / "Train", root / "Validation"):
        if any(s.endswith("_ct") for s in _volumes(folder)):
            return "covid19-20"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "images-labels"
    return None


_LAYOUTS = {"ma2020": _ma, "nnunet": _nnunet, "covid19-20": _covid19_20, "images-labels": _images_labels}


def load_nifti_dataset(root: str | Path, layout: str | None = None) -> list[dict]:
    """3-D records (paths) for a NIfTI data set folder; the layout is detected unless given."""
    root = Path(root)
    if not root.is_dir():
        raise UnreadableInput(f"NIfTI data set folder not found: {root}")
    layout = layout or detect_nifti_layout(root)
    if layout is None:
        raise UnreadableInput(
            f"no NIfTI data set layout recognised in {root} (expected images/+labels/, imagesTr/+labelsTr/, "
            "COVID-19-CT-Seg_20cases/+Infection_Mask/, or *_ct.nii.gz+*_seg.nii.gz)"
        )
    if layout not in _LAYOUTS:
        raise UnreadableInput(f"unknown NIfTI layout {layout!r}; known: {', '.join(_LAYOUTS)}")
    recs = _LAYOUTS[layout](root)
    if not recs:
        raise UnreadableInput(f"{root} looks like the {layout} layout but no image has a matching label")
    return recs
