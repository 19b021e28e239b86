"""The statistical fast programming mode of a sweep (`[sweep] programming = "statistical"`):
write-verify outcomes drawn from a model fitted once per sweep from a pulse-level run on the
sweep's fixed device parameters (the simulator's `sim.fit_programming_model`, reached by name),
cached in the sweep folder; each point's simulated chip opens with it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hil.errors import ConfigError
from hil.registry import resolve, sweep_target
from hil.sweep.spec import SweepSpec

#: the fit run's size and chip seed
FIT_CELLS = 4096
FIT_SEED = 0


def fit_settings(spec: SweepSpec) -> dict:
    """The programming the sweep's points do (levels, window, band, policy), the same at every
    point (ConfigError naming the axis that changes it: the model is fitted once)."""
    target = sweep_target(spec.target)
    if target.programming is None:
        raise ConfigError(f"sweep.programming: target {spec.target} has no statistical programming mode; "
                          f"use programming = \"pulse\"")
    first = None
    for coords in spec.coordinates():
        cfg = target.config.from_dict(spec.settings(coords)[0], "config")
        s = target.programming(cfg)
        if first is None:
            first = s
        elif s != first:
            raise ConfigError(f"sweep.programming = \"statistical\": axis {', '.join(coords)} changes the programming "
                              f"({', '.join(k for k in s if s[k] != first[k])}); the model is fitted once per sweep")
    return first


def programming_model(spec: SweepSpec, out) -> str:
    """The fitted model file of the sweep in folder `out` (fitted now unless cached there)."""
    settings = fit_settings(spec)
    preset = spec.preset or sweep_target(spec.target).preset
    params = resolve("sim-params").from_dict({"preset": preset, **spec.device})
    key = hashlib.sha1(json.dumps({"settings": settings, "params": params.to_dict(), "cells": FIT_CELLS,
                                   "seed": FIT_SEED}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(out) / "cache" / f"programming-{key}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        resolve("sim.fit_programming_model")(station="sim", params=params, seed=FIT_SEED, n_cells=FIT_CELLS,
                                              out=path, **settings)
    return str(path.resolve())
