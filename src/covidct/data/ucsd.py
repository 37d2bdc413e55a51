"""UCSD-AI4H COVID-CT (figures from papers, COVID / non-COVID) as covidct records.

Owns :func:`load_ucsd` (the official ``train``/``val`` lists as grey images with class labels) and
:func:`ucsd_group` (the split unit: a paper, or a figure's panels). Record contract:
:mod:`covidct.data.sources`.
"""

from __future__ import annotations

import re
from pathlib import Path

from covidct.data.sources import _open, _read_csv, _record, _source_root, _to_grey

_PAPER_ID = re.compile(r"^(\d{4}\.\d{2}\.\d{2}\.\d+)")


def ucsd_group(file: str) -> str:
    """The split unit of a UCSD image: its paper id (COVID) or figure number (NonCOVID ``N%k``)."""
    name = Path(file).name
    m = _PAPER_ID.match(name)
    if m:
        return m.group(1)
    # NonCOVID names are "N.png"/"N.jpg" or "N%k.jpg" (panel k of figure N): keep a figure's panels
    # together. "N.png" and "N%k.jpg" are not assumed related (numbered in different collections).
    stem = Path(name).stem
    figure = stem.split("%")[0] + "%" if "%" in stem else stem
    return "ucsd-" + Path(file).parent.name + "-" + figure


def load_ucsd(root: str | Path | None = None, split: str = "train") -> list[dict]:
    """UCSD-AI4H COVID-CT figures (official ``train``/``val`` lists) as grey images with class labels.

    ``meta`` keeps ``mode``, ``format`` (the real encoding: some val ``.png`` files are JPEG),
    ``ext``, ``file_size`` and ``size`` to probe source shortcuts.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = _source_root(root, "ucsd")
    out = []
    for r in _read_csv(root / f"{split}.csv"):
        path = root / r["file"]
        pil = _open(path)
        out.append(
            _record(
                image=_to_grey(pil), class_label=int(r["label"]),
                case=r["file"], id=r["file"], source="ucsd", group=ucsd_group(r["file"]),
                meta={"mode": pil.mode, "format": pil.format, "file_size": path.stat().st_size,
                      "ext": path.suffix.lower(),
                      "size": pil.size, "split": split},
            )  # fmt: skip
        )
    return out
