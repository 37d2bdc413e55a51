"""2-D segmentation training (tasks ``lungs``, ``infection``, ``lesions``) on slices.

The task plugged into :func:`covidct.train.loop.fit`: slice samples with a task label map
(:func:`covidct.train.datasets.make_samples`, negatives capped by ``data.negatives``), MONAI transforms and
data loaders, a segmentation loss (Dice/CE/focal, class weights), and as the validation score the pooled
foreground Dice (one overlay image per epoch in TensorBoard). At the end best.pt is evaluated on the test
split (:func:`covidct.evaluate.report.evaluate`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.train import datasets as ds
from covidct.train.config import Config
from covidct.train.loop import Epoch, LoaderTask, LoopSettings, Validation, fit
from covidct.train.losses import apply_loss, build_loss, median_frequency_weights
from covidct.train.runs import (
    finish_run,
    log_epoch,
    make_split,
    open_run_logs,
    open_slice_run,
    start_training,
)


def _overlay(img: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """RGB (3, H, W): grey image, ground truth in red, prediction in green (overlap yellow)."""
    g = img[0].float().clamp(0, 1) * 0.7
    rgb = torch.stack([g, g, g])
    rgb[0] += 0.3 * (gt > 0).float()
    rgb[1] += 0.3 * (pred > 0).float()
    return rgb.clamp(0, 1)


@torch.no_grad()
def _validate(model, loader, loss_fn, n_classes: int, device, bf16: bool, max_steps: int | None, threshold: float):
    """Validation loss, pooled Dice per class and mean per-image Dice per class, plus one overlay."""
    model.eval()
    tp = torch.zeros(n_classes, dtype=torch.float64)
    fp = torch.zeros_like(tp)
    fn = torch.zeros_like(tp)
    img_dice_sum = torch.zeros_like(tp)
    img_dice_n = torch.zeros_like(tp)
    losses, overlay = [], None
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = batch["image"].to(device), batch["label"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out = out[0] if isinstance(out, list | tuple) else out
        losses.append(float(apply_loss(loss_fn, out.float(), y)))
        prob = torch.softmax(out.float(), 1)
        pred = (prob[:, 1] >= threshold).long() if n_classes == 2 else prob.argmax(1)
        lab = y[:, 0]
        for c in range(n_classes):
            p, g = pred == c, lab == c
            t_ = (p & g).sum((1, 2)).double()
            fp_ = (p & ~g).sum((1, 2)).double()
            fn_ = (~p & g).sum((1, 2)).double()
            tp[c] += t_.sum().cpu()
            fp[c] += fp_.sum().cpu()
            fn[c] += fn_.sum().cpu()
            den = 2 * t_ + fp_ + fn_
            ok = den > 0  # images where class c is absent from both masks are skipped
            img_dice_sum[c] += (2 * t_[ok] / den[ok]).sum().cpu()
            img_dice_n[c] += ok.sum().cpu()
        if overlay is None:
            k = int(torch.argmax((lab > 0).flatten(1).sum(1)))  # the sample with the most foreground
            overlay = _overlay(x[k].cpu(), lab[k].cpu(), pred[k].cpu())
    den = 2 * tp + fp + fn
    pooled = torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.full_like(den, float("nan")))
    per_img = torch.where(img_dice_n > 0, img_dice_sum / img_dice_n.clamp_min(1), torch.full_like(den, float("nan")))
    return (float(np.mean(losses)) if losses else float("nan")), pooled.numpy(), per_img.numpy(), overlay


class SegmentationTask(LoaderTask):
    """Slices and label maps through MONAI loaders; validation by pooled foreground Dice."""

    def loss(self, model, batch) -> torch.Tensor:
        dev = self.run.device
        x, y = batch["image"].to(dev), batch["label"].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16):
            out = model(x)
        out = [o.float() for o in out] if isinstance(out, list | tuple) else out.float()
        return apply_loss(self.loss_fn, out, y)

    def validate(self, model, epoch: int, train_loss: float) -> Validation:
        t, n = self.cfg.train, len(self.cfg.classes)
        if self.val_dl is None:  # no validation cases: select on the training loss
            nan = np.full(n, np.nan)
            return Validation(-train_loss, row={"val_loss": float("nan"), "pooled": nan, "per_img": nan})
        val_loss, pooled, per_img, overlay = _validate(model, self.val_dl, self.loss_fn, n, self.run.device, t.bf16,
                                                       t.val_steps, t.threshold)
        score = float(np.nanmean(pooled[1:])) if np.isfinite(pooled[1:]).any() else 0.0
        classes = self.cfg.classes
        metrics = {"epoch": epoch + 1, "val_dice": score, "val_loss": val_loss,
                   "val_dice_per_class": dict(zip(classes, map(float, pooled), strict=True)),
                   "val_dice_per_image_mean": dict(zip(classes, map(float, per_img), strict=True))}
        if self.writer is not None and overlay is not None:
            self.writer.add_image("val/overlay (red=GT, green=pred)", overlay, epoch + 1)
        return Validation(score, metrics, {"val_loss": val_loss, "pooled": pooled, "per_img": per_img})

    def report(self, e: Epoch) -> None:
        classes, v = self.cfg.classes, e.val.row
        val_loss, pooled, per_img = v["val_loss"], v["pooled"], v["per_img"]
        row = {"epoch": e.epoch + 1, "train_loss": e.train_loss, "val_loss": val_loss, "val_dice": e.val.score,
               "lr": e.lr, "seconds": e.seconds, **{f"val_dice_{c}": float(pooled[i]) for i, c in enumerate(classes)},
               **{f"val_img_dice_{c}": float(per_img[i]) for i, c in enumerate(classes)}}
        log_epoch(self.log, self.writer, row, {"loss/train": e.train_loss, "loss/val": val_loss, "dice/val": e.val.score,
                                               "lr": e.lr, **{f"dice_val/{c}": float(pooled[i])
                                                              for i, c in enumerate(classes[1:], 1)}})
        self.run.say(f"[{self.cfg.name}] epoch {e.epoch + 1}/{self.cfg.train.epochs} train_loss={e.train_loss:.4f} "
                     f"val_loss={val_loss:.4f} val_dice={e.val.score:.4f}{' *' if e.improved else ''} lr={e.lr:.2e} "
                     f"({e.seconds:.0f}s)", flush=True)


def train_segmentation(cfg: Config, run_dir: Path, resume: bool, records: list[dict] | None, verbose: bool) -> Path:
    """Train one 2-D segmentation config (see the module docstring); returns the run directory."""
    from monai.data import DataLoader

    from covidct.models.registry import build_model

    t = cfg.train
    run, norm, records = open_slice_run(cfg, run_dir, resume, verbose, records)
    say, classes, n_classes, cfg_dict = run.say, cfg.classes, len(cfg.classes), run.config
    split = make_split(cfg, records, run.dir, resume)
    by_id = {r["id"]: r for r in records}
    parts = {k: ds.make_samples([by_id[i] for i in v if i in by_id], cfg.task) for k, v in split.items()}
    parts["train"] = ds.select_negatives(parts["train"], cfg.data.negatives.fraction, cfg.data.negatives.include,
                                         t.seed)
    if not parts["train"]:
        raise ConfigError(f"data: no training slices with a {cfg.task} label in the configured sources")
    say(f"[{cfg.name}] task={cfg.task} model={cfg.model.name} train={len(parts['train'])} "
        f"val={len(parts['val'])} test={len(parts['test'])} slices; device={run.device}", flush=True)

    weights = None
    if cfg.loss.weights == "median_frequency":
        weights = median_frequency_weights((s["label"] for s in parts["train"]), n_classes)
        say(f"[{cfg.name}] median-frequency class weights: {np.round(weights, 4).tolist()}", flush=True)
    loss_fn = build_loss(cfg.loss, weights).to(run.device)
    model = build_model(cfg.model.name, 1, n_classes, **cfg.model.kwargs).to(run.device)
    opt, sched, progress = start_training(model, cfg.optimizer, cfg.schedule, t.epochs, init_from=cfg.model.init_from,
                                          last_path=run.last_path, resume=resume, say=say, name=cfg.name)

    train_tf = ds.build_transforms(t.input_size, norm, cfg.augment)
    val_tf = ds.build_transforms(t.input_size, norm, None)
    train_ds = ds.make_dataset(parts["train"], train_tf, t.cache_rate)
    val_ds = ds.make_dataset(parts["val"], val_tf, t.cache_rate) if parts["val"] else None
    gen = torch.Generator().manual_seed(t.seed + progress.start_epoch)
    if t.steps_per_epoch:
        sampler = torch.utils.data.RandomSampler(train_ds, replacement=True,
                                                 num_samples=t.steps_per_epoch * t.batch_size, generator=gen)
        train_dl = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers)
    else:
        train_dl = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True, generator=gen,
                              num_workers=t.num_workers, drop_last=len(train_ds) > t.batch_size)
    val_dl = DataLoader(val_ds, batch_size=t.batch_size, num_workers=t.num_workers) if val_ds else None

    writer, log = open_run_logs(run.dir, cfg.output.tensorboard, append=resume and progress.start_epoch > 0)
    ckpt = dict(name=cfg.model.name, kwargs=cfg.model.kwargs, in_channels=1, out_channels=n_classes, task=cfg.task,
                classes=classes, input_size=(t.input_size, t.input_size), normalisation=norm.as_dict(),
                thresholds={"foreground": t.threshold}, config=cfg_dict)
    task = SegmentationTask(cfg, run, loss_fn, train_dl, val_dl, writer, log, ckpt)
    p = fit(model, opt, sched, task, LoopSettings(t.epochs, t.max_minutes, t.patience, "val Dice"), progress,
            run.last_path, verbose)
    if writer is not None:
        writer.close()

    summary = {"name": cfg.name, "task": cfg.task, "model": cfg.model.name, "classes": classes,
               "best_epoch": p.best_epoch + 1, "best_val_dice": p.best if p.best_epoch >= 0 else None,
               "val": p.best_metrics, "epochs_run": p.epochs_run, "stopped": p.stopped,
               "train_time_s": round(p.elapsed, 1), "n_slices": {k: len(v) for k, v in parts.items()},
               "n_cases": {k: len({s["case"] for s in v}) for k, v in parts.items()}}
    if t.evaluate_test and parts["test"] and run.best_path.is_file():
        from covidct.evaluate.report import evaluate

        res = evaluate(run.best_path, [by_id[s["id"]] for s in parts["test"]], cfg.task, run.dir / "test",
                       batch_size=t.batch_size, bf16=t.bf16)
        summary["test"] = {"n_images": res["n_images"], "foreground_dice": res["foreground_mean"]["dice"],
                           "foreground_mean": res["foreground_mean"],
                           "dice_per_class": {c: res["per_class"][c]["dice"] for c in classes},
                           "global_accuracy": res["global_accuracy"]}
        if "dice_256_thresholds" in res:
            summary["test"]["mean_dice_256_thresholds"] = res["dice_256_thresholds"]["mean_dice"]
        say(f"[{cfg.name}] test: foreground Dice {res['foreground_mean']['dice']:.4f} over {res['n_images']} slices")
    finish_run(run.dir, summary, run.best_path, name=cfg.name, task=cfg.task, classes=classes,
               data={"sources": cfg_dict["data"]["sources"], "n_slices": summary["n_slices"]},
               split=json.loads((run.dir / "split.json").read_text())["info"]["cases"], config=cfg_dict,
               metrics={"val": p.best_metrics, "test": summary.get("test")})
    say(f"[{cfg.name}] done: {p.stopped}; best val Dice {summary['best_val_dice']} at epoch {p.best_epoch + 1}; "
        f"run dir {run.dir}", flush=True)
    return run.dir
