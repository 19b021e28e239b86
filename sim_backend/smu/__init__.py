"""Emulated SMUs speaking the real wire protocols over one `EmulatedWorld`:
Keithley 2600B (TSP in a real Lua runtime), Keithley 2400 and 2450 (SCPI), Keysight B2900
(SCPI with pulse mode). Transports: `sim_backend.visa_backend` (pyvisa `@hilsim` backend and a
raw-socket TCP server)."""
from __future__ import annotations

import re

from .b2900 import KeysightB2900Emulator
from .base import Channel, EmulatedInstrument, Exchange, InstrumentDisconnected, InstrumentError
from .k2400 import Keithley2400Emulator
from .k2450 import Keithley2450Emulator
from .k2600 import Keithley2600Emulator

__all__ = ["make_instrument", "KINDS", "EmulatedInstrument", "Exchange", "InstrumentDisconnected",
           "InstrumentError", "Channel", "Keithley2400Emulator", "Keithley2450Emulator",
           "Keithley2600Emulator", "KeysightB2900Emulator", "normalize_wiring"]

#: kind names accepted in [emulation] tables (2600B models: keithley2601b ... keithley2636b)
KINDS = ("keithley2600b", "keithley26XXb", "keithley2400", "keithley2450", "keysight_b2900",
         "keysight_b29XXa")


def normalize_wiring(kind_cls, wiring) -> dict:
    """Accept channel keys 'smua'/'a', 'ch1'/'1'/'smu1' and terminal lists; return {channel: [terms]}."""
    out = {}
    for ch, terms in dict(wiring or {}).items():
        key = str(ch).lower()
        key = re.sub(r"^(smu|ch|channel)", "", key)
        if isinstance(terms, str):
            terms = [terms]
        out[key] = [str(t).upper() for t in terms]
    return out


def make_instrument(kind: str, world, name: str, wiring=None, bus: str = "gpib",
                    serial: str | None = None) -> EmulatedInstrument:
    """An emulated instrument of `kind` (see KINDS) on `world`, counted as source `name`."""
    k = kind.lower().replace("-", "_")
    m = re.fullmatch(r"keithley_?(26\d\d)b?", k)
    if m or k == "keithley2600b":
        model = (m.group(1) + "B") if m and m.group(1) != "2600" else "2602B"
        cls, extra = Keithley2600Emulator, {"model": model}
    elif k in ("keithley2400", "keithley_2400"):
        cls, extra = Keithley2400Emulator, {}
    elif k in ("keithley2450", "keithley_2450"):
        cls, extra = Keithley2450Emulator, {}
    else:
        m = re.fullmatch(r"keysight_?(b29\d\d)([ab]?)", k)
        if not m:
            raise ValueError(f"unknown instrument kind {kind!r}; known: keithley2601b..keithley2636b, "
                             f"keithley2600b (= 2602B), keithley2400, keithley2450, keysight_b2901a, "
                             f"keysight_b2902a, keysight_b2900 (= B2901A)")
        model = (m.group(1) if m.group(1) != "b2900" else "b2901").upper() + (m.group(2) or "a").upper()
        cls, extra = KeysightB2900Emulator, {"model": model}
    kw = {"serial": serial} if serial else {}
    return cls(world, name, normalize_wiring(cls, wiring), bus, **kw, **extra)
