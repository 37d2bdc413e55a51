"""Self-supervised contrastive pre-training (task ``contrastive``), as the UCSD COVID-CT paper's Self-Trans.

SimCLR (Chen et al. 2020): two random augmentations of the same unlabelled image are pulled together and
pushed away from every other image of the batch (NT-Xent, MONAI ``ContrastiveLoss``). The network is a
classification network of the registry built with ``pretrain.dim`` outputs, so its last linear layer is
the projection; a classification config then starts from it with ``model.init_from: <this run>``, which
loads every weight except that layer (see :func:`covidct.train.runs.init_weights`).

Labels are ignored: any source with images will do. Keep tuning and test images out of ``data.sources``
(e.g. ``{name: ucsd, split: train}`` only), so the representation never sees them. The validation part of
the split (fractions by case) scores the contrastive loss on fixed augmentations; the best epoch by that
loss is ``best.pt``. Run folder as every training run; the loop is :func:`covidct.train.loop.fit`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.train.loop import Epoch, LoaderTask, LoopSettings, Validation, fit
from covidct.train.runs import finish_run, log_epoch


class TwoViews(torch.utils.data.Dataset):
    """Each item: two independent augmentations of one cached image."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[i][0], self.base[i][0]


@torch.no_grad()
def _val_loss(model, loader, loss_fn, device, bf16: bool, seed: int) -> float:
    """Contrastive loss on the validation pairs, with augmentations drawn from a fixed seed every epoch."""
    state = np.random.get_state(), torch.get_rng_state()
    np.random.seed(seed)
    torch.manual_seed(seed)
    model.eval()
    total, n = 0.0, 0
    try:
        for a, b in loader:
            if len(a) < 2:
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                za, zb = model(a.to(device)), model(b.to(device))
            total += float(loss_fn(za.float(), zb.float())) * len(a)
            n += len(a)
    finally:
        np.random.set_state(state[0])
        torch.set_rng_state(state[1])
    return total / n if n else float("nan")


class ContrastiveTask(LoaderTask):
    """Pairs of views through the network in one pass; validation by the contrastive loss."""

    def loss(self, model, batch) -> torch.Tensor:
        a, b = batch
        dev = self.run.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16):
            z = model(torch.cat([a, b]).to(dev))  # one pass: BatchNorm sees both views together
        za, zb = z.float().chunk(2)
        return self.loss_fn(za, zb)

    def validate(self, model, epoch: int, train_loss: float) -> Validation:
        t = self.cfg.train
        val_loss = (_val_loss(model, self.val_dl, self.loss_fn, self.run.device, t.bf16, t.seed)
                    if self.val_dl is not None else train_loss)
        score = -val_loss if np.isfinite(val_loss) else -float("inf")
        return Validation(score, {"epoch": epoch + 1, "val_loss": val_loss, "train_loss": train_loss})

    def report(self, e: Epoch) -> None:
        val_loss = e.val.metrics["val_loss"]
        row = {"epoch": e.epoch + 1, "train_loss": e.train_loss, "val_loss": val_loss, "lr": e.lr,
               "seconds": e.seconds}
        log_epoch(self.log, self.writer, row, {"loss/train": e.train_loss, "loss/val": val_loss, "lr": e.lr})
        self.run.say(f"[{self.cfg.name}] epoch {e.epoch + 1}/{self.cfg.train.epochs} train_loss={e.train_loss:.4f} "
                     f"val_loss={val_loss:.4f}{' *' if e.improved else ''} lr={e.lr:.2e} ({e.seconds:.0f}s)",
                     flush=True)


def train_contrastive(cfg, run_dir: Path, resume: bool, records: list[dict] | None, verbose: bool) -> Path:
    """Train one ``contrastive`` config (see the module docstring); returns the run directory."""
    from monai.losses import ContrastiveLoss

    from covidct.models.registry import build_model
    from covidct.train.augment import ClassifyDataset, build_augment
    from covidct.train.classify import image_samples, make_loaders
    from covidct.train.runs import make_split, open_run_logs, open_slice_run, start_training

    t, p = cfg.train, cfg.pretrain
    run, norm, records = open_slice_run(cfg, run_dir, resume, verbose, records)
    say, cfg_dict = run.say, run.config
    records = [r for r in records if r.get("image") is not None]
    if not records:
        raise ConfigError("data: the configured sources hold no images")
    split = make_split(cfg, records, run.dir, resume)
    by_id = {r["id"]: r for r in records}
    parts = {k: image_samples([by_id[i] for i in v if i in by_id], lambda r: 0) for k, v in split.items()}
    if len(parts["train"]) < 2:
        raise ConfigError("data: contrastive pre-training needs at least 2 training images")
    if len(parts["train"]) < t.batch_size:
        raise ConfigError(f"train.batch_size: {t.batch_size} is more than the {len(parts['train'])} training images")
    say(f"[{cfg.name}] task=contrastive model={cfg.model.name} dim={p.dim} temperature={p.temperature} "
        f"train={len(parts['train'])} val={len(parts['val'])} images; device={run.device}", flush=True)

    model = build_model(cfg.model.name, 1, p.dim, **cfg.model.kwargs).to(run.device)
    loss_fn = ContrastiveLoss(temperature=p.temperature)
    opt, sched, progress = start_training(model, cfg.optimizer, cfg.schedule, t.epochs, init_from=None,
                                          last_path=run.last_path, resume=resume, say=say, name=cfg.name)
    augment = build_augment(cfg)
    t0 = time.time()
    train_ds = TwoViews(ClassifyDataset(parts["train"], norm, t.input_size, augment))
    val_ds = TwoViews(ClassifyDataset(parts["val"], norm, t.input_size, augment)) if parts["val"] else None
    say(f"[{cfg.name}] cached {len(train_ds)} + {len(val_ds) if val_ds else 0} images in {time.time() - t0:.0f}s",
        flush=True)
    # full batches only: NT-Xent's negatives are the rest of the batch
    train_dl, val_dl = make_loaders(cfg, train_ds, val_ds, progress.start_epoch, p.dim, full_batches=True)
    writer, log = open_run_logs(run.dir, cfg.output.tensorboard, append=resume and progress.start_epoch > 0)
    ckpt = dict(name=cfg.model.name, kwargs=cfg.model.kwargs, in_channels=1, out_channels=p.dim, task=cfg.task,
                classes=[], input_size=(t.input_size, t.input_size), normalisation=norm.as_dict(), config=cfg_dict)
    task = ContrastiveTask(cfg, run, loss_fn, train_dl, val_dl, writer, log, ckpt)
    prog = fit(model, opt, sched, task, LoopSettings(t.epochs, t.max_minutes, t.patience, "validation loss"),
               progress, run.last_path, verbose)
    if writer is not None:
        writer.close()
    summary = {"name": cfg.name, "task": cfg.task, "model": cfg.model.name, "dim": p.dim,
               "temperature": p.temperature, "best_epoch": prog.best_epoch + 1, "val": prog.best_metrics,
               "epochs_run": prog.epochs_run, "stopped": prog.stopped, "train_time_s": round(prog.elapsed, 1),
               "n_images": {k: len(v) for k, v in parts.items()}}
    finish_run(run.dir, summary, run.best_path, name=cfg.name, task=cfg.task, classes=[],
               data={"sources": cfg_dict["data"]["sources"], "n_images": summary["n_images"]},
               split=json.loads((run.dir / "split.json").read_text())["info"]["cases"], config=cfg_dict,
               metrics={"val": prog.best_metrics})
    say(f"[{cfg.name}] done: {prog.stopped}; best validation loss {-prog.best if prog.best_epoch >= 0 else None} "
        f"at epoch {prog.best_epoch + 1}; run dir {run.dir}", flush=True)
    return run.dir
