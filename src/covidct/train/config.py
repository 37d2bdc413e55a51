"""Training configs: YAML -> validated dataclasses.

Every key is checked: an unknown, missing or ill-typed key raises :class:`ConfigError` whose one-line
message starts with the dotted key (``optimizer.lr: expected a number, got 'fast'``). See
``configs/README.md`` for the schema with examples; :func:`config_to_dict` gives the resolved config
that a run writes to ``config.resolved.yaml``.

A config may carry a ``grid:`` key describing variants (hyper-parameter sweeps of the seed papers):
either a mapping ``{dotted.key: [v1, v2, ...], ...}`` (Cartesian product) or a list of mappings
``[{dotted.key: v, ...}, ...]`` (explicit variants). :func:`expand_grid` turns it into
(variant name, config dict) pairs; :func:`covidct.train.loop.train` runs them all. Parsing, ``--set``
overrides and grids are :mod:`covidct.train.schema`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Literal

import yaml

from covidct.errors import ConfigError
from covidct.models.tasks import CLASSIFY_TASKS, PRETRAIN_TASKS, TASK_CLASSES
from covidct.train.schema import build


@dataclass
class SourceConfig:
    """One data source: a ``covidct.data.load_source`` name, ``phantom``, or a registered source.

    Keys other than those below are passed to the loader as keyword arguments
    (e.g. ``split: test``, ``multiclass: true`` for medseg-infnet; ``n_volumes`` for phantom).
    """

    EXTRA_KEYS_INTO: ClassVar[str] = "options"

    name: str
    root: str | None = None
    exclude_meta: dict = field(default_factory=dict)  # drop records whose meta[k] == v (or in v if a list)
    limit: int | None = None  # keep at most this many records (first ones; for smoke runs)
    repeat: int = 1  # oversample: each record this many times (same case, so splits are unaffected)
    id_prefix: str = ""  # put before every record id: two sources of the same slices (a slice and its crop) stay apart
    options: dict = field(default_factory=dict)


@dataclass
class SplitConfig:
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train, val, test
    seed: int = 0
    file: str | None = None  # a split.json (record ids per part) instead of fractions
    # explicit case (group) ids per part, e.g. a fine-tune that must keep its parent model's split;
    # every record's case must be listed (no silent drops)
    cases: dict[str, list[str]] | None = None
    by_meta: str | None = None  # classification only: the part is record["meta"][by_meta] (official lists)


@dataclass
class NegativesConfig:
    include: bool = True  # keep slices whose task mask is empty
    fraction: float | None = None  # at most this share of the training slices are negatives (None: all)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    split: SplitConfig = field(default_factory=SplitConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)


@dataclass
class ModelConfig:
    name: str = "unet"
    kwargs: dict = field(default_factory=dict)
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights (shipped name, .pt or run folder)


@dataclass
class LossConfig:
    name: Literal["dice", "focal", "dice_ce", "dice_focal", "ce"] = "dice_ce"
    include_background: bool = False  # Dice/focal terms over the background channel too
    weights: str | list[float] | None = None  # null | median_frequency | [w_bg, w_1, ...]
    gamma: float = 2.0  # focal
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0  # weight of the CE (dice_ce) or focal (dice_focal) term
    batch_dice: bool = False  # Dice over the whole batch instead of per image


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: Literal["none", "exponential", "cosine", "step"] = "none"
    gamma: float = 0.95  # exponential: lr *= gamma each epoch; step: lr *= gamma every step_size epochs
    step_size: int = 10
    min_lr: float = 0.0  # cosine floor


@dataclass(kw_only=True)
class LoopConfig:
    """The ``train:`` settings of every epoch-based run (2-D and 3-D); see covidct.train.loop.fit."""

    epochs: int = 20
    max_minutes: float | None = None  # wall-clock budget; training stops after the epoch that crosses it
    batch_size: int = 8
    steps_per_epoch: int | None = None  # None: one pass over the training data
    patience: int | None = 10  # early stopping: validations without a gain (None: off)
    seed: int = 0
    bf16: bool = False  # bf16 autocast (CPU or CUDA)
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    evaluate_test: bool = True  # evaluate best.pt on the test split at the end
    save_fp16: bool = True  # store best.pt weights as float16 (half the size)


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    input_size: int = 256
    val_steps: int | None = None  # None: the whole validation split
    cache_rate: float = 0.0  # MONAI CacheDataset share for the deterministic transforms
    threshold: float = 0.5  # binary tasks: foreground probability threshold stored with the model


@dataclass(kw_only=True)
class AugmentBase:
    """Augmentation settings of 2-D and 3-D training alike."""

    enabled: bool = True
    flip_prob: float = 0.5  # left-right and up-down flips (never use on left/right-labelled lungs)
    affine_prob: float = 0.5
    rotate_deg: float = 10.0  # in-plane
    scale: float = 0.1  # +- relative zoom
    intensity_scale: float = 0.1
    noise_prob: float = 0.2
    noise_std: float = 0.02


@dataclass(kw_only=True)
class AugmentConfig(AugmentBase):
    rot90_prob: float = 0.0  # random 90 degree rotations; with flips these give transposes
    shift: float = 0.05  # fraction of the image size
    contrast_prob: float = 0.3
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    intensity_scale_prob: float = 0.2
    smooth_prob: float = 0.1
    airless_prob: float = 0.0  # lungs task only: airless (consolidated) lung painted in, label kept (train.airless)
    airless_share: list[float] = field(default_factory=lambda: [0.05, 0.45])  # share of the lung, drawn per slice
    zoom_out_prob: float = 0.0  # a wider field of view before the normalisation (train.augment.RandZoomOutd)
    zoom_out_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])  # the anatomy's size, drawn per slice


@dataclass
class ClassifyConfig:
    """Classification-only settings (tasks in ``CLASSIFY_TASKS``); see covidct.train.classify."""

    threshold: Literal["youden", "target_precision", "fixed"] = "youden"  # chosen on the validation ROC
    target_precision: float = 0.95  # threshold: the lowest one whose validation precision reaches this
    fixed_threshold: float = 0.5
    select_on: Literal["auc", "f1", "loss"] = "auc"  # best.pt / early stopping criterion on validation
    label_smoothing: float = 0.0
    crop_prob: float = 0.5  # random resized crop (figures are cropped arbitrarily)
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])  # area fraction kept
    jpeg_prob: float = 0.3  # re-encode as JPEG (compression noise of paper figures)
    jpeg_quality: list[int] = field(default_factory=lambda: [30, 95])
    balanced_sampling: bool = False  # sample classes equally (instead of / besides loss.weights)


@dataclass
class PretrainConfig:
    """Contrastive pre-training settings (task ``contrastive``); see covidct.train.pretrain."""

    dim: int = 128  # outputs of the network's last layer: the projection that NT-Xent compares
    temperature: float = 0.2  # NT-Xent temperature


@dataclass
class OutputConfig:
    run_dir: str = "runs/{name}"
    tensorboard: bool = True


@dataclass(kw_only=True)
class SectionedConfig:
    """What the 3-D (``kind: seg3d``) and click-guided (``kind: interactive``) configs share: sections kept as
    mappings and checked with the classes above when a run starts."""

    description: str | None = None
    data: dict = field(default_factory=dict)  # {sources: [...], split: {...}} as in 2-D configs
    loss: dict = field(default_factory=lambda: {"name": "dice_ce", "include_background": False})
    schedule: dict = field(default_factory=lambda: {"name": "none"})
    output: dict = field(default_factory=lambda: {"run_dir": "runs/{name}", "tensorboard": True})


class TaskClasses:
    """``classes`` of a config with a ``task``: its row of the class's ``CLASS_TABLE`` (background first)."""

    CLASS_TABLE: ClassVar[dict[str, list[str]]]
    task: str

    @property
    def classes(self) -> list[str]:
        return list(self.CLASS_TABLE[self.task])


@dataclass
class Config(TaskClasses):
    task: Literal["lungs", "infection", "lesions", "covid-vs-noncovid", "slice-infection", "three-class",
                  "contrastive"]
    name: str = "run"
    description: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalisation: dict | None = None  # NormalisationConfig fields; None: the package default
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    grid: dict | list | None = None

    CLASS_TABLE: ClassVar[dict[str, list[str]]] = TASK_CLASSES


def _check_classify(cfg) -> None:
    """Classification-specific checks (the tasks in ``CLASSIFY_TASKS``)."""
    from covidct.models.registry import TASK_KIND

    if cfg.model.name not in TASK_KIND:
        return  # the generic check names the unknown model
    if TASK_KIND[cfg.model.name] != "classification":
        raise ConfigError(f"model.name: {cfg.model.name} is a segmentation model; task {cfg.task} needs a "
                          "classification model (resnet50, compact_cnn)")
    if cfg.loss.name not in ("ce", "focal"):
        raise ConfigError(f"loss.name: classification tasks use ce or focal, got {cfg.loss.name!r}")
    c = cfg.classify
    if not 0 < c.target_precision <= 1:
        raise ConfigError(f"classify.target_precision: must be in (0, 1], got {c.target_precision}")
    if not 0 <= c.fixed_threshold <= 1:
        raise ConfigError(f"classify.fixed_threshold: must be in [0, 1], got {c.fixed_threshold}")
    if len(c.crop_scale) != 2 or not 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1:
        raise ConfigError(f"classify.crop_scale: expected [low, high] within (0, 1], got {c.crop_scale}")
    if len(c.jpeg_quality) != 2 or not 1 <= c.jpeg_quality[0] <= c.jpeg_quality[1] <= 100:
        raise ConfigError(f"classify.jpeg_quality: expected [low, high] within 1..100, got {c.jpeg_quality}")
    if not 0 <= c.label_smoothing < 1:
        raise ConfigError(f"classify.label_smoothing: must be in [0, 1), got {c.label_smoothing}")


def _check(cfg: Config) -> None:
    """Cross-field checks (ranges, names)."""
    from covidct.models.registry import TASK_KIND, list_models

    if cfg.model.name not in TASK_KIND:
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r} (known: {', '.join(list_models())})")
    if cfg.task in CLASSIFY_TASKS:
        _check_classify(cfg)
    elif cfg.task in PRETRAIN_TASKS:
        if TASK_KIND[cfg.model.name] != "classification":
            raise ConfigError(f"model.name: task {cfg.task} pre-trains a classification model (resnet50, "
                              f"compact_cnn), not {cfg.model.name}")
        if cfg.pretrain.dim < 2:
            raise ConfigError(f"pretrain.dim: must be >= 2, got {cfg.pretrain.dim}")
        if cfg.pretrain.temperature <= 0:
            raise ConfigError(f"pretrain.temperature: must be > 0, got {cfg.pretrain.temperature}")
        if cfg.train.batch_size < 2:
            raise ConfigError("train.batch_size: contrastive pre-training needs batches of at least 2 images")
    elif TASK_KIND[cfg.model.name] != "segmentation":
        raise ConfigError(f"model.name: {cfg.model.name} is a classification model; task {cfg.task} needs segmentation")
    if cfg.data.split.by_meta and cfg.task not in CLASSIFY_TASKS:
        raise ConfigError("data.split.by_meta: only classification tasks support it (use file: or fractions:)")
    if not cfg.data.sources:
        raise ConfigError("data.sources: at least one source is required")
    fr = cfg.data.split.fractions
    cases = cfg.data.split.cases
    if cases is not None:
        bad = sorted(set(cases) - {"train", "val", "test"})
        if bad:
            raise ConfigError(f"data.split.cases: unknown part {bad[0]!r} (parts: train, val, test)")
        if cfg.data.split.file:
            raise ConfigError("data.split: give cases: or file:, not both")
    if cfg.data.split.file is None and cases is None and (len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6):
        raise ConfigError(f"data.split.fractions: need three non-negative numbers summing to 1, got {fr}")
    nf = cfg.data.negatives.fraction
    if nf is not None and not 0 <= nf < 1:
        raise ConfigError(f"data.negatives.fraction: must be in [0, 1), got {nf}")
    t = cfg.train
    for key, val, lo in (("epochs", t.epochs, 1), ("batch_size", t.batch_size, 1), ("input_size", t.input_size, 16),
                         ("num_workers", t.num_workers, 0)):
        if val < lo:
            raise ConfigError(f"train.{key}: must be >= {lo}, got {val}")
    if t.input_size % 16:
        raise ConfigError(f"train.input_size: must be a multiple of 16, got {t.input_size}")
    for key in ("steps_per_epoch", "val_steps", "patience"):
        v = getattr(t, key)
        if v is not None and v < 1:
            raise ConfigError(f"train.{key}: must be >= 1 or null, got {v}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: expected auto, cpu or cuda, got {t.device!r}")
    if not 0 <= t.cache_rate <= 1:
        raise ConfigError(f"train.cache_rate: must be in [0, 1], got {t.cache_rate}")
    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr: must be > 0, got {cfg.optimizer.lr}")
    w = cfg.loss.weights
    if isinstance(w, str) and w != "median_frequency":
        raise ConfigError(f"loss.weights: expected null, median_frequency or a list, got {w!r}")
    if isinstance(w, list) and len(w) != len(cfg.classes):
        raise ConfigError(f"loss.weights: need {len(cfg.classes)} weights for task {cfg.task}, got {len(w)}")
    if len(cfg.augment.gamma) != 2:
        raise ConfigError("augment.gamma: expected [low, high]")
    if cfg.augment.airless_prob > 0 and cfg.task != "lungs":
        raise ConfigError(f"augment.airless_prob: paints airless lung into a lung label; task {cfg.task} has none")
    sh = cfg.augment.airless_share
    if len(sh) != 2 or not 0 < sh[0] <= sh[1] < 1:
        raise ConfigError(f"augment.airless_share: expected [low, high] within (0, 1), got {sh}")
    zs = cfg.augment.zoom_out_scale
    if len(zs) != 2 or not 0 < zs[0] <= zs[1] <= 1:
        raise ConfigError(f"augment.zoom_out_scale: expected [low, high] within (0, 1], got {zs}")
    if cfg.normalisation is not None:
        from covidct.preprocess import NormalisationConfig

        allowed = {f.name for f in fields(NormalisationConfig)}
        for k in cfg.normalisation:
            if k not in allowed:
                raise ConfigError(f"normalisation.{k}: unknown key (allowed: {', '.join(sorted(allowed))})")


def load_config(source: str | Path | dict | Config) -> Config:
    """Parse and validate a config from a YAML path, a dict, or pass a :class:`Config` through."""
    if isinstance(source, Config):
        _check(source)
        return source
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config: file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from e
        if isinstance(raw, dict) and "name" not in raw:
            raw = {**raw, "name": path.stem}
    else:
        raw = copy.deepcopy(source)
    cfg = build(Config, raw, "")
    _check(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain dict of a config (the content of ``config.resolved.yaml``); round-trips through load_config."""
    d = dataclasses.asdict(cfg)
    d["data"]["sources"] = [_source_dict(s) for s in cfg.data.sources]
    return d


def _source_dict(source: SourceConfig) -> dict:
    """A source as a config writes it: its name, every other field that differs from its default (so that a field
    added to :class:`SourceConfig` is kept without a change here), then its loader options."""
    out: dict = {"name": source.name}
    for f in fields(SourceConfig):
        if f.name in ("name", "options"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(source, f.name)
        if value != default:
            out[f.name] = copy.deepcopy(value)
    return {**out, **copy.deepcopy(source.options)}


def dump_config(cfg: Config, path: str | Path) -> Path:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return Path(path)
