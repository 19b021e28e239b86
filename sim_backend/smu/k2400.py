"""Emulated Keithley 2400 SourceMeter (SCPI subset the driver uses, real syntax)."""
from __future__ import annotations

from .base import Channel, InstrumentError
from .scpi import NAN_READING, ScpiSmu, fmt, parse_bool, parse_choice


class Keithley2400Emulator(ScpiSmu):
    """`:READ?` (with `:SOUR:CLE:AUTO ON` the output switches on for the source delay + one
    aperture, then off: a pulse), `:SENS:CURR:PROT` compliance, `:FORM:ELEM CURR`."""

    IDN = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,{serial},C32   Oct  4 2010 14:20:11/A02  /S/K"
    V_RANGES = (0.2, 2.0, 20.0, 200.0)
    I_RANGES = (1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.IDN = self.IDN.format(serial=self.serial)

    def _new_channel(self, ch: str) -> Channel:
        c = super()._new_channel(ch)
        c.extra.update(auto_clear=False, elements="VOLT,CURR,RES,TIME,STAT")
        return c

    def handlers(self):
        h = super().handlers()
        h.update({
            ("SOUR", "FUNC"): self._src_func,
            ("SOUR", "VOLT", "MODE"): self._volt_mode,
            ("SENS", "CURR", "PROT"): self._compliance,
            ("SOUR", "DEL"): self._src_delay,
            ("SOUR", "CLE", "AUTO"): self._auto_clear,
            ("FORM", "ELEM"): self._elements,
            ("READ",): self._read,
        })
        return h

    def _volt_mode(self, c, arg, query):
        if query:
            return "FIX"
        parse_choice(arg, {"FIX": ("FIX", "FIXED")})
        return None

    def _auto_clear(self, c, arg, query):
        if query:
            return "1" if c.extra["auto_clear"] else "0"
        c.extra["auto_clear"] = parse_bool(arg)
        return None

    def _elements(self, c, arg, query):
        if query:
            return c.extra["elements"]
        els = [e.strip().upper() for e in arg.split(",") if e.strip()]
        if not els or any(e not in ("VOLT", "CURR", "RES", "TIME", "STAT") for e in els):
            raise InstrumentError(-224, "Illegal parameter value")
        c.extra["elements"] = ",".join(els)
        return None

    def _read(self, c, arg, query):
        if not query:
            raise InstrumentError(-113, "Undefined header")
        if c.extra["auto_clear"] and not c.on:
            self.set_on(c, True)
            try:
                out = self.reading(c)
            finally:
                self.set_on(c, False)
        else:
            out = self.reading(c)
        if out == NAN_READING:
            return out
        i = float(out)
        values = {"VOLT": c.level_v, "CURR": i, "RES": 9.91e37, "TIME": self.world.now(), "STAT": 0.0}
        return ",".join(fmt(values[e]) for e in c.extra["elements"].split(","))
