"""Keithley 2450 SourceMeter (SCPI, 2450 dialect): voltage source with `:SOUR:VOLT:ILIM`
compliance, `:MEAS:CURR?` readings, best-effort pulses by source delay.

Commands (2450 reference manual): `:SOUR:FUNC VOLT`, `:SOUR:VOLT:RANG` / `:SOUR:VOLT:RANG:AUTO ON`,
`:SOUR:VOLT:ILIM`, `:SENS:FUNC "CURR"`, `:SENS:CURR:RANG` / `:SENS:CURR:RANG:AUTO ON`,
`:SENS:CURR:NPLC`, `:SOUR:VOLT`, `:SOUR:VOLT:DEL`, `:OUTP ON|OFF`, `:MEAS:CURR?`, `:SYST:ERR?`.

Pulse (best effort): with the output on at 0 V, one message sets the source delay and the
pulse level and asks `:MEAS:CURR?` — the instrument applies the level, waits the source delay
and measures for one aperture; the next message brings the level back to 0 V. Width = source
delay + aperture (+ one bus round trip, not controlled); MIN_PULSE_S = 1 ms.
"""
from __future__ import annotations

from hil.errors import ConfigError

from .visa_instrument import ScpiSmu, Setting, in_range, in_set, range_or_auto

V_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)


class Keithley2450(ScpiSmu):
    """Keithley 2450 SourceMeter over VISA (SCPI)."""

    MODEL_NAME = "Keithley 2450"
    MODEL_PATTERN = r"MODEL 2450\b"
    MEASURE_QUERY = ":MEAS:CURR?"
    MIN_PULSE_S = 1e-3
    MAX_PULSE_S = 10.0
    MAX_V = 21.0

    source_function = Setting(":SOUR:FUNC {}", in_set(("VOLT",)), "source function")
    source_v_range = Setting(":SOUR:VOLT:RANG {:g}", range_or_auto(V_RANGES, " V"), "source range (V)",
                             auto_command_fmt=":SOUR:VOLT:RANG:AUTO ON")
    compliance_a = Setting(":SOUR:VOLT:ILIM {:g}", in_range(1e-9, 1.05, " A"), "current limit (A)")
    measure_function = Setting(':SENS:FUNC "{}"', in_set(("CURR",)), "measure function")
    measure_i_range = Setting(":SENS:CURR:RANG {:g}", range_or_auto(I_RANGES, " A"), "current range (A)",
                              auto_command_fmt=":SENS:CURR:RANG:AUTO ON")
    nplc = Setting(":SENS:CURR:NPLC {:g}", in_range(0.01, 10.0), "integration time (PLC)")
    level_v = Setting(":SOUR:VOLT {:g}", in_range(-210.0, 210.0, " V"), "DC source level (V)")
    source_delay_s = Setting(":SOUR:VOLT:DEL {:g}", in_range(0.0, 10000.0, " s"), "source delay (s)")

    CONFIGURE_ORDER = ("source_function", "source_v_range", "compliance_a", "measure_function",
                       "measure_i_range", "nplc")

    def pulse(self, v: float, width_s: float) -> float:
        """One pulse of `v` volts for about `width_s` from 0 V with the output on; returns the
        current measured at its end (A)."""
        v = self._check_level(v)
        w = self._check_width(width_s)
        self._require_configured(None, "pulse()")
        if not self._output_on:
            raise ConfigError(f"{self.where()}: switch the output on (at 0 V) before pulse()")
        ap = self.aperture_s()
        if w < ap:
            raise ConfigError(f"{self.where()}: pulse width {w:g} s is shorter than the measurement "
                              f"aperture {ap:g} s (nplc {self.nplc}); lower nplc; nothing was sent")
        msg = ";".join([self.command("source_delay_s", w - ap), self.command("level_v", v), self.MEASURE_QUERY])
        try:
            i = self.query_float(msg, idempotent=False)
        finally:
            self.write(";".join([self.command("level_v", 0.0), self.command("source_delay_s", 0.0)]))
        return self._checked_reading(i, self.MEASURE_QUERY)
