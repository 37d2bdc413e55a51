"""Self-supervised contrastive pre-training (task ``contrastive``), as the UCSD COVID-CT paper's Self-Trans.

SimCLR (Chen et al. 2020): two random augmentations of the same unlabelled image are pulled together and
pushed away from every other image of the batch (NT-Xent, MONAI ``ContrastiveLoss``). The network is a
classification network of the registry built with ``pretrain.dim`` outputs, so its last linear layer is
the projection; a classification config then starts from it with ``model.init_from: <this run>``, which
loads every weight except that layer (see :func:`covidct.train.loop.init_weights`).

Labels are ignored: any source with images will do. Keep tuning and test images out of ``data.sources``
(e.g. ``{name: ucsd, split: train}`` only), so the representation never sees them. The validation part of
the split (fractions by case) scores the contrastive loss on fixed augmentations; the best epoch by that
loss is ``best.pt``. Run folder as every training run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError


class TwoViews(torch.utils.data.Dataset):
    """Each item: two independent augmentations of one cached image."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[i][0], self.base[i][0]


def _samples(records: list[dict]) -> list[dict]:
    from covidct.train.datasets import _group

    return [{"image": np.asarray(r["image"], np.float32), "is_hu": bool(r.get("is_hu", False)), "target": 0,
             "id": r["id"], "case": _group(r)} for r in records if r.get("image") is not None]


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


def train_contrastive(cfg, run_dir: str | Path | None, resume: bool, records: list[dict] | None,
                      verbose: bool) -> Path:
    """Train one ``contrastive`` config (see the module docstring); returns the run directory."""
    from monai.losses import ContrastiveLoss
    from monai.utils import set_determinism
    from tqdm import tqdm

    from covidct.models.checkpoint import save_checkpoint, write_card
    from covidct.models.registry import build_model
    from covidct.preprocess import NormalisationConfig
    from covidct.train import datasets as ds
    from covidct.train.classify import ClassifyDataset, build_augment
    from covidct.train.config import config_to_dict
    from covidct.train.loop import (
        _device,
        _make_split,
        _optimizer,
        _scheduler,
        log_epoch,
        open_run_logs,
        prepare_run_dir,
        restore_training_state,
        save_training_state,
        stop_reason,
    )

    say = print if verbose else (lambda *a, **k: None)
    run_dir, last_path, best_path = prepare_run_dir(cfg, run_dir, resume)
    t, p = cfg.train, cfg.pretrain
    set_determinism(seed=t.seed)
    device = _device(t.device)
    norm = NormalisationConfig.from_dict(cfg.normalisation)
    if records is None:
        records = ds.load_records(cfg.data.sources)
    records = [r for r in records if r.get("image") is not None]
    if not records:
        raise ConfigError("data: the configured sources hold no images")
    split = _make_split(cfg, records, run_dir, resume)
    by_id = {r["id"]: r for r in records}
    parts = {k: _samples([by_id[i] for i in v if i in by_id]) for k, v in split.items()}
    if len(parts["train"]) < 2:
        raise ConfigError("data: contrastive pre-training needs at least 2 training images")
    if len(parts["train"]) < t.batch_size:
        raise ConfigError(f"train.batch_size: {t.batch_size} is more than the {len(parts['train'])} training images")
    say(f"[{cfg.name}] task=contrastive model={cfg.model.name} dim={p.dim} temperature={p.temperature} "
        f"train={len(parts['train'])} val={len(parts['val'])} images; device={device}", flush=True)

    model = build_model(cfg.model.name, 1, p.dim, **cfg.model.kwargs).to(device)
    loss_fn = ContrastiveLoss(temperature=p.temperature)
    opt = _optimizer(cfg, model.parameters())
    sched = _scheduler(cfg, opt)
    start_epoch, best, best_epoch, bad, elapsed, best_metrics = 0, -float("inf"), -1, 0, 0.0, {}
    if resume and last_path.is_file():
        start_epoch, best, best_epoch, bad, elapsed, best_metrics = restore_training_state(last_path, model, opt, sched)
        say(f"[{cfg.name}] resumed after epoch {start_epoch - 1}")

    augment = build_augment(cfg)
    t0 = time.time()
    train_ds = TwoViews(ClassifyDataset(parts["train"], norm, t.input_size, augment))
    val_ds = TwoViews(ClassifyDataset(parts["val"], norm, t.input_size, augment)) if parts["val"] else None
    say(f"[{cfg.name}] cached {len(train_ds)} + {len(val_ds) if val_ds else 0} images in {time.time() - t0:.0f}s",
        flush=True)
    gen = torch.Generator().manual_seed(t.seed + start_epoch)
    n_draw = (t.steps_per_epoch * t.batch_size) if t.steps_per_epoch else len(train_ds)
    sampler = torch.utils.data.RandomSampler(train_ds, replacement=bool(t.steps_per_epoch), num_samples=n_draw,
                                             generator=gen)
    # full batches only: NT-Xent's negatives are the rest of the batch
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler,
                                           num_workers=t.num_workers, drop_last=True)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=t.batch_size) if val_ds else None

    writer, log = open_run_logs(run_dir, cfg.output.tensorboard, append=resume and start_epoch > 0)
    cfg_dict = config_to_dict(cfg)
    ckpt_common = dict(name=cfg.model.name, kwargs=cfg.model.kwargs, in_channels=1, out_channels=p.dim,
                       task=cfg.task, classes=[], input_size=(t.input_size, t.input_size),
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
        for a, b in bar:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                z = model(torch.cat([a, b]).to(device))  # one pass: BatchNorm sees both views together
            za, zb = z.float().chunk(2)
            loss = loss_fn(za, zb)
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
        val_loss = _val_loss(model, val_dl, loss_fn, device, t.bf16, t.seed) if val_dl is not None else train_loss
        elapsed += time.time() - t0
        score = -val_loss if np.isfinite(val_loss) else -float("inf")
        improved = score > best
        if improved:
            best, best_epoch, bad = score, epoch, 0
            best_metrics = {"epoch": epoch + 1, "val_loss": val_loss, "train_loss": train_loss}
            save_checkpoint(best_path, model, **ckpt_common, metrics={"val": best_metrics}, fp16=t.save_fp16)
        else:
            bad += 1
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
               "seconds": round(time.time() - t0, 2)}
        log_epoch(log, writer, row, {"loss/train": train_loss, "loss/val": val_loss, "lr": lr})
        say(f"[{cfg.name}] epoch {epoch + 1}/{t.epochs} train_loss={train_loss:.4f} val_loss={val_loss:.4f}"
            f"{' *' if improved else ''} lr={lr:.2e} ({row['seconds']:.0f}s)", flush=True)
        save_training_state(last_path, model, opt, sched, epoch, best, best_epoch, bad, elapsed, best_metrics)
        if reason := stop_reason(t, bad, elapsed, "validation loss"):
            stopped = reason
            break
    if writer is not None:
        writer.close()
    summary = {"name": cfg.name, "task": cfg.task, "model": cfg.model.name, "dim": p.dim,
               "temperature": p.temperature, "best_epoch": best_epoch + 1, "val": best_metrics,
               "epochs_run": epoch + 1, "stopped": stopped, "train_time_s": round(elapsed, 1),
               "n_images": {k: len(v) for k, v in parts.items()}}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    if best_path.is_file():
        split_cases = json.loads((run_dir / "split.json").read_text())["info"]["cases"]
        write_card(run_dir / "card.json", best_path, name=cfg.name, version="0", task=cfg.task, classes=[],
                   data={"sources": cfg_dict["data"]["sources"], "n_images": summary["n_images"]},
                   split=split_cases, config=cfg_dict, training_time_s=summary["train_time_s"],
                   metrics={"val": best_metrics}, command=f"covidct train {run_dir / 'config.resolved.yaml'}")
    say(f"[{cfg.name}] done: {stopped}; best validation loss {-best if best_epoch >= 0 else None} at epoch "
        f"{best_epoch + 1}; run dir {run_dir}", flush=True)
    return run_dir
