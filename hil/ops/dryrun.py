"""Dry run: validate a whole job (every pulse it would apply) without touching hardware.

`DryRunCrossbar` carries the real station's geometry and safety limits, so every pulse goes
through the same checks, but reads, pulses and VMMs are answered by a shadow backend (a
simulated chip of the same geometry) so that closed-loop jobs such as write-verify follow a
realistic path. It tallies what would have been applied."""
from __future__ import annotations

from typing import Optional

import numpy as np

from hil.crossbar import AmplitudeResult, Crossbar, VmmResult
from hil.geometry import Cells, Geometry
from hil.limits import Op, SafetyLimits


class DryRunCrossbar(Crossbar):
    """Limits of the real station, answers from `shadow`, nothing sent to the hardware."""

    def __init__(self, geometry: Geometry, limits: SafetyLimits, shadow: Crossbar, station: str = "") -> None:
        if shadow.geometry.shape != geometry.shape:
            raise ValueError(f"shadow geometry {shadow.geometry.shape} differs from the station's {geometry.shape}")
        self.geometry, self.limits, self.shadow, self.station = geometry, limits, shadow, station
        self.capabilities = frozenset(c for c in shadow.capabilities if c != "program")
        self.tally = {op.value: {"pulses": 0, "max_v": 0.0, "max_v_gate": 0.0, "min_width_s": np.inf,
                                 "max_width_s": 0.0} for op in (Op.SET, Op.RESET, Op.FORM)}
        self.reads = 0

    def _read(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        self.reads += len(cells) * n_avg
        return self.shadow._read(cells, v_read, n_avg)

    def _pulse(self, cells: Cells, op: Op, v, v_gate, width) -> None:
        t = self.tally[op.value]
        t["pulses"] += len(cells)
        t["max_v"] = max(t["max_v"], float(np.max(np.abs(v))))
        t["max_v_gate"] = max(t["max_v_gate"], float(np.max(v_gate)))
        t["min_width_s"] = min(t["min_width_s"], float(np.min(width)))
        t["max_width_s"] = max(t["max_width_s"], float(np.max(width)))
        self.shadow._pulse(cells, op, v, v_gate, width)

    def _dc_sweep(self, cells: Cells, volts, v_gate, compliance_a, terminal: str, dwell_s: float) -> np.ndarray:
        forward = volts > 0 if terminal == "BL" else volts < 0
        for op, points in ((Op.SET, forward), (Op.RESET, ~forward & (volts != 0))):
            if points.any():
                t = self.tally[op.value]
                t["pulses"] += len(cells) * int(points.sum())
                t["max_v"] = max(t["max_v"], float(np.max(np.abs(volts[points]))))
                t["max_v_gate"] = max(t["max_v_gate"], float(np.max(v_gate[points])))
        self.reads += len(cells) * volts.size
        return self.shadow._dc_sweep(cells, volts, v_gate, compliance_a, terminal, dwell_s)

    def _vmm(self, pe, inputs, rows, cols, v_read, adc_full_scale_a) -> VmmResult:
        return self.shadow._vmm(pe, inputs, rows, cols, v_read, adc_full_scale_a)

    def _vmm_amplitude(self, pe, volts, rows, cols, adc_full_scale_a) -> AmplitudeResult:
        return self.shadow._vmm_amplitude(pe, volts, rows, cols, adc_full_scale_a)

    def now(self) -> float:
        return self.shadow.now()

    def advance(self, seconds: float) -> None:
        self.shadow.advance(seconds)

    def _read_stress(self, cells: Cells, n_reads: int, v_read: float, width_s: float) -> None:
        self.shadow._read_stress(cells, n_reads, v_read, width_s)

    def report(self) -> dict:
        """What the job would have applied, for printing and JSON."""
        tally = {op: {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in t.items()}
                 for op, t in self.tally.items() if t["pulses"]}
        return {"dry_run": True, "station": self.station, "pulses": tally, "reads": self.reads,
                "limits": self.limits.to_dict(), "estimated_station_seconds": self.now()}

    def _describe(self) -> dict:
        return {"backend": "dry-run", "station": self.station, "shadow": self.shadow.describe().get("backend")}


def open_dry_run(spec: str, seed: Optional[int] = None, **options) -> DryRunCrossbar:
    """Dry-run crossbar for station `spec` ('sim' or a station file), without connecting to it.

    The station file and `options` (params_path, ...) are validated exactly as a real run
    validates them (`hil.registry.check_station`: same loader, schema, channel checks and
    parameter files); then nothing is opened: no instrument, no emulated world."""
    from hil.registry import check_station, open_station
    checked = check_station(spec, seed=seed, **options)
    geometry, limits = checked.geometry, checked.limits
    shadow = open_station("sim", seed=0 if seed is None else seed, geometry=geometry)
    return DryRunCrossbar(geometry, limits, shadow, station=spec)
