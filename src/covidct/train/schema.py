"""From YAML mappings to typed config dataclasses, and the edits applied to a raw config before that.

Owns :func:`build` (a mapping -> a dataclass, every key checked against the type hints; an error is a
one-line :class:`ConfigError` that starts with the dotted key), reading a YAML config (:func:`load_raw`),
``--set KEY=VALUE`` overrides (:func:`apply_overrides`) and ``grid:`` expansion (:func:`expand_grid`).
The schema itself (the dataclasses) and its cross-field checks are :mod:`covidct.train.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from covidct.errors import ConfigError


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
        return build(tp, value, key)
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


def build(cls: type, d: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``d``; every key checked (``prefix``: its dotted path).

    A class with ``EXTRA_KEYS_INTO = "field"`` collects keys it does not know into that (dict) field.
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    extra = getattr(cls, "EXTRA_KEYS_INTO", None)
    if extra:  # e.g. a data source: keys it does not know are options for its loader
        known = {f.name for f in fields(cls)} - {extra}
        d = {**{k: v for k, v in d.items() if k in known},
             extra: {**d.get(extra, {}), **{k: v for k, v in d.items() if k not in known | {extra}}}}
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


def set_dotted(d: dict, dotted: str, value: Any, where: str = "grid") -> None:
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
            set_dotted(d, k, v)
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
        set_dotted(out, key.strip(), val, where="--set")
    return out
