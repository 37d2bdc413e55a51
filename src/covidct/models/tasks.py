"""The tasks covidct's models are trained for, their class tables, and each task's target from a record.

Shared by training (``covidct.train``), evaluation (``covidct.evaluate``) and inference (``covidct.classify``),
so it lives below all three.
"""

from __future__ import annotations

import numpy as np

from covidct.errors import ConfigError

TASKS = ("lungs", "infection", "lesions")
# Image-level classification tasks (trained by covidct.train.classify through the same ``train()``).
CLASSIFY_TASKS = ("covid-vs-noncovid", "slice-infection", "three-class")
# Self-supervised pre-training of a classification network (covidct.train.pretrain); no labels, no classes.
PRETRAIN_TASKS = ("contrastive",)
# Classes (names, background first) of each segmentation task; the lung model is binary (lung vs not).
TASK_CLASSES: dict[str, list[str]] = {
    "lungs": ["background", "lung"],
    "infection": ["background", "infection"],
    "lesions": ["none", "ggo", "consolidation", "effusion"],
    # classification: the positive class last, so binary models threshold p[1]
    "covid-vs-noncovid": ["non_covid19", "covid19"],
    "slice-infection": ["negative", "infection"],
    "three-class": ["normal", "pneumonia", "covid19"],
    "contrastive": [],
}

# Names under which a record's diagnosis may be given (record["diagnosis"] or meta["diagnosis"]).
DIAGNOSIS_ALIASES: dict[str, str] = {
    "covid19": "covid19", "covid-19": "covid19", "covid": "covid19", "ncp": "covid19",
    "pneumonia": "pneumonia", "cap": "pneumonia", "cp": "pneumonia", "other pneumonia": "pneumonia",
    "normal": "normal", "healthy": "normal",
}  # fmt: skip


# --- targets of each task -----------------------------------------------------------------------------


def task_label(record: dict, task: str) -> np.ndarray | None:
    """The integer label map of ``record`` for ``task`` (uint8), or None if the record has none.

    lungs: ``lungs > 0`` (binary; left/right are split later by position); infection: ``infection``
    or else ``lesions > 0``; lesions: ``lesions`` (0..3).
    """
    if task == "lungs":
        m = record.get("lungs")
        return None if m is None else (np.asarray(m) > 0).astype(np.uint8)
    if task == "infection":
        m = record.get("infection")
        if m is None and record.get("lesions") is not None:
            m = np.asarray(record["lesions"]) > 0
        return None if m is None else (np.asarray(m) > 0).astype(np.uint8)
    if task == "lesions":
        m = record.get("lesions")
        return None if m is None else np.asarray(m).astype(np.uint8)
    raise ConfigError(f"task: unknown task {task!r}")


def class_target(record: dict, task: str) -> int | None:
    """Class index of ``record`` for a classification task (classes as in ``TASK_CLASSES``), or None.

    covid-vs-noncovid: ``class_label`` (1 COVID-19, 0 not); slice-infection: ``slice_label``, else
    whether the infection/lesion mask is non-empty; three-class: ``diagnosis`` (record or meta; see
    :data:`DIAGNOSIS_ALIASES`), else ``class_label`` read as an index into normal/pneumonia/covid19.
    """
    if task == "covid-vs-noncovid":
        v = record.get("class_label")
        return None if v is None else int(int(v) > 0)
    if task == "slice-infection":
        if record.get("slice_label") is not None:
            return int(int(record["slice_label"]) > 0)
        for k in ("infection", "lesions"):
            if record.get(k) is not None:
                return int(bool(np.asarray(record[k]).any()))
        return None
    if task == "three-class":
        d = record.get("diagnosis") or (record.get("meta") or {}).get("diagnosis")
        if d is not None:
            name = DIAGNOSIS_ALIASES.get(str(d).strip().lower())
            return None if name is None else ("normal", "pneumonia", "covid19").index(name)
        v = record.get("class_label")
        return None if v is None or not 0 <= int(v) <= 2 else int(v)
    raise ConfigError(f"task: {task!r} is not a classification task")


# --- decisions ---------------------------------------------------------------------------------------


def predict_labels(prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class indices from probabilities (N, C): ``p[:, 1] >= threshold`` for binary models, else argmax."""
    prob = np.asarray(prob)
    if prob.shape[1] == 2 and threshold is not None:
        return (prob[:, 1] >= threshold).astype(int)
    return prob.argmax(1).astype(int)
