"""Training data: records from the configured sources, task labels, case-level splits, MONAI pipelines.

Records follow the ``covidct.data`` contract (``image`` (H, W) float32 HU or 8-bit display values,
``is_hu``, ``lungs``/``infection``/``lesions`` masks or None, ``case``, ``group``, ``id``, ``meta``...).
Sources are looked up in this order: a function registered with :func:`register_source` (tests,
experiments), ``phantom`` (slices of :func:`covidct.phantom.make_phantom` volumes, HU), and
``covidct.data.load_source``.

Transform order (training): ToModelInputd (HU or display -> model space, *before* anything else, so
training and inference see the same intensities) -> channel -> resize to input size (image: area
when shrinking, bilinear when enlarging; label: nearest) -> augmentation (spatial on both, intensity
on the image) -> tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform

from covidct.errors import ConfigError
from covidct.models.tasks import task_label
from covidct.preprocess import NormalisationConfig, resize_image_tensor, resize_label_tensor, to_model_input

_SOURCES: dict[str, Callable[..., list[dict]]] = {}


def register_source(name: str, fn: Callable[..., list[dict]]) -> None:
    """Make ``fn(**options) -> list[record]`` available as ``data.sources[].name`` in configs."""
    _SOURCES[name] = fn


# --- labels per task --------------------------------------------------------------------------------


# --- sources -------------------------------------------------------------------------------------------


def phantom_records(n_volumes: int = 4, shape: Sequence[int] = (32, 256, 256), spacing: Sequence[float] = (5.0, 1.4, 1.4),
                    seed: int = 0, lesion_burden: float | Sequence[float] = (0.0, 0.3), margin_slices: int = 6,
                    lesions: bool = True, every: int = 1, lobar: bool = False) -> list[dict]:
    """Axial slices of synthetic phantom volumes (HU) as records, one case per volume.

    ``lesion_burden`` may be a (low, high) range drawn per volume, so some volumes are lesion-free
    negatives; ``margin_slices`` adds lung-free slices above and below the lungs (negatives for the
    lung model); ``every`` keeps every k-th slice. ``lobar`` paints, instead of the default patches,
    confluent consolidation of one lower, middle or upper zone (side and zone drawn per volume; see
    :func:`lobar_spec`): solid lung that a lung model must keep in the lung.
    """
    from covidct.phantom import make_phantom

    rng = np.random.default_rng(seed)
    out = []
    for v in range(n_volumes):
        burden = (float(rng.uniform(*lesion_burden)) if isinstance(lesion_burden, Sequence)
                  else float(lesion_burden))
        spec = lobar_spec(rng, burden) if lobar and lesions and burden > 0 else None
        ph = make_phantom(shape=tuple(shape), spacing=tuple(spacing), seed=seed * 1000 + v, lesion_burden=burden,
                          lesions=lesions and burden > 0, margin_slices=margin_slices, lesion_spec=spec)
        arr, lungs, les = np.asarray(ph.ct.array), np.asarray(ph.lungs), np.asarray(ph.lesions)
        case = f"phantom-{seed}-{v}"
        for z in range(0, arr.shape[0], every):
            out.append({
                "image": arr[z].astype(np.float32), "is_hu": True,
                "lungs": (lungs[z] > 0).astype(np.uint8), "infection": (les[z] > 0).astype(np.uint8),
                "lesions": les[z].astype(np.uint8), "slice_label": int(les[z].any()), "class_label": None,
                "case": case, "id": f"{case}-z{z:03d}", "source": "phantom", "group": case,
                "meta": {"z": z, "lesion_burden": burden},
            })
    return out


def lobar_spec(rng: np.random.Generator, burden: float):
    """A lobar-pneumonia lesion spec: ``burden`` of one lung (side drawn) as confluent consolidation of a
    lower, middle or upper zone (drawn), as in the ``lobar`` pattern preset but anywhere."""
    from covidct.phantom.lesions import LesionSpec

    side = ("left", "right")[int(rng.integers(2))]
    zone = [(0.0, 0.45, 4.0), (0.3, 0.7, 0.0), (0.55, 1.0, -4.0)][int(rng.integers(3))]
    return LesionSpec(burden=burden, sides=(side,), consolidation_fraction=1.0, blob_mm=60.0, peripheral_weight=0.0,
                      posterior_weight=float(rng.uniform(-0.5, 0.5)), basal_weight=zone[2], z_range=zone[:2],
                      effusion=False)


def load_records(sources: Sequence) -> list[dict]:
    """Records of all configured sources (``SourceConfig`` objects), with exclusions and limits applied."""
    records: list[dict] = []
    for i, s in enumerate(sources):
        key = f"data.sources[{i}]"
        opts = dict(s.options)
        try:
            if s.name in _SOURCES:
                recs = _SOURCES[s.name](**opts)
            elif s.name == "phantom":
                recs = phantom_records(**opts)
            else:
                from covidct.data import load_source

                recs = load_source(s.name, root=s.root, **opts)
        except TypeError as e:
            raise ConfigError(f"{key}: bad option for source {s.name!r}: {e}") from e
        except ImportError as e:
            raise ConfigError(f"{key}: source {s.name!r} is not available ({e})") from e
        for k, v in s.exclude_meta.items():
            vals = v if isinstance(v, list) else [v]
            recs = [r for r in recs if (r.get("meta") or {}).get(k) not in vals]
        if s.limit is not None:
            recs = recs[: s.limit]
        if s.id_prefix:  # the same slices in two forms (MedSeg's full slices and Inf-Net's crops of them)
            recs = [{**r, "id": f"{s.id_prefix}{r['id']}"} for r in recs]
        if s.repeat < 1:
            raise ConfigError(f"{key}.repeat: must be >= 1, got {s.repeat}")
        if s.repeat > 1:  # copies share the record's case; ids get a suffix so they stay unique
            recs = [r if k == 0 else {**r, "id": f"{r['id']}#{k}"} for r in recs for k in range(s.repeat)]
        records.extend(recs)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ConfigError(f"data.sources: record id {dup!r} occurs twice (same source listed twice?)")
    return records


def _group(r: dict) -> str:
    return str(r.get("group") or r.get("case") or r["id"])


def split_records(records: list[dict], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Case-level split (record ids per part) by ``group``; ``covidct.data.splits.split_by_group`` when present."""
    parts = ("train", "val", "test")
    try:
        from covidct.data.splits import split_by_group
    except ImportError:
        split_by_group = None
    if split_by_group is not None:
        sp = split_by_group(records, dict(zip(parts, map(float, fractions), strict=True)), seed)
        return {k: list(sp.get(k, [])) for k in parts}
    # fallback: shuffle groups, fill parts greedily by slice count (never splits a group)
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(_group(r), []).append(r["id"])
    names = sorted(groups)
    np.random.default_rng(seed).shuffle(names)
    total = sum(len(v) for v in groups.values())
    out: dict[str, list[str]] = {k: [] for k in parts}
    targets = dict(zip(parts, (f * total for f in fractions), strict=True))
    for g in names:
        need = {k: targets[k] - len(out[k]) for k in parts}
        out[max(need, key=need.get)].extend(groups[g])
    return out


def split_by_cases(records: list[dict], cases: dict[str, list[str]]) -> dict[str, list[str]]:
    """Record ids per part from explicit case lists (``data.split.cases``); an unlisted case is an error."""
    part_of: dict[str, str] = {}
    for part, names in cases.items():
        if part not in ("train", "val", "test"):
            raise ConfigError(f"data.split.cases: unknown part {part!r} (parts: train, val, test)")
        for name in names:
            if part_of.setdefault(str(name), part) != part:
                raise ConfigError(f"data.split.cases: case {name!r} is in both {part_of[str(name)]} and {part}")
    out: dict[str, list[str]] = {k: [] for k in ("train", "val", "test")}
    for r in records:
        g = _group(r)
        if g not in part_of:
            raise ConfigError(f"data.split.cases: case {g!r} (record {r['id']}) is in no part")
        out[part_of[g]].append(r["id"])
    return out


def read_split(path: Path) -> dict[str, list[str]]:
    """A split file in the ``covidct.data.splits.save_split`` format (``{"splits": {...}, ...}``)."""
    try:
        doc = json.loads(Path(path).read_text())
        sp = doc.get("splits", doc)
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"data.split.file: cannot read {path}: {e}") from e
    missing = [k for k in ("train", "val", "test") if k not in sp]
    if missing:
        raise ConfigError(f"data.split.file: {path} lacks the {missing[0]!r} part")
    return {k: [str(i) for i in sp[k]] for k in ("train", "val", "test")}


def configured_split(records: list[dict], sp) -> dict[str, list[str]]:
    """Record ids per part as a config's ``data.split`` says: ``file``, ``cases`` or ``fractions`` + ``seed``."""
    if sp.file:
        if not Path(sp.file).is_file():
            raise ConfigError(f"data.split.file: not found: {sp.file}")
        return read_split(Path(sp.file))
    if sp.cases is not None:
        return split_by_cases(records, sp.cases)
    return split_records(records, sp.fractions, sp.seed)


def check_split(records: list[dict], split: dict[str, list[str]]) -> None:
    """Refuse splits that put one case in two parts (slice-level leakage)."""
    where: dict[str, str] = {}
    by_id = {r["id"]: r for r in records}
    for part, ids in split.items():
        for i in ids:
            if i not in by_id:
                continue
            g = _group(by_id[i])
            if where.setdefault(g, part) != part:
                raise ConfigError(f"data.split: case {g!r} is in both {where[g]} and {part}")


def select_negatives(samples: list[dict], fraction: float | None, include: bool, seed: int) -> list[dict]:
    """Drop (include=False) or subsample empty-label samples to at most ``fraction`` of the result."""
    pos = [s for s in samples if s["label"].any()]
    neg = [s for s in samples if not s["label"].any()]
    if not include:
        return pos
    if fraction is None or not neg:
        return samples
    n_max = int(fraction * len(pos) / (1 - fraction)) if pos else len(neg)
    if len(neg) > n_max:
        keep = set(np.random.default_rng(seed).choice(len(neg), n_max, replace=False).tolist())
        neg = [s for i, s in enumerate(neg) if i in keep]
    return pos + neg


def make_samples(records: list[dict], task: str) -> list[dict]:
    """Training samples ``{"image", "label", "is_hu", "id", "case"}`` of records that have a task label."""
    out = []
    for r in records:
        lab = task_label(r, task)
        if lab is None:
            continue
        img = np.asarray(r["image"], dtype=np.float32)
        if img.shape != lab.shape:
            raise ConfigError(f"data: record {r['id']}: image {img.shape} and mask {lab.shape} differ")
        out.append({"image": img, "label": lab, "is_hu": bool(r.get("is_hu", False)), "id": r["id"],
                    "case": _group(r)})
    return out


# --- transforms --------------------------------------------------------------------------------------------


class ToModelInputd(MapTransform):
    """Dictionary version of :func:`covidct.preprocess.to_model_input` (reads ``is_hu`` from the sample), so
    training pipelines compose the one normalisation with MONAI transforms."""

    def __init__(self, keys=("image",), is_hu_key: str = "is_hu", cfg: NormalisationConfig | None = None):
        super().__init__(keys)
        self.is_hu_key = is_hu_key
        self.cfg = cfg or NormalisationConfig()

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = to_model_input(np.asarray(d[key]), bool(d.get(self.is_hu_key, False)), self.cfg)
        return d


def build_transforms(input_size: int, norm: NormalisationConfig, augment=None, with_label: bool = True):
    """MONAI Compose: normalisation, channel, resize, (augmentation), tensors."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        Lambdad,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandRotate90d,
        RandScaleIntensityd,
    )

    size = (input_size, input_size)
    keys = ["image", "label"] if with_label else ["image"]
    a = augment
    ts = []
    if a is not None and a.enabled and getattr(a, "zoom_out_prob", 0.0) > 0:  # before the normalisation, as a scan's
        from covidct.train.augment import RandZoomOutd

        ts.append(RandZoomOutd(keys, prob=a.zoom_out_prob, scale=a.zoom_out_scale))
    ts += [
        ToModelInputd(keys=["image"], cfg=norm),
        Lambdad(keys=keys, func=lambda a: torch.as_tensor(np.ascontiguousarray(a))[None]),
        Lambdad(keys=["image"], func=lambda t: resize_image_tensor(t, size)),
    ]
    if with_label:
        ts.append(Lambdad(keys=["label"], func=lambda t: resize_label_tensor(t, size)))
    if a is not None and a.enabled:
        if with_label and getattr(a, "airless_prob", 0.0) > 0:  # before the flips: it paints the posterior side
            from covidct.train.airless import RandAirlessLungd

            ts.append(RandAirlessLungd(keys, prob=a.airless_prob, share=a.airless_share))
        if a.flip_prob > 0:
            ts += [RandFlipd(keys, prob=a.flip_prob, spatial_axis=0), RandFlipd(keys, prob=a.flip_prob, spatial_axis=1)]
        if a.rot90_prob > 0:
            ts.append(RandRotate90d(keys, prob=a.rot90_prob, max_k=3))
        if a.affine_prob > 0:
            ts.append(RandAffined(
                keys, prob=a.affine_prob, rotate_range=np.deg2rad(a.rotate_deg),
                translate_range=(a.shift * input_size, a.shift * input_size), scale_range=(a.scale, a.scale),
                mode=("bilinear", "nearest")[: len(keys)], padding_mode="zeros"))
        if a.contrast_prob > 0:
            ts.append(RandAdjustContrastd(["image"], prob=a.contrast_prob, gamma=tuple(a.gamma)))
        if a.intensity_scale_prob > 0:
            ts.append(RandScaleIntensityd(["image"], factors=a.intensity_scale, prob=a.intensity_scale_prob))
        if a.noise_prob > 0:
            ts.append(RandGaussianNoised(["image"], prob=a.noise_prob, std=a.noise_std))
        if a.smooth_prob > 0:
            ts.append(RandGaussianSmoothd(["image"], prob=a.smooth_prob, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)))
    ts.append(EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False))
    if with_label:
        ts.append(EnsureTyped(keys=["label"], dtype=torch.long, track_meta=False))
    return Compose(ts)


def make_dataset(samples: list[dict], transform, cache_rate: float = 0.0):
    """MONAI (Cache)Dataset over the samples; only image/label/is_hu/id are passed to transforms."""
    from monai.data import CacheDataset, Dataset

    data = [{"image": s["image"], "label": s["label"], "is_hu": s["is_hu"], "id": s["id"]} for s in samples]
    if cache_rate > 0:
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=0, progress=False)
    return Dataset(data, transform)
