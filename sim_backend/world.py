"""The physical world behind every emulated instrument of one emulated station.

One `EmulatedWorld` holds the chip physics (a `SimulatedCrossbar` used without limits —
real hardware does not check limits, the drivers do), the wiring the array board sets up
(which cells are connected to the BL/SL/WL buses), the levels the SMU channels put on those
buses, a virtual clock shared by all instruments, a transaction/byte counter and bus-latency
model per instrument, an event log of every output-state change, and a fault injector.

Emulated instruments (board firmware, 2600B, 2400/2450, B2900) are thin protocol layers over
this object. Worlds are found by name (`get_world`) so that transports opened by resource
string (pyvisa `@hilsim`, pyserial `hilsim://`) reach the same physics.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from hil.geometry import YAO, Cells, Geometry
from hil.limits import Op, OpLimits, SafetyLimits

from . import iv_physics
from .chip import SimulatedCrossbar
from .params import DeviceParams

log = logging.getLogger(__name__)

TERMINALS = ("BL", "SL", "WL")


@dataclass(frozen=True)
class BusProfile:
    """Cost of one bus transaction: fixed latency plus transfer time."""

    name: str
    latency_s: float
    bytes_per_s: float

    def cost(self, n_bytes: int) -> float:
        return self.latency_s + n_bytes / self.bytes_per_s


# Typical round-trip figures (query + reply) for a probe station; configurable per world.
BUSES = {
    "gpib": BusProfile("gpib", 2.0e-3, 250e3),
    "usb": BusProfile("usb", 1.0e-3, 1e6),
    "lan": BusProfile("lan", 0.5e-3, 5e6),
    "serial": BusProfile("serial", 0.2e-3, 921600 / 10),
}

FAULT_KINDS = ("timeout", "garble", "drop", "reset", "disconnect")
#: events kept in a world's log (the oldest are dropped beyond it: a long-running server must not grow)
MAX_EVENTS = 50_000


@dataclass
class Fault:
    """A fault armed for one instrument: fires on its `after`-th next transaction."""

    kind: str
    after: int = 0
    count: int = 1


@dataclass
class Event:
    t: float
    source: str
    kind: str
    detail: dict = field(default_factory=dict)


class EventLog(list):
    """A world's event log, bounded: beyond `maxlen` (+ a quarter, so trimming is rare) the oldest
    events are dropped and counted in `dropped`."""

    def __init__(self, maxlen: Optional[int] = None) -> None:
        super().__init__()
        self.maxlen = MAX_EVENTS if maxlen is None else int(maxlen)
        self.dropped = 0

    def append(self, event) -> None:
        super().append(event)
        if len(self) > self.maxlen + self.maxlen // 4:
            n = len(self) - self.maxlen
            del self[:n]
            self.dropped += n


def parse_fault(spec) -> tuple[Optional[str], str, int]:
    """`"[SOURCE:]KIND@N"` -> (source or None, kind, N): fault KIND on the transaction after the
    next N of SOURCE (None: every instrument). Raises ValueError naming the value and the kinds."""
    text = spec if isinstance(spec, str) else None
    m = re.fullmatch(r"\s*(?:([A-Za-z_][\w.-]*)\s*:)?\s*([a-z]+)\s*@\s*(\d{1,9})\s*", text or "")
    if m is None or m.group(2) not in FAULT_KINDS:
        what = "unknown fault kind" if m else "malformed fault"
        raise ValueError(f"{what} {spec!r}: use [SOURCE:]KIND@N with KIND one of {', '.join(FAULT_KINDS)} and "
                         f"N the number of transactions before it fires (e.g. 'board:timeout@5')")
    return m.group(1), m.group(2), int(m.group(3))


def plan_faults(specs, sources) -> list[tuple[str, str, int]]:
    """[(source, kind, N)] for `"[SOURCE:]KIND@N"` specs on the named `sources` (a spec without
    SOURCE: every one); ValueError naming the spec when it is malformed or names no source."""
    sources = list(sources)
    plan = []
    for spec in specs or ():
        src, kind, after = parse_fault(spec)
        if src is not None and src not in sources:
            raise ValueError(f"fault {spec!r}: no instrument {src!r}; this station has {', '.join(sources) or 'none'}")
        plan += [(s, kind, after) for s in ([src] if src else sources)]
    return plan


class FaultInjector:
    """Faults armed on demand per instrument name; transports ask `take()` once per transaction."""

    def __init__(self) -> None:
        self._armed: dict[str, list[Fault]] = defaultdict(list)
        self.fired: list[tuple[str, str]] = []
        self.disconnected: set[str] = set()

    def arm(self, source: str, kind: str, after: int = 0, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
        self._armed[source].append(Fault(kind, int(after), int(count)))

    def take(self, source: str) -> Optional[str]:
        """The fault to apply to this transaction of `source`, or None."""
        if source in self.disconnected:
            return "disconnect"
        for f in list(self._armed[source]):
            if f.after > 0:
                f.after -= 1
                continue
            f.count -= 1
            if f.count <= 0:
                self._armed[source].remove(f)
            self.fired.append((source, f.kind))
            if f.kind == "disconnect":
                self.disconnected.add(source)
            return f.kind
        return None

    def reconnect(self, source: str) -> None:
        self.disconnected.discard(source)


class EmulatedWorld:
    """Chip physics + wiring + clock + logs shared by the emulated instruments of a station."""

    def __init__(self, geometry: Geometry = YAO, params: Optional[DeviceParams] = None, seed: int = 0,
                 name: str = "default", state_path=None) -> None:
        self.name = name
        wide = OpLimits(max_v=100.0, max_v_gate=100.0, max_compliance_a=1.0, min_width_s=1e-12, max_width_s=1e6)
        self.chip = SimulatedCrossbar(geometry, params, seed=seed,
                                      limits=SafetyLimits({op: wide for op in Op}), state_path=state_path)
        self.geometry = geometry
        self.lock = threading.RLock()
        self.events: list[Event] = EventLog()
        self.counters: dict[str, dict[str, float]] = defaultdict(
            lambda: {"transactions": 0, "bytes_in": 0, "bytes_out": 0, "bus_s": 0.0})
        self.buses: dict[str, BusProfile] = {}
        self.faults = FaultInjector()
        # Wiring set by the board: selected cells and what drives each terminal.
        self.selected: Optional[Cells] = None
        self.drive: dict[str, str] = {t: "open" for t in TERMINALS}   # "open" | "ground" | "bus" | "dac"
        self.dac_gate_v = 0.0
        # Levels the SMU channels currently put on the buses: (source, terminal) -> (volts, output_on)
        self.bus_level: dict[tuple[str, str], tuple[float, bool]] = {}
        self.max_applied_v: dict[str, float] = {t: 0.0 for t in TERMINALS}

    # ---- clock, accounting, log -------------------------------------------------------
    def now(self) -> float:
        return self.chip.now()

    def spend(self, seconds: float) -> None:
        """Advance the virtual clock (bus transfers, instrument delays)."""
        if seconds > 0:
            self.chip._t += float(seconds)

    def transaction(self, source: str, bytes_in: int, bytes_out: int) -> None:
        """Count one host↔instrument exchange and charge its bus time to the clock."""
        c = self.counters[source]
        c["transactions"] += 1
        c["bytes_in"] += int(bytes_in)
        c["bytes_out"] += int(bytes_out)
        bus = self.buses.get(source, BUSES["usb"])
        dt = bus.cost(int(bytes_in) + int(bytes_out))
        c["bus_s"] += dt
        self.spend(dt)
        if self._pulsed:
            self.checkpoint()    # before the host gets the reply: the chip on disk is never behind a run's journal

    def log(self, source: str, kind: str, **detail) -> None:
        self.events.append(Event(self.now(), source, kind, detail))
        log.debug("%s %s %s", source, kind, detail)

    # ---- wiring (set by the board) ------------------------------------------------------
    def route(self, cells: Optional[Cells], source: str = "board") -> None:
        """Connect `cells` (one cell, or many sharing lines) to the buses; None disconnects."""
        with self.lock:
            self.selected = None if cells is None else cells.validate(self.geometry)
            self.log(source, "route", n=0 if cells is None else len(cells))

    def set_drive(self, terminal: str, how: str, source: str = "board") -> None:
        if terminal not in TERMINALS or how not in ("open", "ground", "bus", "dac"):
            raise ValueError(f"bad drive {terminal}={how}")
        self.drive[terminal] = how
        self.log(source, "drive", terminal=terminal, how=how)

    def ground_all(self, source: str = "board") -> None:
        """Everything grounded and disconnected (board watchdog, safe state)."""
        with self.lock:
            self.selected = None
            for t in TERMINALS:
                self.drive[t] = "ground"
            self.dac_gate_v = 0.0
            self.log(source, "ground_all")

    # ---- levels put on the buses by SMUs ---------------------------------------------
    def set_output(self, source: str, terminal: str, volts: float, on: bool) -> None:
        """An SMU channel wired to `terminal` changed level or output state."""
        with self.lock:
            prev = self.bus_level.get((source, terminal))
            self.bus_level[(source, terminal)] = (float(volts), bool(on))
            if on:
                self.max_applied_v[terminal] = max(self.max_applied_v[terminal], abs(float(volts)))
            if prev is None or prev[1] != bool(on) or (on and prev[0] != float(volts)):
                self.log(source, "output", terminal=terminal, volts=float(volts), on=bool(on))

    def outputs_off(self) -> bool:
        """True when no SMU output is on and the board has nothing routed."""
        return all(not on for (_, on) in self.bus_level.values()) and self.selected is None

    def gate_v(self) -> float:
        """Voltage on the selected cells' word lines."""
        how = self.drive["WL"]
        if how == "dac":
            return self.dac_gate_v
        if how == "bus":
            on = [v for (_, t), (v, o) in self.bus_level.items() if t == "WL" and o]
            return max(on, key=abs) if on else 0.0
        return 0.0

    # ---- physics ----------------------------------------------------------------------
    def _routed(self, terminal: str) -> Optional[Cells]:
        if self.selected is None or len(self.selected) == 0 or self.drive.get(terminal) != "bus":
            return None
        return self.selected

    def apply_pulse(self, terminal: str, volts: float, width_s: float, source: str = "smu") -> None:
        """A pulse of `volts` for `width_s` on bus `terminal` reaches the routed cells.

        Positive BL pulses SET (FORM on fresh cells), positive SL pulses RESET, and a negative
        pulse is the reverse polarity (negative BL = RESET, negative SL = SET); the gate comes from the board DAC
        or the WL bus; nothing happens when the terminal is not routed or the other end floats."""
        with self.lock:
            self.max_applied_v[terminal] = max(self.max_applied_v[terminal], abs(float(volts)))
            cells = self._routed(terminal)
            other = {"BL": "SL", "SL": "BL"}.get(terminal)
            if cells is None or other is None or self.drive.get(other) not in ("ground", "bus"):
                self.spend(width_s)
                return
            n = len(cells)
            v = np.full(n, abs(float(volts)))
            vg = np.full(n, self.gate_v())
            w = np.full(n, float(width_s))
            idx = cells.flat(self.geometry)
            t = self.now() + width_s
            self.chip._t = t
            forward = (terminal == "BL") == (volts > 0)
            if volts == 0:
                pass
            elif forward:
                self.chip.device.form_pulse(idx, v, vg, w, t)
            else:
                self.chip.device.reset_pulse(idx, v, vg, w, t)
            self.chip.counters["pulses"] += n
            self.chip._dirty = True
            self._pulsed = True

    def measure_current(self, terminal: str, volts: float, compliance_a: float = 1e-3,
                        n_avg: int = 1, aperture_s: float = 1e-4) -> float:
        """Current (A) into bus `terminal` at `volts`, summed over the routed cells (read noise
        included, read dose applied, clamped at the compliance)."""
        with self.lock:
            self.spend(aperture_s * n_avg)
            cells = self._routed(terminal)
            other = {"BL": "SL", "SL": "BL"}.get(terminal)
            if cells is None or other is None or self.drive.get(other) != "ground" or self.gate_v() <= 0.0:
                return 0.0
            idx = cells.flat(self.geometry)
            if abs(volts) > self.switching_above_v:
                # a DC level that can switch the cells: the I–V physics (nonlinear conduction, SET
                # at threshold with gate-limited compliance, gradual RESET), as the simulated chip's dc_sweep
                v_cell = volts if terminal == "BL" else -volts
                i_cells = iv_physics.dc_sweep(self.chip.device, idx, np.array([v_cell]), np.array([self.gate_v()]),
                                              np.array([compliance_a]), aperture_s * n_avg, self.now())[0]
                i = float(np.sum(i_cells)) * (1.0 if terminal == "BL" else -1.0)
            else:
                g = self.chip.device.read(idx, self.now(), n_avg)
                self.chip.device.add_dose(idx, n_avg, abs(volts), aperture_s)
                i = float(np.sum(g) * volts)
            self.chip.counters["reads"] += len(cells) * n_avg
            self.chip._dirty = True
            return float(np.clip(i, -compliance_a, compliance_a))

    #: |V| above which an SMU level is applied through the switching I–V model rather than read
    #: ohmically (the READ limit of the simulated stations is 0.3 V; the model switches from ~0.6 V)
    switching_above_v = 0.3

    _pulsed = False     # a pulse reached the chip since the last checkpoint

    def checkpoint(self) -> None:
        """Save the chip state when it persists (`state_path`) and changed: an emulated chip keeps
        its state between processes as the chip at a real station does."""
        with self.lock:
            if self.chip.state_path is not None and self.chip._dirty:
                self.chip._autosave()
            self._pulsed = False

    def summary(self) -> dict:
        """Counters, fired faults and the final safe state, for tests and benchmarks."""
        return {"counters": {k: dict(v) for k, v in self.counters.items()},
                "faults": list(self.faults.fired), "t": self.now(),
                "outputs_off": self.outputs_off(), "max_applied_v": dict(self.max_applied_v)}


_WORLDS: dict[str, EmulatedWorld] = {}
_WORLDS_LOCK = threading.Lock()


def get_world(name: str = "default", **kwargs) -> EmulatedWorld:
    """The world registered under `name`, created with `kwargs` on first use."""
    with _WORLDS_LOCK:
        w = _WORLDS.get(name)
        if w is None:
            w = _WORLDS[name] = EmulatedWorld(name=name, **kwargs)
        return w


def register_world(world: EmulatedWorld) -> EmulatedWorld:
    with _WORLDS_LOCK:
        _WORLDS[world.name] = world
    return world


def drop_world(name: str) -> None:
    with _WORLDS_LOCK:
        _WORLDS.pop(name, None)
