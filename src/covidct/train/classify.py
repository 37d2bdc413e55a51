"""Classification training (tasks ``covid-vs-noncovid``, ``slice-infection``, ``three-class``).

Reached through the one entry point :func:`covidct.train.train` (``_train_one`` dispatches on the task)
and trained by the one loop (:func:`covidct.train.loop.fit`), so configs, splits, optimisers, schedules,
logs, checkpoints and cards are those of segmentation; what differs is here: image-level targets
(:func:`class_target`), the samples (cached and augmented by :mod:`covidct.train.augment`), cross-entropy with
class weights, the
validation score (ROC AUC, F1 or loss) and, at the end, the decision threshold chosen on the
validation ROC (``classify.threshold``: Youden's J or a target precision), stored in ``best.pt`` as
``thresholds = {"positive": t, "method": ...}``.

Run folder: as segmentation (``config.resolved.yaml``, ``split.json``, ``log.csv``, ``tb/``,
``best.pt``, ``last.pt``, ``metrics.json``, ``card.json``) plus ``val/`` and ``test/`` reports from
:func:`covidct.evaluate.classification.evaluate_classifier`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.models.tasks import class_target
from covidct.train.augment import ClassifyDataset, build_augment
from covidct.train.loop import Epoch, LoaderTask, LoopSettings, Validation, fit
from covidct.train.runs import finish_run, log_epoch


def erased_lesion_records(source: str = "ma2020", dilate: int = 3, seed: int = 0, **options) -> list[dict]:
    """Infection-free copies of lesion slices: infection pixels (dilated) replaced by lung texture.

    Real-CT negatives for ``slice-infection``: every labelled slice source here shows infection
    (Ma et al. dropped the empty slices), so without these the only negatives are phantoms and a
    model learns "real CT = infected". Each infected region is filled with the median and spread of
    the slice's uninfected lung pixels (Gaussian noise, lightly smoothed). The copy keeps the
    original's group, so an image and its copy never straddle a split.
    """
    from scipy import ndimage

    from covidct.data import load_source

    rng = np.random.default_rng(seed)
    out = []
    for r in load_source(source, **options):
        inf, lungs = r.get("infection"), r.get("lungs")
        if inf is None or lungs is None or not np.asarray(inf).any():
            continue
        hole = ndimage.binary_dilation(np.asarray(inf) > 0, iterations=dilate)
        tissue = (np.asarray(lungs) > 0) & ~hole
        if tissue.sum() < 50:
            continue
        img = np.asarray(r["image"], np.float32).copy()
        vals = img[tissue]
        fill = ndimage.gaussian_filter(rng.normal(np.median(vals), vals.std(), img.shape), 1.0)
        img[hole] = fill[hole]
        out.append({**r, "image": img, "infection": np.zeros_like(inf), "lesions": None, "slice_label": 0,
                    "id": f"{r['id']}-erased", "source": f"{r.get('source', source)}-erased"})
    return out


def _register_sources() -> None:
    from covidct.train.datasets import register_source

    register_source("erased-lesions", erased_lesion_records)


_register_sources()


def make_samples(records: list[dict], task: str) -> list[dict]:
    """Samples ``{"image", "is_hu", "target", "id", "case", "source"}`` of records labelled for ``task``."""
    return image_samples(records, lambda r: class_target(r, task))


def image_samples(records: list[dict], target: Callable[[dict], int | None]) -> list[dict]:
    """Samples of the records with an image whose ``target(record)`` is not None."""
    from covidct.train.datasets import _group

    out = []
    for r in records:
        t = target(r) if r.get("image") is not None else None
        if t is not None:
            out.append({"image": np.asarray(r["image"], np.float32), "is_hu": bool(r.get("is_hu", False)),
                        "target": t, "id": r["id"], "case": _group(r), "source": r.get("source", "")})
    return out


def class_weights(targets: Sequence[int], n_classes: int) -> np.ndarray:
    """Median-frequency weights of class counts: ``median(freq) / freq_c`` (absent classes: 0)."""
    counts = np.bincount(np.asarray(targets, int), minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes)
    present = counts > 0
    w[present] = np.median(counts[present]) / counts[present]
    return w.astype(np.float32)


def build_classification_loss(cfg, weights: np.ndarray | None) -> torch.nn.Module:
    """Cross-entropy (optionally class-weighted, label-smoothed) or softmax focal loss on logits (B, C)."""
    wt = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32))
    if cfg.loss.name == "ce":
        return torch.nn.CrossEntropyLoss(weight=wt, label_smoothing=cfg.classify.label_smoothing)
    from monai.losses import FocalLoss

    focal = FocalLoss(to_onehot_y=True, gamma=cfg.loss.gamma, weight=wt, use_softmax=True)

    class _Focal(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = focal

        def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.f(logits.float(), y.long()[:, None])

    return _Focal()


def make_split(cfg, records: list[dict], run_dir: Path, resume: bool) -> dict[str, list[str]]:
    """The split of a classification run, written to ``run_dir/split.json``.

    ``data.split.by_meta: KEY`` takes each record's part from ``meta[KEY]`` (e.g. UCSD's official
    train/val lists, ``meta["split"]``); groups that the official lists put on both sides are kept as
    given and counted in ``info["straddling_groups"]``. Otherwise the segmentation split applies
    (case-level fractions or a split file).
    """
    from covidct.train.datasets import _group
    from covidct.train.runs import make_split as case_split
    from covidct.train.runs import write_split

    key = cfg.data.split.by_meta
    if not key:
        return case_split(cfg, records, run_dir, resume)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for r in records:
        part = (r.get("meta") or {}).get(key)
        if part not in split:
            raise ConfigError(f"data.split.by_meta: record {r['id']} has meta[{key!r}] = {part!r} "
                              "(need train, val or test)")
        split[part].append(r["id"])
    by_id = {r["id"]: r for r in records}
    cases = {k: sorted({_group(by_id[i]) for i in v}) for k, v in split.items()}
    straddle = sorted(set(cases["train"]) & (set(cases["val"]) | set(cases["test"])))
    write_split(run_dir, split, cfg.data.split.seed, source=",".join(s.name for s in cfg.data.sources),
                info={"by_meta": key, "cases": cases, "straddling_groups": straddle})
    return split


@torch.no_grad()
def _predict(model, loader, device, bf16: bool) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
    model.eval()
    probs, ys, logits_all = [], [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x.to(device))
        logits_all.append(out.float().cpu())
        probs.append(torch.softmax(out.float(), 1).cpu().numpy())
        ys.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, int), []
    return np.concatenate(probs), np.concatenate(ys), logits_all


def _score(cfg, y: np.ndarray, prob: np.ndarray, loss: float) -> tuple[float, dict]:
    from covidct.evaluate.classification import classification_metrics

    m = classification_metrics(y, prob, cfg.classes, 0.5 if len(cfg.classes) == 2 else None)
    summary = {"val_loss": loss, "val_auc": m["macro"]["auc"] if len(cfg.classes) > 2 else
               m["per_class"][cfg.classes[1]]["auc"], "val_f1": m["macro"]["f1"], "val_accuracy": m["accuracy"]}
    key = {"auc": "val_auc", "f1": "val_f1", "loss": "val_loss"}[cfg.classify.select_on]
    s = summary[key]
    s = -s if key == "val_loss" else s
    return (float(s) if np.isfinite(s) else -float("inf")), summary


class ClassificationTask(LoaderTask):
    """Images and class targets; validation by ROC AUC, F1 or loss (``classify.select_on``)."""

    def loss(self, model, batch) -> torch.Tensor:
        dev = self.run.device
        x, y = batch[0].to(dev), torch.as_tensor(batch[1]).long().to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16):
            out = model(x)
        return self.loss_fn(out.float(), y)

    def validate(self, model, epoch: int, train_loss: float) -> Validation:
        if self.val_dl is None:  # no validation images: select on the training loss
            nan = float("nan")
            return Validation(-train_loss, {"epoch": epoch + 1, "val_loss": nan, "val_auc": nan, "val_f1": nan,
                                            "val_accuracy": nan})
        dev = self.run.device
        prob, yv, logits = _predict(model, self.val_dl, dev, self.cfg.train.bf16)
        val_loss = float(self.loss_fn(torch.cat(logits).to(dev), torch.as_tensor(yv).long().to(dev)))
        score, summ = _score(self.cfg, yv, prob, val_loss)
        return Validation(score, {"epoch": epoch + 1, **summ})

    def save_best(self, model, metrics: dict) -> None:
        from covidct.models.checkpoint import save_checkpoint

        save_checkpoint(self.run.best_path, model, **self.ckpt, thresholds={"positive": 0.5, "method": "default"},
                        metrics={"val": metrics}, fp16=self.cfg.train.save_fp16)

    def report(self, e: Epoch) -> None:
        summ = {k: v for k, v in e.val.metrics.items() if k != "epoch"}
        row = {"epoch": e.epoch + 1, "train_loss": e.train_loss, **summ, "lr": e.lr, "seconds": e.seconds}
        log_epoch(self.log, self.writer, row, {"loss/train": e.train_loss,
                                               **{k.replace("val_", "val/"): v for k, v in summ.items()}, "lr": e.lr})
        self.run.say(f"[{self.cfg.name}] epoch {e.epoch + 1}/{self.cfg.train.epochs} train_loss={e.train_loss:.4f} "
                     f"val_loss={summ['val_loss']:.4f} val_auc={summ['val_auc']:.4f} val_f1={summ['val_f1']:.4f}"
                     f"{' *' if e.improved else ''} lr={e.lr:.2e} ({e.seconds:.0f}s)", flush=True)


def make_loaders(cfg, train_ds, val_ds, start_epoch: int, n_classes: int, *, balanced: bool = False,
                 full_batches: bool = False, val_batch: int | None = None):
    """Training loader (``steps_per_epoch`` batches drawn with replacement, or one pass; class-balanced when
    asked; ``full_batches`` drops a short last batch) and validation loader (None without validation data)."""
    t = cfg.train
    gen = torch.Generator().manual_seed(t.seed + start_epoch)
    n_draw = (t.steps_per_epoch * t.batch_size) if t.steps_per_epoch else len(train_ds)
    if balanced:
        tg = np.asarray(train_ds.y)
        w = 1.0 / np.bincount(tg, minlength=n_classes)[tg]
        sampler = torch.utils.data.WeightedRandomSampler(w.tolist(), n_draw, replacement=True, generator=gen)
    elif t.steps_per_epoch or full_batches:
        sampler = torch.utils.data.RandomSampler(train_ds, replacement=bool(t.steps_per_epoch), num_samples=n_draw,
                                                 generator=gen)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=gen)
    drop_last = True if full_batches else len(train_ds) > t.batch_size
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler,
                                           num_workers=t.num_workers, drop_last=drop_last)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=val_batch or t.batch_size) if val_ds else None
    return train_dl, val_dl


def train_classifier(cfg, run_dir: Path, resume: bool, records: list[dict] | None, verbose: bool) -> Path:
    """Train one classification config (see the module docstring); returns the run directory."""
    from covidct.models.registry import build_model
    from covidct.train.runs import open_run_logs, open_slice_run, start_training

    t = cfg.train
    run, norm, records = open_slice_run(cfg, run_dir, resume, verbose, records)
    say, classes, n_classes, cfg_dict = run.say, cfg.classes, len(cfg.classes), run.config
    records = [r for r in records if class_target(r, cfg.task) is not None]
    if not records:
        raise ConfigError(f"data: no records with a {cfg.task} label in the configured sources")
    split = make_split(cfg, records, run.dir, resume)
    by_id = {r["id"]: r for r in records}
    parts = {k: make_samples([by_id[i] for i in v if i in by_id], cfg.task) for k, v in split.items()}
    if not parts["train"]:
        raise ConfigError(f"data: no training images with a {cfg.task} label")
    counts = {k: np.bincount([s["target"] for s in v], minlength=n_classes).tolist() for k, v in parts.items()}
    say(f"[{cfg.name}] task={cfg.task} model={cfg.model.name} images per class {classes}: {counts}; "
        f"device={run.device}", flush=True)

    weights = None
    if cfg.loss.weights == "median_frequency":
        weights = class_weights([s["target"] for s in parts["train"]], n_classes)
        say(f"[{cfg.name}] class weights: {np.round(weights, 4).tolist()}", flush=True)
    elif isinstance(cfg.loss.weights, list):
        weights = np.asarray(cfg.loss.weights, np.float32)
    loss_fn = build_classification_loss(cfg, weights).to(run.device)
    model = build_model(cfg.model.name, 1, n_classes, **cfg.model.kwargs).to(run.device)
    opt, sched, progress = start_training(model, cfg.optimizer, cfg.schedule, t.epochs, init_from=cfg.model.init_from,
                                          last_path=run.last_path, resume=resume, say=say, name=cfg.name)
    t0 = time.time()
    train_ds = ClassifyDataset(parts["train"], norm, t.input_size, build_augment(cfg))
    val_ds = ClassifyDataset(parts["val"], norm, t.input_size) if parts["val"] else None
    say(f"[{cfg.name}] cached {len(train_ds)} + {len(val_ds) if val_ds else 0} images in {time.time() - t0:.0f}s",
        flush=True)
    train_dl, val_dl = make_loaders(cfg, train_ds, val_ds, progress.start_epoch, n_classes,
                                    balanced=cfg.classify.balanced_sampling, val_batch=t.batch_size * 2)
    writer, log = open_run_logs(run.dir, cfg.output.tensorboard, append=resume and progress.start_epoch > 0)
    ckpt = dict(name=cfg.model.name, kwargs=cfg.model.kwargs, in_channels=1, out_channels=n_classes, task=cfg.task,
                classes=classes, input_size=(t.input_size, t.input_size), normalisation=norm.as_dict(), config=cfg_dict)
    task = ClassificationTask(cfg, run, loss_fn, train_dl, val_dl, writer, log, ckpt)
    settings = LoopSettings(t.epochs, t.max_minutes, t.patience, f"validation {cfg.classify.select_on}")
    p = fit(model, opt, sched, task, settings, progress, run.last_path, verbose)
    if writer is not None:
        writer.close()

    summary = {"name": cfg.name, "task": cfg.task, "model": cfg.model.name, "classes": classes,
               "best_epoch": p.best_epoch + 1, "best_val_score": p.best if p.best_epoch >= 0 else None,
               "select_on": cfg.classify.select_on, "val": p.best_metrics, "epochs_run": p.epochs_run,
               "stopped": p.stopped, "train_time_s": round(p.elapsed, 1),
               "n_images": {k: len(v) for k, v in parts.items()}, "n_per_class": counts,
               "n_cases": {k: len({s["case"] for s in v}) for k, v in parts.items()}}
    if run.best_path.is_file():
        _choose_threshold(cfg, run, val_dl, ckpt, p.best_metrics, summary, parts, by_id)
    finish_run(run.dir, summary, run.best_path, name=cfg.name, task=cfg.task, classes=classes,
               data={"sources": cfg_dict["data"]["sources"], "n_images": summary["n_images"], "n_per_class": counts},
               split=json.loads((run.dir / "split.json").read_text())["info"]["cases"], config=cfg_dict,
               metrics={"val": p.best_metrics, "val_at_threshold": summary.get("val_at_threshold"),
                        "test": summary.get("test"), "thresholds": summary.get("thresholds")})
    say(f"[{cfg.name}] done: {p.stopped}; best validation {cfg.classify.select_on} "
        f"{summary['best_val_score']} at epoch {p.best_epoch + 1}; run dir {run.dir}", flush=True)
    return run.dir


def _choose_threshold(cfg, run, val_dl, ckpt: dict, best_metrics: dict, summary: dict, parts: dict,
                      by_id: dict) -> None:
    """The decision threshold: chosen once on the validation ROC of best.pt, then stored with it; then
    best.pt evaluated at that threshold on the validation (and test) images, into ``summary``."""
    from covidct.evaluate.classification import evaluate_classifier, select_threshold
    from covidct.models.checkpoint import load_model, save_checkpoint

    t, n_classes = cfg.train, len(cfg.classes)
    model, info = load_model(run.best_path, run.device)
    thr: dict = {"positive": 0.5, "method": "argmax"}
    if n_classes == 2 and val_dl is not None:
        prob, yv, _ = _predict(model, val_dl, run.device, t.bf16)
        c = cfg.classify
        sel = select_threshold(yv, prob[:, 1], c.threshold, c.target_precision, c.fixed_threshold)
        thr = {"positive": sel["threshold"], "method": sel["method"],
               **{k: sel[k] for k in ("tpr", "fpr", "precision", "reached", "target_precision") if k in sel}}
    elif n_classes == 2:
        thr = {"positive": cfg.classify.fixed_threshold, "method": "fixed (no validation images)"}
    save_checkpoint(run.best_path, model, **ckpt, thresholds=thr, metrics={"val": best_metrics}, fp16=t.save_fp16)
    model, info = load_model(run.best_path, run.device)
    summary["thresholds"] = thr
    for part in ("val", "test"):
        if parts[part] and (part == "val" or t.evaluate_test):
            res = evaluate_classifier(None, [by_id[s["id"]] for s in parts[part]], run.dir / part, cfg.task,
                                      model=model, info=info, batch_size=t.batch_size)
            summary[part if part == "test" else "val_at_threshold"] = {
                k: res[k] for k in ("n", "threshold", "accuracy", "macro", "per_class", "confusion")}
            run.say(f"[{cfg.name}] {part}: accuracy {res['accuracy']:.3f}, macro F1 {res['macro']['f1']:.3f}, "
                    f"macro AUC {res['macro']['auc']:.3f} over {res['n']} images (threshold {res['threshold']})")
