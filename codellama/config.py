"""The one configuration mechanism: typed dataclasses, filled from YAML and `--set key=value` overrides.

Every configurable job (training, data preparation, the family pipeline) declares its settings as
dataclasses. A raw mapping (a YAML file, a recipe, CLI flags) is checked against the declared fields
and types by `build`: an unknown key or a value of the wrong type is a one-line error naming the
key, never a silent default. `--set a.b=value` (dotted keys, YAML values) changes any field.

This module also holds the names several layers share (branches, scales, dtypes), defined once.
It imports nothing heavy, so command registration can use it while `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import os
import types
import typing
from pathlib import Path

import yaml

BRANCHES = ("code", "python", "long-context", "instruct")
SCALES = ("tiny", "7b", "13b", "34b", "70b")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 on an accelerator, float32 on the CPU


def torch_dtype(name: str, device: str = "cpu"):
    """A DTYPES name -> torch dtype ("auto" picks bfloat16 on an accelerator, float32 on the CPU)."""
    import torch

    if name == "auto":
        return torch.float32 if str(device).split(":")[0] == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return getattr(torch, name)


def serving_dtype(name: str, device: str = "cpu"):
    """`torch_dtype`, except that "auto" also picks bfloat16 on a CPU with AMX tiles: there a bf16 matrix
    product runs ~10x faster than fp32 (a 135M model prefills ~5x faster), and an editor waits on prefill.
    Other CPUs stay in float32 (bf16 emulated there is slower)."""
    import torch

    if name == "auto" and str(device).split(":")[0] == "cpu" and torch.cpu._is_amx_tile_supported():
        return torch.bfloat16
    return torch_dtype(name, device)


# -- raw mappings ---------------------------------------------------------------------------------
def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML file holding a mapping; a missing file, bad YAML or a non-mapping is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of settings")
    return raw


def deep_merge(base: dict, top: dict) -> dict:
    """`top`'s keys over `base`'s, recursively for nested mappings (inputs are not modified)."""
    out = dict(base)
    for key, value in (top or {}).items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both_maps else value
    return out


def parse_override(item: str) -> tuple[str, object]:
    """'a.b=VALUE' -> ('a.b', YAML-parsed VALUE)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"bad --set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ValueError(f"bad --set {item!r}: the value is not valid YAML") from None
    return key.strip(), parsed


def set_dotted(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"bad --set key {key!r}: {part} is not a section")
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply `key=value` strings (dotted keys, YAML values) to a raw config mapping, in place."""
    for item in overrides:
        set_dotted(raw, *parse_override(item))
    return raw


# -- typed building -------------------------------------------------------------------------------
def build(cls, raw, prefix: str = ""):
    """A `cls` dataclass from a raw mapping, checking keys and converting values to the declared types.

    YAML keys that are Python keywords (`from`) fill the field of the same name with a trailing
    underscore (`from_`).
    """
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        name = f"{key}_" if keyword.iskeyword(str(key)) else str(key)
        if name not in fields:
            known = ", ".join(sorted(f.rstrip("_") for f in fields))
            raise ValueError(f"unknown config key {prefix}{key}; known: {known}")
        kwargs[name] = coerce(value, hints[name], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def coerce(value, hint, key: str):
    """Convert a YAML value to the declared type (YAML reads '500e9' as a string, ints for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, {} if value is None else value, f"{key}.")
    try:
        if origin is typing.Literal:
            if value not in args:
                raise ValueError(f"config key {key}: {value!r} is not one of {', '.join(map(str, args))}")
            return value
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int:
            number = float(value)
            if isinstance(value, bool) or not math.isfinite(number) or number != int(number):
                raise TypeError
            return int(number)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if not math.isfinite(number):  # nan passes every range check (all its comparisons are False)
                raise ValueError(f"config key {key}: {value!r} is not a finite number")
            return number
        if hint is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        if origin is list or hint is list:
            if not isinstance(value, list):
                raise TypeError
            return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
        if origin is dict or hint is dict:
            if not isinstance(value, dict):
                raise TypeError
            if len(args) == 2:
                return {k: coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
            return value
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("config key"):
            raise
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"config key {key}: {value!r} is not a valid {name}") from None
    return value


def to_raw(obj) -> dict:
    """A dataclass config back to plain YAML-able data (keyword fields get their YAML names back)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name.rstrip("_"): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(obj)
