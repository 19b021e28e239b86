"""Emulated Keithley 2450 SourceMeter (SCPI 2450 dialect subset the driver uses)."""
from __future__ import annotations

from .scpi import ScpiSmu


class Keithley2450Emulator(ScpiSmu):
    """`:SOUR:VOLT:ILIM` compliance, `:MEAS:CURR?` / `:READ?` with the source delay
    `:SOUR:VOLT:DEL` held at the level before the measurement."""

    IDN = "KEITHLEY INSTRUMENTS,MODEL 2450,{serial},1.7.3c"
    V_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
    I_RANGES = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.IDN = self.IDN.format(serial=self.serial)

    def handlers(self):
        h = super().handlers()
        h.update({
            ("SOUR", "FUNC"): self._src_func,
            ("SOUR", "VOLT", "ILIM"): self._compliance,
            ("SOUR", "VOLT", "DEL"): self._src_delay,
            ("READ",): self._meas_curr,
        })
        return h

