"""Click-guided refinement training (DeepGrow-like, the paper's positive/negative guidance maps).

The refinement network sees four channels on the model grid (``input_size``², 256 by default):

0. the slice in model-input space (covidct's one normalisation, as every 2-D model),
1. the current mask (the automatic result or the previous refinement; zeros when there is none),
2. positive guidance, 3. negative guidance: the clicks as MONAI deepgrow encodes them
   (``AddGuidanceSignald``: a one at each click, Gaussian-smoothed, scaled to [0, 1]).

and predicts the lesion (infection) mask. Training simulates the interaction as MONAI's deepgrow
``Interaction`` does: a starting mask (empty, or the ground truth corrupted like an automatic result:
grown, shrunk, a piece missed, a false blob added) gets a first click on its error region
(``FindDiscrepancyRegionsd`` + ``AddRandomGuidanced``: a point deep inside the larger of the missed /
false regions), then for a random number of rounds the network's own prediction becomes the current
mask and the next click goes on its remaining error. The loss is Dice + CE against the full label.

Config: ``kind: interactive`` (see ``configs/refine.yaml``); run with :func:`covidct.train.train`.

In 3-D (``model.name: unet3d``, 3-D sources such as ``phantom``; ``configs/refine3d_phantom.yaml``) the same
loop trains on whole volumes: HU clipped to ``volume.hu_range`` and scaled to [0, 1], clicks are 3-D points
on the 3-D error regions, and the checkpoint says ``spatial_dims: 3`` so that
:func:`covidct.interactive.refine_volume` runs it over the whole volume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.train.clicks import click_dice_curve, simulate_batch
from covidct.train.config import SectionedConfig
from covidct.train.loop import Epoch, LoopSettings, Task, Validation, fit
from covidct.train.runs import Progress, finish_run, make_optimizer, open_run, open_run_logs, write_split

CLASSES = ["background", "infection"]
IN_CHANNELS = 4  # image, current mask, positive guidance, negative guidance


@dataclass
class ClickConfig:
    sigma: float = 3.0  # Gaussian sigma of a click on the model grid (pixels)
    max_rounds: int = 4  # simulated clicks per sample: 1..max_rounds, the model's own output in between
    prior_empty_prob: float = 0.35  # start from no mask (first click only) ...
    prior_corrupt_prob: float = 0.65  # ... or from a corrupted ground truth (an "automatic" result)
    val_clicks: list[int] = field(default_factory=lambda: [1, 3, 5])


@dataclass
class InteractiveTrainConfig:
    steps: int = 300
    max_minutes: float | None = None
    batch_size: int = 8
    input_size: int = 256
    val_every: int = 50
    val_slices: int | None = 64
    seed: int = 0
    device: str = "auto"
    threshold: float = 0.5
    save_fp16: bool = False


@dataclass(kw_only=True)
class InteractiveConfig(SectionedConfig):
    kind: str
    name: str = "refine"
    model: dict = field(default_factory=lambda: {"name": "unet", "kwargs": {}})
    optimizer: dict = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    train: InteractiveTrainConfig = field(default_factory=InteractiveTrainConfig)
    clicks: ClickConfig = field(default_factory=ClickConfig)
    augment: dict = field(default_factory=lambda: {"flip_prob": 0.5})
    normalisation: dict | None = None
    volume: dict = field(default_factory=lambda: {"hu_range": [-1000.0, 500.0]})  # 3-D: HU clip -> [0, 1]


# --- data ---------------------------------------------------------------------------------------


def prepare_slices(records: list[dict], size: int, norm) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, S, S) model-space images, (N, S, S) infection labels and ids of records with an infection label."""
    from covidct.preprocess import resize_image_tensor, resize_label_tensor, to_model_input
    from covidct.train.datasets import task_label

    imgs, labs, ids = [], [], []
    for r in records:
        lab = task_label(r, "infection")
        if lab is None:
            continue
        x = to_model_input(np.asarray(r["image"], np.float32), bool(r.get("is_hu", False)), norm)
        imgs.append(resize_image_tensor(torch.from_numpy(x)[None], (size, size))[0].numpy())
        labs.append(resize_label_tensor(torch.from_numpy(lab)[None], (size, size))[0].numpy())
        ids.append(r["id"])
    if not imgs:
        raise ConfigError("data: no slices with an infection label in the configured sources")
    return np.stack(imgs).astype(np.float32), np.stack(labs).astype(np.uint8), ids


def prepare_volumes(records: list[dict], hu_range: list[float]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, z, y, x) volumes scaled to [0, 1] from ``hu_range`` (as 3-D segmentation training does), their
    (N, z, y, x) infection labels and ids. The volumes are used whole, so they must share one shape; each
    axis is padded to a multiple of 8."""
    from covidct.train.volumes import task_label3d

    lo, hi = (float(v) for v in hu_range)
    imgs, labs, ids = [], [], []
    for r in records:
        if r.get("lesions") is None:
            continue
        img = np.asarray(r["image"], np.float32)
        imgs.append(np.clip((img - lo) / (hi - lo), 0.0, 1.0))
        labs.append(task_label3d(None, r["lesions"], "infection"))
        ids.append(r["id"])
    if not imgs:
        raise ConfigError("data: no volumes with a lesion label in the configured sources")
    if len({i.shape for i in imgs}) > 1:
        raise ConfigError(f"data: 3-D interactive training uses whole volumes of one shape, got "
                          f"{sorted({i.shape for i in imgs})} (resample them to one grid first)")
    # pad the far end of each axis to a multiple of 8 (the U-Net's three halvings) with air and no lesion
    pad = [(0, -n % 8) for n in imgs[0].shape]
    imgs = [np.pad(i, pad) for i in imgs]
    labs = [np.pad(lab, pad) for lab in labs]
    return np.stack(imgs), np.stack(labs).astype(np.uint8), ids


# --- training -----------------------------------------------------------------------------------


class InteractiveTask(Task):
    """Simulated interactions as batches; one "epoch" of the loop is ``val_every`` steps, then the click
    Dice curve on the validation part (or the mean step loss) is the score."""

    def __init__(self, cfg: InteractiveConfig, run, model, data: tuple, loss_fn, rng, dims: int, writer, log,
                 ckpt: dict) -> None:
        self.cfg, self.run, self.model, self.loss_fn, self.rng, self.dims = cfg, run, model, loss_fn, rng, dims
        self.tr_img, self.tr_lab, self.va_img, self.va_lab = data
        self.writer, self.log, self.ckpt = writer, log, ckpt
        self.step, self.losses, self.t_start, self.over = 0, [], time.time(), False

    def batches(self, epoch: int):
        t, flip = self.cfg.train, float(self.cfg.augment.get("flip_prob", 0.5))
        last = min((epoch + 1) * t.val_every, t.steps)
        while self.step < last and not self.over:
            self.step += 1
            idx = self.rng.integers(0, len(self.tr_img), t.batch_size)
            imgs, labs = self.tr_img[idx].copy(), self.tr_lab[idx].copy()
            for i in range(len(idx)):  # flips (infection labels carry no left/right meaning)
                if self.rng.random() < flip:
                    imgs[i], labs[i] = imgs[i][..., ::-1], labs[i][..., ::-1]
                if self.rng.random() < flip:
                    imgs[i], labs[i] = imgs[i][..., ::-1, :], labs[i][..., ::-1, :]
                if self.dims == 3 and self.rng.random() < flip:
                    imgs[i], labs[i] = imgs[i][::-1], labs[i][::-1]
            labs = np.ascontiguousarray(labs)
            x = simulate_batch(self.model, np.ascontiguousarray(imgs), labs, self.cfg.clicks, self.rng,
                               self.run.device)
            yield x, labs

    def loss(self, model, batch) -> torch.Tensor:
        from covidct.train.losses import apply_loss

        x, labs = batch
        model.train()  # the simulation ran the model in eval mode
        out = model(torch.from_numpy(x).to(self.run.device))
        return apply_loss(self.loss_fn, out, torch.from_numpy(labs).long()[:, None].to(self.run.device))

    def after_step(self, loss: float) -> None:
        self.losses.append(loss)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, self.step)
        mm = self.cfg.train.max_minutes
        self.over = mm is not None and time.time() - self.t_start >= mm * 60

    def validate(self, model, epoch: int, train_loss: float) -> Validation:
        t, cc = self.cfg.train, self.cfg.clicks
        row = {"step": self.step, "loss": float(np.mean(self.losses[-t.val_every:])),
               "time_s": round(time.time() - self.t_start, 1)}
        if self.va_img is None:
            return Validation(-row["loss"], row, row)
        curve = click_dice_curve(model, self.va_img, self.va_lab, sorted(set(cc.val_clicks)), cc.sigma,
                                 self.run.device)
        row.update({f"val_dice_{k}clicks": v for k, v in curve.items()})
        if self.writer is not None:
            for k, v in curve.items():
                self.writer.add_scalar(f"val/dice_{k}clicks", v, self.step)
        return Validation(float(np.mean(list(curve.values()))), row, row)

    def save_best(self, model, metrics: dict) -> None:
        from covidct.models.checkpoint import save_checkpoint

        save_checkpoint(self.run.best_path, model, **self.ckpt, metrics=metrics, fp16=self.cfg.train.save_fp16)

    def report(self, e: Epoch) -> None:
        row = e.val.row
        self.run.say(f"[{self.cfg.name}] step {row['step']}: "
                     + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step"), flush=True)
        self.log.write(row)

    def stop_reason(self) -> str | None:
        return "time budget" if self.over else None


def _prepare_data(cfg: InteractiveConfig, data, records, dims: int, norm, run):
    """Split, then model-grid slices (2-D) or scaled whole volumes (3-D) of the train and val parts."""
    from covidct.train import datasets as ds

    t = cfg.train
    split = ds.configured_split(records, data.split)
    ds.check_split(records, split)
    by_id = {r["id"]: r for r in records}
    write_split(run.dir, split, data.split.seed)
    hu_range = [float(v) for v in cfg.volume.get("hu_range", [-1000.0, 500.0])]

    def prepare(recs: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        return prepare_volumes(recs, hu_range) if dims == 3 else prepare_slices(recs, t.input_size, norm)

    tr_img, tr_lab, _ = prepare([by_id[i] for i in split["train"]])
    val_recs = [by_id[i] for i in split["val"]]
    va_img = va_lab = None
    if val_recs:
        va_img, va_lab, _ = prepare(val_recs)
        if t.val_slices:
            keep = np.random.default_rng(0).permutation(len(va_img))[: t.val_slices]
            va_img, va_lab = va_img[keep], va_lab[keep]
    split_cases = {k: sorted({ds._group(by_id[i]) for i in v}) for k, v in split.items()}
    return tr_img, tr_lab, va_img, va_lab, split_cases, hu_range


def train_interactive(raw: dict, run_dir: str | Path | None = None, resume: bool = False, *,
                      records: list[dict] | None = None, verbose: bool = True) -> Path:
    """Train the refinement network from a ``kind: interactive`` config dict; returns the run directory."""
    from covidct.models.registry import SPATIAL_DIMS, TASK_KIND, build_model
    from covidct.preprocess import NormalisationConfig
    from covidct.train import datasets as ds
    from covidct.train.config import DataConfig, LossConfig, OptimizerConfig, ScheduleConfig
    from covidct.train.losses import build_loss
    from covidct.train.schema import build

    cfg = build(InteractiveConfig, raw, "")
    data = build(DataConfig, cfg.data, "data")
    loss_cfg = build(LossConfig, cfg.loss, "loss")
    ocfg = build(OptimizerConfig, cfg.optimizer, "optimizer")
    build(ScheduleConfig, cfg.schedule, "schedule")
    if TASK_KIND.get(cfg.model.get("name")) != "segmentation":
        raise ConfigError(f"model.name: {cfg.model.get('name')!r} is not a segmentation model")
    dims = SPATIAL_DIMS.get(cfg.model["name"], 2)  # 3: whole volumes, clicks with a slice index
    if not data.sources:
        raise ConfigError("data.sources: at least one source is required")
    t, cc = cfg.train, cfg.clicks
    if dims == 2 and (t.input_size % 16 or t.input_size < 32):
        raise ConfigError(f"train.input_size: must be a multiple of 16 (>= 32), got {t.input_size}")
    run = open_run(run_dir or cfg.output.get("run_dir", "runs/{name}").format(name=cfg.name), resume, raw,
                   seed=t.seed, device_name=t.device, verbose=verbose, refuse=("best.pt",))
    rng = np.random.default_rng(t.seed)
    norm = NormalisationConfig.from_dict(cfg.normalisation)
    if records is None:
        if dims == 3:
            from covidct.train.volumes import load_volume_records

            records = load_volume_records(data.sources)
        else:
            records = ds.load_records(data.sources)
    tr_img, tr_lab, va_img, va_lab, split_cases, hu_range = _prepare_data(cfg, data, records, dims, norm, run)
    unit = "volumes" if dims == 3 else "slices"
    run.say(f"[{cfg.name}] interactive: train {len(tr_img)} {unit}, val {0 if va_img is None else len(va_img)}; "
            f"device={run.device}", flush=True)

    mk = dict(cfg.model.get("kwargs") or {})
    model = build_model(cfg.model["name"], IN_CHANNELS, 2, **mk).to(run.device)
    loss_fn = build_loss(loss_cfg).to(run.device)
    opt = make_optimizer(ocfg, model.parameters())
    # the schedule runs over steps (an "epoch" of the loop is a validation interval)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.steps, eta_min=ocfg.lr * 0.05) \
        if cfg.schedule.get("name") == "cosine" else None
    writer, log = open_run_logs(run.dir, bool(cfg.output.get("tensorboard", True)), False, jsonl=True)
    extra = {"interactive": True, "in_channels_meaning": ["image", "mask", "positive", "negative"],
             "sigma": cc.sigma}
    size = (t.input_size, t.input_size)
    if dims == 3:  # the network sees whole training volumes; inference slides windows of that size
        extra.update({"spatial_dims": 3, "hu_range": hu_range})
        size = tuple(int(n) for n in tr_img.shape[1:])
    ckpt = dict(name=cfg.model["name"], kwargs=mk, in_channels=IN_CHANNELS, out_channels=2, task="refine",
                classes=CLASSES, input_size=size, normalisation=norm.as_dict(),
                thresholds={"foreground": t.threshold}, config=raw, extra=extra)
    task = InteractiveTask(cfg, run, model, (tr_img, tr_lab, va_img, va_lab), loss_fn, rng, dims, writer, log, ckpt)
    settings = LoopSettings(math.ceil(t.steps / t.val_every), step_schedule=True, progress_bar=False)
    p = fit(model, opt, sched, task, settings, Progress(), None, verbose)
    if writer is not None:
        writer.close()
    elapsed = round(time.time() - task.t_start, 1)
    best_step = p.best_metrics.get("step", 0)
    summary = {"name": cfg.name, "kind": "interactive", "best_step": best_step, "val": p.best_metrics,
               "steps_run": task.step, "stopped": "steps" if p.stopped == "epochs" else p.stopped,
               "train_time_s": elapsed, f"n_{unit}": {"train": len(tr_img), "val": 0 if va_img is None else len(va_img)}}
    finish_run(run.dir, summary, run.best_path, name=cfg.name, task="refine", classes=CLASSES,
               data={"sources": raw.get("data", {}).get("sources"), f"n_{unit}": summary[f"n_{unit}"]},
               split=split_cases, config=raw, metrics={"val": p.best_metrics})
    run.say(f"[{cfg.name}] done ({summary['stopped']}): best at step {best_step}, {p.best_metrics}", flush=True)
    return run.dir
