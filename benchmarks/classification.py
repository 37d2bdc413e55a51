"""Real-data check of the classifiers; prints Markdown tables (paste into docs/BENCHMARKS.md).

    python benchmarks/classification.py --covid MODEL [--infection MODEL] [--out DIR]

MODEL: a shipped name, a checkpoint or a run folder. Sections:

1. UCSD COVID-CT val (the official val list; the official test split is not available here, and val
   also chose the epoch and the threshold, so these are tuning-set numbers) at the stored threshold.
2. Source-shortcut check (data README): every val image converted to grey, re-encoded the same way
   (JPEG quality 90, one format) and scored again; plus metrics per original encoding (format/mode).
   A model that reads file encoding instead of lungs loses AUC under re-encoding.
3. COVID-CT-MD P001 (real HU series, held out from all training): slice-infection model on the
   radiologists' slice labels (AUC, precision/recall at the stored threshold); the COVID model's slice
   calls; the patient-level result of ``classify_volume`` (P001 is a COVID-19 patient).
4. Speed: seconds per image and per volume on this CPU.

Exits 0 with a message when the data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _reencode(img: np.ndarray, quality: int = 90) -> np.ndarray:
    import cv2

    u8 = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32)


def _row(name: str, res: dict) -> str:
    pos = res["per_class"][res["classes"][-1]]
    f = lambda x: "n/a" if x is None or x != x else f"{x:.3f}"  # noqa: E731
    return (f"| {name} | {res['n']} | {f(res['accuracy'])} | {f(pos['precision'])} | {f(pos['recall'])} | "
            f"{f(pos['f1'])} | {f(pos['specificity'])} | {f(pos['auc'])} | {f(res['macro']['f1'])} |")


HEADER = ("| set | n | accuracy | precision | recall | F1 | specificity | ROC AUC | macro F1 |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--covid", default="covid-vs-noncovid", help="covid-vs-noncovid model")
    ap.add_argument("--infection", default=None, help="slice-infection model (optional)")
    ap.add_argument("--out", default="/tmp/covidct_classification_bench", help="report folder")
    args = ap.parse_args(argv)

    from covidct.data import data_root, load_source

    root = data_root()
    if root is None or not (Path(root) / "ucsd-covidct").is_dir():
        print("classification benchmark: data folder not found (set COVIDCT_DATA or /work/shared/data); skipped")
        return 0
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    from covidct.classify import classify_volume, load_classifier, predict_proba
    from covidct.evaluate.classification import classification_metrics, evaluate_classifier

    out = Path(args.out)
    net, info = load_classifier(args.covid)
    print(f"## Classification benchmark\n\nmodel `{info['label']}` ({info['model']['name']}, "
          f"threshold {info['thresholds'].get('positive')}, {info['thresholds'].get('method')})\n")
    val = load_source("ucsd", split="val")
    t0 = time.perf_counter()
    res = evaluate_classifier(None, val, out / "ucsd_val", model=net, info=info)
    per_image = (time.perf_counter() - t0) / max(len(val), 1)
    t = res["threshold"]
    grey = [{**r, "image": _reencode(r["image"])} for r in val]
    res_re = evaluate_classifier(None, grey, out / "ucsd_val_reencoded", model=net, info=info)
    print("### UCSD COVID-CT val (official list; tuning set, no official test split here)\n")
    print(HEADER)
    print(_row("UCSD val, as stored", res))
    print(_row("UCSD val, grey + JPEG q90 re-encoded", res_re))
    y, prob = res["labels"], res["probabilities"]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(val):
        groups.setdefault(f"{r['meta']['format']}/{r['meta']['mode']}", []).append(i)
    print("\nPer original encoding (shortcut probe: format/mode predicts the label in train.csv)\n")
    print("| encoding | n | COVID share | accuracy | mean p(covid19) | accuracy after re-encoding |\n|---|---|---|---|---|---|")
    for g, idx in sorted(groups.items()):
        idx = np.array(idx)
        acc = float(((prob[idx, 1] >= t).astype(int) == y[idx]).mean())
        acc_re = float(((res_re["probabilities"][idx, 1] >= t).astype(int) == y[idx]).mean())
        print(f"| {g} | {idx.size} | {y[idx].mean():.2f} | {acc:.3f} | {prob[idx, 1].mean():.3f} | {acc_re:.3f} |")
    print(f"\nSpeed: {per_image * 1000:.0f} ms per image (batched, incl. normalisation) on this CPU.\n")

    if (Path(root) / "covid-ct-md" / "P001").is_dir():
        from covidct.data import load_covid_ct_md_volume
        from covidct.volume import CT, affine_from_spacing

        p001 = load_source("covid-ct-md")
        print("### COVID-CT-MD P001 (real HU, held out; slice labels by radiologists)\n")
        print(HEADER)
        if args.infection:
            net_i, info_i = load_classifier(args.infection)
            r_i = evaluate_classifier(None, p001, out / "p001_slice_infection", model=net_i, info=info_i)
            print(_row(f"P001 slices, `{info_i['label']}` (t={r_i['threshold']:.3f})", r_i))
        pc = predict_proba(net, info, [r["image"] for r in p001], True)
        ys = np.array([r["slice_label"] for r in p001])
        print(_row(f"P001 slices, `{info['label']}` as infection detector",
                   classification_metrics(ys, pc, ["negative", "infection"], t)))
        vol, _ = load_covid_ct_md_volume()
        ct = CT(array=vol, spacing=(2.0, 0.7, 0.7), affine=affine_from_spacing((2.0, 0.7, 0.7)), is_hu=True,
                kind="array")
        print("\nPatient level (P001 is COVID-19):\n\n| models | label | probabilities | seconds |\n|---|---|---|---|")
        runs = [("covid model only", dict(model=args.covid))]
        if args.infection:
            runs.append(("slice-infection + covid (default rule)",
                         dict(infection_model=args.infection, covid_model=args.covid)))
        for name, kw in runs:
            t0 = time.perf_counter()
            r = classify_volume(ct, **kw)
            dt = time.perf_counter() - t0
            probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            print(f"| {name} | {r['label']} | {probs} | {dt:.1f} |")
    print(f"\nReports and ROC figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
