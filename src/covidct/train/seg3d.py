"""3-D segmentation training (seeds 000/001, ``kind: seg3d``): the task plugged into the one loop.

A config with ``kind: seg3d`` goes through :func:`covidct.train.train` to :func:`train_seg3d`, which trains
with :func:`covidct.train.loop.fit`: batches of patches (``volume.num_samples`` per loaded volume) drawn by
MONAI's positive/negative-balanced cropping from a bounded cache (:mod:`covidct.train.volumes` holds the
config, records and transforms), a Dice/CE loss, and every ``train.val_every`` epochs validation by
sliding-window inference with Gaussian blending (pooled foreground Dice, and the 3-D volume playback of
MONAI's ``plot_2d_or_3d_image`` in TensorBoard). Without validation volumes best.pt is the epoch with the
lowest training loss. At the end best.pt is scored on the test volumes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.models.volume_inference import sliding_window_probs
from covidct.train.loop import Epoch, LoopSettings, Task, Validation, fit
from covidct.train.runs import finish_run, open_run, open_run_logs, start_training, write_split
from covidct.train.volumes import (
    VolumeConfig,
    deterministic_transforms,
    load_seg3d_config,
    load_volume_records,
    make_volume_dataset,
)


def _dice_per_class(pred: torch.Tensor, gt: torch.Tensor, n_classes: int) -> np.ndarray:
    """Dice per class of two label volumes (NaN where a class is absent from both)."""
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        p, g = pred == c, gt == c
        den = int(p.sum() + g.sum())
        if den:
            out[c] = 2.0 * int((p & g).sum()) / den
    return out


@torch.no_grad()
def evaluate_volumes(model, samples: list[dict], vcfg: VolumeConfig, n_classes: int, bf16: bool = False,
                     writer=None, step: int = 0) -> dict:
    """Sliding-window Dice per class over preprocessed volumes (pooled over volumes and mean per volume)."""
    model.eval()
    per_vol, tp, den = [], np.zeros(n_classes), np.zeros(n_classes)
    for k, s in enumerate(samples):
        x = torch.as_tensor(np.asarray(s["image"]))[None].float()
        gt = torch.as_tensor(np.asarray(s["label"]))[0].long()
        prob = sliding_window_probs(model, x, vcfg.patch, overlap=vcfg.overlap, blend=vcfg.blend,
                                    sw_batch_size=vcfg.sw_batch_size, bf16=bf16, mirror_axes=vcfg.mirror_axes)
        pred = prob.argmax(1)[0].cpu()
        per_vol.append(_dice_per_class(pred, gt, n_classes))
        for c in range(n_classes):
            tp[c] += int(((pred == c) & (gt == c)).sum())
            den[c] += int((pred == c).sum() + (gt == c).sum())
        if writer is not None and k == 0:
            from monai.visualize import plot_2d_or_3d_image

            # the 3-D volume playback (animated GIF along z) of image, label and prediction
            vol = lambda t: t[None, None].float().permute(0, 1, 3, 4, 2) / max(n_classes - 1, 1)  # noqa: E731
            plot_2d_or_3d_image(x.permute(0, 1, 3, 4, 2), step, writer, frame_dim=-1, tag="val/image")
            plot_2d_or_3d_image(vol(gt), step, writer, frame_dim=-1, tag="val/label")
            plot_2d_or_3d_image(vol(pred), step, writer, frame_dim=-1, tag="val/prediction")
    pooled = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
    mean_vol = np.nanmean(np.stack(per_vol), 0) if per_vol else np.full(n_classes, np.nan)
    return {"pooled": pooled, "per_volume_mean": mean_vol, "per_volume": per_vol}


def preprocessed_volumes(records: list[dict], task: str, vcfg: VolumeConfig) -> list[dict]:
    """Records through the cached (deterministic) transforms: what validation and test score."""
    det = deterministic_transforms(task, vcfg)
    return [det(r) for r in records]


class Seg3DTask(Task):
    """Patches from the volume cache; validation every ``val_every`` epochs by sliding-window Dice."""

    def __init__(self, cfg, run, loader, steps: int, loss_fn, val_samples: list[dict], writer, log, ckpt: dict) -> None:
        self.cfg, self.run, self.loader, self.steps, self.loss_fn = cfg, run, loader, steps, loss_fn
        self.val_samples, self.writer, self.log, self.ckpt = val_samples, writer, log, ckpt
        self.classes = cfg.classes
        self._it = None  # one iterator across epochs: an epoch is `steps` batches, not a pass

    def batches(self, epoch: int):
        if self._it is None:
            self._it = iter(self.loader)
        for _ in range(self.steps):
            try:
                yield next(self._it)
            except StopIteration:
                self._it = iter(self.loader)
                yield next(self._it)

    def loss(self, model, batch) -> torch.Tensor:
        from covidct.train.losses import apply_loss

        dev, bf16 = self.run.device, self.cfg.train.bf16
        x, y = batch["image"].to(dev), batch["label"].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        return apply_loss(self.loss_fn, out if not bf16 else out.float(), y)

    def validate(self, model, epoch: int, train_loss: float) -> Validation:
        t = self.cfg.train
        if not self.val_samples:  # no validation volumes: select on the training loss
            return Validation(-train_loss)
        if (epoch + 1) % t.val_every and epoch + 1 != t.epochs:
            return Validation(None)
        res = evaluate_volumes(model, self.val_samples, self.cfg.volume, len(self.classes), t.bf16, self.writer,
                               epoch + 1)
        score = float(np.nanmean(res["pooled"][1:]))
        per_class = dict(zip(self.classes, map(float, res["pooled"]), strict=True))
        return Validation(score, {"foreground_dice": score, "dice_per_class": per_class},
                          {"val_dice": score, **{f"val_dice_{c}": d for c, d in per_class.items()}})

    def save_best(self, model, metrics: dict) -> None:
        from covidct.models.checkpoint import save_checkpoint

        save_checkpoint(self.run.best_path, model, **self.ckpt, metrics=metrics, fp16=self.cfg.train.save_fp16)

    def report(self, e: Epoch) -> None:
        row = {"epoch": e.epoch + 1, "train_loss": e.train_loss, "lr": e.lr, "val_dice": None,
               **{f"val_dice_{c}": None for c in self.classes}, **e.val.row, "time_s": e.seconds}  # fixed columns
        self.log.write(row)
        if self.writer is not None:
            for k, val in row.items():
                if k != "epoch" and val is not None:
                    self.writer.add_scalar(k, val, e.epoch + 1)
        self.run.say(f"[{self.cfg.name}] epoch {e.epoch + 1}/{self.cfg.train.epochs} loss {e.train_loss:.4f}"
                     + (f" val Dice {row['val_dice']:.4f}" if row["val_dice"] is not None else "")
                     + f" ({row['time_s']} s)", flush=True)


def train_seg3d(raw: dict, run_dir: str | Path | None = None, resume: bool = False, *,
                records: list[dict] | None = None, verbose: bool = True) -> Path:
    """Train a 3-D segmentation model from a ``kind: seg3d`` config dict; returns the run directory."""
    from monai.data import DataLoader, list_data_collate

    from covidct.models.registry import build_model
    from covidct.train import datasets as ds
    from covidct.train.losses import build_loss

    cfg, sh = load_seg3d_config(raw)
    t, v = cfg.train, cfg.volume
    run = open_run(run_dir or sh["output"].run_dir.format(name=cfg.name), resume, raw, seed=t.seed,
                   device_name=t.device, verbose=verbose)
    say, classes, n_classes = run.say, cfg.classes, len(cfg.classes)
    if records is None:
        records = load_volume_records(sh["data"].sources)
    sp = sh["data"].split
    split = ds.configured_split(records, sp)
    by_id = {r["id"]: r for r in records}
    parts = {k: [by_id[i] for i in ids if i in by_id] for k, ids in split.items()}
    if not parts["train"]:
        raise ConfigError("data: no training volumes")
    write_split(run.dir, split, sp.seed)
    say(f"[{cfg.name}] seg3d task={cfg.task} model={cfg.model['name']} volumes train={len(parts['train'])} "
        f"val={len(parts['val'])} test={len(parts['test'])}; device={run.device}", flush=True)

    train_ds = make_volume_dataset(parts["train"], cfg.task, v, cfg.augment,
                                   Path(v.cache_dir) if v.cache_dir else run.dir / "cache")
    val_samples = preprocessed_volumes(parts["val"][: t.val_volumes] if t.val_volumes else parts["val"], cfg.task, v)
    vols_per_batch = max(1, t.batch_size // v.num_samples)
    dl = DataLoader(train_ds, batch_size=vols_per_batch, shuffle=True, num_workers=t.num_workers,
                    collate_fn=list_data_collate)
    steps = t.steps_per_epoch or max(1, math.ceil(len(train_ds) / vols_per_batch))

    mk = dict(cfg.model.get("kwargs") or {})
    model = build_model(cfg.model["name"], 1, n_classes, **mk).to(run.device)
    loss_fn = build_loss(sh["loss"]).to(run.device)
    opt, sched, progress = start_training(model, sh["optimizer"], sh["schedule"], t.epochs,
                                          init_from=cfg.model.get("init_from"), last_path=run.last_path,
                                          resume=resume, say=say, name=cfg.name)
    writer, log = open_run_logs(run.dir, sh["output"].tensorboard, append=resume and progress.start_epoch > 0)
    extra = {"spatial_dims": 3, "spacing": v.spacing, "hu_range": v.hu_range, "patch": v.patch,
             "overlap": v.overlap, "blend": v.blend, "sw_batch_size": v.sw_batch_size, "mirror_axes": v.mirror_axes}
    ckpt = dict(name=cfg.model["name"], kwargs=mk, in_channels=1, out_channels=n_classes, task=cfg.task,
                classes=classes, input_size=v.patch, normalisation={}, config=raw, extra=extra)
    task = Seg3DTask(cfg, run, dl, steps, loss_fn, val_samples, writer, log, ckpt)
    p = fit(model, opt, sched, task, LoopSettings(t.epochs, t.max_minutes, t.patience, "val Dice", "validations"),
            progress, run.last_path, verbose)
    if writer is not None:
        writer.close()
    summary = {"name": cfg.name, "kind": "seg3d", "task": cfg.task, "model": cfg.model["name"], "classes": classes,
               "best_epoch": p.best_epoch + 1,
               "best_val_dice": p.best if p.best_epoch >= 0 and val_samples else None, "val": p.best_metrics,
               "epochs_run": p.epochs_run, "stopped": p.stopped, "train_time_s": round(p.elapsed, 1),
               "n_volumes": {k: len(q) for k, q in parts.items()}}
    if t.evaluate_test and parts["test"] and run.best_path.is_file():
        from covidct.models.checkpoint import load_model

        m, _ = load_model(run.best_path)
        res = evaluate_volumes(m, preprocessed_volumes(parts["test"], cfg.task, v), v, n_classes, t.bf16)
        summary["test"] = {"n_volumes": len(parts["test"]),
                           "foreground_dice": float(np.nanmean(res["pooled"][1:])),
                           "dice_per_class": dict(zip(classes, map(float, res["pooled"]), strict=True)),
                           "dice_per_class_mean_per_volume": dict(zip(classes, map(float, res["per_volume_mean"]),
                                                                      strict=True))}
        say(f"[{cfg.name}] test Dice per class: {summary['test']['dice_per_class']}", flush=True)
    finish_run(run.dir, summary, run.best_path, name=cfg.name, task=cfg.task, classes=classes,
               data={"sources": raw.get("data", {}).get("sources"), "n_volumes": summary["n_volumes"]},
               split=split, config=raw, metrics={"val": p.best_metrics, "test": summary.get("test")})
    say(f"[{cfg.name}] done: {p.stopped}; best val Dice {summary['best_val_dice']} at epoch {p.best_epoch + 1}; "
        f"run dir {run.dir}", flush=True)
    return run.dir
