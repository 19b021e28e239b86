"""A sweep specification (TOML), validated before any task starts.

    [sweep]
    target = "write_verify"            # a registered target (hil.registry.sweep_targets())
    seeds = "0-4"                      # chip seeds: "0-4", "1,3,7" or a list
    sampling = "grid"                  # every combination of the axes' values, or "random"
    samples = 20                       # random: how many points, drawn with sample_seed
    sample_seed = 0
    programming = "pulse"              # or "statistical": the fitted fast programming model
    preset = "yao2020"                 # device preset (default: the target's)
    geometry = {n_pe = 1, rows = 16, cols = 16}    # default: the target's

    [device]                           # fixed device parameters over the preset (dotted names)
    read_noise.rel = 0.01
    [config]                           # the target's fixed config (its Config, nested tables)
    program.levels = 8

    [[axis]]                           # one per swept quantity
    name = "device.defects.stuck_off_rate"     # "device.GROUP.FIELD" or "config.KEY[.KEY...]"
    values = [1e-4, 1e-3]              # or range = [lo, hi], steps = N, scale = "log" | "linear"
    # keys = ["device.a.b", "device.c.d"]  several keys set to the same value; name is then a label

Every point (its config and device parameters) is built and validated here, through the
target's Config and the simulator's own parameter validator (reached by name), so an unknown
name or an impossible value is a one-line ConfigError naming the axis before anything runs."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hil.errors import ConfigError
from hil.geometry import GEOMETRY_SCHEMA, Geometry
from hil.registry import resolve, sweep_target, sweep_targets
from hil.schema import (Anything, ListOf, Number, SchemaError, Table, Text, load_toml, located,
                        validate)
from hil.stats import parse_seeds

MAX_POINTS = 1_000_000
MAX_SEED = 2**32 - 1
PROGRAMMING = ("pulse", "statistical")
SCALES = ("linear", "log")

SPEC_SCHEMA = Table({
    "sweep": Table({
        "target": Text(max_len=100),
        "seeds": Anything(),
        "sampling": Text(["grid", "random"]),
        "samples": Number(1, MAX_POINTS, integer=True),
        "sample_seed": Number(0, MAX_SEED, integer=True),
        "programming": Text(list(PROGRAMMING)),
        "preset": Text(max_len=100),
        "geometry": GEOMETRY_SCHEMA,
        "description": Text(empty=True),
    }, required=["target"]),
    "device": Table(extra=Anything()),
    "config": Table(extra=Anything()),
    "axis": ListOf(Table({
        "name": Text(max_len=200),
        "keys": ListOf(Text(max_len=200), 1, 16),
        "values": ListOf(Anything(), 1, 100_000),
        "range": ListOf(Anything(), 2, 2),
        "steps": Number(1, 100_000, integer=True),
        "scale": Text(list(SCALES)),
    }, required=["name"]), 0, 32),
}, required=["sweep"])


@dataclass(frozen=True)
class Axis:
    """One swept quantity: its column `name`, the `keys` it sets and its grid `values` (or a
    `range` with `scale` for random sampling)."""

    name: str
    keys: tuple
    values: tuple = ()
    range: Optional[tuple] = None
    scale: str = "linear"


@dataclass(frozen=True)
class Point:
    """One task: axis coordinates (column -> value) and the chip seed; `id` is stable."""

    coords: dict
    seed: int

    @property
    def id(self) -> str:
        return hashlib.sha1(json.dumps({"coords": self.coords, "seed": self.seed}, sort_keys=True)
                            .encode()).hexdigest()[:16]


@dataclass
class SweepSpec:
    """A validated sweep."""

    target: str
    seeds: list
    axes: list
    device: dict
    config: dict
    sampling: str = "grid"
    samples: int = 0
    sample_seed: int = 0
    programming: str = "pulse"
    preset: Optional[str] = None
    geometry: Optional[Geometry] = None
    description: str = ""
    path: Optional[str] = None

    # ---- the points ---------------------------------------------------------------------
    def coordinates(self) -> list[dict]:
        """Axis coordinates of every point (without seeds), in a fixed order."""
        if not self.axes:
            return [{}]
        if self.sampling == "grid":
            return [dict(zip((a.name for a in self.axes), combo))
                    for combo in itertools.product(*(a.values for a in self.axes))]
        rng = np.random.default_rng(self.sample_seed)
        cols = {a.name: _draw(a, rng, self.samples) for a in self.axes}
        return [{k: v[i] for k, v in cols.items()} for i in range(self.samples)]

    def points(self) -> list[Point]:
        return [Point(c, s) for c in self.coordinates() for s in self.seeds]

    def settings(self, coords: dict) -> tuple[dict, dict]:
        """(config dict, device-parameter dict) of a point with `coords`."""
        cfg, dev = copy.deepcopy(self.config), copy.deepcopy(self.device)
        for a in self.axes:
            for key in a.keys:
                space, path = key.split(".", 1)
                _set(cfg if space == "config" else dev, path, coords[a.name])
        return cfg, dev

    def fingerprint(self) -> str:
        """What makes two runs the same experiment (target, fixed settings, chip, programming):
        a folder resumes only a sweep with this fingerprint; axes and seeds may grow."""
        d = {"target": self.target, "device": self.device, "config": self.config, "programming": self.programming,
             "preset": self.preset, "geometry": None if self.geometry is None else self.geometry.to_dict(),
             "axes": [(a.name, list(a.keys)) for a in self.axes]}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"target": self.target, "seeds": self.seeds, "sampling": self.sampling, "samples": self.samples,
                "sample_seed": self.sample_seed, "programming": self.programming, "preset": self.preset,
                "geometry": None if self.geometry is None else self.geometry.to_dict(),
                "description": self.description, "device": self.device, "config": self.config,
                "axes": [{"name": a.name, "keys": list(a.keys), "values": list(a.values),
                          "range": None if a.range is None else list(a.range), "scale": a.scale} for a in self.axes],
                "fingerprint": self.fingerprint()}


def _set(d: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: {p} is a value, not a table")
    d[last] = value


def _draw(a: Axis, rng, n: int) -> list:
    lo, hi = a.range
    if a.scale == "log":
        v = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    elif isinstance(lo, int) and isinstance(hi, int):
        return [int(x) for x in rng.integers(lo, hi + 1, n)]
    else:
        v = rng.uniform(lo, hi, n)
    return [float(x) for x in v]


def _axis(i: int, d: dict, sampling: str) -> Axis:
    where = f"axis {i + 1} ({d['name']})"
    keys = tuple(d.get("keys", [d["name"]]))
    for k in keys:
        space = k.split(".", 1)[0]
        if space not in ("device", "config") or "." not in k:
            raise ConfigError(f"{where}: key {k!r} must start with 'device.' (a device parameter) or 'config.' "
                              f"(a setting of the target's config)")
    has_values, has_range = "values" in d, "range" in d
    if has_values == has_range:
        raise ConfigError(f"{where}: give either values = [...] or range = [lo, hi] (with steps for a grid)")
    scale = d.get("scale", "linear")
    if has_values:
        if "steps" in d or "scale" in d:
            raise ConfigError(f"{where}: steps and scale go with range, not with values")
        values = tuple(d["values"])
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(f"{where}: values repeat")
        if sampling == "random":
            raise ConfigError(f"{where}: random sampling draws from range = [lo, hi], not from values")
        return Axis(d["name"], keys, values)
    lo, hi = d["range"]
    for x in (lo, hi):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x):
            raise ConfigError(f"{where}: range must be two finite numbers, got {d['range']!r}")
    if not lo < hi:
        raise ConfigError(f"{where}: range [{lo}, {hi}] is empty; lo must be below hi")
    if scale == "log" and lo <= 0:
        raise ConfigError(f"{where}: a log range needs lo > 0, got {lo}")
    if sampling == "random":
        if "steps" in d:
            raise ConfigError(f"{where}: steps is for grid sampling; random sampling draws [sweep] samples points")
        return Axis(d["name"], keys, (), (lo, hi), scale)
    if "steps" not in d:
        raise ConfigError(f"{where}: a grid range needs steps = N")
    n = d["steps"]
    grid = np.geomspace(lo, hi, n) if scale == "log" else np.linspace(lo, hi, n)
    integral = isinstance(lo, int) and isinstance(hi, int) and scale == "linear"
    values = tuple(sorted({int(round(x)) for x in grid})) if integral else tuple(float(f"{x:.12g}") for x in grid)
    return Axis(d["name"], keys, values, (lo, hi), scale)


def _seeds(v: Any) -> list[int]:
    if v is None:
        return [0]
    if isinstance(v, list):
        if not v or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in v) \
                or len(set(v)) != len(v):
            raise ConfigError(f"sweep.seeds must be distinct integers in 0..{MAX_SEED}, got {v!r}")
        return list(v)
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise ConfigError(f"sweep.seeds must be a list or a text like '0-4', got {v!r}")
    try:
        seeds = parse_seeds(v)
    except ValueError as e:
        raise ConfigError(f"sweep.{e}") from None
    if any(s > MAX_SEED for s in seeds):
        raise ConfigError(f"sweep.seeds must be in 0..{MAX_SEED}")
    return seeds


def parse_spec(data: dict, where: str = "sweep spec", path: Optional[str] = None) -> SweepSpec:
    """A SweepSpec from a parsed TOML table, with every point checked (see the module docstring)."""
    with located(where):
        d = validate(data, SPEC_SCHEMA)
    try:
        s = d["sweep"]
        if s["target"] not in sweep_targets():
            raise ConfigError(f"sweep.target {s['target']!r} is unknown; known: {', '.join(sweep_targets())}")
        sampling = s.get("sampling", "grid")
        if (sampling == "random") != ("samples" in s):
            raise ConfigError("sweep.samples goes with sampling = \"random\" (and random sampling needs it)")
        axes = [_axis(i, a, sampling) for i, a in enumerate(d.get("axis", []))]
        names = [a.name for a in axes]
        if len(set(names)) != len(names):
            raise ConfigError(f"axis names repeat: {names}")
        keys = [k for a in axes for k in a.keys]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"two axes set the same key: {keys}")
        if "seed" in names:
            raise ConfigError("an axis may not be called 'seed': the seeds are [sweep] seeds")
        spec = SweepSpec(target=s["target"], seeds=_seeds(s.get("seeds")), axes=axes, device=d.get("device", {}),
                         config=d.get("config", {}), sampling=sampling, samples=s.get("samples", 0),
                         sample_seed=s.get("sample_seed", 0), programming=s.get("programming", "pulse"),
                         preset=s.get("preset"),
                         geometry=Geometry.from_dict(s["geometry"], "sweep.geometry") if "geometry" in s else None,
                         description=s.get("description", ""), path=path)
        n = len(spec.coordinates()) * len(spec.seeds)
        if n > MAX_POINTS:
            raise ConfigError(f"the sweep has {n} points; at most {MAX_POINTS}")
        check_points(spec)
        if spec.programming == "statistical":
            programming_settings(spec)
    except SchemaError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return spec


def check_points(spec: SweepSpec) -> None:
    """Build every point's config and device parameters (ConfigError naming the axis value)."""
    target = sweep_target(spec.target)
    params = resolve("sim-params")
    preset = spec.preset or target.preset
    params.preset(preset)
    seen = set()
    for coords in spec.coordinates():
        key = json.dumps(coords, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        cfg, dev = spec.settings(coords)
        at = f" at {', '.join(f'{k} = {v}' for k, v in coords.items())}" if coords else ""
        try:
            target.config.from_dict(cfg, "config")
        except ConfigError as e:
            raise ConfigError(f"{e}{at}") from None
        try:
            params.from_dict({"preset": preset, **dev})
        except ConfigError as e:
            raise ConfigError(f"device parameters: {e}{at}") from None


def programming_settings(spec: SweepSpec) -> dict:
    """The write-verify every point does (levels, window, band, policy) for the statistical
    programming model, which is fitted once per sweep: ConfigError if the target has no
    statistical mode or an axis changes it."""
    target = sweep_target(spec.target)
    if target.programming is None:
        raise ConfigError(f"sweep.programming: target {spec.target} has no statistical programming mode; "
                          f"use programming = \"pulse\"")
    first = None
    for coords in spec.coordinates():
        s = target.programming(target.config.from_dict(spec.settings(coords)[0], "config"))
        if first is None:
            first = s
        elif s != first:
            at = ", ".join(f"{k} = {v}" for k, v in coords.items())
            raise ConfigError(f"sweep.programming = \"statistical\": the programming ({', '.join(k for k in s if s[k] != first[k])}) "
                              f"changes at {at}; the model is fitted once per sweep, so sweep it with programming = \"pulse\"")
    return first


def load_spec(path) -> SweepSpec:
    """Read and validate a sweep spec file; one-line ConfigError naming the file and what is wrong."""
    path = Path(path)
    data = load_toml(path, "sweep spec", f"sweep spec {str(path)!r} does not exist")
    return parse_spec(data, f"sweep spec {path}", str(path.resolve()))
