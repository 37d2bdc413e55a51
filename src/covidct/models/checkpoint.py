"""The covidct checkpoint (one ``.pt``) and its model card (``card.json``).

A checkpoint is a plain dict loadable with ``torch.load(weights_only=True)`` (no pickled code)::

    {"format": "covidct-checkpoint", "format_version": 1,
     "model": {"name": "unet", "kwargs": {...}, "in_channels": 1, "out_channels": 2},
     "state_dict": {...},            # optionally stored as float16 (restored to float32 on load)
     "task": "lungs", "classes": ["background", "lung"], "input_size": [256, 256],
     "normalisation": NormalisationConfig.as_dict(), "thresholds": {...}, "config": {...},
     "metrics": {...}, "extra": {...}}

:func:`load_model` rebuilds the network from the stored name + kwargs, so no config file is needed.
The card records provenance and the sha256 of the weights file; :func:`verify_card` checks it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from covidct.errors import ModelError
from covidct.models.onnx_runtime import sha256_file  # noqa: F401 - one implementation, also imported from here

FORMAT = "covidct-checkpoint"
FORMAT_VERSION = 1


def _plain(obj):
    """Make config/metrics values loadable by ``torch.load(weights_only=True)`` (JSON-like types)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return obj.item()
    return obj


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    name: str,
    kwargs: dict,
    in_channels: int,
    out_channels: int,
    task: str,
    classes: list[str],
    input_size: tuple[int, int] | list[int],
    normalisation: dict,
    thresholds: dict | None = None,
    config: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    fp16: bool = False,
) -> Path:
    """Write the model and everything needed to use it to one ``.pt`` (atomically)."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.half() if fp16 and v.is_floating_point() else v.clone()
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": name, "kwargs": _plain(kwargs), "in_channels": int(in_channels),
                  "out_channels": int(out_channels)},
        "state_dict": sd,
        "task": task,
        "classes": list(classes),
        "input_size": [int(s) for s in input_size],
        "normalisation": _plain(normalisation),
        "thresholds": _plain(thresholds or {}),
        "config": _plain(config or {}),
        "metrics": _plain(metrics or {}),
        "extra": _plain(extra or {}),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomic(ckpt, path)


def save_atomic(obj, path: str | Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename: an interrupt never leaves a truncated file."""
    from covidct.io.writers import atomic_write

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_checkpoint(path: str | Path) -> dict:
    """Load the raw checkpoint dict (weights-only unpickling); ModelError if missing or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt/truncated file or not a torch file at all
        raise ModelError(f"cannot read model file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{path} is not a covidct checkpoint")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network stored in ``path``; returns (model in eval mode, info dict without weights)."""
    from covidct.models.registry import build_model

    ckpt = read_checkpoint(path)
    m = ckpt["model"]
    model = build_model(m["name"], m["in_channels"], m["out_channels"], **m["kwargs"])
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not match model {m['name']}: {str(e).splitlines()[0]}") from e
    model.to(device).eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info["path"] = str(path)
    return model, info


def export_torchscript(weights: str | Path, out: str | Path) -> dict:
    """Trace the network of checkpoint ``weights`` at its input size into ``out`` (TorchScript).

    Returns the model-card entry ``{"file", "sha256", "input_shape"}``; :func:`covidct.models.zoo.load`
    with ``scripted=True`` loads it without rebuilding the network (no MONAI import).
    """
    net, info = load_model(weights)
    size = info.get("input_size")
    if not size:
        raise ModelError(f"{weights}: no input_size in the checkpoint; only fixed-size 2-D models can be traced")
    shape = [1, int(info["model"]["in_channels"]), *[int(s) for s in size]]
    out = Path(out)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(shape))
    torch.jit.save(traced, str(out))
    return {"file": out.name, "sha256": sha256_file(out), "input_shape": shape}


# --- model cards ----------------------------------------------------------------------------------


def write_card(
    card_path: str | Path,
    weights_path: str | Path,
    *,
    name: str,
    version: str,
    task: str,
    classes: list[str],
    data: dict | list | None = None,
    split: dict | None = None,
    config: dict | None = None,
    training_time_s: float | None = None,
    metrics: dict | None = None,
    command: str | None = None,
    notes: str | None = None,
) -> dict:
    """Write ``card.json`` describing the weights file (sha256, data, split case ids, config, metrics)."""
    weights_path = Path(weights_path)
    card = {
        "name": name,
        "version": version,
        "task": task,
        "classes": list(classes),
        "weights": weights_path.name,
        "sha256": sha256_file(weights_path),
        "size_bytes": weights_path.stat().st_size,
        "data": _plain(data or {}),
        "split": _plain(split or {}),
        "config": _plain(config or {}),
        "training_time_s": training_time_s,
        "metrics": _plain(metrics or {}),
        "command": command,
        "notes": notes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(card_path).write_text(json.dumps(card, indent=2) + "\n")
    return card


def verify_card(weights_path: str | Path, card_path: str | Path) -> dict:
    """Check that ``weights_path`` is the file described by ``card_path``; ModelError otherwise."""
    weights_path, card_path = Path(weights_path), Path(card_path)
    if not weights_path.is_file():
        raise ModelError(f"model file not found: {weights_path}")
    try:
        card = json.loads(Path(card_path).read_text())
    except FileNotFoundError as e:
        raise ModelError(f"model card not found: {card_path}") from e
    except json.JSONDecodeError as e:
        raise ModelError(f"model card {card_path} is not valid JSON: {e}") from e
    expected = card.get("sha256")
    actual = sha256_file(weights_path)
    if expected != actual:
        raise ModelError(
            f"{weights_path.name} does not match its card {card_path.name}: sha256 {actual[:12]}… != {str(expected)[:12]}…"
        )
    return card
