"""Ship a model trained by ``covidct train`` inside the package, with its model card.

    python scripts/ship_model.py RUN_DIR NAME --version 1 [--metrics extra.json] [--notes "..."] [--torchscript]
        [--no-onnx] [--no-onnx-check]

Copies RUN_DIR/best.pt to src/covidct/weights/NAME.pt and writes NAME.card.json: the run's card
(data, split case ids, config, training time, validation/test metrics, reproduce command) with the
name, version, sha256 of the shipped file, and any extra measured metrics (e.g. benchmark figures)
merged under ``metrics.benchmarks``. ``--torchscript`` also writes NAME.ts, the network traced at its input
size, which loads without MONAI. Every shipped 2-D model is also exported to NAME.onnx (what the inference
commands run, with ONNX Runtime), its sha256/opset and an equivalence check against the torch model on the
validation split recorded in the card (``onnx``; covidct.train.onnx_equivalence.ship_onnx). Only weights trained
by covidct's own training command belong here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "covidct" / "weights"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--version", required=True)
    ap.add_argument("--metrics", type=Path, help="JSON of extra measured metrics to record in the card")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--torchscript", action="store_true", help="also ship NAME.ts (traced at the model's input size)")
    ap.add_argument("--no-onnx", action="store_true", help="do not export NAME.onnx (a 3-D model, for example)")
    ap.add_argument("--no-onnx-check", action="store_true", help="export NAME.onnx without the validation check")
    args = ap.parse_args()
    best, card_path = args.run_dir / "best.pt", args.run_dir / "card.json"
    if not best.exists() or not card_path.exists():
        print(f"error: {args.run_dir} has no best.pt/card.json (not a covidct run folder?)", file=sys.stderr)
        return 2
    card = json.loads(card_path.read_text())
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    target = WEIGHTS / f"{args.name}.pt"
    shutil.copyfile(best, target)
    card["name"] = args.name
    card["version"] = str(args.version)
    card["weights"] = target.name
    card["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    card["size_bytes"] = target.stat().st_size
    card["shipped"] = datetime.now(UTC).isoformat(timespec="seconds")
    card["run_dir"] = str(args.run_dir)
    if args.metrics:
        card.setdefault("metrics", {})
        if isinstance(card["metrics"], str):
            card["metrics"] = {"run": card["metrics"]}
        card["metrics"]["benchmarks"] = json.loads(args.metrics.read_text())
    if args.notes:
        card["notes"] = args.notes
    card.pop("torchscript", None)
    if args.torchscript:
        from covidct.models.checkpoint import export_torchscript

        card["torchscript"] = export_torchscript(target, WEIGHTS / f"{args.name}.ts")
    else:
        (WEIGHTS / f"{args.name}.ts").unlink(missing_ok=True)
    (WEIGHTS / f"{args.name}.card.json").write_text(json.dumps(card, indent=1, default=str) + "\n")
    (WEIGHTS / f"{args.name}.onnx").unlink(missing_ok=True)  # never leave an ONNX file of older weights
    if not args.no_onnx:
        from covidct.train.onnx_equivalence import ship_onnx

        entry = ship_onnx(args.name, WEIGHTS, check=not args.no_onnx_check)
        print(f"exported {entry['file']} (opset {entry['opset']}, sha256 {entry['sha256'][:12]}…)")
    print(f"shipped {target} ({card['size_bytes'] / 1e6:.1f} MB, sha256 {card['sha256'][:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
