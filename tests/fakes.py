"""Small fake crossbars for unit tests of the hil core (no simulator, no instruments)."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from hil.crossbar import AmplitudeResult, Crossbar, VmmResult, bipolar_adc_lsb
from hil.geometry import Cells, Geometry
from hil.limits import Op, SafetyLimits


class ToyCrossbar(Crossbar):
    """A tiny deterministic-ish 1T1R array with numpy state.

    - SET: ceiling = g_top * (v_gate - 0.8) / 1.2 (clipped at >= 0); if ceiling > G,
      G += set_gain * (ceiling - G), plus seeded Gaussian noise of `noise_s`.
    - RESET: G -= reset_gain_s_per_v * (v - 0.7) (v above 0.7 V only), plus noise, floor 0.05 µS.
    - FORM: an unformed cell becomes ~`formed_g_s` when v > `form_v`; SET/RESET do nothing
      to unformed cells.
    - cells listed in `stuck` (flat indices) never change.
    - amplitude VMM: ideal sum_i V_i G_ij through an 8-bit bipolar ADC (default full scale 100 µA).
    Every public-API call is recorded in `calls`; `n_read` / `n_pulse` count backend calls.
    `now()` advances by the pulse widths (cells pulsed one after another) and 1 µs per read.
    """

    capabilities = frozenset()

    def __init__(self, geometry: Geometry = Geometry(1, 4, 4, "toy"), *, g0_s=5e-6,
                 stuck: Iterable[int] = (), unformed: Iterable[int] = (), seed: int = 0,
                 noise_s: float = 0.02e-6, read_noise_s: float = 0.0, set_gain: float = 0.5,
                 reset_gain_s_per_v: float = 2e-6, g_top_s: float = 20e-6, form_v: float = 2.8,
                 formed_g_s: float = 5e-6, limits: Optional[SafetyLimits] = None) -> None:
        self.geometry = geometry
        self.limits = limits or SafetyLimits()
        n = geometry.n_cells
        self.g = np.broadcast_to(np.asarray(g0_s, dtype=float), (n,)).copy()
        self.stuck = np.zeros(n, dtype=bool)
        self.stuck[list(stuck)] = True
        self.unformed = np.zeros(n, dtype=bool)
        self.unformed[list(unformed)] = True
        self.g[self.unformed] = 0.1e-6
        self.rng = np.random.default_rng(seed)
        self.noise_s, self.read_noise_s = noise_s, read_noise_s
        self.set_gain, self.reset_gain = set_gain, reset_gain_s_per_v
        self.g_top_s, self.form_v, self.formed_g_s = g_top_s, form_v, formed_g_s
        self.t = 0.0
        self.calls: list = []
        self.n_read = 0
        self.n_pulse = 0

    # ---- hooks ---------------------------------------------------------------------------
    def _read(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        self.n_read += 1
        flat = cells.flat(self.geometry)
        self.calls.append(("read", flat.copy(), n_avg))
        self.t += 1e-6 * n_avg
        g = self.g[flat]
        if self.read_noise_s:
            g = g + self.rng.normal(0, self.read_noise_s, (n_avg, flat.size)).mean(axis=0)
        return g

    def _pulse(self, cells: Cells, op: Op, v, v_gate, width) -> None:
        self.n_pulse += 1
        flat = cells.flat(self.geometry)
        self.calls.append(("pulse", op, flat.copy(), v.copy(), v_gate.copy(), width.copy()))
        self.t += float(np.sum(width))
        g = self.g[flat]
        free = ~self.stuck[flat]
        formed = ~self.unformed[flat]
        noise = self.rng.normal(0, self.noise_s, flat.size)
        if op is Op.SET:
            ceiling = np.clip(self.g_top_s * (v_gate - 0.8) / 1.2, 0, None)
            up = free & formed & (ceiling > g)
            g = np.where(up, g + self.set_gain * (ceiling - g) + noise, g)
        elif op is Op.RESET:
            dn = free & formed & (v > 0.7)
            g = np.where(dn, np.maximum(g - self.reset_gain * (v - 0.7) + noise, 0.05e-6), g)
        elif op is Op.FORM:
            fire = free & ~formed & (v > self.form_v + 1e-9)
            g = np.where(fire, self.formed_g_s + noise, g)
            self.unformed[flat[fire]] = False
        self.g[flat] = g

    def _vmm(self, pe, inputs, rows, cols, v_read, adc_full_scale_a) -> VmmResult:
        raise NotImplementedError("ToyCrossbar has no VMM")

    def _vmm_amplitude(self, pe, volts, rows, cols, adc_full_scale_a) -> AmplitudeResult:
        flat = Cells.block(pe, rows, cols, self.geometry).flat(self.geometry)
        self.calls.append(("vmm_amplitude", flat.copy(), volts.copy(), adc_full_scale_a))
        lsb = bipolar_adc_lsb(100e-6 if adc_full_scale_a is None else adc_full_scale_a, 8)
        q = np.rint(volts @ self.g[flat].reshape(len(rows), len(cols)) / lsb)
        return AmplitudeResult(codes=np.clip(q, -127, 127).astype(np.int64), lsb_a=lsb,
                               saturated=np.abs(q) >= 127, adc_bits=8)

    def now(self) -> float:
        return self.t

    # ---- test helpers ----------------------------------------------------------------------
    def pulses_of(self, flat_index: int):
        """[(op, v, v_gate, width)] applied to one cell, in order."""
        out = []
        for c in self.calls:
            if c[0] == "pulse":
                hit = np.flatnonzero(c[2] == flat_index)
                for i in hit:
                    out.append((c[1], float(c[3][i]), float(c[4][i]), float(c[5][i])))
        return out

    def touched(self) -> set:
        """Flat indices of every cell read or pulsed."""
        s = set()
        for c in self.calls:
            s.update(int(x) for x in c[2 if c[0] == "pulse" else 1])
        return s


class RecordingProgramCrossbar(ToyCrossbar):
    """A ToyCrossbar that advertises the `program` capability and records how it was called."""

    capabilities = frozenset({"program"})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.program_calls: list = []

    def _program(self, cells, targets_s, lo_s, hi_s, policy, *, on_step=None, progress=None, cancel=None):
        from hil.ops.write_verify import write_verify_host
        self.program_calls.append({"cells": cells, "targets_s": np.array(targets_s), "lo_s": np.array(lo_s),
                                   "hi_s": np.array(hi_s), "policy": policy})
        return write_verify_host(self, cells, targets_s, lo_s, hi_s, policy,
                                 on_step=on_step, progress=progress, cancel=cancel)
