"""``analyze``: one call from a chest CT to lung and lesion masks, severity, diagnosis and reports.

A package of stages, in the order the data flows (docs/architecture.md):

- :mod:`~covidct.pipeline.load`: the input as a CT, and whether it gets a volume or a slice analysis;
- :mod:`~covidct.pipeline.lungs`: the lung model, cleaning, the left/right split;
- :mod:`~covidct.pipeline.lesions`: the lesion and infection models, typing, HU checks, effusion;
- :mod:`~covidct.pipeline.measures`: volumes, involvement per lung and zone, severity score;
- :mod:`~covidct.pipeline.diagnosis`: COVID-19 / other pneumonia / normal from the lesion pattern
  (RSNA category, CO-RADS; :mod:`covidct.pattern`);
- :mod:`~covidct.pipeline.reporting` and :mod:`~covidct.pipeline.outputs`: the report, and the NIfTI,
  DICOM SEG, JSON, HTML and PNG files, written atomically.

:mod:`~covidct.pipeline.analyzer` orchestrates them; the working grid (:mod:`~covidct.pipeline.grid`),
the model runner (:mod:`~covidct.pipeline.predict`) and millimetre morphology
(:mod:`~covidct.pipeline.morphology`) serve the stages; :mod:`~covidct.pipeline.types` holds the values
passed between them.
"""

from __future__ import annotations

from covidct.pipeline.analyzer import Analyzer, analyze, shared_analyzer
from covidct.pipeline.diagnosis import (
    FALSE_INVOLVEMENT_PCT,
    diagnose,
    diagnose_from_findings,
    low_involvement_warnings,
)
from covidct.pipeline.grid import WORKING_SIZE, upsample_labels, working_grid
from covidct.pipeline.lungs import clean_lung_mask, remove_air_pockets, split_left_right
from covidct.pipeline.measures import measure, pan_lobe_score
from covidct.pipeline.outputs import SegWriter, remove_staging_folders, write_outputs
from covidct.pipeline.reporting import build_report
from covidct.pipeline.types import Analysis, LoadedModel, Masks, Study

__all__ = [
    "Analysis", "Analyzer", "FALSE_INVOLVEMENT_PCT", "LoadedModel", "Masks", "SegWriter", "Study", "WORKING_SIZE",
    "analyze", "build_report", "clean_lung_mask", "diagnose", "diagnose_from_findings", "low_involvement_warnings", "measure",
    "pan_lobe_score", "remove_air_pockets", "remove_staging_folders", "shared_analyzer", "split_left_right",
    "upsample_labels", "working_grid", "write_outputs",
]
