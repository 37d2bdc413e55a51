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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.interactive import model_input

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


@dataclass
class InteractiveConfig:
    kind: str
    name: str = "refine"
    description: str | None = None
    data: dict = field(default_factory=dict)
    model: dict = field(default_factory=lambda: {"name": "unet", "kwargs": {}})
    loss: dict = field(default_factory=lambda: {"name": "dice_ce", "include_background": False})
    optimizer: dict = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    schedule: dict = field(default_factory=lambda: {"name": "none"})
    train: InteractiveTrainConfig = field(default_factory=InteractiveTrainConfig)
    clicks: ClickConfig = field(default_factory=ClickConfig)
    augment: dict = field(default_factory=lambda: {"flip_prob": 0.5})
    normalisation: dict | None = None
    volume: dict = field(default_factory=lambda: {"hu_range": [-1000.0, 500.0]})  # 3-D: HU clip -> [0, 1]
    output: dict = field(default_factory=lambda: {"run_dir": "runs/{name}", "tensorboard": True})


# --- guidance -----------------------------------------------------------------------------------


def next_click(label: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> tuple[bool, tuple[int, ...]] | None:
    """(positive?, (row, col)) — (z, row, col) for a volume — of a simulated click on the larger error region,
    or None when no error.

    MONAI deepgrow's ``FindDiscrepancyRegionsd`` gives the missed / false regions; ``AddRandomGuidanced``
    draws a point with probability rising with its distance to the region border (a user clicks inside).
    """
    from monai.apps.deepgrow.transforms import AddRandomGuidanced, FindDiscrepancyRegionsd

    disc = FindDiscrepancyRegionsd.disparity(np.asarray(label)[None], np.asarray(pred)[None])
    arg = AddRandomGuidanced()
    arg.set_random_state(int(rng.integers(2**31)))
    pos, neg = arg.add_guidance(disc, True)
    nd = np.asarray(label).ndim
    if pos is not None:
        return True, tuple(int(v) for v in pos[-nd:])
    if neg is not None:
        return False, tuple(int(v) for v in neg[-nd:])
    return None


def corrupt_mask(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible automatic result: the label grown or shrunk, a piece missed, a false blob added.

    Works on a slice (H, W) or a volume (z, H, W); in a volume the boxes and blobs keep the in-plane sizes
    of a slice and scale along z with the number of slices.
    """
    from scipy import ndimage

    m = np.asarray(label) > 0
    h, w = m.shape[-2:]
    zscale = [m.shape[0] / h] if m.ndim == 3 else []
    k = int(rng.integers(0, 4))
    if k and rng.random() < 0.5:
        m = ndimage.binary_dilation(m, iterations=k)
    elif k:
        m = ndimage.binary_erosion(m, iterations=k)
    lbl, n = ndimage.label(m)
    if n and rng.random() < 0.6:  # miss whole lesions
        drop = rng.choice(np.arange(1, n + 1), size=max(1, int(rng.integers(1, n + 1)) // 2), replace=False)
        m &= ~np.isin(lbl, drop)
    if rng.random() < 0.5:  # miss a part of one
        centre = [int(rng.integers(0, s)) for s in m.shape]
        r = int(rng.integers(h // 16, h // 5))
        radii = [max(1, round(r * z)) for z in zscale] + [r, r]
        m[tuple(slice(max(c - q, 0), c + q) for c, q in zip(centre, radii, strict=True))] = False
    for _ in range(int(rng.integers(0, 3))):  # false blobs
        centre = [int(rng.integers(s // 8, 7 * s // 8)) for s in m.shape]
        ryx = rng.integers(h // 40 + 1, h // 10 + 2, 2)
        radii = [max(1.0, float(ryx[0]) * z) for z in zscale] + [float(r) for r in ryx]
        grids = np.ogrid[tuple(slice(0, s) for s in m.shape)]
        m |= sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
    return m.astype(np.uint8)


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


# --- simulation ---------------------------------------------------------------------------------


@torch.no_grad()
def _predict(model, x: np.ndarray, device) -> np.ndarray:
    model.eval()
    out = model(torch.from_numpy(x).to(device))
    return torch.softmax(out.float(), 1)[:, 1].cpu().numpy()


def simulate_batch(model, imgs: np.ndarray, labs: np.ndarray, ccfg: ClickConfig, rng: np.random.Generator,
                   device, rounds: int | None = None) -> np.ndarray:
    """(B, 4, H, W) inputs after a simulated interaction (first click on the start mask, then model rounds)."""
    b = len(imgs)
    n_rounds = rounds if rounds is not None else int(rng.integers(1, ccfg.max_rounds + 1))
    priors = [np.zeros_like(lab) if rng.random() < ccfg.prior_empty_prob else corrupt_mask(lab, rng) for lab in labs]
    clicks: list[tuple[list, list]] = [([], []) for _ in range(b)]
    x = None
    for rnd in range(n_rounds):
        for i in range(b):
            c = next_click(labs[i], priors[i], rng)
            if c is not None:
                clicks[i][0 if c[0] else 1].append(c[1])
        x = np.stack([model_input(imgs[i], priors[i], *clicks[i], ccfg.sigma) for i in range(b)])
        if rnd < n_rounds - 1:
            priors = list((_predict(model, x, device) >= 0.5).astype(np.uint8))
    return x


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    den = int(p.sum() + g.sum())
    return 1.0 if den == 0 else 2.0 * int((p & g).sum()) / den


@torch.no_grad()
def click_dice_curve(model, imgs: np.ndarray, labs: np.ndarray, n_clicks: list[int], sigma: float, device,
                     priors: np.ndarray | None = None, seed: int = 0) -> dict[int, float]:
    """Mean Dice after each number of simulated clicks (0 = the starting mask), one click per model run."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[float]] = {k: [] for k in n_clicks}
    for i in range(len(imgs)):
        g = labs[i] > 0
        cur = np.zeros_like(labs[i]) if priors is None else (priors[i] > 0).astype(np.uint8)
        pos, neg = [], []
        if 0 in out:
            out[0].append(_dice(cur > 0, g))
        for k in range(1, max(n_clicks) + 1):
            c = next_click(labs[i], cur, rng)
            if c is not None:
                (pos if c[0] else neg).append(c[1])
                x = model_input(imgs[i], cur, pos, neg, sigma)[None]
                cur = (_predict(model, x, device)[0] >= 0.5).astype(np.uint8)
            if k in out:
                out[k].append(_dice(cur > 0, g))
    return {k: float(np.mean(v)) for k, v in out.items()}


# --- training -----------------------------------------------------------------------------------


def train_interactive(raw: dict, run_dir: str | Path | None = None, resume: bool = False, *,
                      records: list[dict] | None = None, verbose: bool = True) -> Path:
    """Train the refinement network from a ``kind: interactive`` config dict; returns the run directory."""
    import yaml
    from monai.utils import set_determinism

    from covidct.models.checkpoint import save_checkpoint, write_card
    from covidct.models.registry import SPATIAL_DIMS, TASK_KIND, build_model
    from covidct.preprocess import NormalisationConfig
    from covidct.train import datasets as ds
    from covidct.train.config import DataConfig, LossConfig, OptimizerConfig, ScheduleConfig, _build
    from covidct.train.loop import _device
    from covidct.train.losses import apply_loss, build_loss

    cfg = _build(InteractiveConfig, raw, "")
    data = _build(DataConfig, cfg.data, "data")
    loss_cfg = _build(LossConfig, cfg.loss, "loss")
    ocfg = _build(OptimizerConfig, cfg.optimizer, "optimizer")
    _build(ScheduleConfig, cfg.schedule, "schedule")
    if TASK_KIND.get(cfg.model.get("name")) != "segmentation":
        raise ConfigError(f"model.name: {cfg.model.get('name')!r} is not a segmentation model")
    dims = SPATIAL_DIMS.get(cfg.model["name"], 2)  # 3: whole volumes, clicks with a slice index
    if not data.sources:
        raise ConfigError("data.sources: at least one source is required")
    t, cc = cfg.train, cfg.clicks
    if dims == 2 and (t.input_size % 16 or t.input_size < 32):
        raise ConfigError(f"train.input_size: must be a multiple of 16 (>= 32), got {t.input_size}")
    say = print if verbose else (lambda *a, **k: None)
    run_dir = Path(run_dir or cfg.output.get("run_dir", "runs/{name}").format(name=cfg.name))
    best_path = run_dir / "best.pt"
    if best_path.exists() and not resume:
        raise ConfigError(f"output.run_dir: {run_dir} already holds a run (choose another folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.resolved.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    set_determinism(seed=t.seed)
    rng = np.random.default_rng(t.seed)
    device = _device(t.device)
    norm = NormalisationConfig.from_dict(cfg.normalisation)

    if records is None:
        if dims == 3:
            from covidct.train.volumes import load_volume_records

            records = load_volume_records(data.sources)
        else:
            records = ds.load_records(data.sources)
    split = ds.configured_split(records, data.split)
    ds.check_split(records, split)
    by_id = {r["id"]: r for r in records}
    (run_dir / "split.json").write_text(json.dumps({"splits": split, "seed": data.split.seed}, indent=1) + "\n")
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
    unit = "volumes" if dims == 3 else "slices"
    say(f"[{cfg.name}] interactive: train {len(tr_img)} {unit}, val {0 if va_img is None else len(va_img)}; "
        f"device={device}", flush=True)

    mk = dict(cfg.model.get("kwargs") or {})
    model = build_model(cfg.model["name"], IN_CHANNELS, 2, **mk).to(device)
    loss_fn = build_loss(loss_cfg).to(device)
    opt = (torch.optim.AdamW if ocfg.name == "adamw" else torch.optim.Adam)(model.parameters(), lr=ocfg.lr,
                                                                            weight_decay=ocfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.steps, eta_min=ocfg.lr * 0.05) \
        if cfg.schedule.get("name") == "cosine" else None
    writer = None
    if cfg.output.get("tensorboard", True):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    extra = {"interactive": True, "in_channels_meaning": ["image", "mask", "positive", "negative"],
             "sigma": cc.sigma}
    size = (t.input_size, t.input_size)
    if dims == 3:  # the network sees whole training volumes; inference slides windows of that size
        extra.update({"spatial_dims": 3, "hu_range": hu_range})
        size = tuple(int(n) for n in tr_img.shape[1:])
    ckpt = dict(name=cfg.model["name"], kwargs=mk, in_channels=IN_CHANNELS, out_channels=2, task="refine",
                classes=CLASSES, input_size=size, normalisation=norm.as_dict(),
                thresholds={"foreground": t.threshold}, config=raw, extra=extra)
    flip = float(cfg.augment.get("flip_prob", 0.5))
    best, best_step, best_metrics, log, t_start, stopped = -1.0, 0, {}, [], time.time(), "steps"
    step = 0
    for step in range(1, t.steps + 1):
        idx = rng.integers(0, len(tr_img), t.batch_size)
        imgs, labs = tr_img[idx].copy(), tr_lab[idx].copy()
        for i in range(len(idx)):  # flips (infection labels carry no left/right meaning)
            if rng.random() < flip:
                imgs[i], labs[i] = imgs[i][..., ::-1], labs[i][..., ::-1]
            if rng.random() < flip:
                imgs[i], labs[i] = imgs[i][..., ::-1, :], labs[i][..., ::-1, :]
            if dims == 3 and rng.random() < flip:
                imgs[i], labs[i] = imgs[i][::-1], labs[i][::-1]
        x = simulate_batch(model, np.ascontiguousarray(imgs), np.ascontiguousarray(labs), cc, rng, device)
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(torch.from_numpy(x).to(device))
        loss = apply_loss(loss_fn, out, torch.from_numpy(np.ascontiguousarray(labs)).long()[:, None].to(device))
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        log.append({"step": step, "loss": float(loss.detach())})
        if writer is not None:
            writer.add_scalar("train/loss", float(loss.detach()), step)
        over = t.max_minutes is not None and time.time() - t_start >= t.max_minutes * 60
        if step % t.val_every == 0 or step == t.steps or over:
            row = {"step": step, "loss": float(np.mean([r["loss"] for r in log[-t.val_every:]])),
                   "time_s": round(time.time() - t_start, 1)}
            if va_img is not None:
                curve = click_dice_curve(model, va_img, va_lab, sorted(set(cc.val_clicks)), cc.sigma, device)
                score = float(np.mean(list(curve.values())))
                row.update({f"val_dice_{k}clicks": v for k, v in curve.items()})
                if writer is not None:
                    for k, v in curve.items():
                        writer.add_scalar(f"val/dice_{k}clicks", v, step)
            else:
                score = -row["loss"]
            if score > best:
                best, best_step, best_metrics = score, step, row
                save_checkpoint(best_path, model, **ckpt, metrics=row, fp16=t.save_fp16)
            say(f"[{cfg.name}] step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step"),
                flush=True)
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if over:
            stopped = "time budget"
            break
    if writer is not None:
        writer.close()
    elapsed = round(time.time() - t_start, 1)
    summary = {"name": cfg.name, "kind": "interactive", "best_step": best_step, "val": best_metrics,
               "steps_run": step, "stopped": stopped, "train_time_s": elapsed,
               f"n_{unit}": {"train": len(tr_img), "val": 0 if va_img is None else len(va_img)}}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    if best_path.is_file():
        write_card(run_dir / "card.json", best_path, name=cfg.name, version="0", task="refine", classes=CLASSES,
                   data={"sources": raw.get("data", {}).get("sources"), f"n_{unit}": summary[f"n_{unit}"]},
                   split={k: sorted({ds._group(by_id[i]) for i in v}) for k, v in split.items()}, config=raw,
                   training_time_s=elapsed, metrics={"val": best_metrics},
                   command=f"covidct train {run_dir / 'config.resolved.yaml'}")
    say(f"[{cfg.name}] done ({stopped}): best at step {best_step}, {best_metrics}", flush=True)
    return run_dir
