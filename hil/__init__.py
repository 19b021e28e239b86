"""memristor-hil: control 1T1R memristor crossbars, simulated or at the probe station.

A script needs only these names (units are SI everywhere: S, V, s, A):

    import numpy as np
    import hil

    with hil.open_station("sim", seed=1) as xbar, hil.Session(xbar, "runs/my.h5") as s:
        cells = hil.Cells.block(pe=0, rows=range(4), cols=range(4))   # 16 cells, row-major
        report = s.write_verify(cells, np.linspace(4e-6, 19e-6, 16), tolerance_s=0.5e-6)
        g_s = s.read(cells)                                 # conductances, S
        r = s.vmm(0, np.full((1, 4), 255), rows=range(4), cols=range(4))   # VMM; r.currents in A

open_station(station, seed=, params=, geometry=)   "sim" or a station TOML file -> a Crossbar
Crossbar        read(cells) -> S; pulse(cells, op, v, v_gate, width) in V, V, s; vmm(...) -> VmmResult;
                every call is checked against the station's safety limits before anything is applied
Cells, Geometry which cells (PE, row, column) and the chip's shape
Op              SET, RESET, FORM, READ
write_verify    program cells to target conductances (S) ± a tolerance (S) -> ProgramReport
WriteVerifyPolicy, ProgramReport   the pulse ramps of write-verify, and its per-cell outcome
Session         journals every read, pulse, VMM and write-verify made through it into a run
                record that survives a crash (`hil runs recover RUN.h5` rebuilds a cut-off one)
HilError        base of ConfigError, SafetyViolation, AddressError, BackendError,
                InstrumentTimeout, DataError, Cancelled

`import hil` loads the names above on first use, so it stays light (no h5py, plotting or Qt).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; loaded on first attribute access (PEP 562)
_EXPORTS = {
    "Cells": "hil.geometry", "Geometry": "hil.geometry",
    "Op": "hil.limits",
    "Crossbar": "hil.crossbar", "VmmResult": "hil.crossbar",
    "write_verify": "hil.ops.write_verify",
    "WriteVerifyPolicy": "hil.programming", "ProgramReport": "hil.programming",
    "Session": "hil.session",
    **{name: "hil.errors" for name in ("HilError", "ConfigError", "SafetyViolation", "AddressError",
                                       "BackendError", "InstrumentTimeout", "DataError", "Cancelled")},
}

__all__ = ["__version__", "open_station", *_EXPORTS]


def open_station(station: str = "sim", *, seed=None, params=None, geometry=None, **options):
    """Open a station and return its Crossbar (a context manager: leaving it, or `close()`,
    leaves the hardware safe: outputs off, levels zero, relays open).

    `station`: "sim" (a simulated Yao chip, 8 PEs of 128 x 16 cells) or the path of a station
    TOML file (simulated or instruments; see stations/). `seed`: seed of a simulated chip.
    `params`: a device-parameter TOML file for the simulator. `geometry`: a `Geometry` or a
    preset name ("yao", "wang") for a simulated chip. Other `options` go to the backend
    (e.g. `state_path` to keep a simulated chip between scripts). Everything is validated
    before anything opens; bad values raise ConfigError naming the file and key. Sets the
    process's BLAS threading first (hil.threads: one thread unless HIL_BLAS_THREADS says)."""
    from hil import registry
    from hil.geometry import preset
    from hil.threads import configure_blas

    configure_blas()

    if isinstance(geometry, str):
        geometry = preset(geometry)
    given = {"seed": seed, "params_path": params, "geometry": geometry}
    return registry.open_station(station, **{k: v for k, v in given.items() if v is not None}, **options)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hil' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
