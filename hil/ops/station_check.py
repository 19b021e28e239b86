"""Station check: connect to a station (through the registry, so any backend works), collect its
identities, firmware, channel map and limits from `describe()`, and dry-run a small write-verify
job through `hil.ops.dryrun` (every pulse checked against the station's limits on a shadow chip;
nothing is applied to the hardware)."""
from __future__ import annotations

import numpy as np

from hil.errors import ConfigError
from hil.geometry import Cells
from hil.levels import LevelTable, make_pattern
from hil.ops.dryrun import open_dry_run
from hil.ops.write_verify import write_verify
from hil.registry import open_station


def station_check(spec: str, *, cells: int = 16, pe: int = 0, seed: int = 0, connect: bool = True) -> dict:
    """Connect to station `spec` ('sim' or a station file), describe it and dry-run a small job.

    Returns a JSON-able dict: `ok`, `station`, `describe` (identities, firmware, channel map,
    limits ...), `dry_run` (hil.ops.dryrun report of write-verifying `cells` cells of PE `pe` to the
    32-level table). Raises HilError (ConfigError, BackendError ...) when the station is broken."""
    out: dict = {"station": spec, "ok": False}
    if connect:
        with open_station(spec) as xbar:
            out["describe"] = xbar.describe()
            out["capabilities"] = sorted(xbar.capabilities)
    with open_dry_run(spec, seed) as dry:
        g = dry.geometry
        if not 0 <= pe < g.n_pe:
            raise ConfigError(f"station check --pe {pe}: out of range, this station has PEs 0..{g.n_pe - 1}")
        if not 1 <= int(cells) <= g.rows * g.cols:
            raise ConfigError(f"station check --cells {cells}: must be 1..{g.rows * g.cols} (the cells of one PE)")
        n = int(cells)
        sel = Cells.from_flat(pe * g.rows * g.cols + np.arange(n), g)
        table = LevelTable.linear()
        _, targets = make_pattern("levels32", n, table)
        rep = write_verify(dry, sel, targets, table.tolerance_s)
        out["dry_run"] = {**dry.report(), "cells": n, "pe": pe, "summary": rep.summary()}
    if not connect:
        out["describe"] = {"geometry": dry.geometry.to_dict(), "limits": dry.limits.to_dict()}
    out["ok"] = True
    return out
