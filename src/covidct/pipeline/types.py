"""The typed values that flow between the analysis stages (see :mod:`covidct.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from covidct.volume import CT

Mode = Literal["volume", "slice"]


@dataclass
class LoadedModel:
    """A shipped model (or checkpoint) loaded once: the network and its stored settings (``info``)."""

    net: Any
    info: dict

    @property
    def is_3d(self) -> bool:
        return self.info.get("spatial_dims") == 3


@dataclass
class Study:
    """Output of the load stage: the CT, what kind of analysis it gets, and the warnings so far."""

    ct: CT
    mode: Mode
    warnings: list[str]


@dataclass
class Masks:
    """Output of the lesion stage: final lung (0/1 left/2 right) and lesion (0/1 GGO/2 consolidation/
    3 effusion) labels on the input's own grid."""

    lungs: np.ndarray
    lesions: np.ndarray
    # the models' lesion probability (uint8, p x 255) on the input's grid, None when no lesion model ran; and the
    # uncertainty figures (report ``uncertainty`` and one dict per slice), see covidct.report.heatmap
    lesion_probability: np.ndarray | None = None
    uncertainty: dict | None = None
    slice_uncertainty: list[dict] | None = None
    hu_rule: dict | None = None  # the HU rule's notes on a whole HU volume (covidct.pipeline.hu_rules.hu_lesions)
    box: tuple[slice, slice] | None = None  # the in-plane box the networks saw (covidct.pipeline.grid.lung_field_box)


@dataclass
class Analysis:
    """What :func:`covidct.pipeline.analyze` returns: the input, its masks (on the input's canonical grid) and the report."""

    ct: CT
    lungs: np.ndarray
    lesions: np.ndarray
    report: dict
    lesion_probability: np.ndarray | None = None  # uint8 p x 255 on the input's grid (heatmaps), or None
    slice_uncertainty: list[dict] | None = None  # report slices[]' uncertainty figures
    outdir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
