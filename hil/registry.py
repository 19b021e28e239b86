"""Backend registry: `--station sim` or a station file picks the backend by name,
without hil importing any backend at module level."""
from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Callable, Optional

from .crossbar import Crossbar
from .errors import ConfigError

# name -> "module:callable"; the callable takes (config: dict, **options) and returns a Crossbar.
_BACKENDS: dict[str, str] = {
    "sim": "sim_backend.station:open_sim_station",
    "instruments": "drivers.station:open_instrument_station",
}


def register_backend(name: str, target: str) -> None:
    """Register a backend factory as 'module:callable'."""
    if ":" not in target:
        raise ConfigError(f"backend target must look like 'module:function', got {target!r}")
    _BACKENDS[name] = target


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


def _factory(name: str) -> Callable[..., Crossbar]:
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {sorted(_BACKENDS)}") from None
    module, func = target.split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"backend {name!r} is not available in this installation ({e})") from None


def read_toml(path, missing: str, what: str = "station file") -> dict:
    """Parse a TOML file; ConfigError `missing` if it does not exist, or naming the syntax error."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(missing)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is malformed: {e}") from None


def load_station_file(path) -> dict:
    """Parse a station TOML file; errors name the file and the problem."""
    path = Path(path)
    cfg = read_toml(path, f"station {str(path)!r} is neither 'sim' nor an existing station file")
    station = cfg.get("station")
    if not isinstance(station, dict) or "backend" not in station:
        raise ConfigError(f"station file {path}: missing [station] table with a 'backend' key (e.g. backend = \"sim\")")
    cfg["_path"] = str(path.resolve())
    return cfg


def open_station(spec: str, **options) -> Crossbar:
    """Open a backend from 'sim' (default simulated Yao chip) or a station file path.

    Options (seed, params_path, state_path, geometry ...) are passed to the backend factory."""
    if spec in _BACKENDS and not Path(spec).exists():
        cfg = {"station": {"backend": spec}}
    else:
        cfg = load_station_file(spec)
    return _factory(cfg["station"]["backend"])(cfg, **options)
