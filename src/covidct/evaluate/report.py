"""Evaluate a trained segmentation model on labelled records and write the report files.

``evaluate(model, records, task, out_dir)`` writes ``metrics.md`` (tables: mean ± std over images
per class, pooled scores, global accuracy, Inf-Net's 256-threshold mean Dice for binary tasks),
``metrics.csv`` (one row per class x metric), ``per_image.csv``, ``metrics.json``, the label
accumulation heatmap ``heatmap.png`` (seed 004: sum of ground-truth vs predicted foreground masks over
the test images) and ``confusion.png`` (pixel confusion matrix, rows normalised).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from covidct.errors import ModelError
from covidct.evaluate.metrics import METRICS, dice_over_thresholds, segmentation_metrics

HEATMAP_SIZE = (256, 256)


def _model_path(p: str | Path) -> Path:
    p = Path(p)
    return p / "best.pt" if p.is_dir() else p


def _with_card(model_path_or_run_dir: str | Path, info: dict) -> dict:
    """``info`` with the model card beside the weights (a shipped model's, a run folder's), as
    :func:`covidct.models.zoo.load` gives it: the card's test-time settings (``test_time_mirror``, ``density_typing``)
    then apply as in ``covidct segment``."""
    from covidct.models import zoo

    _, card = zoo.resolve_model_path(model_path_or_run_dir)
    return info if card is None else {**info, "card": json.loads(Path(card).read_text())}


def evaluate(
    model_path_or_run_dir: str | Path,
    records: list[dict],
    task: str | None,
    out_dir: str | Path,
    batch_size: int = 8,
    with_hd95: bool = False,
    bf16: bool = False,
    threshold: float | None = None,
    model=None,
    info: dict | None = None,
    crops_model: str | Path | None = None,
) -> dict:
    """Metrics of a checkpoint (or a run dir's ``best.pt``) on ``records``; writes the report to ``out_dir``.

    ``task`` defaults to the model's task. A ``lesions`` model can be scored on ``infection`` (classes
    collapsed to lesion > 0). Records without a label for the task are skipped. Pass ``model``/``info``
    to evaluate an already loaded model. ``crops_model`` (a shipped model's card's ``crops_model``): images cut
    tight around the lungs are read by it instead, as ``covidct segment`` does (:func:`covidct.slice_view.cut_tight`
    on the shipped lung network's mask); their ids are listed under ``"read_by_crops_model"``.
    """
    from covidct.models.inference import load_model, predict_slices
    from covidct.models.runtime import labels_for_task
    from covidct.models.tasks import TASK_CLASSES, TASKS, task_label

    if model is None or info is None:
        model, info = load_model(_model_path(model_path_or_run_dir))
        info = _with_card(model_path_or_run_dir, info)
    model_task = info.get("task")
    if model_task not in TASKS:
        raise ModelError(f"evaluate: {model_path_or_run_dir} is a {model_task!r} model; evaluate scores segmentation "
                         f"models ({', '.join(TASKS)})")
    task = task or model_task
    if task not in TASKS:
        raise ModelError(f"evaluate: unknown task {task!r} (segmentation tasks: {', '.join(TASKS)})")
    collapse = model_task == "lesions" and task == "infection"
    if model_task != task and not collapse:
        raise ModelError(f"evaluate: model was trained for {model_task!r}, cannot score it on {task!r}")
    classes = TASK_CLASSES[task]
    given_threshold = threshold
    if threshold is None:
        threshold = (info.get("thresholds") or {}).get("foreground")
    kept = [(r, task_label(r, task)) for r in records]
    kept = [(r, lab) for r, lab in kept if lab is not None]
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # an unwritable OUTDIR fails before the long part
    images = [np.asarray(r["image"], np.float32) for r, _ in kept]
    is_hu = [bool(r.get("is_hu", False)) for r, _ in kept]
    tight = (_cut_tight(images, is_hu) if crops_model is not None and task != "lungs" else None) or [False] * len(kept)
    groups = [(model, info, threshold, [i for i, t in enumerate(tight) if not t])]
    if any(tight):  # the crop model with its own stored threshold, unless one was given
        from covidct.models import zoo

        groups.append((*zoo.load(crops_model), given_threshold, [i for i, t in enumerate(tight) if t]))
    probs: list = [None] * len(kept)
    preds: list = [None] * len(kept)
    for net, net_info, thr, idx in groups:
        if not idx:
            continue
        p = predict_slices(net, net_info, [images[i] for i in idx], [is_hu[i] for i in idx], batch_size=batch_size,
                           bf16=bf16)
        labels = labels_for_task(p, net_info, task, thr, images=[images[i] for i in idx], is_hu=[is_hu[i] for i in idx])
        for i, pi, li in zip(idx, p, labels, strict=True):  # ``segment``'s label rule
            probs[i], preds[i] = pi, li
    gts = [lab for _, lab in kept]
    if collapse:
        fg = [1.0 - p[0] for p in probs]
    else:
        fg = [p[1] for p in probs] if len(classes) == 2 else None
    res = segmentation_metrics(preds, gts, classes, with_hd95=with_hd95)
    res["task"] = task
    res["model"] = str(info.get("path", model_path_or_run_dir))
    res["threshold"] = threshold
    res["ids"] = [r["id"] for r, _ in kept]
    if crops_model is not None:
        res["crops_model"] = str(crops_model)
        res["read_by_crops_model"] = [r["id"] for (r, _), t in zip(kept, tight, strict=True) if t]
    if fg is not None and kept:
        thr = dice_over_thresholds(fg, [g > 0 for g in gts])
        res["dice_256_thresholds"] = {"mean_dice": thr["mean_dice"], "max_dice": thr["max_dice"],
                                      "curve": thr["curve"]}
    from covidct.io.writers import staged_outputs

    with staged_outputs(out_dir) as staging:  # no half-written report after Ctrl-C
        _write_tables(res, staging)
        if kept:
            save_heatmap(preds, gts, staging / "heatmap.png")
            save_confusion(np.asarray(res["confusion"]), classes, staging / "confusion.png")
    return res


def _cut_tight(images: list[np.ndarray], is_hu: list[bool]) -> list[bool] | None:
    """Which slices are cut tight around their lungs, decided as ``covidct segment`` decides it (the shipped lung
    network through the inference runtime); None without a shipped lung network (``segment`` then routes none)."""
    from covidct.models import runtime, zoo
    from covidct.slice_view import slice_layout

    if not zoo.has_model("lungs"):
        return None
    lungs = runtime.load("lungs")
    return [slice_layout(img, hu, lungs).cut_tight for img, hu in zip(images, is_hu, strict=True)]


def _fmt(s: dict) -> str:
    return "n/a" if s["n"] == 0 else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _write_tables(res: dict, out_dir: Path) -> None:
    classes = res["classes"]
    metrics = [m for m in METRICS if m != "f1"] + (["hd95"] if "hd95" in res["per_class"][classes[-1]] else [])
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "metric", "mean", "std", "n", "pooled"])
        for c in classes:
            for m in METRICS + (("hd95",) if "hd95" in res["per_class"][c] else ()):
                s = res["per_class"][c][m]
                w.writerow([c, m, f"{s['mean']:.6f}", f"{s['std']:.6f}", s["n"], f"{s['pooled']:.6f}"])
        g = res["global_accuracy"]
        w.writerow(["all", "global_accuracy", f"{g['mean']:.6f}", f"{g['std']:.6f}", g["n"], ""])
        if "dice_256_thresholds" in res:
            w.writerow([classes[1], "mean_dice_256_thresholds", f"{res['dice_256_thresholds']['mean_dice']:.6f}",
                        "", res["n_images"], ""])
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        if res["per_image"]:
            w = csv.DictWriter(f, fieldnames=["id", *res["per_image"][0]])
            w.writeheader()
            for i, row in zip(res["ids"], res["per_image"], strict=True):
                w.writerow({"id": i, **{k: f"{v:.6f}" for k, v in row.items()}})
    lines = [f"# Evaluation: {res['task']}", "", f"- model: `{res['model']}`", f"- images: {res['n_images']}",
             f"- threshold: {res['threshold']}", "",
             "Per-image scores, mean ± std over the images where the score is defined (n), and the pooled",
             "score of the summed confusion counts.", "",
             "| class | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(_fmt(res["per_class"][c][m]) for m in metrics) + " |")
    lines += ["", "| class | " + " | ".join(f"pooled {m}" for m in metrics if m != "hd95") + " |",
              "|---|" + "---|" * len([m for m in metrics if m != "hd95"])]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(f"{res['per_class'][c][m]['pooled']:.3f}" for m in metrics
                                             if m != "hd95") + " |")
    lines += ["", f"Global accuracy: {_fmt(res['global_accuracy'])}"]
    if "dice_256_thresholds" in res:
        d = res["dice_256_thresholds"]
        lines.append(f"Mean Dice over 256 thresholds (Inf-Net protocol): {d['mean_dice']:.3f} "
                     f"(best single threshold {d['max_dice']:.3f})")
    lines += ["", "Figures: `heatmap.png` (label accumulation), `confusion.png` (pixel confusion matrix).", ""]
    (out_dir / "metrics.md").write_text("\n".join(lines))
    slim = {k: v for k, v in res.items() if k not in ("per_image",)}
    (out_dir / "metrics.json").write_text(json.dumps(slim, indent=1, default=float, allow_nan=True))


def save_heatmap(preds: list[np.ndarray], gts: list[np.ndarray], path: Path) -> Path:
    """Sum of ground-truth and of predicted foreground masks (resized to 256²), side by side (hot colormap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covidct.preprocess import resize_slices

    acc_gt = np.zeros(HEATMAP_SIZE, np.float64)
    acc_pr = np.zeros(HEATMAP_SIZE, np.float64)
    for p, g in zip(preds, gts, strict=True):
        acc_gt += resize_slices((np.asarray(g) > 0).astype(np.uint8), HEATMAP_SIZE, order=0)
        acc_pr += resize_slices((np.asarray(p) > 0).astype(np.uint8), HEATMAP_SIZE, order=0)
    vmax = max(acc_gt.max(), acc_pr.max(), 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    for ax, a, t in zip(axes, (acc_gt, acc_pr), ("ground truth", "prediction"), strict=True):
        im = ax.imshow(a, cmap="hot", vmin=0, vmax=vmax)
        ax.set_title(f"{t}, sum of {len(gts)}", fontsize=10)
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """Pixel confusion matrix (rows: ground truth, normalised per row; cells annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.3f}\n({int(cm[i, j])})", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
