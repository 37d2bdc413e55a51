"""Group-preserving (patient/case-level) splits of record lists, saved as JSON.

A split maps split names to lists of record ids. No ``group`` ever appears on two sides.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import ConfigError, UnreadableInput

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


class Split(dict):
    """``{split_name: [record ids]}`` plus ``info`` (seed, source, targets, leaky_groups...)."""

    def __init__(self, splits: Mapping[str, list[str]] | None = None, **info: Any) -> None:
        super().__init__({k: list(v) for k, v in (splits or {}).items()})
        self.info: dict[str, Any] = dict(info)

    @property
    def seed(self) -> int | None:
        return self.info.get("seed")

    @property
    def leaky_groups(self) -> list[dict]:
        return self.info.get("leaky_groups", [])


def _group_of(rec: dict) -> str:
    return str(rec.get("group") or rec["id"])


def _stratum(rec: dict, key: str | Callable[[dict], Any] | None) -> Any:
    if key is None:
        return 0
    return key(rec) if callable(key) else rec.get(key, rec.get("meta", {}).get(key))


def split_by_group(
    records: list[dict],
    fractions: Mapping[str, float | int] | None = None,
    seed: int = 0,
    stratify_key: str | Callable[[dict], Any] | None = None,
    *,
    by: str = "records",
    tries: int = 200,
) -> Split:
    """Split record ids into named parts without ever splitting a ``group``.

    ``fractions`` are fractions (summing to 1) or integer counts (summing to the total) of
    records (``by="records"``) or of groups (``by="groups"``). With ``stratify_key`` (a record or
    meta key, or a function of the record) each stratum is spread in the same proportions.
    Groups are assigned greedily in ``tries`` seeded random orders; the assignment closest to
    the targets wins (exact whenever one of the orders reaches them).
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if not fractions or any(v < 0 for v in fractions.values()):
        raise ConfigError("split fractions must be non-negative and non-empty")
    if by not in ("records", "groups"):
        raise ConfigError(f"by must be 'records' or 'groups', got {by!r}")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise ConfigError("record ids are not unique; cannot split by id")
    names = list(fractions)
    # Per-group stratum counts.
    group_order: list[str] = []
    members: dict[str, list[str]] = {}
    strata_of: dict[str, dict[Any, int]] = {}
    for r in records:
        g = _group_of(r)
        if g not in members:
            group_order.append(g)
            members[g], strata_of[g] = [], {}
        members[g].append(str(r["id"]))
        s = _stratum(r, stratify_key)
        strata_of[g][s] = strata_of[g].get(s, 0) + 1
    strata = sorted({s for d in strata_of.values() for s in d}, key=repr)
    gs = sorted(group_order)  # sorted so the result does not depend on record order
    if by == "records":
        vec = np.array([[strata_of[g].get(s, 0) for s in strata] for g in gs], dtype=float)
    else:  # one unit per group, counted in its majority stratum
        vec = np.zeros((len(gs), len(strata)))
        for i, g in enumerate(gs):
            vec[i, strata.index(max(strata_of[g], key=lambda s, g=g: (strata_of[g][s], repr(s))))] = 1
    total = vec.sum(0)
    want = np.array([float(fractions[n]) for n in names])
    is_counts = all(float(v).is_integer() for v in want) and want.sum() > 1.0001
    if is_counts:
        if want.sum() != total.sum():
            raise ConfigError(f"split counts sum to {int(want.sum())}, but there are {int(total.sum())} {by}")
        share = want / want.sum()
    else:
        if abs(want.sum() - 1) > 1e-6:
            raise ConfigError(f"split fractions must sum to 1, got {want.sum():.4f}")
        share = want
    target = share[:, None] * total[None, :]  # (splits, strata)
    if is_counts and len(strata) == 1:
        target[:, 0] = want

    rng = np.random.default_rng(seed)
    best, best_err, best_cur = None, np.inf, np.zeros_like(target)
    for _ in range(max(1, tries)):
        order = rng.permutation(len(gs))
        cur = np.zeros_like(target)
        assign = np.empty(len(gs), dtype=int)
        for i in order:
            # Put the group where it most reduces (or least increases) the distance to target.
            gain = np.abs(target - cur).sum(1) - np.abs(target - cur - vec[i]).sum(1)
            deficit = ((target - cur) * (vec[i] > 0)).sum(1) / np.maximum(target.sum(1), 1e-9)
            j = int(np.lexsort((-deficit, -gain))[0])
            assign[i] = j
            cur[j] += vec[i]
        err = float(np.abs(target - cur).sum())
        if is_counts:  # exact split sizes matter most; strata balance second
            err += 1000.0 * float(np.abs(want - cur.sum(1)).sum())
        if err < best_err - 1e-9:
            best, best_err, best_cur = assign.copy(), err, cur.copy()
        if best_err < 1e-9 or (not is_counts and best_err < 0.5 * len(names) * len(strata) + 1e-9):
            break
    assert best is not None
    if is_counts and not np.allclose(best_cur.sum(1), want):
        warnings.warn(f"split_by_group: counts {dict(fractions)} cannot be met exactly by whole groups", stacklevel=2)
    side = {g: names[best[i]] for i, g in enumerate(gs)}
    out: dict[str, list[str]] = {n: [] for n in names}
    for r in records:
        out[side[_group_of(r)]].append(str(r["id"]))
    return Split(out, seed=seed, fractions=dict(fractions), by=by,
                 stratify_key=stratify_key if isinstance(stratify_key, str) or stratify_key is None else "callable",
                 source=_sources(records))  # fmt: skip


def _sources(records: list[dict]) -> str | None:
    s = sorted({str(r.get("source")) for r in records if r.get("source")})
    return ",".join(s) or None


def apply_split(records: list[dict], split: Mapping[str, list[str]]) -> dict[str, list[dict]]:
    """Records per split, in each split's id order; unknown ids raise ConfigError."""
    by_id = {str(r["id"]): r for r in records}
    out: dict[str, list[dict]] = {}
    for name, ids in split.items():
        missing = [i for i in ids if str(i) not in by_id]
        if missing:
            raise ConfigError(f"split {name!r} names {len(missing)} ids not in the records (e.g. {missing[0]!r})")
        out[name] = [by_id[str(i)] for i in ids]
    return out


def check_groups_disjoint(records: list[dict], split: Mapping[str, list[str]]) -> list[str]:
    """Groups that appear in more than one split (empty list when the split is clean)."""
    gid = {str(r["id"]): _group_of(r) for r in records}
    seen: dict[str, set[str]] = {}
    for name, ids in split.items():
        for i in ids:
            seen.setdefault(gid[str(i)], set()).add(name)
    return sorted(g for g, s in seen.items() if len(s) > 1)


def save_split(split: Mapping[str, list[str]], path: str | Path, **info: Any) -> Path:
    """Write a split as JSON: ``{"splits": {...}, "seed": ..., "source": ..., "info": {...}}``."""
    meta = dict(getattr(split, "info", {}))
    meta.update(info)
    doc = {
        "splits": {k: [str(i) for i in v] for k, v in split.items()},
        "seed": meta.pop("seed", None),
        "source": meta.pop("source", None),
        "info": meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def load_split(path: str | Path) -> Split:
    """Read a split written by save_split."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        splits = doc["splits"]
    except FileNotFoundError as e:
        raise UnreadableInput(f"split file not found: {path}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise UnreadableInput(f"not a covidct split file: {path} ({e})") from e
    return Split(splits, seed=doc.get("seed"), source=doc.get("source"), **doc.get("info", {}))


# --------------------------------------------------------------------------- MedSeg helpers


def medseg_split_72_10_18(records: list[dict], seed: int = 0) -> Split:
    """The 72/10/18 train/val/test split of the 100 MedSeg CT100 slices, same-patient slices together.

    ``records`` are load_medseg_ct100() records (their ``group`` holds same-patient slices).
    """
    if len(records) != 100:
        raise ConfigError(f"the 72/10/18 MedSeg split needs the 100 CT100 slices, got {len(records)}")
    s = split_by_group(records, {"train": 72, "val": 10, "test": 18}, seed=seed)
    s.info["source"] = "medseg-ct100"
    s.info["name"] = "medseg-72-10-18"
    return s


def infnet_consistent_split(
    records: list[dict], n_val: int = 10, seed: int = 0, drop_leaky: bool = False
) -> Split:
    """Inf-Net's protocol: test = its 48 test slices, train = its 50 train slices minus ``n_val``
    slices (whole groups, chosen among groups with no slice in the test set) held out as val.

    ``records`` need ``meta["infnet_split"]`` (load_medseg_ct100, or both load_medseg_infnet
    splits). Slices in neither Inf-Net split (22, 48) are left out. Groups with slices on both
    sides of Inf-Net's train/test are returned in ``split.leaky_groups`` (``info["leaky_groups"]``);
    with ``drop_leaky`` their train slices are removed from train.
    """
    side = {str(r["id"]): r.get("meta", {}).get("infnet_split") for r in records}
    recs = [r for r in records if side[str(r["id"])] in ("train", "test")]
    groups: dict[str, dict[str, list[str]]] = {}
    for r in recs:
        groups.setdefault(_group_of(r), {"train": [], "test": []})[side[str(r["id"])]].append(str(r["id"]))
    leaky = [
        {"group": g, "train_ids": d["train"], "test_ids": d["test"]}
        for g, d in sorted(groups.items()) if d["train"] and d["test"]
    ]  # fmt: skip
    leaky_names = {d["group"] for d in leaky}
    clean_train = [r for r in recs if side[str(r["id"])] == "train" and _group_of(r) not in leaky_names]
    n_clean = len(clean_train)
    if not 0 <= n_val <= n_clean:
        raise ConfigError(f"n_val={n_val} but only {n_clean} Inf-Net train slices are in test-free groups")
    inner = split_by_group(clean_train, {"train": n_clean - n_val, "val": n_val}, seed=seed)
    val = set(inner["val"])
    train = [str(r["id"]) for r in recs if side[str(r["id"])] == "train" and str(r["id"]) not in val]
    if drop_leaky:
        train = [i for i in train if i not in {t for d in leaky for t in d["train_ids"]}]
    test = [str(r["id"]) for r in recs if side[str(r["id"])] == "test"]
    return Split(
        {"train": train, "val": inner["val"], "test": test},
        seed=seed, source=_sources(records), name="infnet-consistent", n_val=n_val,
        drop_leaky=drop_leaky, leaky_groups=leaky,
    )  # fmt: skip
