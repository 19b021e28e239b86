"""Typed, validated configs that round-trip through a run record.

A config is a dataclass deriving from :class:`Config`; its fields are declared with
:func:`param` (default, range, allowed choices). Construction checks every field (type — a bool
is not a number —, finiteness, range, choice), and ``to_dict`` / ``from_dict`` store it in a
run record and read it back, refusing unknown keys with a one-line ConfigError.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Optional

from hil.errors import ConfigError


def param(default: Any = dataclasses.MISSING, *, lo: Optional[float] = None, hi: Optional[float] = None,
          lo_open: bool = False, choices: Optional[tuple] = None, factory: Any = dataclasses.MISSING):
    """A config field with its allowed range [lo, hi] ((lo, hi] with `lo_open`) or choices."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Config:
    """Base of every stage and experiment config: checked on construction, stored as a dict."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check(self._name(f.name), getattr(self, f.name), hints[f.name], f.metadata))

    @classmethod
    def _name(cls, field: str) -> str:
        return f"{cls.__name__}.{field}"

    def to_dict(self) -> dict:
        """JSON-able dict of every field (nested configs as dicts, tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "config"):
        """The config stored as `d`; ConfigError naming an unknown key or a bad value."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: {cls.__name__} must be a table of settings, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown {cls.__name__} setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        kw = {}
        for k, v in d.items():
            t = hints[k]
            if typing.get_origin(t) is typing.Union:      # Optional[...]
                t = next(a for a in typing.get_args(t) if a is not type(None))
            if isinstance(t, type) and issubclass(t, Config) and v is not None:
                v = t.from_dict(v, f"{where}.{k}")
            kw[k] = v
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def replace(self, **changes):
        """A copy with `changes`, validated again."""
        return dataclasses.replace(self, **changes)

    def conflicts(self, other: "Config", keys) -> list[str]:
        """'key=value' of `self` for every key in `keys` where `other` differs."""
        return [f"{k}={getattr(self, k)!r}" for k in keys if getattr(self, k) != getattr(other, k)]


def _check(name: str, v: Any, t: Any, meta) -> Any:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Union:
        if v is None and type(None) in args:
            return None
        t = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(t), typing.get_args(t)
    if isinstance(t, type) and issubclass(t, Config):
        if not isinstance(v, t):
            raise ConfigError(f"{name} must be a {t.__name__}, got {type(v).__name__}")
        return v
    if origin is tuple:
        if not isinstance(v, (tuple, list)):
            raise ConfigError(f"{name} must be a list, got {type(v).__name__}")
        return tuple(_check(f"{name}[{i}]", x, args[0], meta) for i, x in enumerate(v))
    if t is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")
        return v
    if t is int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ConfigError(f"{name} must be a whole number, got {v!r}")
    elif t is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name} must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"{name} must be finite, got {v!r}")
    elif t is str:
        if not isinstance(v, str):
            raise ConfigError(f"{name} must be text, got {v!r}")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and v not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {v!r}")
    if lo is not None and (v <= lo if meta.get("lo_open") else v < lo) or hi is not None and v > hi:
        rng = f"{'(' if meta.get('lo_open') else '['}{lo if lo is not None else '-inf'}, " \
              f"{hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{name} must be in {rng}, got {v!r}")
    return v
