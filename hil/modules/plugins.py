"""Finding lab modules: the entry-point group `memristor_hil.modules`.

A plugin package declares its modules in its own pyproject.toml::

    [project.entry-points."memristor_hil.modules"]
    my-sweep = "my_package.sweep:MySweep"        # a hil.modules.base.LabModule subclass

Built-in modules go through the same loader (`BUILTIN` holds the ones hil lists itself); the
retention module is declared only as an entry point of this package, so it is found exactly as a
third-party plugin is. A plugin cannot replace a built-in: a name clash is an error.
"""
from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Optional

from hil.errors import ConfigError
from hil.modules.base import LabModule

log = logging.getLogger(__name__)

GROUP = "memristor_hil.modules"
#: name -> "module:Class" of the built-ins hil lists itself (retention is a declared plugin)
BUILTIN = {
    "pulse-train": "hil.modules.pulse_train:PulseTrain",
    "curve-tracer": "hil.modules.curve_tracer:CurveTracer",
    "forming": "hil.modules.forming:Forming",
}


def declared() -> dict[str, str]:
    """Every module name -> 'module:Class' target: the built-ins, then the entry points."""
    out = dict(BUILTIN)
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in BUILTIN and ep.value != BUILTIN[ep.name]:
            raise ConfigError(f"plugin module {ep.name!r} ({ep.value}) clashes with the built-in module of that "
                              f"name; rename it in its package's entry points")
        out[ep.name] = ep.value
    return out


def _load(name: str, target: str) -> LabModule:
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"lab module {name!r} ({target}) cannot be loaded: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, LabModule)):
        raise ConfigError(f"lab module {name!r} ({target}) is not a hil.modules.base.LabModule subclass")
    if cls.name != name:
        raise ConfigError(f"lab module {target} is declared as {name!r} but calls itself {cls.name!r}")
    return cls()


def get_module(name: str) -> LabModule:
    """The lab module called `name`; ConfigError naming the known ones otherwise."""
    targets = declared()
    if name not in targets:
        raise ConfigError(f"unknown lab module {name!r}; known: {', '.join(sorted(targets))}")
    return _load(name, targets[name])


def discover() -> tuple[dict[str, LabModule], dict[str, str]]:
    """(name -> module that loads, name -> why it does not): a broken plugin never hides the others."""
    found, broken = {}, {}
    for name, target in sorted(declared().items()):
        try:
            found[name] = _load(name, target)
        except ConfigError as e:
            log.warning("%s", e)
            broken[name] = str(e)
    return found, broken


def origin(name: str) -> Optional[str]:
    """'built-in' or 'plugin' for a declared module name (None when unknown)."""
    if name in BUILTIN:
        return "built-in"
    return "plugin" if name in declared() else None
