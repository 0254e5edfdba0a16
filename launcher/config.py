"""Typed run configs: a YAML file plus `key=value` overrides, into a dataclass. Unknown keys are errors.

Every config is a dataclass whose fields carry `metadata={"help": ...}`; nested dataclasses are addressed with
dotted keys (`lora.r=16`). Values from the command line are parsed as YAML scalars (`lr=1e-5`, `bf16=true`,
`lora.targets=[q_proj,v_proj]`), then checked against the field's type. No torch import here.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..data_builders.errors import TrajtuneError

T = TypeVar("T")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['a=1', 'lora.r=8'] -> {'a': 1, 'lora': {'r': 8}}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise TrajtuneError(f"override {pair!r} is not key=value (e.g. lr=1e-5)")
        key, _, raw = pair.partition("=")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (int/float/bool/str, Optional, list[...], Literal, dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except TrajtuneError as e:
                errors.append(str(e))
        raise TrajtuneError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise TrajtuneError(f"{key}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise TrajtuneError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TrajtuneError(f"{key}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TrajtuneError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TrajtuneError(f"{key}: expected true or false, got {value!r}")
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `5e-5` (no dot) as a string; every user writes learning rates that way.
        try:
            return float(value)
        except ValueError:
            raise TrajtuneError(f"{key}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise TrajtuneError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Make `cls` from a mapping; an unknown key is an error that suggests the closest known key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, fields, n=1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
        raise TrajtuneError(f"unknown config key '{prefix}{k}'{hint}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + `key=value` overrides -> a checked instance of `cls`."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrajtuneError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TrajtuneError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise TrajtuneError(f"{path}: the top level must be a mapping of key: value")
    values = _merge(values, parse_overrides(overrides or []))
    try:
        return build(cls, values)
    except TrajtuneError as e:
        raise TrajtuneError(f"{path or 'config'}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (what is written into the run directory)."""
    return dataclasses.asdict(config)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested ones dotted: the source of `--help` listings."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), prefix=f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows
