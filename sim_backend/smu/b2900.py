"""Emulated Keysight B2900 SMU (SCPI subset the driver uses), with pulse mode."""
from __future__ import annotations

from .base import InstrumentError
from .scpi import ScpiSmu, check_range, fmt, parse_choice, parse_number


class KeysightB2900Emulator(ScpiSmu):
    """`:SOUR:FUNC:MODE VOLT`, `:SENS:CURR:PROT`, pulse shape (`:SOUR:FUNC[:SHAP] PULS`,
    `:SOUR:VOLT:TRIG` peak, `:SOUR:PULS:WIDT`, `:SOUR:PULS:DEL`, `:TRIG:TRAN:COUN`,
    `:INIT[:IMM]:TRAN` runs the pulse(s) on the physics)."""

    IDN = "Keysight Technologies,{model},{serial},3.4.2011.5100"
    MODEL = "B2901A"
    V_RANGES = (0.2, 2.0, 20.0, 200.0)
    I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0, 1.5, 3.0)
    MAX_I = 3.03
    NPLC_RANGE = (4e-4, 100.0)
    NO_ERROR = '+0,"No error"'
    MIN_WIDTH_S = 50e-6

    def __init__(self, *args, model: str = "B2901A", **kwargs) -> None:
        self.MODEL = model
        super().__init__(*args, **kwargs)
        self.IDN = self.IDN.format(model=model, serial=self.serial)

    def _new_channel(self, ch):
        c = super()._new_channel(ch)
        c.extra.update(shape="DC", peak_v=0.0, width_s=1e-3, pulse_delay_s=0.0, tran_count=1)
        return c

    def handlers(self):
        h = super().handlers()
        h.update({
            ("SOUR", "FUNC", "MODE"): self._func_mode,
            ("SOUR", "FUNC"): self._shape,
            ("SOUR", "FUNC", "SHAP"): self._shape,
            ("SENS", "CURR", "PROT"): self._compliance,
            ("SOUR", "VOLT", "TRIG"): self._peak,
            ("SOUR", "PULS", "WIDT"): self._width,
            ("SOUR", "PULS", "DEL"): self._pulse_delay,
            ("TRIG", "TRAN", "COUN"): self._tran_count,
            ("INIT", "TRAN"): self._init_tran,
            ("INIT",): self._init_tran,
        })
        return h

    def _func_mode(self, c, arg, query):
        if query:
            return "VOLT"
        parse_choice(arg, {"VOLT": ("VOLT", "VOLTAGE")})
        return None

    def _shape(self, c, arg, query):
        if query:
            return c.extra["shape"]
        c.extra["shape"] = parse_choice(arg, {"DC": ("DC",), "PULS": ("PULS", "PULSE")})
        return None

    def _peak(self, c, arg, query):
        if query:
            return fmt(c.extra["peak_v"])
        v = parse_number(arg)
        self._check_level_in_range(c, v)
        c.extra["peak_v"] = v
        return None

    def _width(self, c, arg, query):
        if query:
            return fmt(c.extra["width_s"])
        c.extra["width_s"] = check_range(parse_number(arg), self.MIN_WIDTH_S, 100.0)
        return None

    def _pulse_delay(self, c, arg, query):
        if query:
            return fmt(c.extra["pulse_delay_s"])
        c.extra["pulse_delay_s"] = check_range(parse_number(arg), 0.0, 99999.9)
        return None

    def _tran_count(self, c, arg, query):
        if query:
            return str(c.extra["tran_count"])
        n = parse_number(arg)
        if n != int(n):
            raise InstrumentError(-104, "Data type error")
        c.extra["tran_count"] = int(check_range(n, 1, 100000))
        return None

    def _init_tran(self, c, arg, query):
        if query:
            raise InstrumentError(-113, "Undefined header")
        if not c.on:
            raise InstrumentError(-221, "Settings conflict; output is off")
        if c.extra["shape"] != "PULS":
            return None          # DC transient: level already applied
        base = c.level_v
        for _ in range(c.extra["tran_count"]):
            self.world.spend(c.extra["pulse_delay_s"])
            self.set_level(c, c.extra["peak_v"])
            try:
                self.hold(c.extra["width_s"])
            finally:
                self.set_level(c, base)
        return None
