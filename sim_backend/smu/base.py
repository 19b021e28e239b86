"""Shared machinery of the emulated SMUs: channels wired to world terminals, error queue,
transactions with fault injection, timed holds that become pulses on the chip physics.

Physics rule (all emulated SMUs): a DC level does not program a cell by itself; time spent
at a level of |V| >= PULSE_THRESHOLD_V on a routed BL/SL bus *during an instrument-timed hold*
(TSP delay(), SCPI source delay, B2900 pulse width) is applied as a pulse of that duration
via `world.apply_pulse`, which also advances the virtual clock. A negative level on a bus
whose opposite line is grounded is reverse polarity: it is applied as a positive pulse on the
opposite line (BL negative = RESET). Bus time is charged by `world.transaction`.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from ..world import BUSES, TERMINALS, EmulatedWorld

log = logging.getLogger(__name__)

PULSE_THRESHOLD_V = 0.5       # holds below this are reads, not pulses
LINE_FREQ_HZ = 50.0


class InstrumentDisconnected(ConnectionError):
    """The emulated instrument was disconnected (fault 'disconnect'); all I/O fails."""


class InstrumentError(Exception):
    """An error the instrument puts in its error queue (code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code},{message}")
        self.code = code
        self.message = message


@dataclass
class Exchange:
    """What one host message produced: reply bytes (may be empty) and the fault that fired."""

    reply: bytes = b""
    fault: Optional[str] = None


@dataclass
class Channel:
    """One source-measure channel and the world terminals it is wired to."""

    name: str
    terminals: tuple
    level_v: float = 0.0
    on: bool = False
    limit_i: float = 105e-6
    v_range: Optional[float] = 20.0          # None = auto
    i_range: Optional[float] = 100e-6        # None = auto
    nplc: float = 1.0
    source_delay_s: float = 0.0
    filter_count: int = 1
    filter_on: bool = False
    extra: dict = field(default_factory=dict)

    def aperture_s(self) -> float:
        return self.nplc / LINE_FREQ_HZ


class EmulatedInstrument:
    """Base of every emulated SMU. Subclasses implement `process(text) -> list[str]` (reply
    lines), `_new_channels()` (power-on state) and IDN."""

    IDN = "EMULATED,INSTRUMENT,0,0"
    ERROR_QUEUE_LEN = 10
    CHANNEL_NAMES: tuple = ("1",)

    def __init__(self, world: EmulatedWorld, name: str, wiring: Optional[dict] = None,
                 bus: str = "gpib", serial: str = "0000001") -> None:
        self.world = world
        self.name = name
        self.serial = serial
        if bus not in BUSES:
            raise ValueError(f"unknown bus profile {bus!r}; choose one of {sorted(BUSES)}")
        world.buses[name] = BUSES[bus]
        wiring = dict(wiring or {})
        for ch, terms in wiring.items():
            if ch not in self.CHANNEL_NAMES:
                raise ValueError(f"{name}: no channel {ch!r} (channels {self.CHANNEL_NAMES})")
            for t in terms:
                if t not in TERMINALS:
                    raise ValueError(f"{name}: unknown terminal {t!r}; use {TERMINALS}")
        self.wiring = {ch: tuple(wiring.get(ch, ())) for ch in self.CHANNEL_NAMES}
        self.errors: deque = deque()
        self.esr = 0
        self.channels: dict[str, Channel] = {}
        self.power_on()

    # ---- state -----------------------------------------------------------------------
    def _new_channel(self, ch: str) -> Channel:
        return Channel(ch, self.wiring[ch])

    def power_on(self) -> None:
        """Power-on / *RST state: default settings, outputs off (published to the world)."""
        with self.world.lock:
            self.channels = {ch: self._new_channel(ch) for ch in self.CHANNEL_NAMES}
            for c in self.channels.values():
                self.publish(c)

    def push_error(self, code: int, message: str) -> None:
        if len(self.errors) >= self.ERROR_QUEUE_LEN:
            self.errors[-1] = (-350, "Queue overflow")
            return
        self.errors.append((int(code), message))
        self.esr |= 0x20 if -199 <= code <= -100 else 0x10 if -299 <= code <= -200 else 0x04
        log.debug("%s error %s %s", self.name, code, message)

    def pop_error(self) -> tuple[int, str]:
        return self.errors.popleft() if self.errors else (0, "No error")

    def clear_status(self) -> None:
        self.errors.clear()
        self.esr = 0

    def device_clear(self) -> None:
        """VISA device clear: abort the present input/output (no settings change)."""
        self.world.log(self.name, "device_clear")

    # ---- world interaction -------------------------------------------------------------
    def publish(self, c: Channel) -> None:
        for t in c.terminals:
            self.world.set_output(self.name, t, c.level_v if c.on else 0.0, c.on)

    def set_level(self, c: Channel, v: float) -> None:
        c.level_v = float(v)
        if c.on:
            self.publish(c)

    def set_on(self, c: Channel, on: bool) -> None:
        c.on = bool(on)
        self.publish(c)

    def bus_terminal(self, c: Channel) -> Optional[str]:
        """The BL/SL terminal of `c` the board connects to the bus (None if none)."""
        for t in c.terminals:
            if t in ("BL", "SL") and self.world.drive.get(t) == "bus":
                return t
        return None

    def hold(self, dt: float) -> None:
        """`dt` seconds pass at the present levels (instrument-timed): a pulse when a channel
        is on at |V| >= PULSE_THRESHOLD_V on a routed BL/SL bus, else plain time."""
        dt = max(float(dt), 0.0)
        with self.world.lock:
            for c in self.channels.values():
                if c.on and abs(c.level_v) >= PULSE_THRESHOLD_V:
                    t = self.bus_terminal(c)
                    if t is not None:
                        self._apply_pulse(t, c.level_v, dt)
                        return
            self.world.spend(dt)

    def _apply_pulse(self, term: str, v: float, dt: float) -> None:
        w = self.world
        other = {"BL": "SL", "SL": "BL"}[term]
        if v < 0 and w.drive.get(other) == "ground":
            saved = dict(w.drive)
            w.drive[term], w.drive[other] = "ground", "bus"
            try:
                w.apply_pulse(other, -v, dt, source=self.name)
            finally:
                w.drive.update(saved)
            return
        w.apply_pulse(term, v, dt, source=self.name)

    def measure_i(self, c: Channel) -> Optional[float]:
        """Current into channel `c` (A) at its level; None when its output is off."""
        n = c.filter_count if c.filter_on else 1
        if not c.on:
            self.world.spend(c.aperture_s() * n)
            return None
        t = self.bus_terminal(c) or (c.terminals[0] if c.terminals else None)
        if t is None:
            self.world.spend(c.aperture_s() * n)
            return 0.0
        i = self.world.measure_current(t, c.level_v, c.limit_i, n_avg=n, aperture_s=c.aperture_s())
        if c.i_range is not None:
            i = max(-1.05 * c.i_range, min(1.05 * c.i_range, i))
        return i

    # ---- transactions ------------------------------------------------------------------
    def process(self, text: str) -> list[str]:
        raise NotImplementedError

    def _looks_like_query(self, text: str) -> bool:
        return "?" in text or "print" in text

    def exchange(self, data: bytes) -> Exchange:
        """One host message in, reply out; counts the transaction and applies armed faults.

        Faults: timeout -> the message is not executed and the host's write times out;
        drop -> the message is lost silently (no reply); garble -> the reply (or, for a
        message without reply, the message itself) has a corrupted byte; reset -> the
        instrument power-cycles (settings default, outputs off, scripts lost) and the message
        is lost; disconnect -> InstrumentDisconnected now and for every later message."""
        fault = self.world.faults.take(self.name)
        if fault == "disconnect":
            self.world.log(self.name, "fault", fault="disconnect")
            raise InstrumentDisconnected(f"{self.name} disconnected")
        text = data.decode("ascii", errors="replace")
        if fault is not None:
            self.world.log(self.name, "fault", fault=fault)
        if fault in ("timeout", "drop"):
            self.world.transaction(self.name, len(data), 0)
            return Exchange(b"", fault)
        if fault == "reset":
            self.world.transaction(self.name, len(data), 0)
            self.reset_power()
            return Exchange(b"", fault)
        query = self._looks_like_query(text)
        if fault == "garble" and not query:
            text = _corrupt(text)
        lines = self.process(text)
        reply = ("\n".join(lines) + "\n").encode() if lines else b""
        if fault == "garble" and query and reply:
            reply = _corrupt(reply.decode()).encode()
        self.world.transaction(self.name, len(data), len(reply))
        return Exchange(reply, fault)

    def reset_power(self) -> None:
        """Power cycle: everything to the power-on state."""
        self.clear_status()
        self.power_on()
        self.esr |= 0x80     # PON


def _corrupt(text: str) -> str:
    """Replace one character near the middle by '#', keeping line terminators."""
    body = text.rstrip("\n")
    if not body:
        return text
    i = len(body) // 2
    return body[:i] + "#" + body[i + 1:] + text[len(body):]
