"""RSNA / CO-RADS pattern of the lung lesions and the diagnosis read from it.

``measure_pattern`` (features.py) measures where and what the lesions are; ``classify_pattern``
(category.py) gives the RSNA category, the CO-RADS score, the reasons and the three-class
probabilities; ``analyse_pattern`` does both. Depends only on numpy/scipy, covidct.labels and covidct.volume's
conventions (no models, no training code).
"""

from __future__ import annotations

import numpy as np

from covidct.pattern.category import (
    OPACITY_PERCENT,
    OPACITY_PERCENT_HU_RULE,
    RSNA_CATEGORIES,
    PatternResult,
    classify_pattern,
)
from covidct.pattern.features import FEATURE_DOCS, OPENING_RADIUS_MM, measure_pattern
from covidct.volume import DEPENDENT_NAMES, SUPINE

__all__ = ["FEATURE_DOCS", "OPACITY_PERCENT", "OPACITY_PERCENT_HU_RULE", "OPENING_RADIUS_MM", "RSNA_CATEGORIES", "PatternResult", "analyse_pattern", "classify_pattern",
           "measure_pattern"]


def analyse_pattern(lungs: np.ndarray, lesions: np.ndarray, spacing: tuple[float, float, float],
                    hu: np.ndarray | None = None, opening_mm: float = OPENING_RADIUS_MM,
                    abnormal_percent: float = OPACITY_PERCENT, dependent: tuple[int, int] = SUPINE) -> PatternResult:
    """Features, RSNA category, CO-RADS and diagnosis of one volume (canonical orientation, HU or None);
    ``opening_mm``, ``dependent``: see :func:`measure_pattern`; ``abnormal_percent``: see :func:`rsna_category`."""
    return classify_pattern(measure_pattern(lungs, lesions, spacing, hu, opening_mm, dependent), abnormal_percent,
                            DEPENDENT_NAMES[dependent])
