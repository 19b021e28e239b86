"""Factory for simulated stations: `--station sim` or a station file with backend = "sim".

`check_sim_station` validates the whole file (one schema: [station], [geometry], [limits], [sim])
and the options, loads the parameter file, and opens nothing; `open_sim_station` builds the chip
from what it returns. See stations/sim-yao.toml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hil.errors import ConfigError, HilError
from hil.geometry import GEOMETRY_SCHEMA, YAO, Geometry
from hil.limits import LIMITS_SCHEMA, SafetyLimits
from hil.registry import where
from hil.schema import Number, SchemaError, Table, Text, located, validate

from .chip import SimulatedCrossbar
from .params import PRESETS, DeviceParams
from .statistical import ProgrammingModel, StatisticalCrossbar, open_model

SEED = Number(0, 2**63 - 1, integer=True)
SIM_STATION_SCHEMA = Table({
    "station": Table({"backend": Text(["sim"]), "name": Text(max_len=200), "description": Text(empty=True)},
                     required=["backend"]),
    "geometry": GEOMETRY_SCHEMA,
    "limits": LIMITS_SCHEMA,
    "sim": Table({"seed": SEED, "params": Text(), "preset": Text(sorted(PRESETS), noun="device preset"),
                  "programming_model": Text()}),
}, required=["station"], ignore=["_path"])


@dataclass(frozen=True)
class SimStationSpec:
    """A validated simulated station."""

    name: str
    path: Optional[str]
    geometry: Geometry
    limits: SafetyLimits
    seed: int
    params: DeviceParams
    programming_model: Optional[ProgrammingModel] = None     # statistical fast programming (statistical.py)


def check_sim_station(cfg: dict, *, seed: Optional[int] = None, params_path=None, state_path=None,
                      geometry: Optional[Geometry] = None, programming_model=None) -> SimStationSpec:
    """Validate a simulated station's config and options; ConfigError naming the file and key."""
    w = where(cfg)
    with located(w):
        c = validate(cfg, SIM_STATION_SCHEMA)
        geom = geometry or (Geometry.from_dict(c["geometry"]) if "geometry" in c else YAO)
        limits = SafetyLimits.from_dict(c.get("limits"))
        sim = c.get("sim", {})
    if seed is None:
        with located(w):
            seed = sim.get("seed", 0)
    else:
        with located("option"):
            seed = SEED.check(seed, "seed")
    if "params" in sim and "preset" in sim:
        raise ConfigError(f"{w}: sim.preset: give sim.preset or sim.params, not both (a parameter file may "
                          f"name its preset)")
    if params_path is not None:
        try:
            params = DeviceParams.load(params_path)
        except ConfigError as e:
            raise ConfigError(f"--params: {e}") from None
    elif "params" in sim:
        base = Path(cfg.get("_path", ".")).parent
        try:
            params = DeviceParams.load(base / sim["params"])
        except ConfigError as e:
            raise ConfigError(f"{w}: sim.params: {e}") from None
    else:
        params = DeviceParams.preset(sim.get("preset", "yao2020"))
    name = c["station"].get("name", Path(cfg["_path"]).stem if cfg.get("_path") else "sim")
    model = None
    if programming_model is not None or "programming_model" in sim:
        try:
            model = (open_model(programming_model) if programming_model is not None else
                     open_model(sim["programming_model"], Path(cfg.get("_path", ".")).parent))
        except HilError as e:
            raise ConfigError(f"{'programming_model' if programming_model is not None else w + ': sim.programming_model'}"
                              f": {e}") from None
    return SimStationSpec(name, cfg.get("_path"), geom, limits, seed, params, model)


def open_sim_station(cfg: dict, *, seed: Optional[int] = None, params_path=None, state_path=None,
                     geometry: Optional[Geometry] = None, programming_model=None) -> SimulatedCrossbar:
    """Build a SimulatedCrossbar from a station config (see stations/sim-yao.toml); with a
    programming model (option or [sim] programming_model) a StatisticalCrossbar."""
    spec = check_sim_station(cfg, seed=seed, params_path=params_path, state_path=state_path, geometry=geometry,
                             programming_model=programming_model)
    if spec.programming_model is not None:
        return StatisticalCrossbar(spec.programming_model, spec.geometry, spec.params, seed=spec.seed,
                                   limits=spec.limits, state_path=state_path)
    return SimulatedCrossbar(spec.geometry, spec.params, seed=spec.seed, limits=spec.limits, state_path=state_path)
