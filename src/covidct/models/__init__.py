"""Everything needed to run a shipped model: networks (registry), checkpoints and model cards, the shipped
models (zoo), the runtime that runs them (ONNX Runtime, or torch as the fallback), slice and volume inference,
and the task tables shared with training and evaluation.

The names below are imported lazily: ``covidct.models.zoo``, ``runtime`` and ``onnx_runtime`` must not pull
in torch (the inference commands run without it).
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "build_model": "covidct.models.registry",
    "list_models": "covidct.models.registry",
    "load_model": "covidct.models.checkpoint",
    "save_checkpoint": "covidct.models.checkpoint",
    "write_card": "covidct.models.checkpoint",
    "verify_card": "covidct.models.checkpoint",
}

__all__ = ["build_model", "list_models", "load_model", "save_checkpoint", "write_card", "verify_card"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'covidct.models' has no attribute {name!r}")
