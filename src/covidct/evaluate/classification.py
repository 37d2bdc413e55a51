"""Classification metrics, ROC curves, decision-threshold selection and evaluation reports.

Scores follow the usual one-vs-rest definitions per class (precision, recall = sensitivity, F1,
specificity, ROC AUC), their unweighted (macro) means, accuracy and the confusion matrix (rows: truth,
columns: prediction). Binary models (two classes, the positive class second) decide with
``p[1] >= threshold``; the threshold is chosen on the validation ROC (:func:`select_threshold`) and
stored in the checkpoint's ``thresholds["positive"]``. Models with more classes decide by argmax.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidct.errors import ConfigError, ModelError
from covidct.models.tasks import predict_labels


def roc_points(y_true: Sequence[int], score: Sequence[float]) -> dict[str, np.ndarray]:
    """ROC/precision points at every distinct score, highest first (decision: ``score >= threshold``).

    Returns ``{"thresholds", "tpr", "fpr", "precision"}`` (arrays; the first point is the
    all-negative decision at threshold +inf, tpr = fpr = 0, precision 1).
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], int)  # end of each tie run
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1 - tp).astype(np.float64)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    return {"thresholds": np.r_[np.inf, s[last]], "tpr": np.r_[0.0, tp / n_pos], "fpr": np.r_[0.0, fp / n_neg],
            "precision": np.r_[1.0, prec]}


def roc_auc(y_true: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve (MONAI ``compute_roc_auc``; ties count one half); NaN with one class only."""
    import torch
    from monai.metrics import compute_roc_auc

    y = np.asarray(y_true).astype(int).ravel()
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(np.asarray(score, np.float64).ravel()), torch.as_tensor(y)))


def _between(th: np.ndarray, i: int) -> float:
    """A threshold halfway between the chosen score ``th[i]`` and the next lower score, so that every
    validation image keeps its decision and unseen scores in the gap are split evenly."""
    hi = float(th[i])
    lo = float(th[i + 1]) if i + 1 < th.size else hi
    return hi if not np.isfinite(hi) else 0.5 * (hi + lo)


def select_threshold(y_true: Sequence[int], score: Sequence[float], method: str = "youden",
                     target_precision: float = 0.95, fixed: float = 0.5) -> dict:
    """Choose the decision threshold on a (validation) ROC curve.

    ``youden``: maximise Youden's J = sensitivity + specificity - 1 (ties: the highest threshold);
    ``target_precision``: the lowest threshold (highest recall) whose precision reaches the target,
    or, if none does, the one with the best precision; ``fixed``: ``fixed``.
    Returns ``{"threshold", "method", "tpr", "fpr", "precision", "j", "reached"}``.
    """
    if method not in ("youden", "target_precision", "fixed"):
        raise ConfigError(f"classify.threshold: unknown method {method!r}")
    y = np.asarray(y_true).astype(int)
    if method == "fixed" or y.size == 0 or y.min() == y.max():
        return {"threshold": float(fixed), "method": "fixed" if method == "fixed" else f"{method} (fallback: "
                "one class only)", "tpr": None, "fpr": None, "precision": None, "j": None, "reached": None}
    r = roc_points(y, score)
    th, tpr, fpr, prec = r["thresholds"], r["tpr"], r["fpr"], r["precision"]
    reached = None
    if method == "youden":
        j = tpr - fpr
        i = int(np.flatnonzero(j == j[1:].max())[0]) if th.size > 1 else 0
        i = max(i, 1)
    else:
        ok = np.flatnonzero(prec[1:] >= target_precision) + 1
        reached = bool(ok.size)
        i = int(ok[-1]) if ok.size else int(np.argmax(prec[1:]) + 1)
    return {"threshold": _between(th, i), "method": method, "tpr": float(tpr[i]), "fpr": float(fpr[i]),
            "precision": float(prec[i]), "j": float(tpr[i] - fpr[i]), "reached": reached,
            **({"target_precision": float(target_precision)} if method == "target_precision" else {})}


def classification_metrics(y_true: Sequence[int], prob: np.ndarray, classes: Sequence[str],
                           threshold: float | None = None) -> dict:
    """Per-class (one vs rest) and macro scores, accuracy and the confusion matrix.

    ``prob``: (N, C) class probabilities. Undefined ratios (e.g. precision of a class never
    predicted) are NaN and left out of the macro means.
    """
    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    n_c = len(classes)
    if prob.ndim != 2 or prob.shape[1] != n_c or prob.shape[0] != y.size:
        raise ValueError(f"classification_metrics: prob {prob.shape} does not match {y.size} labels x {n_c} classes")
    pred = predict_labels(prob, threshold)
    cm = np.bincount(y * n_c + pred, minlength=n_c * n_c).reshape(n_c, n_c) if y.size else np.zeros((n_c, n_c), int)
    per_class = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for c, name in enumerate(classes):
            tp = float(cm[c, c])
            fp = float(cm[:, c].sum() - tp)
            fn = float(cm[c].sum() - tp)
            tn = float(cm.sum() - tp - fp - fn)
            p = tp / (tp + fp) if tp + fp else float("nan")
            r = tp / (tp + fn) if tp + fn else float("nan")
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")  # 0 if never predicted
            spec = tn / (tn + fp) if tn + fp else float("nan")
            per_class[name] = {"precision": p, "recall": r, "f1": f1, "specificity": spec,
                               "auc": roc_auc(y == c, prob[:, c]), "support": int(cm[c].sum()),
                               "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn)}
    keys = ("precision", "recall", "f1", "specificity", "auc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = {k: float(np.nanmean([per_class[c][k] for c in classes])) for k in keys}
    res = {"classes": list(classes), "n": int(y.size), "threshold": threshold,
           "accuracy": float((pred == y).mean()) if y.size else float("nan"),
           "per_class": per_class, "macro": macro, "confusion": cm.tolist()}
    if n_c == 2:  # the positive class (second) is what the papers report
        res["positive"] = {"class": classes[1], **{k: per_class[classes[1]][k] for k in keys}}
    return res


# --- figures -------------------------------------------------------------------------------------------


def save_roc_figure(y_true: Sequence[int], prob: np.ndarray, classes: Sequence[str], path: str | Path,
                    threshold: float | None = None, title: str | None = None) -> Path:
    """ROC curve(s): the positive class for binary models (with the threshold marked), else one per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    idx = [1] if len(classes) == 2 else list(range(len(classes)))
    for c in idx:
        r = roc_points(y == c, prob[:, c])
        ax.plot(r["fpr"], r["tpr"], label=f"{classes[c]} (AUC {roc_auc(y == c, prob[:, c]):.3f})")
        if threshold is not None and len(classes) == 2:
            pr = prob[:, c] >= threshold
            tpr = (pr & (y == c)).sum() / max((y == c).sum(), 1)
            fpr = (pr & (y != c)).sum() / max((y != c).sum(), 1)
            ax.plot([fpr], [tpr], "o", color="k", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(title or "ROC", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- reports -------------------------------------------------------------------------------------------


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def metrics_markdown(res: dict, title: str = "Classification") -> str:
    """Markdown tables of :func:`classification_metrics` output."""
    classes = res["classes"]
    lines = [f"### {title}", "", f"images: {res['n']}, threshold: {_f(res['threshold'])}, "
             f"accuracy: {_f(res['accuracy'])}", "",
             "| class | precision | recall | F1 | specificity | ROC AUC | support |", "|---|---|---|---|---|---|---|"]
    for c in classes:
        m = res["per_class"][c]
        lines.append(f"| {c} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | {_f(m['specificity'])} "
                     f"| {_f(m['auc'])} | {m['support']} |")
    mm = res["macro"]
    lines.append(f"| **macro** | {_f(mm['precision'])} | {_f(mm['recall'])} | {_f(mm['f1'])} | "
                 f"{_f(mm['specificity'])} | {_f(mm['auc'])} | {res['n']} |")
    lines += ["", "Confusion matrix (rows: truth, columns: prediction)", "",
              "| | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for c, row in zip(classes, res["confusion"], strict=True):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def evaluate_classifier(model_path_or_run_dir: str | Path | None, records: list[dict], out_dir: str | Path,
                        task: str | None = None, threshold: float | None = None, batch_size: int = 16,
                        model=None, info: dict | None = None, title: str | None = None) -> dict:
    """Score a classification checkpoint (or a run dir's ``best.pt``) on labelled records.

    Writes ``metrics.md``, ``metrics.json``, ``predictions.csv``, ``roc.png`` and ``confusion.png`` to
    ``out_dir``; the threshold defaults to the one stored in the checkpoint. Records without a label
    for the task are skipped.
    """
    from covidct.classify import predict_proba
    from covidct.evaluate.report import save_confusion
    from covidct.models.tasks import CLASSIFY_TASKS, TASK_CLASSES, class_target

    if model is None or info is None:
        from covidct.models.checkpoint import load_model

        p = Path(model_path_or_run_dir)
        model, info = load_model(p / "best.pt" if p.is_dir() else p)
    task = task or info.get("task")
    if task not in CLASSIFY_TASKS or info.get("task") != task:
        raise ModelError(f"evaluate: model task {info.get('task')!r} cannot be scored as {task!r}")
    classes = TASK_CLASSES[task]
    if threshold is None and len(classes) == 2:
        threshold = (info.get("thresholds") or {}).get("positive", 0.5)
    kept = [(r, class_target(r, task)) for r in records]
    kept = [(r, t) for r, t in kept if t is not None]
    prob = predict_proba(model, info, [np.asarray(r["image"], np.float32) for r, _ in kept],
                         [bool(r.get("is_hu", False)) for r, _ in kept], batch_size=batch_size)
    y = np.array([t for _, t in kept], dtype=int)
    res = classification_metrics(y, prob.reshape(len(kept), len(classes)), classes, threshold)
    res["task"], res["model"] = task, str(info.get("path", model_path_or_run_dir))
    out_dir = Path(out_dir)
    pred = predict_labels(prob, threshold) if len(kept) else np.zeros(0, int)
    from covidct.io.writers import staged_outputs

    with staged_outputs(out_dir) as staging:  # no half-written report after Ctrl-C
        (staging / "metrics.md").write_text(metrics_markdown(res, title or f"{task}: {out_dir.name}"))
        (staging / "metrics.json").write_text(json.dumps(res, indent=1, default=float))
        with open(staging / "predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "truth", "prediction", *[f"p_{c}" for c in classes]])
            for (r, t), pr, pp in zip(kept, pred, prob, strict=True):
                w.writerow([r["id"], classes[t], classes[pr], *[f"{v:.5f}" for v in pp]])
        if kept:
            save_roc_figure(y, prob, classes, staging / "roc.png", threshold, title=f"{task} ({out_dir.name})")
            save_confusion(np.asarray(res["confusion"]), classes, staging / "confusion.png")
    res["probabilities"] = prob
    res["labels"] = y
    res["ids"] = [r["id"] for r, _ in kept]
    return res
