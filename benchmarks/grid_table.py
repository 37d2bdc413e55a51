"""A Markdown table of a grid run (the seed papers' experiment tables): one row per variant.

Reads ``<parent>/<variant>/metrics.json`` as written by ``covidct train CONFIG`` for a config with a grid
(test figures are on the run's own held-out test cases; the variant to report is chosen on validation):
training time, epochs, best validation Dice, test global accuracy (mean ± std over test images, seed 004's
tables 3-4) and test Dice per class (mean ± std over images). Marks the best variant of each model (and task) on
validation Dice, and gives that variant's per-class sensitivity, specificity, Dice, G-mean and F2 on the test
images (seed 004's tables 5-6).

    python benchmarks/grid_table.py runs/seed004_binary [runs/seed004_multiclass ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def rows(parent: Path) -> list[dict]:
    out = []
    for m in sorted(parent.glob("*/metrics.json")):
        d = json.loads(m.read_text())
        test = d.get("test") or {}
        out.append({"variant": m.parent.name, "model": d.get("model"), "task": d.get("task"), "epochs": d.get("epochs_run"),
                    "best_epoch": d.get("best_epoch"), "minutes": (d.get("train_time_s") or 0) / 60,
                    "val": d.get("best_val_dice"), "acc": test.get("global_accuracy") or {},
                    "dice": test.get("dice_per_class") or {}, "n_test": test.get("n_images"),
                    "stopped": d.get("stopped")})
    return out


def fmt(ms: dict | None) -> str:
    if not ms or ms.get("mean") is None:
        return "–"
    return f"{ms['mean']:.3f} ± {ms.get('std', 0.0):.3f}"


def table(parent: Path) -> str:
    rs = rows(parent)
    if not rs:
        return f"{parent}: no finished variants (no */metrics.json)\n"
    classes = [c for c in rs[0]["dice"] if c not in ("background", "none")]
    best = {}
    for r in rs:
        key = (r["model"], r["task"])  # a grid may vary the task too (seed 002: lungs and infection)
        if r["val"] is not None and (key not in best or r["val"] > best[key]["val"]):
            best[key] = r
    lines = [f"`{parent}` ({rs[0]['n_test']} test images)\n",
             "| variant | epochs (best) | min | val Dice | test global accuracy | "
             + " | ".join(f"test Dice {c}" for c in classes) + " |",
             "|---|---|---|---|---|" + "---|" * len(classes)]
    for r in rs:
        mark = "**" if best.get((r["model"], r["task"])) is r else ""
        lines.append(f"| {mark}{r['variant']}{mark} | {r['epochs']} ({r['best_epoch']}) | {r['minutes']:.1f} | "
                     f"{r['val'] if r['val'] is None else format(r['val'], '.3f')} | {fmt(r['acc'])} | "
                     + " | ".join(fmt(r["dice"].get(c)) for c in classes) + " |")
    return "\n".join(lines) + "\n" + repeats_table(rs, classes) + class_table(parent, best)


def repeats_table(rs: list[dict], classes: list[str]) -> str:
    """Variants that differ only in their ``_seed-N`` suffix are repeats of one setting (seed 004 trains each
    setting three times): the mean ± std over the repeats of their test means."""
    groups: dict[str, list[dict]] = {}
    for r in rs:
        base, sep, seed = r["variant"].rpartition("_seed-")
        if sep and seed.isdigit():
            groups.setdefault(base, []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return ""

    def ms(vals: list) -> str:
        v = np.array([x for x in vals if x is not None], float)
        return "–" if v.size == 0 else f"{v.mean():.3f} ± {v.std():.3f}"

    lines = ["", "Repeats of one setting (mean ± std over the runs of each run's test mean):\n",
             "| setting | runs | val Dice | test global accuracy | " + " | ".join(f"test Dice {c}" for c in classes) + " |",
             "|---|---|---|---|" + "---|" * len(classes)]
    for base, g in groups.items():
        lines.append(f"| {base} | {len(g)} | {ms([r['val'] for r in g])} | {ms([r['acc'].get('mean') for r in g])} | "
                     + " | ".join(ms([(r["dice"].get(c) or {}).get("mean") for r in g]) for c in classes) + " |")
    return "\n".join(lines) + "\n"


CLASS_METRICS = ("sensitivity", "specificity", "dice", "gmean", "f2")


def class_table(parent: Path, best: dict[tuple, dict]) -> str:
    """Seed 004's tables 5-6: the validation-chosen variant of each model, per class, on its test images."""
    lines = ["", f"Class level, the variant of each model chosen on validation (`{parent.name}`, test images, mean ± std):\n",
             "| model | variant | class | " + " | ".join(CLASS_METRICS) + " |",
             "|---|---|---|" + "---|" * len(CLASS_METRICS)]
    for (model, _task), r in sorted(best.items(), key=lambda kv: tuple(map(str, kv[0]))):
        m = parent / r["variant"] / "test" / "metrics.json"
        if not m.is_file():
            continue
        per_class = json.loads(m.read_text())["per_class"]
        for c, vals in per_class.items():
            if c in ("background", "none"):
                continue
            lines.append(f"| {model} | {r['variant']} | {c} | " + " | ".join(fmt(vals.get(k)) for k in CLASS_METRICS) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 64
    for a in argv:
        p = Path(a)
        if not p.is_dir():
            print(f"grid_table: {p}: not a folder; skipping")
            continue
        print(table(p))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
