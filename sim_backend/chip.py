"""SimulatedCrossbar: implements hil's Crossbar contract directly on the device physics."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from hil.crossbar import Crossbar, VmmResult
from hil.errors import ConfigError, DataError
from hil.geometry import YAO, Cells, Geometry
from hil.limits import Op, SafetyLimits
from hil.vmm import adc_convert, adc_lsb, bit_planes, shift_add

from .device import US, DeviceArray
from .params import DeviceParams

log = logging.getLogger(__name__)
STATE_FORMAT = "memristor-hil-sim-chip"


class SimulatedCrossbar(Crossbar):
    """A seeded, simulated chip. Optional `state_path` persists the chip between processes
    (like a physical chip keeps its state), written atomically after every programming call."""

    capabilities = frozenset({"advance", "read_stress"})

    def __init__(self, geometry: Geometry = YAO, params: Optional[DeviceParams] = None, seed: int = 0,
                 limits: Optional[SafetyLimits] = None, state_path=None) -> None:
        self.geometry = geometry
        self.params = params or DeviceParams()
        self.limits = limits or SafetyLimits()
        self.seed = int(seed)
        self.device = DeviceArray(geometry.n_cells, self.params, self.seed)
        self._t = 0.0
        self.counters = {"reads": 0, "pulses": 0, "vmm_calls": 0, "vmm_slots": 0}
        self.state_path = Path(state_path) if state_path else None
        if self.state_path and self.state_path.exists():
            self.load_state(self.state_path)

    # ---- contract -------------------------------------------------------------------
    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (drift and relaxation happen on it)."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance() needs a non-negative number of seconds, got {seconds}")
        self._t += float(seconds)
        self._autosave()

    def _read(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        idx = cells.flat(self.geometry)
        tp = self.params.timing
        self._t += tp.call_overhead_s + len(cells) * n_avg * tp.read_cell_s
        g = self.device.read(idx, self._t, n_avg)
        self.device.add_dose(idx, n_avg, v_read, tp.read_cell_s)
        self.counters["reads"] += len(cells) * n_avg
        return g

    def _pulse(self, cells: Cells, op: Op, v, v_gate, width) -> None:
        idx = cells.flat(self.geometry)
        if np.unique(idx).size != idx.size:
            raise ValueError("pulse(): a cell appears twice in one call; apply the pulses in separate calls")
        tp = self.params.timing
        self._t += tp.call_overhead_s + float(np.sum(width)) + len(cells) * tp.pulse_overhead_s
        fn = {Op.SET: self.device.set_pulse, Op.RESET: self.device.reset_pulse, Op.FORM: self.device.form_pulse}[op]
        fn(idx, v, v_gate, width, self._t)
        self.counters["pulses"] += len(cells)
        self._autosave()

    def _vmm(self, pe, inputs, rows, cols, v_read, adc_full_scale_a) -> VmmResult:
        g = self.geometry
        adc = self.params.adc
        fs = adc.full_scale_a if adc_full_scale_a is None else adc_full_scale_a
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        idx = ((pe * g.rows + rr) * g.cols + cc).ravel()
        G = self.device.conductance(idx, self._t).reshape(rr.shape)
        r_seg = self.params.lines.r_segment_ohm
        if r_seg > 0:
            G = G / (1.0 + G * r_seg * (rr + cc + 2))
        sig2 = self.device.read_noise_sigma(G) ** 2
        planes = bit_planes(inputs)                                  # (8, B, R)
        nb, batch, _ = planes.shape
        aug = np.concatenate([G, sig2], axis=1).astype(np.float32)   # one matmul for mean and variance
        out = planes.reshape(nb * batch, -1) @ aug
        ncol = cols.size
        mean = out[:, :ncol]
        std = np.sqrt(np.maximum(out[:, ncol:], 0.0))
        noise = self.device.rng.standard_normal(mean.shape, dtype=np.float32)
        currents = v_read * (mean + std * noise)
        codes, sat = adc_convert(currents, fs, adc.bits)
        codes = codes.reshape(nb, batch, ncol)
        sat = sat.reshape(nb, batch, ncol).any(axis=0)
        ones_per_row = planes.sum(axis=(0, 1))                      # read pulses seen by each row
        self.device.add_dose(idx, np.repeat(ones_per_row, ncol), v_read, self.params.timing.slot_s)
        tp = self.params.timing
        self._t += tp.call_overhead_s + nb * batch * (tp.slot_s + tp.slot_overhead_s)
        self.counters["vmm_calls"] += 1
        self.counters["vmm_slots"] += nb * batch
        return VmmResult(codes=shift_add(codes), lsb_a=adc_lsb(fs, adc.bits), v_read=v_read,
                         saturated=sat, adc_bits=adc.bits, input_bits=nb)

    def read_stress(self, cells: Cells, n_reads: int, v_read: Optional[float] = None,
                    width_s: float = 50e-9) -> None:
        """Apply `n_reads` read pulses to every cell of the selection in parallel (no readout)."""
        self._check_open()
        cells = self._cells(cells)
        v = self.v_read_default if v_read is None else float(v_read)
        self.limits.check(Op.READ, v, 0.0, width_s)
        if int(n_reads) < 0:
            raise ValueError("n_reads must be >= 0")
        self.device.add_dose(cells.flat(self.geometry), int(n_reads), v, width_s)
        self._t += int(n_reads) * (width_s + self.params.timing.slot_overhead_s + 1e-7)
        self._autosave()

    def _describe(self) -> dict:
        return {"backend": "sim", "model": "SimulatedCrossbar", "seed": self.seed,
                "params": self.params.to_dict(), "state_path": str(self.state_path or ""),
                "clock_s": self._t, "counters": dict(self.counters)}

    def _close(self) -> None:
        self._autosave()

    # ---- oracle access for experiments and tests (not available on hardware) -----------
    def true_conductance(self, cells: Optional[Cells] = None) -> np.ndarray:
        """Noise-free conductance (S) of cells (default all, shaped like the geometry)."""
        if cells is None:
            return self.device.conductance(np.arange(self.geometry.n_cells), self._t).reshape(self.geometry.shape)
        return self.device.conductance(cells.validate(self.geometry).flat(self.geometry), self._t)

    def stuck_mask(self) -> np.ndarray:
        return (self.device.stuck != 0).reshape(self.geometry.shape)

    # ---- persistence ------------------------------------------------------------------
    def save_state(self, path) -> Path:
        """Write the whole chip state atomically (temp file + rename)."""
        path = Path(path)
        meta = {"format": STATE_FORMAT, "version": 1, "seed": self.seed, "clock_s": self._t,
                "geometry": self.geometry.to_dict(), "params": self.params.to_dict(),
                "rng": self.device.rng.bit_generator.state, "counters": self.counters}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **self.device.state())
        os.replace(tmp, path)
        return path

    def load_state(self, path) -> None:
        path = Path(path)
        try:
            with np.load(path) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: z[k] for k in self.device.STATE_FIELDS}
        except Exception as e:
            raise DataError(f"simulated chip state {path} is unreadable ({e}); delete it to start a fresh chip") from None
        if meta.get("format") != STATE_FORMAT:
            raise DataError(f"{path} is not a simulated chip state file")
        if Geometry.from_dict(meta["geometry"]).shape != self.geometry.shape:
            raise ConfigError(f"chip state {path} has geometry {meta['geometry']}, station has {self.geometry.to_dict()}")
        self.params = DeviceParams.from_dict(meta["params"])
        self.device.p = self.params
        self.seed = int(meta["seed"])
        self._t = float(meta["clock_s"])
        self.counters.update(meta.get("counters", {}))
        self.device.load_state(arrays, meta["rng"])

    def _autosave(self) -> None:
        if self.state_path is not None:
            self.save_state(self.state_path)
