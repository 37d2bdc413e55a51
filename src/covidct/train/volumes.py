"""3-D segmentation training (seeds 000/001): volume data, MONAI transforms and the training path.

A config with ``kind: seg3d`` goes through :func:`covidct.train.train` to :func:`train_seg3d`. The set-up
follows MONAI's COVID-19-20 baseline and the seed papers: resampling to a target spacing, HU clipping to
[0, 1], positive/negative-balanced patch sampling (``RandCropByPosNegLabeld``), batch size 4, Adam at
5e-4 / 1e-4, spatial + intensity augmentation, ``CacheDataset`` / ``PersistentDataset`` with a bounded
cache, validation by sliding-window inference with Gaussian blending (:mod:`covidct.models.volume_inference`,
what ``analyze`` runs too), TensorBoard with the 3-D volume playback of MONAI's ``plot_2d_or_3d_image``.

Tasks (``task``) and their classes, background first:

- ``lungs``: background / lung (binary, as the 2-D lungs model; the pipeline splits left and right);
- ``infection``: background / infection (COVID-19-20, the paper's 2-label set-up);
- ``lungs_infection``: background / left lung / right lung / infection (Ma et al., the 4-label set-up);
- ``lesions``: none / GGO / consolidation / effusion (phantoms).

Arrays are kept in covidct's (z, y, x) order throughout, with a channel axis in front for MONAI.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.transforms import Transform

from covidct.errors import ConfigError
from covidct.models.checkpoint import save_atomic
from covidct.models.volume_inference import resampled_shape, sliding_window_probs

TASKS3D: dict[str, list[str]] = {
    "lungs": ["background", "lung"],
    "infection": ["background", "infection"],
    "lungs_infection": ["background", "left_lung", "right_lung", "infection"],
    "lesions": ["none", "ggo", "consolidation", "effusion"],
}


# --- config -----------------------------------------------------------------------------------------


@dataclass
class VolumeConfig:
    """Volume geometry, intensity window, patch sampling, caching and sliding-window inference."""

    spacing: list[float] | None = field(default_factory=lambda: [5.0, 1.25, 1.25])  # target (z, y, x) mm
    hu_range: list[float] = field(default_factory=lambda: [-1000.0, 500.0])  # clipped, then scaled to [0, 1]
    patch: list[int] = field(default_factory=lambda: [16, 192, 192])  # (z, y, x) training patch / sw window
    pos: float = 1.0  # RandCropByPosNegLabeld: share of patches centred on foreground ...
    neg: float = 1.0  # ... and on background
    num_samples: int = 4  # patches cropped from one loaded volume
    cache: Literal["memory", "persistent", "none"] = "memory"
    # Memory bound: at most cache_num volumes (after resampling) are held in RAM. A chest CT at the default
    # spacing is ~300 x 300 x 60 voxels ~ 5.4M voxels x 5 B (float32 image + uint8 label) ~ 30 MB, fine-
    # spacing ones up to ~150 MB: 48 volumes stay well under 24 GB even with a few loader workers.
    cache_rate: float = 1.0
    cache_num: int = 48
    cache_dir: str | None = None  # persistent cache folder (default: <run_dir>/cache)
    sw_batch_size: int = 4
    overlap: float = 0.25
    blend: Literal["gaussian", "constant"] = "gaussian"
    # Test-time mirroring (nnU-Net's): average the probabilities over flips of these axes, every combination
    # (2^n passes). Used by validation, test and product inference. Never the x axis (2) for tasks whose
    # labels are left/right.
    mirror_axes: list[int] = field(default_factory=list)


@dataclass
class Augment3DConfig:
    enabled: bool = True
    flip_axes: list[int] = field(default_factory=lambda: [0, 1])  # (z, y, x) axes; never 2 for left/right labels
    flip_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_deg: float = 10.0  # in-plane
    scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1
    intensity_prob: float = 0.5
    noise_prob: float = 0.15
    noise_std: float = 0.02


@dataclass
class Train3DConfig:
    epochs: int = 100
    max_minutes: float | None = None
    batch_size: int = 4  # patches per optimiser step (the seed papers' 4)
    steps_per_epoch: int | None = None  # None: one pass over the training volumes
    val_every: int = 1
    val_volumes: int | None = None  # validate on at most this many volumes (None: all)
    patience: int | None = 20
    seed: int = 0
    bf16: bool = False
    num_workers: int = 0
    device: str = "auto"
    evaluate_test: bool = True
    save_fp16: bool = True


@dataclass
class Seg3DConfig:
    kind: Literal["seg3d"]
    task: Literal["lungs", "infection", "lungs_infection", "lesions"]
    name: str = "run3d"
    description: str | None = None
    data: dict = field(default_factory=dict)  # {sources: [...], split: {...}} as in 2-D configs
    model: dict = field(default_factory=lambda: {"name": "unet3d", "kwargs": {}})
    loss: dict = field(default_factory=lambda: {"name": "dice_ce", "include_background": False})
    optimizer: dict = field(default_factory=lambda: {"name": "adam", "lr": 5e-4})
    schedule: dict = field(default_factory=lambda: {"name": "none"})
    train: Train3DConfig = field(default_factory=Train3DConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    augment: Augment3DConfig = field(default_factory=Augment3DConfig)
    output: dict = field(default_factory=lambda: {"run_dir": "runs/{name}", "tensorboard": True})
    grid: dict | list | None = None

    @property
    def classes(self) -> list[str]:
        return list(TASKS3D[self.task])


def load_seg3d_config(raw: dict) -> tuple[Seg3DConfig, object]:
    """Validate a ``kind: seg3d`` dict; returns (config, the shared 2-D :class:`Config` parts for reuse)."""
    from covidct.models.registry import SPATIAL_DIMS
    from covidct.train.config import (
        DataConfig,
        LossConfig,
        OptimizerConfig,
        OutputConfig,
        ScheduleConfig,
        _build,
    )

    cfg = _build(Seg3DConfig, raw, "")
    shared = {
        "data": _build(DataConfig, cfg.data, "data"),
        "loss": _build(LossConfig, cfg.loss, "loss"),
        "optimizer": _build(OptimizerConfig, cfg.optimizer, "optimizer"),
        "schedule": _build(ScheduleConfig, cfg.schedule, "schedule"),
        "output": _build(OutputConfig, cfg.output, "output"),
    }
    name = cfg.model.get("name")
    if SPATIAL_DIMS.get(name) != 3:
        raise ConfigError(f"model.name: {name!r} is not a 3-D model (3-D models: {', '.join(sorted(SPATIAL_DIMS))})")
    if not shared["data"].sources:
        raise ConfigError("data.sources: at least one source is required")
    v, t = cfg.volume, cfg.train
    if len(v.patch) != 3 or any(p < 8 or p % 8 for p in v.patch):
        raise ConfigError(f"volume.patch: need three sizes (z, y, x), multiples of 8, got {v.patch}")
    if v.spacing is not None and (len(v.spacing) != 3 or min(v.spacing) <= 0):
        raise ConfigError(f"volume.spacing: need three positive (z, y, x) millimetres or null, got {v.spacing}")
    if len(v.hu_range) != 2 or v.hu_range[0] >= v.hu_range[1]:
        raise ConfigError(f"volume.hu_range: need [low, high], got {v.hu_range}")
    if not 0 <= v.cache_rate <= 1:
        raise ConfigError(f"volume.cache_rate: must be in [0, 1], got {v.cache_rate}")
    if not 0 <= v.overlap < 1:
        raise ConfigError(f"volume.overlap: must be in [0, 1), got {v.overlap}")
    for key, val in (("epochs", t.epochs), ("batch_size", t.batch_size), ("val_every", t.val_every)):
        if val < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {val}")
    if v.num_samples < 1 or t.batch_size % v.num_samples and v.num_samples < t.batch_size:
        raise ConfigError(f"volume.num_samples: must be >= 1 and divide train.batch_size ({t.batch_size})")
    if cfg.task == "lungs_infection" and 2 in cfg.augment.flip_axes:
        raise ConfigError("augment.flip_axes: x flips swap the left/right lung labels of task lungs_infection")
    if any(a not in (0, 1, 2) for a in v.mirror_axes) or len(set(v.mirror_axes)) != len(v.mirror_axes):
        raise ConfigError(f"volume.mirror_axes: distinct axes among 0 (z), 1 (y), 2 (x), got {v.mirror_axes}")
    if cfg.task == "lungs_infection" and 2 in v.mirror_axes:
        raise ConfigError("volume.mirror_axes: x flips swap the left/right lung labels of task lungs_infection")
    return cfg, shared


# --- records --------------------------------------------------------------------------------------------


def task_label3d(lungs: np.ndarray | None, lesions: np.ndarray | None, task: str) -> np.ndarray:
    """Label volume (uint8) of ``task`` from a lung map (0/1 left/2 right) and a lesion map (0..3)."""
    if task in ("lungs", "lungs_infection") and lungs is None:
        raise ConfigError(f"data: task {task} needs lung labels")
    if task in ("infection", "lungs_infection", "lesions") and lesions is None:
        raise ConfigError(f"data: task {task} needs lesion/infection labels")
    if task == "lungs":
        return (np.asarray(lungs) > 0).astype(np.uint8)
    if task == "infection":
        return (np.asarray(lesions) > 0).astype(np.uint8)
    if task == "lesions":
        return np.asarray(lesions).astype(np.uint8)
    out = np.asarray(lungs).astype(np.uint8).copy()
    out[np.asarray(lesions) > 0] = 3
    return out


def phantom_volumes(n_volumes: int = 6, shape: Sequence[int] = (32, 96, 96), spacing: Sequence[float] = (5.0, 3.6, 3.6),
                    seed: int = 0, lesion_burden: float | Sequence[float] = (0.05, 0.3), margin_slices: int = 2,
                    effusion: bool = True) -> list[dict]:
    """Synthetic chest CT volumes (:func:`covidct.phantom.make_phantom`) as 3-D records, one case each."""
    from covidct.phantom import make_phantom

    rng = np.random.default_rng(seed)
    out = []
    for v in range(n_volumes):
        burden = float(rng.uniform(*lesion_burden)) if isinstance(lesion_burden, Sequence) else float(lesion_burden)
        ph = make_phantom(shape=tuple(shape), spacing=tuple(spacing), seed=seed * 1000 + v, lesion_burden=burden,
                          lesions=burden > 0, effusion=effusion, margin_slices=margin_slices)
        case = f"phantom3d-{seed}-{v}"
        out.append({"image": np.asarray(ph.ct.array, np.float32), "lungs": np.asarray(ph.lungs, np.uint8),
                    "lesions": np.asarray(ph.lesions, np.uint8), "spacing": tuple(float(s) for s in ph.ct.spacing),
                    "case": case, "id": case, "group": case, "source": "phantom3d", "meta": {"lesion_burden": burden}})
    return out


def nifti_volumes(root: str, layout: str | None = None) -> list[dict]:
    """3-D records (file paths) of a user's NIfTI data set (:func:`covidct.data.load_nifti_dataset`)."""
    from covidct.data import load_nifti_dataset

    return load_nifti_dataset(root, layout)


def load_volume_records(sources: Sequence) -> list[dict]:
    """Records of the configured 3-D sources: ``phantom`` (generated) or ``nifti`` (``root:`` a data set folder)."""
    recs: list[dict] = []
    for i, s in enumerate(sources):
        opts = dict(s.options)
        try:
            if s.name in ("phantom", "phantom3d"):
                r = phantom_volumes(**opts)
            elif s.name in ("nifti", "ma2020-nifti", "covid19-20"):
                if not s.root:
                    raise ConfigError(f"data.sources[{i}].root: the NIfTI data set folder is required")
                r = nifti_volumes(s.root, **opts)
            else:
                raise ConfigError(f"data.sources[{i}].name: 3-D sources are phantom or nifti, got {s.name!r}")
        except TypeError as e:
            raise ConfigError(f"data.sources[{i}]: bad option for source {s.name!r}: {e}") from e
        for k, v in s.exclude_meta.items():
            vals = v if isinstance(v, list) else [v]
            r = [x for x in r if (x.get("meta") or {}).get(k) not in vals]
        recs.extend(r[: s.limit] if s.limit is not None else r)
    return recs


def looks_like_hu(img: np.ndarray) -> bool:
    """HU volumes reach well below 0 (air at -1000); 8-bit display volumes do not."""
    return float(np.min(img)) < -200.0


def _read_nifti_zyx(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    from covidct.io import load_nifti

    ct = load_nifti(Path(path))
    return np.asarray(ct.array), tuple(float(s) for s in ct.spacing)


def _nifti_label(rec: dict, task: str) -> np.ndarray:
    """Task label of a NIfTI record, from its label file (and lung file) and the layout's label values."""
    lab = np.rint(_read_nifti_zyx(rec["label"])[0]).astype(np.uint8)
    values = {int(k): v for k, v in ((rec.get("meta") or {}).get("label_values") or {}).items()}
    if "left_lung" in values.values():  # Ma et al. Lung_and_Infection_Mask: 1 left, 2 right, 3 infection
        if task == "lungs_infection":
            return lab
        lungs = (lab > 0).astype(np.uint8)  # the lung label includes its infection
        return task_label3d(lungs, (lab == 3).astype(np.uint8), task)
    lungs = None
    if rec.get("lungs"):
        lungs = np.rint(_read_nifti_zyx(rec["lungs"])[0]).astype(np.uint8)
    return task_label3d(lungs, lab, task)


class LoadVolumed(Transform):
    """Record -> ``{"image": (1, z, y, x) float32 HU, "label": (1, z, y, x) uint8, "spacing"}``."""

    def __init__(self, task: str) -> None:
        self.task = task

    def __call__(self, rec: dict) -> dict:
        if isinstance(rec["image"], str):
            img, spacing = _read_nifti_zyx(rec["image"])
            if not looks_like_hu(img):
                # Ma et al.'s Radiopaedia cases are 0..255 after a [-1250, 250] HU lung window: undo that window
                warnings.warn(f"{rec['image']}: display values, mapped from 0..255 back to -1250..250 HU", stacklevel=2)
                img = (img.astype(np.float32) / 255.0 * 1500.0 - 1250.0).astype(np.float32)
            lab = _nifti_label(rec, self.task)
        else:
            img, spacing = np.asarray(rec["image"], np.float32), tuple(rec["spacing"])
            lab = task_label3d(rec.get("lungs"), rec.get("lesions"), self.task)
        if img.shape != lab.shape:
            raise ConfigError(f"data: case {rec.get('id')}: image {img.shape} and label {lab.shape} differ")
        return {"image": img[None].astype(np.float32), "label": lab[None], "spacing": np.asarray(spacing),
                "id": rec.get("id")}


# --- transforms -----------------------------------------------------------------------------------------


class ResampleToSpacingd(Transform):
    """Resample image (trilinear) and label (nearest) to the target spacing, using the sample's ``spacing``."""

    def __init__(self, target: Sequence[float] | None) -> None:
        self.target = None if target is None else tuple(float(t) for t in target)

    def __call__(self, d: dict) -> dict:
        from monai.transforms import Resize

        if self.target is None:
            return d
        size = resampled_shape(d["image"].shape[1:], d["spacing"], self.target)
        if tuple(size) == tuple(d["image"].shape[1:]):
            return d
        d = dict(d)
        d["image"] = np.asarray(Resize(size, mode="trilinear")(torch.as_tensor(d["image"])), np.float32)
        if "label" in d:
            d["label"] = np.asarray(Resize(size, mode="nearest")(torch.as_tensor(d["label"].astype(np.float32))),
                                    np.uint8)
        d["spacing"] = np.asarray(self.target)
        return d


def deterministic_transforms(task: str, vcfg: VolumeConfig):
    """Load -> resample -> HU clip to [0, 1] -> pad to the patch (the part that is cached)."""
    from monai.transforms import Compose, ScaleIntensityRanged, SpatialPadd

    lo, hi = vcfg.hu_range
    return Compose([
        LoadVolumed(task),
        ResampleToSpacingd(vcfg.spacing),
        ScaleIntensityRanged(keys=["image"], a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        SpatialPadd(keys=["image", "label"], spatial_size=list(vcfg.patch)),
    ])


def random_transforms(vcfg: VolumeConfig, aug: Augment3DConfig | None):
    """Balanced patch sampling and augmentation (not cached)."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    ts = [RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(vcfg.patch), pos=vcfg.pos,
                                 neg=vcfg.neg, num_samples=vcfg.num_samples, image_key="image",
                                 image_threshold=0.0, allow_smaller=True)]
    if aug is not None and aug.enabled:
        for ax in aug.flip_axes:
            ts.append(RandFlipd(keys, prob=aug.flip_prob, spatial_axis=ax))
        if aug.affine_prob > 0:
            ts.append(RandAffined(keys, prob=aug.affine_prob, rotate_range=(np.deg2rad(aug.rotate_deg), 0, 0),
                                  scale_range=(0, aug.scale, aug.scale), mode=("bilinear", "nearest"),
                                  padding_mode="border"))
        if aug.intensity_prob > 0:
            ts += [RandShiftIntensityd(["image"], offsets=aug.intensity_shift, prob=aug.intensity_prob),
                   RandScaleIntensityd(["image"], factors=aug.intensity_scale, prob=aug.intensity_prob)]
        if aug.noise_prob > 0:
            ts.append(RandGaussianNoised(["image"], prob=aug.noise_prob, std=aug.noise_std))
    ts += [EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False),
           EnsureTyped(keys=["label"], dtype=torch.long, track_meta=False)]
    return Compose(ts)


def make_volume_dataset(records: list[dict], task: str, vcfg: VolumeConfig, aug: Augment3DConfig | None,
                        cache_dir: Path | None = None):
    """Training dataset: cached deterministic part (memory-bounded or on disk) + random part."""
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose

    det, rnd = deterministic_transforms(task, vcfg), random_transforms(vcfg, aug)
    full = Compose([*det.transforms, *rnd.transforms])
    if vcfg.cache == "memory" and vcfg.cache_rate > 0:
        return CacheDataset(records, full, cache_rate=vcfg.cache_rate, cache_num=vcfg.cache_num, num_workers=0,
                            progress=False, copy_cache=False)
    if vcfg.cache == "persistent":
        if cache_dir is None:
            raise ConfigError("volume.cache_dir: needed for the persistent cache")
        cache_dir.mkdir(parents=True, exist_ok=True)
        # PersistentDataset hashes the record: arrays of generated phantoms are hashed by their bytes
        from monai.data.utils import pickle_hashing

        return PersistentDataset(records, full, cache_dir=cache_dir, hash_func=pickle_hashing)
    return Dataset(records, full)


# --- training ------------------------------------------------------------------------------------------


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


def _preprocessed(records: list[dict], task: str, vcfg: VolumeConfig) -> list[dict]:
    det = deterministic_transforms(task, vcfg)
    return [det(r) for r in records]


def train_seg3d(raw: dict, run_dir: str | Path | None = None, resume: bool = False, *,
                records: list[dict] | None = None, verbose: bool = True) -> Path:
    """Train a 3-D segmentation model from a ``kind: seg3d`` config dict; returns the run directory."""
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from covidct.models.checkpoint import save_checkpoint, write_card
    from covidct.models.registry import build_model
    from covidct.train import datasets as ds
    from covidct.train.loop import _device, _optimizer, _scheduler, open_run_logs
    from covidct.train.losses import apply_loss, build_loss

    cfg, sh = load_seg3d_config(raw)
    say = print if verbose else (lambda *a, **k: None)
    run_dir = Path(run_dir or sh["output"].run_dir.format(name=cfg.name))
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    if not resume and (best_path.exists() or last_path.exists()):
        raise ConfigError(f"output.run_dir: {run_dir} already holds a run (resume it or choose another folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    (run_dir / "config.resolved.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    t, v = cfg.train, cfg.volume
    set_determinism(seed=t.seed)
    device = _device(t.device)
    classes = cfg.classes
    n_classes = len(classes)

    if records is None:
        records = load_volume_records(sh["data"].sources)
    sp = sh["data"].split
    split = ds.configured_split(records, sp)
    by_id = {r["id"]: r for r in records}
    parts = {k: [by_id[i] for i in ids if i in by_id] for k, ids in split.items()}
    if not parts["train"]:
        raise ConfigError("data: no training volumes")
    (run_dir / "split.json").write_text(json.dumps({"splits": split, "seed": sp.seed}, indent=1) + "\n")
    say(f"[{cfg.name}] seg3d task={cfg.task} model={cfg.model['name']} volumes train={len(parts['train'])} "
        f"val={len(parts['val'])} test={len(parts['test'])}; device={device}", flush=True)

    aug = cfg.augment
    train_ds = make_volume_dataset(parts["train"], cfg.task, v, aug, Path(v.cache_dir) if v.cache_dir
                                   else run_dir / "cache")
    val_samples = _preprocessed(parts["val"][: t.val_volumes] if t.val_volumes else parts["val"], cfg.task, v)
    vols_per_batch = max(1, t.batch_size // v.num_samples)
    from monai.data import list_data_collate

    dl = DataLoader(train_ds, batch_size=vols_per_batch, shuffle=True, num_workers=t.num_workers,
                    collate_fn=list_data_collate)
    steps = t.steps_per_epoch or max(1, math.ceil(len(train_ds) / vols_per_batch))

    mk = dict(cfg.model.get("kwargs") or {})
    model = build_model(cfg.model["name"], 1, n_classes, **mk).to(device)
    if cfg.model.get("init_from") and not (resume and last_path.is_file()):
        from covidct.train.loop import init_weights

        init_weights(model, str(cfg.model["init_from"]))  # fine-tuning: same architecture, new schedule
        say(f"[{cfg.name}] weights initialised from {cfg.model['init_from']}", flush=True)
    loss_fn = build_loss(sh["loss"]).to(device)

    class _C:  # the 2-D helpers read cfg.optimizer / cfg.schedule / cfg.train.epochs
        optimizer, schedule = sh["optimizer"], sh["schedule"]
        train = t

    opt = _optimizer(_C, model.parameters())
    sched = _scheduler(_C, opt)
    start, best, best_epoch, bad, elapsed, best_metrics = 0, -float("inf"), -1, 0, 0.0, {}
    if resume and last_path.is_file():
        st = torch.load(last_path, map_location="cpu", weights_only=False)  # our own training state
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if sched is not None and st.get("scheduler"):
            sched.load_state_dict(st["scheduler"])
        start, best, best_epoch, bad, elapsed = st["epoch"] + 1, st["best"], st["best_epoch"], st["bad"], st["elapsed"]
        best_metrics = st.get("best_metrics", {})
    writer, log = open_run_logs(run_dir, sh["output"].tensorboard, append=resume and start > 0)
    extra = {"spatial_dims": 3, "spacing": v.spacing, "hu_range": v.hu_range, "patch": v.patch,
             "overlap": v.overlap, "blend": v.blend, "sw_batch_size": v.sw_batch_size, "mirror_axes": v.mirror_axes}
    ckpt = dict(name=cfg.model["name"], kwargs=mk, in_channels=1, out_channels=n_classes, task=cfg.task,
                classes=classes, input_size=v.patch, normalisation={}, config=raw, extra=extra)
    stopped, epoch, it, epochs_run = "epochs", start - 1, iter(dl), start
    for epoch in range(start, t.epochs):
        if t.max_minutes is not None and elapsed >= t.max_minutes * 60:
            stopped = "time budget"
            break
        t0 = time.time()
        model.train()
        losses = []
        for _ in range(steps):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dl)
                batch = next(it)
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                out = model(x)
            loss = apply_loss(loss_fn, out if not t.bf16 else out.float(), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if sched is not None:
            sched.step()
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "val_dice": None, **{f"val_dice_{c}": None for c in classes}}  # fixed columns for log.csv
        epochs_run = epoch + 1
        if val_samples and ((epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs):
            res = evaluate_volumes(model, val_samples, v, n_classes, t.bf16, writer, epoch + 1)
            score = float(np.nanmean(res["pooled"][1:]))
            row.update({"val_dice": score, **{f"val_dice_{c}": float(d) for c, d in zip(classes, res["pooled"],
                                                                                          strict=True)}})
            if score > best:
                best, best_epoch, bad = score, epoch, 0
                best_metrics = {"foreground_dice": score,
                                "dice_per_class": dict(zip(classes, map(float, res["pooled"]), strict=True))}
                save_checkpoint(best_path, model, **ckpt, metrics=best_metrics, fp16=t.save_fp16)
            else:
                bad += 1
        elif not val_samples:  # no validation volumes: keep the latest
            save_checkpoint(best_path, model, **ckpt, metrics={}, fp16=t.save_fp16)
            best_epoch = epoch
        elapsed += time.time() - t0
        row["time_s"] = round(time.time() - t0, 2)
        log.write(row)
        if writer is not None:
            for k, val in row.items():
                if k != "epoch" and val is not None:
                    writer.add_scalar(k, val, epoch + 1)
        say(f"[{cfg.name}] epoch {epoch + 1}/{t.epochs} loss {row['train_loss']:.4f}"
            + (f" val Dice {row['val_dice']:.4f}" if row["val_dice"] is not None else "") + f" ({row['time_s']} s)", flush=True)
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": None if sched is None else sched.state_dict(), "epoch": epoch, "best": best,
                     "best_epoch": best_epoch, "bad": bad, "elapsed": elapsed, "best_metrics": best_metrics}, last_path)
        if t.patience is not None and bad >= t.patience:
            stopped = f"early stopping (no val Dice gain for {t.patience} validations)"
            break
    if writer is not None:
        writer.close()
    summary = {"name": cfg.name, "kind": "seg3d", "task": cfg.task, "model": cfg.model["name"], "classes": classes,
               "best_epoch": best_epoch + 1, "best_val_dice": best if best_epoch >= 0 else None, "val": best_metrics,
               "epochs_run": epochs_run, "stopped": stopped, "train_time_s": round(elapsed, 1),
               "n_volumes": {k: len(p) for k, p in parts.items()}}
    if t.evaluate_test and parts["test"] and best_path.is_file():
        from covidct.models.checkpoint import load_model

        m, _ = load_model(best_path)
        res = evaluate_volumes(m, _preprocessed(parts["test"], cfg.task, v), v, n_classes, t.bf16)
        summary["test"] = {"n_volumes": len(parts["test"]),
                           "foreground_dice": float(np.nanmean(res["pooled"][1:])),
                           "dice_per_class": dict(zip(classes, map(float, res["pooled"]), strict=True)),
                           "dice_per_class_mean_per_volume": dict(zip(classes, map(float, res["per_volume_mean"]),
                                                                      strict=True))}
        say(f"[{cfg.name}] test Dice per class: {summary['test']['dice_per_class']}", flush=True)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    if best_path.is_file():
        write_card(run_dir / "card.json", best_path, name=cfg.name, version="0", task=cfg.task, classes=classes,
                   data={"sources": raw.get("data", {}).get("sources"), "n_volumes": summary["n_volumes"]},
                   split=split, config=raw, training_time_s=summary["train_time_s"],
                   metrics={"val": best_metrics, "test": summary.get("test")},
                   command=f"covidct train {run_dir / 'config.resolved.yaml'}")
    say(f"[{cfg.name}] done: {stopped}; best val Dice {summary['best_val_dice']} at epoch {best_epoch + 1}; "
        f"run dir {run_dir}", flush=True)
    return run_dir
