"""Keysight B2900 series precision SMU (B2901A/B2902A/B2911A/...; SCPI), with its pulse mode.

Commands (B2900 SCPI reference): `:SOUR:FUNC:MODE VOLT`, `:SOUR:VOLT:RANG` /
`:SOUR:VOLT:RANG:AUTO ON`, `:SENS:FUNC "CURR"`, `:SENS:CURR:PROT` (compliance),
`:SENS:CURR:RANG` / `:SENS:CURR:RANG:AUTO ON`, `:SENS:CURR:NPLC`, `:SOUR:VOLT` (DC / pulse base),
`:OUTP ON|OFF`, `:MEAS:CURR?`, `:SYST:ERR?`; pulse mode `:SOUR:FUNC:SHAP PULS|DC`,
`:SOUR:PULS:DEL`, `:SOUR:PULS:WIDT`, `:SOUR:VOLT:TRIG` (pulse peak), `:TRIG:TRAN:COUN`,
`:INIT:TRAN`, `*OPC?`.

Pulse: the first pulse switches the channel to pulse shape (one message); each pulse is then one
transaction `:SOUR:VOLT:TRIG v;:SOUR:PULS:WIDT w;:INIT:TRAN;*OPC?` from the present base level
(set it with source_voltage, normally 0 V). Hardware pulse widths: 50 µs (B2901A/02A) to 100 s.
"""
from __future__ import annotations

from hil.errors import ConfigError

from .visa_instrument import ScpiSmu, Setting, in_range, in_set, range_or_auto

V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0, 1.5, 3.0)


class KeysightB2900(ScpiSmu):
    """Keysight B2900-series SMU over VISA (SCPI), channel 1."""

    MODEL_NAME = "Keysight B2900"
    MODEL_PATTERN = r"\bB29[0-9][0-9][AB]?\b"
    MEASURE_QUERY = ":MEAS:CURR?"
    MIN_PULSE_S = 50e-6
    MAX_PULSE_S = 100.0
    MAX_V = 21.0

    source_function = Setting(":SOUR:FUNC:MODE {}", in_set(("VOLT",)), "source function")
    source_v_range = Setting(":SOUR:VOLT:RANG {:g}", range_or_auto(V_RANGES, " V"), "source range (V)",
                             auto_command_fmt=":SOUR:VOLT:RANG:AUTO ON")
    measure_function = Setting(':SENS:FUNC "{}"', in_set(("CURR",)), "measure function")
    compliance_a = Setting(":SENS:CURR:PROT {:g}", in_range(1e-9, 3.03, " A"), "current compliance (A)")
    measure_i_range = Setting(":SENS:CURR:RANG {:g}", range_or_auto(I_RANGES, " A"), "current range (A)",
                              auto_command_fmt=":SENS:CURR:RANG:AUTO ON")
    nplc = Setting(":SENS:CURR:NPLC {:g}", in_range(4e-4, 100.0), "integration time (PLC)")
    level_v = Setting(":SOUR:VOLT {:g}", in_range(-210.0, 210.0, " V"), "DC level / pulse base (V)")
    pulse_peak_v = Setting(":SOUR:VOLT:TRIG {:g}", in_range(-210.0, 210.0, " V"), "pulse peak (V)")
    pulse_width_s = Setting(":SOUR:PULS:WIDT {:g}", in_range(50e-6, 100.0, " s"), "pulse width (s)")

    CONFIGURE_ORDER = ("source_function", "source_v_range", "measure_function", "compliance_a",
                       "measure_i_range", "nplc")

    def __init__(self, *args, **kwargs) -> None:
        self._pulse_shape = False
        super().__init__(*args, **kwargs)

    def pulse(self, v: float, width_s: float) -> None:
        """One hardware pulse to `v` volts of `width_s` seconds from the present base level
        (output must be on)."""
        v = self._check_level(v)
        w = self._check_width(width_s)
        self._require_configured(None, "pulse()")
        if not self._output_on:
            raise ConfigError(f"{self.where()}: switch the output on (base level 0 V) before pulse()")
        msg = ";".join([self.command("pulse_peak_v", v), self.command("pulse_width_s", w),
                        ":INIT:TRAN", "*OPC?"])
        if not self._pulse_shape:
            self.write(":SOUR:FUNC:SHAP PULS;:SOUR:PULS:DEL 0;:TRIG:TRAN:COUN 1")
            self._pulse_shape = True
        self.query(msg, idempotent=False)

    def _safe_off_commands(self) -> list[str]:
        cmds = [self.command("level_v", 0.0), self.OUTPUT_OFF]
        if self._pulse_shape:
            cmds.append(":SOUR:FUNC:SHAP DC")
        return cmds

    def _raw_safe_off(self) -> None:
        super()._raw_safe_off()
        self._pulse_shape = False
