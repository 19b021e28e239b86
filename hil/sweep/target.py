"""What one sweep point runs: a `Target` names the config class of a point, the run record's
kind, the simulated chip it needs and the function that calls the stage(s) and returns figures.

Targets live beside their stages (`hil.sweep.targets` for the core's, `hil.yao2020.sweep`,
`hil.wang2019.sweep`) and are reached by name through `hil.registry.sweep_target`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from hil.geometry import Geometry

#: a target's result: figure name -> number (one table column each)
Figures = dict
#: work several points share (e.g. a software-trained model): (arrays: name -> ndarray, attrs: JSON-able dict)
Shared = tuple


@dataclass(frozen=True)
class Target:
    """A sweep target.

    `run(xbar, writer, cfg, shared)` calls the stage(s) on the point's simulated chip and run
    record and returns the point's figures. `prepare(cfg)` (optional) makes what points with the
    same `prepare_key(cfg)` share; it runs once per key on a worker, its result is cached in the
    sweep folder and handed to `run` as `shared`. `programming(cfg)` says which write-verify a
    point does, for the fitted statistical programming model (`hil.sweep.statistical`)."""

    name: str
    config: type                      # a hil.config.Config subclass: the point's settings
    kind: str                         # run record kind
    geometry: Geometry                # the simulated chip's geometry
    run: Callable[..., Figures]
    preset: str = "yao2020"           # the simulated device's parameter preset
    prepare: Optional[Callable[[Any], Shared]] = None
    prepare_key: Optional[Callable[[Any], dict]] = None
    #: the point's programming for the statistical mode: cfg -> fit settings (levels, g_min_s,
    #: g_max_s, tolerance_s, policy); None: the target has no statistical mode
    programming: Optional[Callable[[Any], dict]] = None
