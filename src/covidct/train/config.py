"""Training configs: YAML -> validated dataclasses.

Every key is checked: an unknown, missing or ill-typed key raises :class:`ConfigError` whose one-line
message starts with the dotted key (``optimizer.lr: expected a number, got 'fast'``). See
``configs/README.md`` for the schema with examples; :func:`config_to_dict` gives the resolved config
that a run writes to ``config.resolved.yaml``.

A config may carry a ``grid:`` key describing variants (hyper-parameter sweeps of the seed papers):
either a mapping ``{dotted.key: [v1, v2, ...], ...}`` (Cartesian product) or a list of mappings
``[{dotted.key: v, ...}, ...]`` (explicit variants). :func:`expand_grid` turns it into
(variant name, config dict) pairs; :func:`covidct.train.loop.train` runs them all.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from covidct.errors import ConfigError
from covidct.models.tasks import CLASSIFY_TASKS, PRETRAIN_TASKS, TASK_CLASSES


@dataclass
class SourceConfig:
    """One data source: a ``covidct.data.load_source`` name, ``phantom``, or a registered source.

    Keys other than those below are passed to the loader as keyword arguments
    (e.g. ``split: test``, ``multiclass: true`` for medseg-infnet; ``n_volumes`` for phantom).
    """

    name: str
    root: str | None = None
    exclude_meta: dict = field(default_factory=dict)  # drop records whose meta[k] == v (or in v if a list)
    limit: int | None = None  # keep at most this many records (first ones; for smoke runs)
    repeat: int = 1  # oversample: each record this many times (same case, so splits are unaffected)
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


@dataclass
class TrainConfig:
    epochs: int = 20
    max_minutes: float | None = None  # wall-clock budget; training stops after the epoch that crosses it
    batch_size: int = 8
    input_size: int = 256
    steps_per_epoch: int | None = None  # None: one pass over the training slices
    val_steps: int | None = None  # None: the whole validation split
    patience: int | None = 10  # early stopping on validation Dice (None: off)
    seed: int = 0
    bf16: bool = False  # bf16 autocast (CPU or CUDA)
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cache_rate: float = 0.0  # MONAI CacheDataset share for the deterministic transforms
    threshold: float = 0.5  # binary tasks: foreground probability threshold stored with the model
    evaluate_test: bool = True  # evaluate best.pt on the test split at the end
    save_fp16: bool = True  # store best.pt weights as float16 (half the size)


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip_prob: float = 0.5  # left-right and up-down flips (never use on left/right-labelled lungs)
    rot90_prob: float = 0.0  # random 90 degree rotations; with flips these give transposes
    affine_prob: float = 0.5
    rotate_deg: float = 10.0
    shift: float = 0.05  # fraction of the image size
    scale: float = 0.1  # +- relative zoom
    contrast_prob: float = 0.3
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    intensity_scale_prob: float = 0.2
    intensity_scale: float = 0.1
    noise_prob: float = 0.2
    noise_std: float = 0.02
    smooth_prob: float = 0.1


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


@dataclass
class Config:
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

    @property
    def classes(self) -> list[str]:
        return list(TASK_CLASSES[self.task])


# --- parsing ----------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e).split(": ", 1)[1])
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls: type, d: Any, prefix: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    if cls is SourceConfig:  # extra keys are loader options
        known = {f.name for f in fields(SourceConfig)} - {"options"}
        d = {**{k: v for k, v in d.items() if k in known},
             "options": {**d.get("options", {}), **{k: v for k, v in d.items() if k not in known | {"options"}}}}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for k in d:
        if k not in names:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: unknown key (allowed: {', '.join(names)})")
    kwargs = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in d:
            kwargs[f.name] = _coerce(d[f.name], hints[f.name], key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{key}: missing required key")
    return cls(**kwargs)


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
    cfg = _build(Config, raw, "")
    _check(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain dict of a config (the content of ``config.resolved.yaml``); round-trips through load_config."""
    d = dataclasses.asdict(cfg)
    d["data"]["sources"] = [{"name": s["name"], **({"root": s["root"]} if s["root"] else {}),
                             **({"exclude_meta": s["exclude_meta"]} if s["exclude_meta"] else {}),
                             **({"limit": s["limit"]} if s["limit"] is not None else {}), **s["options"]}
                            for s in d["data"]["sources"]]
    return d


def dump_config(cfg: Config, path: str | Path) -> Path:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return Path(path)


# --- grids --------------------------------------------------------------------------------------------


def _set_dotted(d: dict, dotted: str, value: Any, where: str = "grid") -> None:
    """Set ``d[a][b]... = value`` for ``a.b...``; a numeric part indexes a list (``data.sources.3.fold``)."""
    parts = dotted.split(".")
    cur: Any = d
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not p.isdigit() or int(p) >= len(cur):
                raise ConfigError(f"{where}.{dotted}: {p} is not an index of a {len(cur)}-item list")
            key: Any = int(p)
        elif isinstance(cur, dict):
            key = p
            if not last and cur.get(p) is None:
                cur[p] = {}
        else:
            raise ConfigError(f"{where}.{dotted}: {parts[i - 1]} is not a mapping")
        if last:
            cur[key] = copy.deepcopy(value)
        else:
            cur = cur[key]


def _short(key: str, value: Any, index: int) -> str:
    """Readable variant-name part: model name, ``loss-dice``, ``lr-0.001``; other mappings are omitted."""
    parts = key.split(".")
    if isinstance(value, dict):
        return str(value.get("name", "")) if parts[-1] == "model" else ""
    v = f"{value:g}" if isinstance(value, float) else str(value)
    v = re.sub(r"[^A-Za-z0-9.+-]", "", v)
    if parts[-1] == "name":
        return v if len(parts) == 1 or parts[-2] == "model" else f"{parts[-2]}-{v}"
    return f"{parts[-1]}-{v}"


def expand_grid(raw: dict) -> list[tuple[str, dict]]:
    """Variants of a raw config dict with a ``grid`` key: [(variant name, config dict without grid)].

    A config without a grid expands to itself (name ``""``).
    """
    grid = raw.get("grid")
    base = {k: v for k, v in raw.items() if k != "grid"}
    if not grid:
        return [("", base)]
    if isinstance(grid, dict):
        keys = list(grid)
        for k in keys:
            if not isinstance(grid[k], list) or not grid[k]:
                raise ConfigError(f"grid.{k}: expected a non-empty list of values")
        combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))]
        index = [dict(zip(keys, idx, strict=True))
                 for idx in itertools.product(*(range(len(grid[k])) for k in keys))]
    elif isinstance(grid, list):
        for i, g in enumerate(grid):
            if not isinstance(g, dict):
                raise ConfigError(f"grid[{i}]: expected a mapping of dotted keys to values")
        combos, index = grid, [dict.fromkeys(g, i) for i, g in enumerate(grid)]
    else:
        raise ConfigError("grid: expected a mapping or a list of mappings")
    out = []
    for combo, idx in zip(combos, index, strict=True):
        d = copy.deepcopy(base)
        for k, v in combo.items():
            _set_dotted(d, k, v)
        name = "_".join(p for p in (_short(k, v, idx[k]) for k, v in combo.items()) if p)
        out.append((name or f"variant{len(out)}", d))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):  # e.g. variants differing only in a mapping: number them
        out = [(f"{i:02d}_{n}", d) for i, (n, d) in enumerate(out)]
    return out


def load_raw(source: str | Path | dict) -> dict:
    """The raw dict of a YAML config (name defaulted to the file stem), for grid expansion."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping")
    raw.setdefault("name", path.stem)
    return raw


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """``raw`` with ``KEY=VALUE`` overrides applied (dotted keys, YAML values: ``train.max_minutes=8``,
    ``model.kwargs.channels=[8,16,32]``). Grid variants are expanded afterwards, so a grid key wins over an
    override of the same key. ConfigError on a malformed override; the schema check comes later as usual."""
    out = copy.deepcopy(raw)
    for text in overrides or []:
        key, sep, value = str(text).partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. train.max_minutes=8")
        try:
            val = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {text!r}: the value is not valid YAML") from e
        if isinstance(val, str):  # YAML 1.1 reads 3e-4 as text; a number is meant
            try:
                val = float(val)
            except ValueError:
                pass
        _set_dotted(out, key.strip(), val, where="--set")
    return out
