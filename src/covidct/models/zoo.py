"""The models shipped inside the package (trained by ``covidct train``), each with a model card.

A shipped model is ``covidct/weights/<name>.pt`` plus ``<name>.card.json``; the card's sha256 is
checked when the model is loaded. A model may also ship ``<name>.ts``, its network traced with TorchScript
(``scripts/ship_model.py --torchscript``): ``load(name, scripted=True)`` uses it, which needs neither MONAI's
import (~1-2 s of a one-shot command's start) nor rebuilding the network. Nothing is ever downloaded. ``--model`` options accept either a
shipped name or a path to a checkpoint (``.pt``) or a run folder (its ``best.pt``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from covidct.errors import ModelError
from covidct.interrupts import stop_signals_held

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def shipped_models() -> dict[str, dict]:
    """{name: card} for every model shipped in the package."""
    out = {}
    for card in sorted(WEIGHTS_DIR.glob("*.card.json")):
        name = card.name[: -len(".card.json")]
        try:
            out[name] = json.loads(card.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"model card {card} is unreadable: {exc}") from exc
    return out


def resolve_model_path(name_or_path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, card file or None) for a shipped name, a .pt file or a run folder."""
    p = Path(name_or_path)
    shipped = WEIGHTS_DIR / f"{name_or_path}.pt"
    if not p.suffix and not p.exists() and shipped.exists():
        return shipped, WEIGHTS_DIR / f"{name_or_path}.card.json"
    if p.is_dir():
        for cand in ("best.pt", "model.pt", "last.pt"):
            if (p / cand).exists():
                return p / cand, (p / "card.json") if (p / "card.json").exists() else None
        variants = sorted(q.parent.name for q in p.glob("*/best.pt"))  # a grid run: one folder per variant
        hint = f"; its grid variants: {', '.join(variants[:6])}{' ...' if len(variants) > 6 else ''}" if variants else ""
        raise ModelError(f"no checkpoint (best.pt) in run folder {p}{hint}")
    if p.is_file():
        card = p.with_name(p.name[: -len(p.suffix)] + ".card.json")
        return p, card if card.exists() else None
    known = ", ".join(shipped_models()) or "none"
    raise ModelError(f"unknown model {str(name_or_path)!r} (shipped models: {known}; or give a .pt file / run folder)")


def has_model(name_or_path: str | Path) -> bool:
    try:
        resolve_model_path(name_or_path)
        return True
    except ModelError:
        return False


@lru_cache(maxsize=8)
def _load_cached(weights: str, card: str | None, scripted: bool):
    from covidct.models.checkpoint import load_model, read_checkpoint, sha256_file, verify_card

    if card is not None:
        ts = verify_card(weights, card).get("torchscript")  # verify_card returns the card it read
        if scripted and ts:
            import torch

            ts_path = Path(weights).with_name(ts["file"])
            if not ts_path.is_file() or sha256_file(ts_path) != ts["sha256"]:
                raise ModelError(f"{ts_path} is missing or does not match its model card (sha256)")
            info = {k: v for k, v in read_checkpoint(weights).items() if k != "state_dict"}
            info["path"] = str(weights)
            return torch.jit.load(str(ts_path), map_location="cpu").eval(), info
    return load_model(weights)


def load(name_or_path: str | Path, *, scripted: bool = False):
    """(model in eval mode, info) for a shipped name or a checkpoint path; cached per process.

    ``scripted=True`` returns the shipped TorchScript network when the model has one (fixed input size:
    ``info["input_size"]``), otherwise the usual ``nn.Module``.
    """
    weights, card = resolve_model_path(name_or_path)
    with stop_signals_held():  # torch/MONAI imports and model building: unsafe to interrupt (see covidct.interrupts)
        model, info = _load_cached(str(weights), None if card is None else str(card), bool(scripted))
    info = dict(info)
    info.setdefault("name", Path(weights).stem)
    info["spatial_dims"] = int((info.get("extra") or {}).get("spatial_dims", 2))  # 3: sliding-window volume model
    if card is not None:
        c = json.loads(Path(card).read_text())
        info["card"] = c
        info["version"] = c.get("version", info.get("version"))
        info["sha256"] = c.get("sha256")
    return model, info
