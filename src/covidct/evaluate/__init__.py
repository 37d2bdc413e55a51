"""Segmentation metrics and evaluation reports."""

from __future__ import annotations

from covidct.evaluate.metrics import dice_over_thresholds, segmentation_metrics
from covidct.evaluate.report import evaluate

__all__ = ["evaluate", "segmentation_metrics", "dice_over_thresholds"]
