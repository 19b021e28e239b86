"""Schema-driven validation of configuration files (station files, parameter files, tables).

A schema is a tree of small spec objects (`Number`, `Text`, `Flag`, `ListOf`, `Table`, `Tagged`,
`AnyOf`, `Anything`). `validate(value, spec, key)` checks types (a boolean is never a number,
text is never a number), finiteness, ranges, choices, unknown keys (with a "did you mean"),
sizes and nesting, and returns the value normalized (ints stay ints, numbers become floats).
It raises `SchemaError` naming the dotted key ("limits.SET.max_v must be <= 20 V, got 1e6");
`located(where)` turns that into the one-line `ConfigError` "WHERE: KEY what is wrong".

`read_text` / `load_toml` / `load_json` read a file with bounded size and nesting, naming the
file in every error (missing, a directory, unreadable, not UTF-8, malformed, nested too deep).
Backend-agnostic: `drivers` and `sim_backend` both build their schemas from these pieces.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from hil.errors import ConfigError

__all__ = ["SchemaError", "Number", "Text", "Flag", "ListOf", "Table", "Tagged", "AnyOf", "Anything",
           "validate", "located", "did_you_mean", "read_text", "load_toml", "load_json", "check_depth",
           "MAX_FILE_BYTES", "MAX_DEPTH"]

#: configuration files are a few kB; anything this big is the wrong file
MAX_FILE_BYTES = 4 * 2**20
#: station and parameter files nest 4 levels; deeper is malformed (and would exhaust the stack)
MAX_DEPTH = 32


class SchemaError(ConfigError):
    """A value does not fit its schema; `key` is its dotted key."""

    def __init__(self, key: str, msg: str) -> None:
        self.key, self.msg = key, msg
        super().__init__(f"{key} {msg}" if key else msg)


@contextmanager
def located(where: str):
    """Prefix SchemaErrors raised inside with `where` (e.g. 'station file F')."""
    try:
        yield
    except SchemaError as e:
        raise ConfigError(f"{where}: {e}") from None


def show(v: Any, limit: int = 60) -> str:
    """Short one-line repr of a value for messages (TOML spelling for booleans)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    r = repr(v).replace("\n", " ")
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _kind(v: Any) -> str:
    return {bool: "a boolean", str: "text", int: "an integer", float: "a number", dict: "a table",
            list: "a list", tuple: "a list", type(None): "nothing"}.get(type(v), type(v).__name__)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close match of `name` in `known`, else ''."""
    m = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def unknown_key(name: str, known: Iterable[str], table: str) -> str:
    """Message for an unknown key `name` in [table], with a suggestion and the known keys."""
    known = sorted(known)
    dym = did_you_mean(name, known)
    return (f"unknown key(s) {[name]} in [{table or 'top level'}] ({_join(table, name)}"
            f"{': ' + dym.strip(' ()') if dym else ''}); known: {', '.join(known)}")


def _join(key: str, sub: Any) -> str:
    return f"{key}.{sub}" if key else str(sub)


class Spec:
    """Base of the spec objects; `describe` says what is expected."""

    describe = "a value"

    def check(self, v: Any, key: str) -> Any:       # pragma: no cover - abstract
        raise NotImplementedError


class Anything(Spec):
    """Any value (its own code validates it); nesting is still bounded by `validate`."""

    def check(self, v, key):
        return v


class Number(Spec):
    """A finite number (or integer) in [lo, hi]; `gt`: strictly greater than lo; `describe`
    replaces "a number" (and the lower bound) in messages, e.g. "a positive finite number"."""

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None, *, integer: bool = False,
                 gt: bool = False, unit: str = "", describe: str = "") -> None:
        self.lo, self.hi, self.integer, self.gt, self.unit = lo, hi, integer, gt, unit
        self.custom = bool(describe)
        self.describe = describe or ("an integer" if integer else "a number")

    def _u(self, x) -> str:
        return f"{x:g}{' ' + self.unit if self.unit else ''}"

    def check(self, v, key):
        if isinstance(v, bool):
            raise SchemaError(key, f"must be {self.describe}, got {show(v)} (a boolean)")
        if isinstance(v, str):
            raise SchemaError(key, f"must be {self.describe}, got text {show(v)}; write the number without quotes")
        if not isinstance(v, (int, float)):
            raise SchemaError(key, f"must be {self.describe}, got {_kind(v)} {show(v)}")
        if self.integer and not isinstance(v, int):
            raise SchemaError(key, f"must be an integer, got {show(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise SchemaError(key, f"must be a finite number, got {show(v)}")
        if self.lo is not None and (v <= self.lo if self.gt else v < self.lo):
            bound = "" if self.custom else f" {'>' if self.gt else '>='} {self._u(self.lo)}"
            raise SchemaError(key, f"must be {self.describe}{bound}, got {show(v)}")
        if self.hi is not None and v > self.hi:
            raise SchemaError(key, f"must be <= {self._u(self.hi)}, got {show(v)}")
        return int(v) if self.integer else float(v)


class Text(Spec):
    """A string, optionally one of `choices` (case-sensitive) or matching `pattern`."""

    def __init__(self, choices: Optional[Iterable[str]] = None, *, empty: bool = False, max_len: int = 4096,
                 fold: bool = False, noun: str = "value") -> None:
        self.choices = tuple(choices) if choices is not None else None
        self.empty, self.max_len, self.fold, self.noun = empty, max_len, fold, noun
        self.describe = (f"one of {', '.join(repr(c) for c in self.choices)}" if self.choices
                         else "a string")

    def check(self, v, key):
        if not isinstance(v, str):
            raise SchemaError(key, f"must be {self.describe}, got {_kind(v)} {show(v)}")
        if not v and not self.empty:
            raise SchemaError(key, "must not be empty")
        if len(v) > self.max_len:
            raise SchemaError(key, f"is {len(v)} characters long; at most {self.max_len}")
        if self.choices is not None:
            cmp = v.lower() if self.fold else v
            if cmp not in (c.lower() if self.fold else c for c in self.choices):
                raise SchemaError(key, f"{show(v)} is not a known {self.noun}{did_you_mean(v, self.choices)}; "
                                       f"use {self.describe}")
        return v


class Flag(Spec):
    describe = "true or false"

    def check(self, v, key):
        if not isinstance(v, bool):
            raise SchemaError(key, f"must be true or false, got {_kind(v)} {show(v)}")
        return v


class ListOf(Spec):
    """A list of `item`s with min_len..max_len entries (returned as a list)."""

    def __init__(self, item: Spec, min_len: int = 0, max_len: int = 1024) -> None:
        self.item, self.min_len, self.max_len = item, min_len, max_len
        self.describe = f"a list of {item.describe}s" if not item.describe.startswith("one of") else "a list"

    def check(self, v, key):
        if not isinstance(v, (list, tuple)):
            raise SchemaError(key, f"must be {self.describe}, got {_kind(v)} {show(v)}")
        if not self.min_len <= len(v) <= self.max_len:
            raise SchemaError(key, f"must have {self.min_len}..{self.max_len} entries, got {len(v)}")
        return [self.item.check(x, f"{key}[{i}]") for i, x in enumerate(v)]


class Table(Spec):
    """A table with known `fields` (name -> Spec), `required` names, and for any other name
    `extra` (a Spec, e.g. one instrument table per instrument name) or an unknown-key error.
    `after(result, key)` checks relations between fields."""

    describe = "a table"

    def __init__(self, fields: Optional[Mapping[str, Spec]] = None, *, required: Iterable[str] = (),
                 extra: Optional[Spec] = None, after: Optional[Callable[[dict, str], Any]] = None,
                 ignore: Iterable[str] = (), max_keys: int = 1024) -> None:
        self.fields = dict(fields or {})
        self.required, self.extra, self.after = tuple(required), extra, after
        self.ignore, self.max_keys = set(ignore), max_keys

    def check(self, v, key):
        if not isinstance(v, dict):
            what = f"[{key}]" if key else "a table"
            raise SchemaError(key, f"must be a table ({what}), got {_kind(v)} {show(v)}")
        if len(v) > self.max_keys:
            raise SchemaError(key, f"has {len(v)} keys; at most {self.max_keys}")
        for r in self.required:
            if r not in v:
                raise SchemaError(_join(key, r), "is missing (required)")
        out = {}
        for k, x in v.items():
            if k in self.ignore:
                out[k] = x
            elif k in self.fields:
                out[k] = self.fields[k].check(x, _join(key, k))
            elif self.extra is not None:
                out[k] = self.extra.check(x, _join(key, k))
            else:
                raise SchemaError("", unknown_key(k, self.fields, key))
        if self.after is not None:
            res = self.after(out, key)
            if res is not None:
                out = res
        return out


class Tagged(Spec):
    """A table whose schema depends on its `tag` field (e.g. an instrument's `kind`)."""

    describe = "a table"

    def __init__(self, tag: str, cases: Mapping[str, Table]) -> None:
        self.tag, self.cases = tag, dict(cases)

    def check(self, v, key):
        if not isinstance(v, dict):
            raise SchemaError(key, f"must be a table ([{key}]), got {_kind(v)} {show(v)}")
        if self.tag not in v:
            raise SchemaError(_join(key, self.tag), f"is missing; use one of {', '.join(sorted(self.cases))}")
        t = Text(sorted(self.cases), noun=self.tag).check(v[self.tag], _join(key, self.tag))
        return self.cases[t].check(v, key)


class AnyOf(Spec):
    """The first of `specs` the value fits (e.g. "auto" or a number)."""

    def __init__(self, *specs: Spec, describe: str = "") -> None:
        self.specs = specs
        self.describe = describe or " or ".join(s.describe for s in specs)

    def check(self, v, key):
        first = None
        for s in self.specs:
            try:
                return s.check(v, key)
            except SchemaError as e:
                first = first or e
                # a value of the right type gets that spec's own, more precise message
                if isinstance(s, Table) and isinstance(v, dict) or isinstance(s, Text) and isinstance(v, str) \
                        or isinstance(s, Number) and isinstance(v, (int, float)) and not isinstance(v, bool):
                    raise
        raise SchemaError(key, f"must be {self.describe}, got {_kind(v)} {show(v)}")


def check_depth(obj: Any, max_depth: int = MAX_DEPTH, key: str = "") -> None:
    """Raise SchemaError if `obj` nests tables/lists deeper than `max_depth` (no recursion)."""
    stack = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if d > max_depth:
            raise SchemaError(key, f"nests tables/lists deeper than {max_depth} levels")
        if isinstance(o, dict):
            stack.extend((x, d + 1) for x in o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend((x, d + 1) for x in o)


def validate(value: Any, spec: Spec, key: str = "") -> Any:
    """Check `value` against `spec` (nesting bounded first); returns the normalized value."""
    check_depth(value, MAX_DEPTH, key)
    return spec.check(value, key)


# ---- files ---------------------------------------------------------------------------------------
def read_text(path, what: str, missing: Optional[str] = None) -> str:
    """The UTF-8 text of `path`; ConfigError naming the file if it is missing, a directory,
    too large, unreadable or not UTF-8."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ConfigError(f"{what} {p} is a directory, not a file")
        if not p.exists():
            raise ConfigError(missing or f"cannot read {what} {p}: no such file")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{what} {p} is {size} bytes; a configuration file is at most {MAX_FILE_BYTES} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {p}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          f"save it as UTF-8") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def _bracket_depth(text: str) -> int:
    """Deepest [ / { nesting of JSON text outside strings, found without parsing."""
    depth = best = 0
    for c in re.findall(r"[\[\]{}]", _JSON_STRING.sub("", text)):
        depth = depth + 1 if c in "[{" else depth - 1
        best = max(best, depth)
    return best


def _parsed(text: str, p: Path, what: str, parse) -> Any:
    try:
        data = parse(text)
    except RecursionError:
        raise ConfigError(f"{what} {p} nests tables/lists deeper than {MAX_DEPTH} levels") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what} {p} is malformed: {str(e).splitlines()[0]}") from None
    with located(f"{what} {p}"):
        check_depth(data, MAX_DEPTH)
    return data


def load_toml(path, what: str, missing: Optional[str] = None) -> dict:
    """Parse a TOML file (bounded size and nesting); every error names the file."""
    p = Path(path)
    return _parsed(read_text(p, what, missing), p, what, tomllib.loads)


def load_json(path, what: str, missing: Optional[str] = None) -> Any:
    """Parse a JSON file; nesting is bounded before parsing; every error names the file."""
    p = Path(path)
    text = read_text(p, what, missing)
    if _bracket_depth(text) > MAX_DEPTH:
        raise ConfigError(f"{what} {p} nests tables/lists deeper than {MAX_DEPTH} levels")
    return _parsed(text, p, what, json.loads)
