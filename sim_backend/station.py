"""Factory for simulated stations: `--station sim` or a station file with backend = "sim"."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from hil.errors import ConfigError
from hil.geometry import YAO, Geometry
from hil.limits import SafetyLimits

from .chip import SimulatedCrossbar
from .params import DeviceParams


def open_sim_station(cfg: dict, *, seed: Optional[int] = None, params_path=None, state_path=None,
                     geometry: Optional[Geometry] = None) -> SimulatedCrossbar:
    """Build a SimulatedCrossbar from a station config (see stations/sim-yao.toml)."""
    known_top = {"station", "geometry", "limits", "sim", "_path"}
    unknown = set(cfg) - known_top
    if unknown:
        raise ConfigError(f"station file: unknown table(s) {sorted(unknown)} for a simulated station")
    sim = cfg.get("sim", {})
    base = Path(cfg.get("_path", ".")).parent
    geom = geometry or (Geometry.from_dict(cfg["geometry"]) if "geometry" in cfg else YAO)
    limits = SafetyLimits.from_dict(cfg.get("limits"))
    if seed is None:
        seed = sim.get("seed", 0)
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    pp = params_path or (base / sim["params"] if "params" in sim else None)
    params = DeviceParams.load(pp) if pp else DeviceParams()
    return SimulatedCrossbar(geom, params, seed=seed, limits=limits, state_path=state_path)
