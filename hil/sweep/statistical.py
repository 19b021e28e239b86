"""The statistical fast programming mode of a sweep (`[sweep] programming = "statistical"`):
write-verify outcomes drawn from a model fitted once per sweep from a pulse-level run on the
sweep's fixed device parameters (the simulator's `sim.fit_programming_model`, reached by name),
cached in the sweep folder; each point's simulated chip opens with it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hil.registry import resolve, sweep_target
from hil.sweep.spec import SweepSpec, programming_settings

#: the fit run's size and chip seed
FIT_CELLS = 4096
FIT_SEED = 0


def programming_model(spec: SweepSpec, out) -> str:
    """The fitted model file of the sweep in folder `out` (fitted now unless cached there)."""
    settings = programming_settings(spec)
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
