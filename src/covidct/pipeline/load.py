"""Load stage: the input read into a :class:`~covidct.volume.CT` (timed), and the kind of analysis it gets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from covidct.errors import UnsupportedInput
from covidct.io.nifti import NOT_HU
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
    note = None
    if mode == "volume" and not ct.is_hu:
        ct, note = display_to_hu(ct, stop_unless_mapped=True)
    warnings = list(ct.warnings) + list(model_warnings) + ([note] if note else [])
    return Study(ct=ct, mode=mode, warnings=warnings)


DISPLAY_TO_HU_ENV = "COVIDCT_DISPLAY_TO_HU"  # "0": analyse display-range volumes as they are (no mapping to HU)


def display_to_hu(ct: CT, lung_density_needed: bool = True, stop_unless_mapped: bool = False) -> tuple[CT, str]:
    """A whole display-range volume mapped back to approximate HU where its window can be found
    (:mod:`covidct.display_hu`; the estimate in ``meta["display_window"]``; not where ``COVIDCT_DISPLAY_TO_HU=0``),
    else ``ct`` itself; and the warning. UnsupportedInput where a refused window clips the lungs to its minimum and
    ``lung_density_needed`` (lesions; a lung outline alone can still be found there), and with ``stop_unless_mapped``
    wherever the window is refused (``analyze``: read as display values, healthy whole volumes read as disease)."""
    import os

    from covidct.display_hu import CLIPPED_LUNG_SHARE, clipped_lung_share, estimate_window, to_hu

    mapping = os.environ.get(DISPLAY_TO_HU_ENV, "1") != "0"
    window = estimate_window(ct.array) if mapping else f"{DISPLAY_TO_HU_ENV}=0"
    if isinstance(window, str):
        share = clipped_lung_share(ct.array, ct.spacing) if mapping and lung_density_needed else 0.0
        if share >= CLIPPED_LUNG_SHARE:  # nothing of the lung's density is left to read: a reading would be unfounded
            raise UnsupportedInput(
                f"the display window clips the lungs to its minimum value ({share:.0%} of the body; a mediastinal or "
                "soft-tissue window): lung density cannot be read; give the series in HU or in a lung window")
        if mapping and stop_unless_mapped:  # measured: every healthy whole volume read as display values read as disease
            raise UnsupportedInput(
                f"the volume is in display intensities, not HU, and its window could not be undone: {window}; covidct "
                "reads whole volumes in HU (as display values healthy lungs read as disease): give the series in HU "
                "or in a lung window that shows fat or soft tissue")
        return ct, ("input intensities are not HU (a display-range or offset volume) and could not be mapped to HU: "
                    f"{window}; HU checks skipped, volumes less reliable")
    hu = ct.with_array(to_hu(ct.array, window), is_hu=True)
    hu.meta["display_window"] = window.as_dict()
    hu.warnings = [w for w in hu.warnings if not w.endswith(NOT_HU)]  # the loader's "treated as non-HU" no longer holds
    anchor = "soft tissue (+40 HU)" if window.fat_value is None else "fat (-100 HU)"
    return hu, ("input intensities are not HU (a display-range or offset volume): mapped to approximate HU from its "
                f"outside air (-1000 HU) and {anchor}, values {window.lo_hu:.0f}..{window.hi_hu:.0f} HU; "
                "HU figures are approximate")
