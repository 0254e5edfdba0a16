"""Typed run configs: a YAML file plus `key=value` overrides, into a dataclass. Unknown keys are errors.

Every config is a dataclass whose fields carry `metadata={"help": ...}`; nested dataclasses are addressed with
dotted keys (`lora.r=16`). Values from the command line are parsed as YAML scalars (`lr=1e-5`, `bf16=true`,
`lora.targets=[q_proj,v_proj]`), then checked against the field's type. Each source is checked on its own, so an
error says where the bad key came from (`train.yaml:7: ...` or `override 'x=1' on the command line: ...`); an
unknown key gets a suggestion: trajtune's name for a key other trainers use (`learning_rate` -> `lr`), else the
closest known key. No torch import here.
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

# Keys of other trainers (HF TrainingArguments / TRL, axolotl, LLaMA-Factory) -> trajtune's key, and a note
# where it is not a plain rename. A target the config lacks is skipped, unless _ELSEWHERE says where it lives.
FOREIGN_KEYS: dict[str, tuple[str, str]] = {
    "learning_rate": ("lr", ""),
    "per_device_train_batch_size": ("micro_batch_size", ""),
    "train_batch_size": ("global_batch_size", ""),
    "gradient_accumulation_steps": (
        "global_batch_size", "trajtune sets the global batch instead (packs per optimizer step over all ranks) and "
        "derives accumulation = global_batch_size / (micro_batch_size × world size); set global_batch_size"),
    "num_train_epochs": ("epochs", ""),
    "num_epochs": ("epochs", ""),
    "max_seq_length": ("seq_len", ""),
    "max_length": ("seq_len", ""),
    "cutoff_len": ("seq_len", ""),
    "sequence_len": ("seq_len", ""),
    "model_name_or_path": ("model", ""),
    "base_model": ("model", ""),
    "lr_scheduler_type": ("schedule", ""),
    "warmup_steps": ("warmup_ratio", "trajtune sets warmup as a fraction of the steps: warmup_ratio"),
    "logging_steps": ("log_steps", ""),
    "save_total_limit": ("keep_last", ""),
    "deepspeed": ("ds_config", ""),
    "attn_implementation": ("attn", ""),
    "resume_from_checkpoint": ("resume", ""),
    "adam_beta1": ("adam_betas", "trajtune takes both betas as one list: adam_betas=[0.9,0.95]"),
    "adam_beta2": ("adam_betas", "trajtune takes both betas as one list: adam_betas=[0.9,0.95]"),
    "adam_epsilon": ("adam_eps", ""),
    "lora_r": ("lora.r", ""),
    "lora_rank": ("lora.r", ""),
    "lora_alpha": ("lora.alpha", ""),
    "lora_dropout": ("lora.dropout", ""),
    "lora_target_modules": ("lora.targets", ""),
    "lora_target": ("lora.targets", ""),
}
# Keys that belong to another stage's config.
_ELSEWHERE = {
    "seq_len": "the sequence length is fixed when the dataset is built (`trajtune build --seq-len N`); "
               "training reads it from the dataset",
}


class ConfigError(TrajtuneError):
    """A bad key or value; `key` is its dotted name, so the caller can say where it came from (file and line)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['a=1', 'lora.r=8'] -> {'a': 1, 'lora': {'r': 8}}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise TrajtuneError(f"override {pair!r} on the command line is not key=value (e.g. lr=1e-5)")
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
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(key, f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"{key}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"{key}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"{key}: expected true or false, got {value!r}")
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `5e-5` (no dot) as a string; every user writes learning rates that way.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(key, f"{key}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(key, f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _has_key(cls: type, dotted: str) -> bool:
    """Whether the dataclass `cls` has the (possibly nested, dotted) key."""
    head, _, rest = dotted.partition(".")
    field_ = next((f for f in dataclasses.fields(cls) if f.name == head), None)
    if field_ is None or not rest:
        return field_ is not None
    tp = typing.get_type_hints(cls)[head]
    return dataclasses.is_dataclass(tp) and _has_key(tp, rest)


def _unknown_key_hint(cls: type, key: str, fields: list[str], prefix: str) -> str:
    """What to say after "unknown config key 'K'": trajtune's name for another trainer's key, else the closest key."""
    # Other trainers' names are all top-level keys there; nested keys get only the close match.
    target, note = ("", "") if prefix else FOREIGN_KEYS.get(key, ("", ""))
    if target and _has_key(cls, target):
        return f"; {note}" if note else f"; trajtune calls it {target}"
    if target in _ELSEWHERE:
        return f"; {_ELSEWHERE[target]}"
    close = difflib.get_close_matches(key, fields, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(prefix + f for f in fields)}"


def build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Make `cls` from a mapping (keys checked, values coerced to the field types); raises ConfigError on an
    unknown key (with a suggestion, see `FOREIGN_KEYS`) or a bad value."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [str(k) for k in values if k not in fields]
    if unknown:
        k = unknown[0]
        hint = _unknown_key_hint(cls, k, list(fields), prefix)
        raise ConfigError(prefix + k, f"unknown config key '{prefix}{k}'{hint}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _line_of(text: str, key: str) -> int | None:
    """The 1-based line of a dotted key (`lora.r`, `adam_betas[1]`) in YAML text; the deepest found, or None."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in key.split("."):
        name = part.split("[", 1)[0]
        if not isinstance(node, yaml.MappingNode):
            break
        pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name), None)
        if pair is None:
            break
        line, node = pair[0].start_mark.line + 1, pair[1]
    return line


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + `key=value` overrides (later wins) -> a checked instance of `cls`.

    Each source is checked alone first, so a TrajtuneError names where its bad key came from:
    `train.yaml:7: unknown config key 'learning_rate'; trajtune calls it lr`, or
    `override 'learning_rate=1e-5' on the command line: unknown config key 'learning_rate'; trajtune calls it lr`.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrajtuneError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise TrajtuneError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise TrajtuneError(f"{path}: the top level must be a mapping of key: value")
        try:
            build(cls, values)
        except ConfigError as e:
            line = _line_of(text, e.key)
            raise TrajtuneError(f"{path}{f':{line}' if line else ''}: {e}") from None
    for pair in overrides or []:
        try:
            build(cls, parse_overrides([pair]))
        except ConfigError as e:
            raise TrajtuneError(f"override {pair!r} on the command line: {e}") from None
    return build(cls, _merge(values, parse_overrides(overrides or [])))


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
