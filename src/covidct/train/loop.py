"""The one training entry point for covidct's 2-D models: ``train(config) -> run dir``.

A run directory holds::

    config.resolved.yaml   the validated config (all defaults filled in)
    split.json             case-level split: record ids and case ids per part
    log.csv                one row per epoch (losses, validation Dice per class, lr, time)
    tb/                    TensorBoard curves and a validation overlay image per epoch
    best.pt                best checkpoint by validation Dice (covidct checkpoint, see models.checkpoint)
    last.pt                full training state for ``resume=True``
    metrics.json           summary (best epoch, validation and test metrics, timing)
    card.json              model card of best.pt (sha256, data, split cases, config, metrics)
    test/                  evaluation report of best.pt on the test split (metrics.md, csv, figures)

The loop itself is task-agnostic where it is cheap: the task only decides the label map
(:func:`covidct.train.datasets.task_label`), the class names and the validation score.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.models.checkpoint import save_checkpoint, write_card
from covidct.models.registry import build_model
from covidct.preprocess import NormalisationConfig
from covidct.train import datasets as ds
from covidct.train.config import (
    Config,
    TrainConfig,
    apply_overrides,
    config_to_dict,
    dump_config,
    expand_grid,
    load_config,
    load_raw,
)
from covidct.train.losses import apply_loss, build_loss, median_frequency_weights


def train(config: str | Path | dict | Config, run_dir: str | Path | None = None, resume: bool = False, *,
          records: list[dict] | None = None, verbose: bool = True, overrides: list[str] | None = None,
          variants: list[str] | None = None) -> Path:
    """Train from a YAML path, dict or :class:`Config`; returns the run directory.

    A config with a ``grid:`` runs every variant into ``<run_dir>/<variant>/`` and returns
    ``<run_dir>`` (with ``grid_summary.csv``). ``records`` replaces the configured sources (tests,
    notebooks). ``resume=True`` continues from ``<run_dir>/last.pt``. ``overrides``: ``KEY=VALUE`` strings
    (:func:`covidct.train.config.apply_overrides`), e.g. a shortened CPU schedule of a paper's experiment.
    ``variants``: glob patterns; only grid variants whose name matches one of them run (e.g. ``*seed-0``).
    """
    raw = config_to_dict(config) if isinstance(config, Config) else load_raw(config)
    raw = apply_overrides(raw, overrides)
    with _removed_if_failed_early(run_folder(raw, run_dir)):
        return _train(raw, run_dir, resume, records, verbose, variants)


def run_folder(raw: dict, run_dir: str | Path | None = None) -> Path:
    """The folder a run of the config ``raw`` (a dict, overrides applied) writes to."""
    output = raw.get("output") if isinstance(raw.get("output"), dict) else {}
    return Path(run_dir or str(output.get("run_dir", "runs/{name}")).format(name=raw.get("name", "run")))


@contextmanager
def _removed_if_failed_early(run_dir: Path):
    """A run folder this call creates is removed again when the run fails before its first checkpoint (a
    config or data error, an interrupt in the first epoch): no folder left holding only a config."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not existed and run_dir.is_dir() and not any(run_dir.rglob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(raw: dict, run_dir: str | Path | None, resume: bool, records: list[dict] | None, verbose: bool,
           variants: list[str] | None) -> Path:
    if raw.get("kind") in ("seg3d", "interactive"):  # 3-D and click-guided paths (own config sections)
        from covidct.train import interactive, volumes

        fn = volumes.train_seg3d if raw["kind"] == "seg3d" else interactive.train_interactive
        return fn(raw, run_dir, resume, records=records, verbose=verbose)
    expanded = expand_grid(raw)
    if variants:
        from fnmatch import fnmatch

        if not raw.get("grid"):
            raise ConfigError("--variant: this config has no grid")
        chosen = [(n, d) for n, d in expanded if any(fnmatch(n, p) for p in variants)]
        if not chosen:
            raise ConfigError(f"--variant {' '.join(variants)}: no grid variant matches; variants: "
                              + ", ".join(n for n, _ in expanded))
        expanded = chosen
    if len(expanded) == 1 and not variants:
        return _train_one(load_config(expanded[0][1]), run_dir, resume, records, verbose)
    base = load_config(expanded[0][1])  # validates the shared part once, names the parent dir
    parent = Path(run_dir or base.output.run_dir.format(name=base.name))
    rows = []
    for vname, d in expanded:
        d["name"] = f"{raw.get('name', 'run')}_{vname}"
        cfg = load_config(d)
        if verbose:
            print(f"== grid variant {vname}", flush=True)
        out = _train_one(cfg, parent / vname, resume, records, verbose)
        m = json.loads((out / "metrics.json").read_text())
        rows.append({"variant": vname, "best_epoch": m.get("best_epoch"), "best_val_dice": m.get("best_val_dice"),
                     "test_dice": (m.get("test") or {}).get("foreground_dice"), "run_dir": str(out)})
    with open(parent / "grid_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return parent


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def _optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def _scheduler(cfg: Config, opt: torch.optim.Optimizer):
    s = cfg.schedule
    if s.name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.epochs, eta_min=s.min_lr)
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    return None


def _make_split(cfg: Config, records: list[dict], run_dir: Path, resume: bool) -> dict[str, list[str]]:
    """Case-level split, written to ``run_dir/split.json`` (save_split format, case ids in ``info``)."""
    split_path = run_dir / "split.json"
    split = ds.read_split(split_path) if resume and split_path.is_file() else ds.configured_split(records, cfg.data.split)
    ds.check_split(records, split)
    by_id = {r["id"]: r for r in records}
    cases = {k: sorted({ds._group(by_id[i]) for i in v if i in by_id}) for k, v in split.items()}
    doc = {"splits": split, "seed": cfg.data.split.seed, "source": ",".join(s.name for s in cfg.data.sources),
           "info": {"fractions": cfg.data.split.fractions, "file": cfg.data.split.file, "cases": cases}}
    split_path.write_text(json.dumps(doc, indent=1) + "\n")
    return split


class _Log:
    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if append and path.is_file():
            with open(path) as f:
                self.fields = next(csv.reader(f), None)
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def open_run_logs(run_dir: Path, tensorboard: bool, append: bool) -> tuple:
    """The run's TensorBoard writer (None when off) and its CSV log (``append`` when resuming)."""
    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    return writer, _Log(run_dir / "log.csv", append=append)


def log_epoch(log: _Log, writer, row: dict, scalars: dict[str, float]) -> None:
    """One epoch's CSV row, and its scalars (tag -> value) in TensorBoard at step ``row["epoch"]``."""
    log.write(row)
    if writer is not None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, row["epoch"])
        writer.flush()


def stop_reason(t: TrainConfig, bad: int, elapsed: float, gain: str) -> str | None:
    """Why training stops after this epoch (early stopping on ``gain``, then the time budget), or None."""
    if t.patience is not None and bad >= t.patience:
        return f"early stopping (no {gain} gain for {t.patience} epochs)"
    if t.max_minutes is not None and elapsed >= t.max_minutes * 60:
        return "time budget"
    return None


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["random"])


def save_training_state(last_path: Path, model, opt, sched, epoch: int, best: float, best_epoch: int, bad: int,
                        elapsed: float, best_metrics: dict) -> None:
    """Write last.pt (atomically: Ctrl-C mid-write keeps the previous one): everything
    :func:`restore_training_state` needs to continue the run."""
    from covidct.models.checkpoint import save_atomic

    save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "epoch": epoch, "best": best,
                "best_epoch": best_epoch, "bad": bad, "elapsed": elapsed, "best_metrics": best_metrics,
                "rng": _rng_state()}, last_path)


def init_weights(model, source: str) -> list[str]:
    """Load the weights of ``source`` (shipped name, checkpoint or run folder) into ``model`` for fine-tuning;
    ConfigError when the architectures differ.

    A ``contrastive`` pre-training checkpoint ends in a projection of its own width: every weight but
    the tensors whose shape differs (that last layer) is loaded, the rest keep their fresh initialisation.
    Returns the names left out (empty for a full load).
    """
    from covidct.models.checkpoint import read_checkpoint
    from covidct.models.zoo import resolve_model_path

    weights, _ = resolve_model_path(source)
    ckpt = read_checkpoint(weights)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    if ckpt.get("task") == "contrastive":
        own = model.state_dict()
        skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
        # only the projection (one weight and its bias) may differ; anything more is another network
        if len(skipped) > 2 or set(own) != set(state):
            raise ConfigError(f"model.init_from: {source} (contrastive pre-training of "
                              f"{ckpt['model']['name']}) does not fit this model")
        own.update({k: v for k, v in state.items() if k not in skipped})
        model.load_state_dict(own)
        return skipped
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"model.init_from: {source} does not fit this model: {str(e).splitlines()[0]}") from e
    return []


def restore_training_state(last_path: Path, model, opt, sched) -> tuple[int, float, int, int, float, dict]:
    """Load last.pt into model/optimizer/scheduler and the RNGs; returns
    (start epoch, best score, best epoch, epochs without improvement, elapsed seconds, best metrics)."""
    st = torch.load(last_path, map_location="cpu", weights_only=False)  # our own file: optimizer state
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if sched is not None and st.get("scheduler"):
        sched.load_state_dict(st["scheduler"])
    _set_rng_state(st["rng"])
    return st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"], st["elapsed"], st.get("best_metrics", {})


def prepare_run_dir(cfg: Config, run_dir: str | Path | None, resume: bool) -> tuple[Path, Path, Path]:
    """Create the run folder (refusing to overwrite a run unless resuming) and write the resolved config.

    Returns (run_dir, last.pt path, best.pt path). Shared by every kind of training run.
    """
    run_dir = Path(run_dir or cfg.output.run_dir.format(name=cfg.name))
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if not resume and (last_path.exists() or best_path.exists()):
        raise ConfigError(f"output.run_dir: {run_dir} already holds a run (resume it or choose another folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.resolved.yaml")
    return run_dir, last_path, best_path


def _train_one(cfg: Config, run_dir: str | Path | None, resume: bool, records: list[dict] | None,
               verbose: bool) -> Path:
    from covidct.train.config import CLASSIFY_TASKS, PRETRAIN_TASKS

    if cfg.task in CLASSIFY_TASKS:  # image-level labels: own samples and metrics, same run layout
        from covidct.train.classify import train_classifier

        return train_classifier(cfg, run_dir, resume, records, verbose)
    if cfg.task in PRETRAIN_TASKS:
        from covidct.train.pretrain import train_contrastive

        return train_contrastive(cfg, run_dir, resume, records, verbose)
    from monai.data import DataLoader
    from monai.utils import set_determinism
    from tqdm import tqdm

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
    split = _make_split(cfg, records, run_dir, resume)
    by_id = {r["id"]: r for r in records}
    parts = {k: ds.make_samples([by_id[i] for i in v if i in by_id], cfg.task) for k, v in split.items()}
    parts["train"] = ds.select_negatives(parts["train"], cfg.data.negatives.fraction, cfg.data.negatives.include,
                                         t.seed)
    if not parts["train"]:
        raise ConfigError(f"data: no training slices with a {cfg.task} label in the configured sources")
    say(f"[{cfg.name}] task={cfg.task} model={cfg.model.name} train={len(parts['train'])} "
        f"val={len(parts['val'])} test={len(parts['test'])} slices; device={device}", flush=True)

    weights = None
    if cfg.loss.weights == "median_frequency":
        weights = median_frequency_weights((s["label"] for s in parts["train"]), n_classes)
        say(f"[{cfg.name}] median-frequency class weights: {np.round(weights, 4).tolist()}", flush=True)
    loss_fn = build_loss(cfg.loss, weights).to(device)
    model = build_model(cfg.model.name, 1, n_classes, **cfg.model.kwargs).to(device)
    if cfg.model.init_from and not (resume and last_path.is_file()):
        init_weights(model, cfg.model.init_from)
        say(f"[{cfg.name}] weights initialised from {cfg.model.init_from}", flush=True)
    opt = _optimizer(cfg, model.parameters())
    sched = _scheduler(cfg, opt)

    start_epoch, best, best_epoch, bad, elapsed, best_metrics = 0, -float("inf"), -1, 0, 0.0, {}
    if resume and last_path.is_file():
        start_epoch, best, best_epoch, bad, elapsed, best_metrics = restore_training_state(last_path, model, opt, sched)
        say(f"[{cfg.name}] resumed after epoch {start_epoch - 1} (best val Dice {best:.4f} at epoch {best_epoch})")
    elif resume:
        say(f"[{cfg.name}] nothing to resume in {run_dir}; starting fresh")

    train_tf = ds.build_transforms(t.input_size, norm, cfg.augment)
    val_tf = ds.build_transforms(t.input_size, norm, None)
    train_ds = ds.make_dataset(parts["train"], train_tf, t.cache_rate)
    val_ds = ds.make_dataset(parts["val"], val_tf, t.cache_rate) if parts["val"] else None
    gen = torch.Generator().manual_seed(t.seed + start_epoch)
    if t.steps_per_epoch:
        sampler = torch.utils.data.RandomSampler(train_ds, replacement=True,
                                                 num_samples=t.steps_per_epoch * t.batch_size, generator=gen)
        train_dl = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers)
    else:
        train_dl = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True, generator=gen,
                              num_workers=t.num_workers, drop_last=len(train_ds) > t.batch_size)
    val_dl = DataLoader(val_ds, batch_size=t.batch_size, num_workers=t.num_workers) if val_ds else None

    writer, log = open_run_logs(run_dir, cfg.output.tensorboard, append=resume and start_epoch > 0)
    cfg_dict = config_to_dict(cfg)
    ckpt_common = dict(name=cfg.model.name, kwargs=cfg.model.kwargs, in_channels=1, out_channels=n_classes,
                       task=cfg.task, classes=classes, input_size=(t.input_size, t.input_size),
                       normalisation=norm.as_dict(), thresholds={"foreground": t.threshold}, config=cfg_dict)
    stopped = "epochs"
    epoch = start_epoch - 1
    for epoch in range(start_epoch, t.epochs):
        if t.max_minutes is not None and elapsed >= t.max_minutes * 60:
            stopped = "time budget"
            break
        t0 = time.time()
        model.train()
        losses = []
        bar = tqdm(train_dl, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, disable=not verbose,
                   file=sys.stderr, dynamic_ncols=True)
        for batch in bar:
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                out = model(x)
            out = [o.float() for o in out] if isinstance(out, list | tuple) else out.float()
            loss = apply_loss(loss_fn, out, y)
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
            val_loss, pooled, per_img, overlay = _validate(model, val_dl, loss_fn, n_classes, device, t.bf16,
                                                           t.val_steps, t.threshold)
            score = float(np.nanmean(pooled[1:])) if np.isfinite(pooled[1:]).any() else 0.0
        else:  # no validation cases: select on the training loss
            val_loss, pooled, per_img, overlay = float("nan"), np.full(n_classes, np.nan), np.full(n_classes, np.nan), None
            score = -train_loss
        elapsed += time.time() - t0
        improved = score > best
        if improved:
            best, best_epoch, bad = score, epoch, 0
            best_metrics = {"epoch": epoch + 1, "val_dice": score, "val_loss": val_loss,
                            "val_dice_per_class": dict(zip(classes, map(float, pooled), strict=True)),
                            "val_dice_per_image_mean": dict(zip(classes, map(float, per_img), strict=True))}
            save_checkpoint(best_path, model, **ckpt_common, metrics={"val": best_metrics}, fp16=t.save_fp16)
        else:
            bad += 1
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_dice": score, "lr": lr,
               "seconds": round(time.time() - t0, 2), **{f"val_dice_{c}": float(pooled[i]) for i, c in enumerate(classes)},
               **{f"val_img_dice_{c}": float(per_img[i]) for i, c in enumerate(classes)}}
        if writer is not None and overlay is not None:
            writer.add_image("val/overlay (red=GT, green=pred)", overlay, epoch + 1)
        log_epoch(log, writer, row, {"loss/train": train_loss, "loss/val": val_loss, "dice/val": score, "lr": lr,
                                     **{f"dice_val/{c}": float(pooled[i]) for i, c in enumerate(classes[1:], 1)}})
        say(f"[{cfg.name}] epoch {epoch + 1}/{t.epochs} train_loss={train_loss:.4f} val_loss={val_loss:.4f} "
            f"val_dice={score:.4f}{' *' if improved else ''} lr={lr:.2e} ({row['seconds']:.0f}s)", flush=True)
        save_training_state(last_path, model, opt, sched, epoch, best, best_epoch, bad, elapsed, best_metrics)
        if reason := stop_reason(t, bad, elapsed, "val Dice"):
            stopped = reason
            break
    if writer is not None:
        writer.close()

    summary = {"name": cfg.name, "task": cfg.task, "model": cfg.model.name, "classes": classes,
               "best_epoch": best_epoch + 1, "best_val_dice": best if best_epoch >= 0 else None,
               "val": best_metrics, "epochs_run": epoch + 1, "stopped": stopped, "train_time_s": round(elapsed, 1),
               "n_slices": {k: len(v) for k, v in parts.items()},
               "n_cases": {k: len({s["case"] for s in v}) for k, v in parts.items()}}
    if t.evaluate_test and parts["test"] and best_path.is_file():
        from covidct.evaluate.report import evaluate

        res = evaluate(best_path, [by_id[s["id"]] for s in parts["test"]], cfg.task, run_dir / "test",
                       batch_size=t.batch_size, bf16=t.bf16)
        summary["test"] = {"n_images": res["n_images"], "foreground_dice": res["foreground_mean"]["dice"],
                           "foreground_mean": res["foreground_mean"],
                           "dice_per_class": {c: res["per_class"][c]["dice"] for c in classes},
                           "global_accuracy": res["global_accuracy"]}
        if "dice_256_thresholds" in res:
            summary["test"]["mean_dice_256_thresholds"] = res["dice_256_thresholds"]["mean_dice"]
        say(f"[{cfg.name}] test: foreground Dice {res['foreground_mean']['dice']:.4f} over {res['n_images']} slices")
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    if best_path.is_file():
        split_cases = json.loads((run_dir / "split.json").read_text())["info"]["cases"]
        write_card(run_dir / "card.json", best_path, name=cfg.name, version="0", task=cfg.task, classes=classes,
                   data={"sources": cfg_dict["data"]["sources"], "n_slices": summary["n_slices"]},
                   split=split_cases, config=cfg_dict, training_time_s=summary["train_time_s"],
                   metrics={"val": best_metrics, "test": summary.get("test")},
                   command=f"covidct train {run_dir / 'config.resolved.yaml'}")
    say(f"[{cfg.name}] done: {stopped}; best val Dice {summary['best_val_dice']} at epoch {best_epoch + 1}; "
        f"run dir {run_dir}", flush=True)
    return run_dir
