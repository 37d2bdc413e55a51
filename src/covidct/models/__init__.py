"""Everything needed to run a shipped model: networks (registry), checkpoints and model cards, the shipped
models (zoo), slice and volume inference, and the task tables shared with training and evaluation."""

from __future__ import annotations

from covidct.models.checkpoint import load_model, save_checkpoint, verify_card, write_card
from covidct.models.registry import build_model, list_models

__all__ = ["build_model", "list_models", "load_model", "save_checkpoint", "write_card", "verify_card"]
