"""Classification training (tasks ``covid-vs-noncovid``, ``slice-infection``, ``three-class``).

Reached through the one entry point :func:`covidct.train.train` (``_train_one`` dispatches on the task),
so configs, splits, optimisers, schedules, logs, checkpoints and cards are those of segmentation; what
differs is here: image-level targets (:func:`class_target`), the sample pipeline (normalise once, then
crop / flip / affine / contrast / noise / JPEG augmentation), cross-entropy with class weights, the
validation score (ROC AUC, F1 or loss) and, at the end, the decision threshold chosen on the
validation ROC (``classify.threshold``: Youden's J or a target precision), stored in ``best.pt`` as
``thresholds = {"positive": t, "method": ...}``.

Run folder: as segmentation (``config.resolved.yaml``, ``split.json``, ``log.csv``, ``tb/``,
``best.pt``, ``last.pt``, ``metrics.json``, ``card.json``) plus ``val/`` and ``test/`` reports from
:func:`covidct.evaluate.classification.evaluate_classifier`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.models.inference import model_input
from covidct.models.tasks import class_target


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
    from covidct.train.datasets import _group

    out = []
    for r in records:
        t = class_target(r, task)
        if t is None:
            continue
        out.append({"image": np.asarray(r["image"], np.float32), "is_hu": bool(r.get("is_hu", False)),
                    "target": t, "id": r["id"], "case": _group(r), "source": r.get("source", "")})
    return out


# --- sample pipeline -------------------------------------------------------------------------------------


class RandResizedCrop:
    """Crop a random box (area fraction in ``scale``, aspect 3/4..4/3) and resize it to ``size``."""

    def __init__(self, size: int, scale: Sequence[float], prob: float) -> None:
        self.size, self.scale, self.prob = size, tuple(scale), prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from covidct.preprocess import resize_image_tensor

        h, w = x.shape[-2:]
        if np.random.rand() < self.prob:
            area = np.random.uniform(*self.scale) * h * w
            ar = np.exp(np.random.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch = int(round(min(h, np.sqrt(area / ar))))
            cw = int(round(min(w, np.sqrt(area * ar))))
            y0, x0 = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
            x = x[..., y0 : y0 + ch, x0 : x0 + cw]
        return resize_image_tensor(x, (self.size, self.size))


class RandJpeg:
    """Re-encode the [0, 1] image as 8-bit JPEG at a random quality (compression noise of paper figures)."""

    def __init__(self, quality: Sequence[int], prob: float) -> None:
        self.quality, self.prob = tuple(quality), prob

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import cv2

        if np.random.rand() >= self.prob:
            return x
        u8 = np.clip(np.rint(x[0].numpy() * 255), 0, 255).astype(np.uint8)
        q = int(np.random.randint(self.quality[0], self.quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:  # pragma: no cover - OpenCV always encodes 8-bit grey
            return x
        return torch.from_numpy(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0)[None]


def build_augment(cfg):
    """Training augmentation on a cached (1, S, S) model-space image (S = 1.25 x input size)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandFlip,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandRotate90,
        RandScaleIntensity,
    )

    n = cfg.train.input_size
    a, c = cfg.augment, cfg.classify
    ts: list = [RandResizedCrop(n, c.crop_scale, c.crop_prob if a.enabled else 0.0)]
    if a.enabled:
        if a.flip_prob > 0:
            ts += [RandFlip(prob=a.flip_prob, spatial_axis=1), RandFlip(prob=a.flip_prob, spatial_axis=0)]
        if a.rot90_prob > 0:
            ts.append(RandRotate90(prob=a.rot90_prob, max_k=3))
        if a.affine_prob > 0:
            ts.append(RandAffine(prob=a.affine_prob, rotate_range=np.deg2rad(a.rotate_deg),
                                 translate_range=(a.shift * n, a.shift * n), scale_range=(a.scale, a.scale),
                                 padding_mode="zeros"))
        if a.contrast_prob > 0:
            ts.append(RandAdjustContrast(prob=a.contrast_prob, gamma=tuple(a.gamma)))
        if a.intensity_scale_prob > 0:
            ts.append(RandScaleIntensity(factors=a.intensity_scale, prob=a.intensity_scale_prob))
        if a.noise_prob > 0:
            ts.append(RandGaussianNoise(prob=a.noise_prob, std=a.noise_std))
        if a.smooth_prob > 0:
            ts.append(RandGaussianSmooth(prob=a.smooth_prob, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)))
    ts.append(lambda t: torch.as_tensor(t, dtype=torch.float32).clamp(0, 1))
    if a.enabled and c.jpeg_prob > 0:
        ts.append(RandJpeg(c.jpeg_quality, c.jpeg_prob))
    return Compose(ts)


class ClassifyDataset(torch.utils.data.Dataset):
    """Samples normalised and resized once (cached), augmented on every access."""

    def __init__(self, samples: list[dict], norm, size: int, augment=None) -> None:
        self.size = int(round(size * 1.25)) if augment is not None else size  # room for crops
        self.x = [model_input(s["image"], s["is_hu"], norm, self.size).half() for s in samples]
        self.y = [int(s["target"]) for s in samples]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i].float()
        if self.augment is not None:
            x = self.augment(x)
            # MONAI transforms return a MetaTensor only when they fire: a batch must be plain tensors
            x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float()
        return x, self.y[i]


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
    from covidct.train.loop import _make_split

    key = cfg.data.split.by_meta
    if not key:
        return _make_split(cfg, records, run_dir, resume)
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
    doc = {"splits": split, "seed": cfg.data.split.seed, "source": ",".join(s.name for s in cfg.data.sources),
           "info": {"by_meta": key, "cases": cases, "straddling_groups": straddle}}
    (run_dir / "split.json").write_text(json.dumps(doc, indent=1) + "\n")
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


def train_classifier(cfg, run_dir: str | Path | None, resume: bool, records: list[dict] | None,
                     verbose: bool) -> Path:
    """Train one classification config (see the module docstring); returns the run directory."""
    from monai.utils import set_determinism
    from tqdm import tqdm

    from covidct.evaluate.classification import evaluate_classifier, select_threshold
    from covidct.models.checkpoint import load_model, save_checkpoint, write_card
    from covidct.models.registry import build_model
    from covidct.preprocess import NormalisationConfig
    from covidct.train import datasets as ds
    from covidct.train.config import config_to_dict
    from covidct.train.loop import (
        _device,
        _optimizer,
        _scheduler,
        init_weights,
        log_epoch,
        open_run_logs,
        prepare_run_dir,
        restore_training_state,
        save_training_state,
        stop_reason,
    )

    say = print if verbose else (lambda *a, **k: None)
    run_dir, last_path, best_path = prepare_run_dir(cfg, run_dir, resume)
    t = cfg.train
    set_determinism(seed=t.seed)
    device = _device(t.device)
    classes = cfg.classes
    n_classes = len(classes)
    norm = NormalisationConfig.from_dict(cfg.normalisation)

    if records is None:
        records = ds.load_records(cfg.data.sources)
    records = [r for r in records if class_target(r, cfg.task) is not None]
    if not records:
        raise ConfigError(f"data: no records with a {cfg.task} label in the configured sources")
    split = make_split(cfg, records, run_dir, resume)
    by_id = {r["id"]: r for r in records}
    parts = {k: make_samples([by_id[i] for i in v if i in by_id], cfg.task) for k, v in split.items()}
    if not parts["train"]:
        raise ConfigError(f"data: no training images with a {cfg.task} label")
    counts = {k: np.bincount([s["target"] for s in v], minlength=n_classes).tolist() for k, v in parts.items()}
    say(f"[{cfg.name}] task={cfg.task} model={cfg.model.name} images per class {classes}: {counts}; "
        f"device={device}", flush=True)

    weights = None
    if cfg.loss.weights == "median_frequency":
        weights = class_weights([s["target"] for s in parts["train"]], n_classes)
        say(f"[{cfg.name}] class weights: {np.round(weights, 4).tolist()}", flush=True)
    elif isinstance(cfg.loss.weights, list):
        weights = np.asarray(cfg.loss.weights, np.float32)
    loss_fn = build_classification_loss(cfg, weights).to(device)
    model = build_model(cfg.model.name, 1, n_classes, **cfg.model.kwargs).to(device)
    if cfg.model.init_from and not (resume and last_path.is_file()):
        # fine-tuning / transfer: same architecture, new schedule (from a contrastive run: all but its projection)
        fresh = init_weights(model, cfg.model.init_from)
        say(f"[{cfg.name}] weights initialised from {cfg.model.init_from}"
            f"{f' (freshly initialised: {fresh})' if fresh else ''}", flush=True)
    opt = _optimizer(cfg, model.parameters())
    sched = _scheduler(cfg, opt)

    start_epoch, best, best_epoch, bad, elapsed, best_metrics = 0, -float("inf"), -1, 0, 0.0, {}
    if resume and last_path.is_file():
        start_epoch, best, best_epoch, bad, elapsed, best_metrics = restore_training_state(last_path, model, opt, sched)
        say(f"[{cfg.name}] resumed after epoch {start_epoch - 1} (best {best:.4f} at epoch {best_epoch + 1})")

    t0 = time.time()
    train_ds = ClassifyDataset(parts["train"], norm, t.input_size, build_augment(cfg))
    val_ds = ClassifyDataset(parts["val"], norm, t.input_size) if parts["val"] else None
    say(f"[{cfg.name}] cached {len(train_ds)} + {len(val_ds) if val_ds else 0} images in {time.time() - t0:.0f}s",
        flush=True)
    gen = torch.Generator().manual_seed(t.seed + start_epoch)
    n_draw = (t.steps_per_epoch * t.batch_size) if t.steps_per_epoch else len(train_ds)
    if cfg.classify.balanced_sampling:
        tg = np.asarray(train_ds.y)
        w = 1.0 / np.bincount(tg, minlength=n_classes)[tg]
        sampler = torch.utils.data.WeightedRandomSampler(w.tolist(), n_draw, replacement=True, generator=gen)
    elif t.steps_per_epoch:
        sampler = torch.utils.data.RandomSampler(train_ds, replacement=True, num_samples=n_draw, generator=gen)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=gen)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler,
                                           num_workers=t.num_workers, drop_last=len(train_ds) > t.batch_size)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=t.batch_size * 2) if val_ds else None

    writer, log = open_run_logs(run_dir, cfg.output.tensorboard, append=resume and start_epoch > 0)
    cfg_dict = config_to_dict(cfg)
    ckpt_common = dict(name=cfg.model.name, kwargs=cfg.model.kwargs, in_channels=1, out_channels=n_classes,
                       task=cfg.task, classes=classes, input_size=(t.input_size, t.input_size),
                       normalisation=norm.as_dict(), config=cfg_dict)
    stopped, epoch = "epochs", start_epoch - 1
    for epoch in range(start_epoch, t.epochs):
        if t.max_minutes is not None and elapsed >= t.max_minutes * 60:
            stopped = "time budget"
            break
        t0 = time.time()
        model.train()
        losses = []
        bar = tqdm(train_dl, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, disable=not verbose,
                   file=sys.stderr, dynamic_ncols=True)
        for x, y in bar:
            x, y = x.to(device), torch.as_tensor(y).long().to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1} (lower optimizer.lr?)")
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if val_dl is not None:
            prob, yv, logits = _predict(model, val_dl, device, t.bf16)
            val_loss = float(loss_fn(torch.cat(logits).to(device), torch.as_tensor(yv).long().to(device)))
            score, summ = _score(cfg, yv, prob, val_loss)
        else:  # no validation images: select on the training loss
            score, summ = -train_loss, {"val_loss": float("nan"), "val_auc": float("nan"), "val_f1": float("nan"),
                                        "val_accuracy": float("nan")}
        elapsed += time.time() - t0
        improved = score > best
        if improved:
            best, best_epoch, bad = score, epoch, 0
            best_metrics = {"epoch": epoch + 1, **summ}
            save_checkpoint(best_path, model, **ckpt_common, thresholds={"positive": 0.5, "method": "default"},
                            metrics={"val": best_metrics}, fp16=t.save_fp16)
        else:
            bad += 1
        row = {"epoch": epoch + 1, "train_loss": train_loss, **summ, "lr": lr, "seconds": round(time.time() - t0, 2)}
        log_epoch(log, writer, row, {"loss/train": train_loss,
                                     **{k.replace("val_", "val/"): v for k, v in summ.items()}, "lr": lr})
        say(f"[{cfg.name}] epoch {epoch + 1}/{t.epochs} train_loss={train_loss:.4f} val_loss={summ['val_loss']:.4f} "
            f"val_auc={summ['val_auc']:.4f} val_f1={summ['val_f1']:.4f}{' *' if improved else ''} lr={lr:.2e} "
            f"({row['seconds']:.0f}s)", flush=True)
        save_training_state(last_path, model, opt, sched, epoch, best, best_epoch, bad, elapsed, best_metrics)
        if reason := stop_reason(t, bad, elapsed, f"validation {cfg.classify.select_on}"):
            stopped = reason
            break
    if writer is not None:
        writer.close()

    summary = {"name": cfg.name, "task": cfg.task, "model": cfg.model.name, "classes": classes,
               "best_epoch": best_epoch + 1, "best_val_score": best if best_epoch >= 0 else None,
               "select_on": cfg.classify.select_on, "val": best_metrics, "epochs_run": epoch + 1,
               "stopped": stopped, "train_time_s": round(elapsed, 1),
               "n_images": {k: len(v) for k, v in parts.items()}, "n_per_class": counts,
               "n_cases": {k: len({s["case"] for s in v}) for k, v in parts.items()}}
    if best_path.is_file():
        # The decision threshold: chosen once on the validation ROC of best.pt, then stored with it.
        model, info = load_model(best_path, device)
        thr: dict = {"positive": 0.5, "method": "argmax"}
        if n_classes == 2 and val_dl is not None:
            prob, yv, _ = _predict(model, val_dl, device, t.bf16)
            c = cfg.classify
            sel = select_threshold(yv, prob[:, 1], c.threshold, c.target_precision, c.fixed_threshold)
            thr = {"positive": sel["threshold"], "method": sel["method"],
                   **{k: sel[k] for k in ("tpr", "fpr", "precision", "reached", "target_precision") if k in sel}}
        elif n_classes == 2:
            thr = {"positive": cfg.classify.fixed_threshold, "method": "fixed (no validation images)"}
        save_checkpoint(best_path, model, **ckpt_common, thresholds=thr, metrics={"val": best_metrics},
                        fp16=t.save_fp16)
        model, info = load_model(best_path, device)
        summary["thresholds"] = thr
        for part in ("val", "test"):
            if parts[part] and (part == "val" or t.evaluate_test):
                res = evaluate_classifier(None, [by_id[s["id"]] for s in parts[part]], run_dir / part, cfg.task,
                                          model=model, info=info, batch_size=t.batch_size)
                summary[part if part == "test" else "val_at_threshold"] = {
                    k: res[k] for k in ("n", "threshold", "accuracy", "macro", "per_class", "confusion")}
                say(f"[{cfg.name}] {part}: accuracy {res['accuracy']:.3f}, macro F1 {res['macro']['f1']:.3f}, "
                    f"macro AUC {res['macro']['auc']:.3f} over {res['n']} images (threshold {res['threshold']})")
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    if best_path.is_file():
        split_cases = json.loads((run_dir / "split.json").read_text())["info"]["cases"]
        write_card(run_dir / "card.json", best_path, name=cfg.name, version="0", task=cfg.task, classes=classes,
                   data={"sources": cfg_dict["data"]["sources"], "n_images": summary["n_images"],
                         "n_per_class": counts},
                   split=split_cases, config=cfg_dict, training_time_s=summary["train_time_s"],
                   metrics={"val": best_metrics, "val_at_threshold": summary.get("val_at_threshold"),
                            "test": summary.get("test"), "thresholds": summary.get("thresholds")},
                   command=f"covidct train {run_dir / 'config.resolved.yaml'}")
    say(f"[{cfg.name}] done: {stopped}; best validation {cfg.classify.select_on} "
        f"{summary['best_val_score']} at epoch {best_epoch + 1}; run dir {run_dir}", flush=True)
    return run_dir
