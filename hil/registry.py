"""Backend registry: `--station sim` or a station file picks the backend by name,
without hil importing any backend at module level.

Each backend has a factory (opens the station) and a checker that validates a whole station
file and the factory's options without any I/O; `open_station` and the dry run both call
`check_station` first, so a dry run validates a file exactly as a real run does.

Beside the backends, named entries reach what lives outside `hil` (the GUI, the emulator's TCP
servers, the simulator's parameter set): `resolve("gui")` imports `gui.app:main` only when called,
so `hil` never imports a front end or a backend, not even lazily."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Optional

from hil.crossbar import Crossbar
from hil.errors import ConfigError
from hil.schema import Anything, SchemaError, Table, Text, load_toml, located

# name -> "module:callable"; the callable takes (config: dict, **options) and returns a Crossbar.
_BACKENDS: dict[str, str] = {
    "sim": "sim_backend.station:open_sim_station",
    "instruments": "drivers.station:open_instrument_station",
}
# name -> "module:callable" taking (config, **options) like the factory and returning the validated
# station (with .name, .geometry, .limits) without opening anything.
_CHECKS: dict[str, str] = {
    "sim": "sim_backend.station:check_sim_station",
    "instruments": "drivers.station:check_instrument_station",
}
# table -> "module:callable(table, config)": tables a backend's transport reads itself (the
# [emulation] table is read by the @hilsim pyvisa backend), validated with the rest of the file.
_TABLE_CHECKS: dict[str, str] = {
    "emulation": "sim_backend.visa_backend:check_emulation",
}

# name -> "module:callable": entry points outside hil that the command line starts by name.
_ENTRIES: dict[str, str] = {
    "gui": "gui.app:main",                                    # (args) -> exit code
    "sim-station-server": "sim_backend.serve:serve_station",  # (station_file, *, host, port_base, faults)
    "sim-params": "sim_backend.params:DeviceParams",          # the simulated device's parameter set
    "sim.fit_params": "sim_backend.fit:fit_params",           # (record, base, *, bootstrap, seed) -> FitResult
    "sim.fit_programming_model": "sim_backend.statistical:fit_programming_model",  # (station, params, seed, ...) -> path
}

# name -> "module:Target": what one point of `hil sweep` runs (hil.sweep.target.Target objects);
# the sweep engine reaches the papers' targets by name, never by import.
_SWEEP_TARGETS: dict[str, str] = {
    "write_verify": "hil.sweep.targets:WRITE_VERIFY",
    "drift": "hil.sweep.targets:DRIFT",
    "yao2020.transfer_hybrid": "hil.yao2020.sweep:TRANSFER_HYBRID",
    "wang2019.insitu": "hil.wang2019.sweep:INSITU",
}


def register_backend(name: str, target: str, check: Optional[str] = None) -> None:
    """Register a backend factory (and optionally its checker) as 'module:callable'."""
    for t in (target, check):
        if t is not None and ":" not in t:
            raise ConfigError(f"backend target must look like 'module:function', got {t!r}")
    _BACKENDS[name] = target
    if check is not None:
        _CHECKS[name] = check


def resolve(name: str) -> Callable:
    """The callable registered as entry `name`, imported now; ConfigError naming the entry
    when it is unknown or its module cannot be imported here."""
    return _resolve(_ENTRIES, name, "entry")


def sweep_target(name: str):
    """The sweep target registered as `name` (a hil.sweep.target.Target), imported now."""
    return _resolve(_SWEEP_TARGETS, name, "sweep target")


def sweep_targets() -> list[str]:
    """Names of the registered sweep targets."""
    return sorted(_SWEEP_TARGETS)


def available_backends() -> dict[str, bool]:
    """Backend names and whether their module can be imported here."""
    out = {}
    for name, target in _BACKENDS.items():
        try:
            importlib.import_module(target.split(":")[0])
            out[name] = True
        except Exception:
            out[name] = False
    return out


def _resolve(table: dict, name: str, what: str) -> Callable:
    try:
        target = table[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; known: {sorted(table)}") from None
    module, func = target.split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} {name!r} is not available in this installation ({e})") from None


def _factory(name: str) -> Callable[..., Crossbar]:
    return _resolve(_BACKENDS, name, "backend")


def read_toml(path, missing: str, what: str = "station file") -> dict:
    """Parse a TOML file (bounded size and nesting); ConfigError `missing` if it does not exist,
    or naming the file and the problem (directory, not UTF-8, syntax error ...)."""
    return load_toml(path, what, missing)


def where(cfg: dict) -> str:
    """'station file PATH' (or 'station') for messages about `cfg`."""
    p = cfg.get("_path") if isinstance(cfg, dict) else None
    return f"station file {p}" if p else "station"


def load_station_file(path) -> dict:
    """Parse a station TOML file and check its [station] table's backend; errors name the file and key."""
    path = Path(path)
    cfg = read_toml(path, f"station {str(path)!r} is neither 'sim' nor an existing station file")
    with located(f"station file {path}"):
        if "station" not in cfg:
            raise SchemaError("station", f"missing [station] table with a 'backend' key (backend = "
                                         f"{' or '.join(repr(b) for b in sorted(_BACKENDS))})")
        Table(required=["backend"], extra=Anything()).check(cfg["station"], "station")
        Text(sorted(_BACKENDS)).check(cfg["station"]["backend"], "station.backend")
    cfg["_path"] = str(path.resolve())
    return cfg


def _config(spec) -> dict:
    if isinstance(spec, dict):
        return spec
    if spec in _BACKENDS and not Path(spec).exists():
        return {"station": {"backend": spec}}
    return load_station_file(spec)


def check_station(spec, **options) -> Any:
    """Validate station `spec` ('sim', a station file or a parsed file) and the factory `options`
    exactly as `open_station` does, without opening anything; returns the backend's validated
    station (with .name, .geometry and .limits)."""
    cfg = _config(spec)
    backend = cfg["station"]["backend"]
    if backend in _BACKENDS and backend not in _CHECKS:
        return None                    # a registered backend without a checker validates in its factory
    checked = _resolve(_CHECKS, backend, "backend")(cfg, **options)
    for table, target in _TABLE_CHECKS.items():
        if table in cfg:
            _resolve(_TABLE_CHECKS, table, "station table")(cfg[table], cfg)
    return checked


def open_station(spec: str, **options) -> Crossbar:
    """Open a backend from 'sim' (default simulated Yao chip) or a station file path, after
    `check_station` validated the whole file and the options.

    Options (seed, params_path, state_path, geometry ...) are passed to the backend factory."""
    cfg = _config(spec)
    check_station(cfg, **options)
    return _factory(cfg["station"]["backend"])(cfg, **options)
