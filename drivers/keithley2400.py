"""Keithley 2400-series SourceMeter (SCPI): voltage source, current measure, pulses by
source delay with automatic output-off.

Commands (2400 reference manual, SCPI): `:SOUR:FUNC VOLT`, `:SOUR:VOLT:MODE FIX`,
`:SOUR:VOLT:RANG`, `:SENS:FUNC "CURR"`, `:SENS:CURR:PROT` (compliance), `:SENS:CURR:RANG`,
`:SENS:CURR:NPLC`, `:FORM:ELEM CURR`, `:SOUR:VOLT:LEV`, `:OUTP ON|OFF`, `:READ?`,
`:SOUR:DEL`, `:SOUR:CLE:AUTO ON|OFF`, `:SYST:ERR?`.

Pulse (best effort): with auto output-off (`:SOUR:CLE:AUTO ON`) one `:READ?` turns the output
on at the pulse level, waits the source delay, measures for NPLC/line-frequency and switches
off; the width is source delay + aperture, so the shortest pulse is about one aperture
(0.01 PLC = 0.2 ms at 50 Hz); MIN_PULSE_S = 1 ms is the documented floor.
"""
from __future__ import annotations


from hil.errors import ConfigError

from .visa_instrument import ScpiSmu, Setting, in_range, in_set, range_or_auto

V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)


class Keithley2400(ScpiSmu):
    """Keithley 2400 SourceMeter over VISA (SCPI)."""

    MODEL_NAME = "Keithley 2400"
    MODEL_PATTERN = r"MODEL 24(00|01|10|20|25|30|40)\b"
    MEASURE_QUERY = ":READ?"
    MIN_PULSE_S = 1e-3
    MAX_PULSE_S = 10.0
    MAX_V = 21.0

    source_function = Setting(":SOUR:FUNC {}", in_set(("VOLT",)), "source function")
    source_v_range = Setting(":SOUR:VOLT:RANG {:g}", range_or_auto(V_RANGES, " V"), "source range (V)",
                             auto_command_fmt=":SOUR:VOLT:RANG:AUTO ON")
    measure_function = Setting(':SENS:FUNC "{}"', in_set(("CURR",)), "measure function")
    compliance_a = Setting(":SENS:CURR:PROT {:g}", in_range(1e-9, 1.05, " A"), "current compliance (A)")
    measure_i_range = Setting(":SENS:CURR:RANG {:g}", range_or_auto(I_RANGES, " A"), "current range (A)",
                              auto_command_fmt=":SENS:CURR:RANG:AUTO ON")
    nplc = Setting(":SENS:CURR:NPLC {:g}", in_range(0.01, 10.0), "integration time (PLC)")
    level_v = Setting(":SOUR:VOLT:LEV {:g}", in_range(-210.0, 210.0, " V"), "DC source level (V)")
    source_delay_s = Setting(":SOUR:DEL {:g}", in_range(0.0, 999.9999, " s"), "source delay (s)")

    CONFIGURE_ORDER = ("source_function", "source_v_range", "measure_function", "compliance_a",
                       "measure_i_range", "nplc")
    CONFIGURE_PREFIX = ()
    CONFIGURE_SUFFIX = (":SOUR:VOLT:MODE FIX", ":FORM:ELEM CURR")

    def pulse(self, v: float, width_s: float) -> float:
        """One pulse of `v` volts lasting about `width_s` (source delay + one aperture); returns
        the current measured at the end of the pulse (A). The output state before the call is
        restored afterwards (level 0 V)."""
        v = self._check_level(v)
        w = self._check_width(width_s)
        self._require_configured(None, "pulse()")
        ap = self.aperture_s()
        if w < ap:
            raise ConfigError(f"{self.where()}: pulse width {w:g} s is shorter than the measurement "
                              f"aperture {ap:g} s (nplc {self.nplc}); lower nplc; nothing was sent")
        was_on = self._output_on
        setup = [self.OUTPUT_OFF, self.command("level_v", v), self.command("source_delay_s", w - ap),
                 ":SOUR:CLE:AUTO ON"]
        self.write(";".join(setup))
        self._output_on = False
        try:
            i = self.query_float(":READ?", idempotent=False)
        finally:
            restore = [":SOUR:CLE:AUTO OFF", self.command("source_delay_s", 0.0), self.command("level_v", 0.0)]
            if was_on:
                restore.append(self.OUTPUT_ON)
            self.write(";".join(restore))
            self._output_on = was_on
        return self._checked_reading(i, ":READ?")

    def _safe_off_commands(self) -> list[str]:
        return [":SOUR:CLE:AUTO OFF", self.command("level_v", 0.0), self.OUTPUT_OFF]
