"""Load stage: the input read into a :class:`~covidct.volume.CT` (timed), and the kind of analysis it gets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from covidct.errors import UnsupportedInput
from covidct.pipeline.types import Study
from covidct.volume import CT


def load_input(source: str | Path | CT) -> CT:
    """The CT of ``source`` (a path, or a CT loaded by the caller, who may have timed it), with its load
    time in ``meta["_load_seconds"]`` (the report's load time)."""
    if isinstance(source, CT):
        return source
    from covidct.io import load_ct

    t0 = time.perf_counter()
    ct = load_ct(source)
    ct.meta["_load_seconds"] = time.perf_counter() - t0
    return ct


def study_of(ct: CT, model_warnings: Sequence[str] = ()) -> Study:
    """A single image gets a slice analysis, a series of 3 or more slices a volume analysis; anything
    else is refused. The warnings start with the input's and the models' own."""
    if ct.n_slices == 1 and not ct.is_hu and ct.kind == "image":
        mode = "slice"
    elif ct.n_slices < 3:
        raise UnsupportedInput(f"{ct.n_slices} slice(s) is too few for a volume analysis; give a series or a single image")
    else:
        mode = "volume"
    warnings = list(ct.warnings) + list(model_warnings)
    if mode == "volume" and not ct.is_hu:
        warnings.append("input intensities are not HU (display-range volume): HU checks skipped, volumes less reliable")
    return Study(ct=ct, mode=mode, warnings=warnings)
