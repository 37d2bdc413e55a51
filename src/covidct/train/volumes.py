"""3-D segmentation data (seeds 000/001): the ``kind: seg3d`` config, volume records and MONAI transforms.

A config with ``kind: seg3d`` goes through :func:`covidct.train.train` to
:func:`covidct.train.seg3d.train_seg3d` (the training task); this module is its data side. The set-up
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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from monai.transforms import Transform

from covidct.errors import ConfigError
from covidct.models.volume_inference import resampled_shape
from covidct.train.config import AugmentBase, LoopConfig, SectionedConfig, TaskClasses

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


@dataclass(kw_only=True)
class Augment3DConfig(AugmentBase):
    flip_axes: list[int] = field(default_factory=lambda: [0, 1])  # (z, y, x) axes; never 2 for left/right labels
    affine_prob: float = 0.3
    intensity_shift: float = 0.1
    intensity_prob: float = 0.5
    noise_prob: float = 0.15


@dataclass(kw_only=True)
class Train3DConfig(LoopConfig):
    epochs: int = 100
    batch_size: int = 4  # patches per optimiser step (the seed papers' 4)
    patience: int | None = 20  # validations (every val_every epochs) without a gain
    val_every: int = 1
    val_volumes: int | None = None  # validate on at most this many volumes (None: all)


@dataclass(kw_only=True)
class Seg3DConfig(SectionedConfig, TaskClasses):
    kind: Literal["seg3d"]
    task: Literal["lungs", "infection", "lungs_infection", "lesions"]
    name: str = "run3d"
    model: dict = field(default_factory=lambda: {"name": "unet3d", "kwargs": {}})
    optimizer: dict = field(default_factory=lambda: {"name": "adam", "lr": 5e-4})
    train: Train3DConfig = field(default_factory=Train3DConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    augment: Augment3DConfig = field(default_factory=Augment3DConfig)
    grid: dict | list | None = None

    CLASS_TABLE: ClassVar[dict[str, list[str]]] = TASKS3D


def load_seg3d_config(raw: dict) -> tuple[Seg3DConfig, object]:
    """Validate a ``kind: seg3d`` dict; returns (config, the shared 2-D :class:`Config` parts for reuse)."""
    from covidct.models.registry import SPATIAL_DIMS
    from covidct.train.config import (
        DataConfig,
        LossConfig,
        OptimizerConfig,
        OutputConfig,
        ScheduleConfig,
    )
    from covidct.train.schema import build

    cfg = build(Seg3DConfig, raw, "")
    shared = {
        "data": build(DataConfig, cfg.data, "data"),
        "loss": build(LossConfig, cfg.loss, "loss"),
        "optimizer": build(OptimizerConfig, cfg.optimizer, "optimizer"),
        "schedule": build(ScheduleConfig, cfg.schedule, "schedule"),
        "output": build(OutputConfig, cfg.output, "output"),
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
