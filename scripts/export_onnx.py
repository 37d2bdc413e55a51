"""Export shipped models to ONNX next to their weights and record file, opset and equivalence in the card.

    python scripts/export_onnx.py [NAME ...] [--no-check]
    python scripts/export_onnx.py --int8 NAME ...     (static int8 trial; adopted only if it keeps Dice and is faster)

For each NAME (default: every model in src/covidct/weights) writes NAME.onnx from NAME.pt and sets the
card's ``onnx`` entry: file, sha256, size, opset, exporter and, unless ``--no-check`` or the training data
is absent, ``equivalence`` (covidct.train.onnx_equivalence: ONNX Runtime vs torch on the validation split).
``scripts/ship_model.py`` does the same (covidct.train.onnx_equivalence.ship_onnx) for every model it ships.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "covidct" / "weights"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--no-check", action="store_true", help="skip the equivalence check on validation data")
    ap.add_argument("--int8", action="store_true", help="quantise the already exported NAME.onnx (covidct.train.onnx_quantise)")
    args = ap.parse_args()
    if args.int8:
        from covidct.train.onnx_quantise import ship_int8

        for name in args.names:
            e = ship_int8(name, WEIGHTS)
            print(f"{name}: int8 adopted={e['adopted']} Dice change {e['validation']['dice_change_vs_fp32']} "
                  f"s/batch {e['seconds_per_batch_of_8']['median']}")
        return 0
    from covidct.train.onnx_equivalence import ship_onnx

    names = args.names or sorted(p.name[: -len(".card.json")] for p in WEIGHTS.glob("*.card.json"))
    for name in names:
        if not (WEIGHTS / f"{name}.card.json").is_file():
            print(f"error: no shipped model {name!r} in {WEIGHTS}", file=sys.stderr)
            return 2
        entry = ship_onnx(name, WEIGHTS, check=not args.no_check)
        eq = entry.get("equivalence") or {}
        agree = {k: v for k, v in eq.items() if k.startswith("label_agreement")}
        print(f"{name}: {entry['file']} opset {entry['opset']} sha256 {entry['sha256'][:12]}… {agree}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
