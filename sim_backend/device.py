"""Vectorized, seeded physics of a chip of 1T1R cells (numpy arrays over every cell).

State is kept per cell in flat arrays. The conductance a read would see at time t is

    G(t) = g0 + relaxation(t - t_prog) + drift(t - t_prog) + disturb(dose)

where g0 is the state right after the last programming pulse. A programming pulse first
collapses the present G(t) into g0, then applies a stochastic, state-dependent step,
and restarts the relaxation/drift clocks and the read-disturb dose of that cell.
Conductances are in siemens here; parameters are in µS (see params.py).

One model covers both switching regimes through parameters: gradual, state-dependent steps
(the Yao default) and the abrupt, gate-limited SET onto the compliance conductance with a
full RESET and a per-event write noise (`snap`, `write_noise`: the Wang 2019 preset).
"""
from __future__ import annotations

import numpy as np

from .params import DeviceParams

S_PER_US = 1e-6
STUCK_NONE, STUCK_OFF, STUCK_ON = 0, 1, 2


class DeviceArray:
    """Physics of `n` cells. All methods take flat cell indices and act on all at once.
    `shape` (PEs, rows, columns; flat index = (pe·rows + row)·cols + col) places the dead
    lines; without it the parameters must not ask for dead lines."""

    def __init__(self, n: int, params: DeviceParams, seed: int, shape=None) -> None:
        self.n = int(n)
        self.p = params
        self.shape = tuple(shape) if shape is not None else None
        if self.shape is not None and int(np.prod(self.shape)) != self.n:
            raise ValueError(f"DeviceArray shape {self.shape} does not hold {self.n} cells")
        ss = np.random.SeedSequence(int(seed))
        fab, self._dyn_seed = ss.spawn(2)
        self.rng = np.random.default_rng(self._dyn_seed)
        self._manufacture(np.random.default_rng(fab))
        self._changed: list[np.ndarray] | None = []     # None: too many to list, treat all as changed
        self._n_changed = 0

    # ---- manufacture: device-to-device variation and defects -------------------------
    def _manufacture(self, rng: np.random.Generator) -> None:
        p, n = self.p, self.n
        self.set_scale = np.exp(rng.normal(0.0, p.variation.set_sigma_ln, n))
        self.reset_scale = np.exp(rng.normal(0.0, p.variation.reset_sigma_ln, n))
        self.vth = rng.normal(p.compliance.vth_v, p.compliance.vth_sigma_v, n)
        self.v_form = rng.normal(p.form.v_form_mean, p.form.v_form_sigma, n)
        self.disturb_scale = np.exp(rng.normal(0.0, p.disturb.sigma_ln, n))
        u = rng.random(n)
        self.stuck = np.zeros(n, np.int8)
        self.stuck[u < p.defects.stuck_off_rate] = STUCK_OFF
        self.stuck[(u >= p.defects.stuck_off_rate) & (u < p.defects.stuck_off_rate + p.defects.stuck_on_rate)] = STUCK_ON
        lo, hi = p.defects.stuck_on_g_us
        self.g_stuck = np.where(self.stuck == STUCK_ON, rng.uniform(lo, hi, n), p.form.unformed_g_us) * S_PER_US
        if p.initial.state == "formed":
            self.formed = self.stuck != STUCK_OFF
            self.g0 = rng.uniform(p.initial.g_low_us, p.initial.g_high_us, n) * S_PER_US
        else:
            self.formed = self.stuck == STUCK_ON
            self.g0 = np.full(n, p.form.unformed_g_us * S_PER_US)
        self.g0 = np.where(self.formed, self.g0, p.form.unformed_g_us * S_PER_US)
        self.t_prog = np.full(n, -1e9)       # programmed long ago: fully relaxed
        self.xi_relax = rng.standard_normal(n)
        self.xi_drift = rng.standard_normal(n)
        self.dose = np.zeros(n)
        if p.defects.dead_row_rate > 0 or p.defects.dead_col_rate > 0:
            self._kill_lines(rng)

    def _kill_lines(self, rng: np.random.Generator) -> None:
        """Open rows and columns (drawn per PE): their cells never form and read as unformed."""
        if self.shape is None:
            raise ValueError("dead rows/columns need the chip shape (DeviceArray(..., shape=(n_pe, rows, cols)))")
        n_pe, rows, cols = self.shape
        d = self.p.defects
        dead_rows = rng.random((n_pe, rows)) < d.dead_row_rate
        dead_cols = rng.random((n_pe, cols)) < d.dead_col_rate
        dead = (dead_rows[:, :, None] | dead_cols[:, None, :]).ravel()
        g_open = self.p.form.unformed_g_us * S_PER_US
        self.stuck[dead] = STUCK_OFF
        self.g_stuck[dead] = g_open
        self.formed[dead] = False
        self.g0[dead] = g_open

    # ---- the conductance a read sees --------------------------------------------------
    def conductance(self, idx: np.ndarray, t: float) -> np.ndarray:
        """Noise-free conductance (S) of cells `idx` at time t."""
        p = self.p
        g0 = self.g0[idx]
        dt = np.maximum(t - self.t_prog[idx], 0.0)
        r = p.relaxation
        frac = np.clip(np.log1p(dt / r.tau_s) / np.log1p(r.full_s / r.tau_s), 0.0, 1.0)
        relax = (r.mean_rel * g0 + np.hypot(r.sigma_rel * g0, r.sigma_abs_us * S_PER_US) * self.xi_relax[idx]) * frac
        d = p.drift
        decades = np.log10(1.0 + dt / d.t0_s)
        drift = (-d.pull_per_decade * (g0 - d.g_mid_us * S_PER_US) * decades
                 + (d.sigma_abs_us * S_PER_US + d.sigma_rel * g0) * np.sqrt(decades) * self.xi_drift[idx])
        dist = p.disturb.a_us * S_PER_US * self.disturb_scale[idx] * np.log1p(self.dose[idx] / p.disturb.dose0)
        g = g0 + relax + drift + dist
        g = np.clip(g, p.defects.g_floor_us * S_PER_US, p.defects.g_max_us * S_PER_US)
        working = self.formed[idx] & (self.stuck[idx] == STUCK_NONE)
        return np.where(working, g, np.where(self.stuck[idx] == STUCK_ON, self.g_stuck[idx], self.g0[idx]))

    def read_noise_sigma(self, g: np.ndarray) -> np.ndarray:
        rn = self.p.read_noise
        return np.hypot(rn.rel * g, rn.abs_us * S_PER_US)

    def read(self, idx: np.ndarray, t: float, n_avg: int = 1) -> np.ndarray:
        """Noisy read (S), averaged over n_avg reads."""
        g = self.conductance(idx, t)
        sigma = self.read_noise_sigma(g) / np.sqrt(n_avg)
        return g + sigma * self.rng.standard_normal(g.size)

    def add_dose(self, idx: np.ndarray, count, v: float, width: float) -> None:
        """Add read pulses to the disturb dose of cells idx (count per cell or scalar)."""
        d = self.p.disturb
        w = np.exp((abs(v) - d.v_ref) / d.v_slope) * (width / d.width_ref_s)
        self._mark(idx)
        if np.ndim(count):
            np.add.at(self.dose, idx, np.asarray(count, float) * w)
        else:
            self.dose[idx] += float(count) * w

    # ---- programming ------------------------------------------------------------------
    def _restart(self, idx: np.ndarray, g_new: np.ndarray, t: float, changed: np.ndarray) -> None:
        i = idx[changed]
        self._mark(i)
        self.g0[i] = g_new[changed]
        self.t_prog[i] = t
        self.xi_relax[i] = self.rng.standard_normal(i.size)
        self.xi_drift[i] = self.rng.standard_normal(i.size)
        self.dose[i] = 0.0

    @staticmethod
    def _table_step(g_us, table, mean, sigma):
        return np.interp(g_us, table, mean), np.interp(g_us, table, sigma)

    def _noise(self, n: int, clip: float) -> np.ndarray:
        return np.clip(self.rng.standard_normal(n), -clip, clip)

    def _write_noise_us(self, g_us: np.ndarray) -> np.ndarray:
        """g_us plus the per-event write noise (no draw when it is off)."""
        sigma = self.p.write_noise.sigma_us
        return g_us + sigma * self.rng.standard_normal(g_us.size) if sigma > 0 else g_us

    @staticmethod
    def _snap_fraction(snap: float, drive: np.ndarray) -> np.ndarray:
        """Fraction of an abrupt transition completed: `snap` at reference drive, less below it."""
        return snap * np.minimum(drive, 1.0)

    def set_pulse(self, idx, v, v_gate, width, t) -> None:
        """SET: BL amplitude v, gate v_gate (compliance), width (all per cell)."""
        p, sp, cp = self.p, self.p.set, self.p.compliance
        ok = self.formed[idx] & (self.stuck[idx] == STUCK_NONE)
        g = self.conductance(idx, t)
        g_us = g / S_PER_US
        mean, sigma = self._table_step(g_us, sp.table_g_us, sp.mean_dg_us, sp.sigma_dg_us)
        top = sp.table_g_us[-1]
        taper = np.clip((sp.ceiling_us - g_us) / (sp.ceiling_us - top), 0.0, 1.0)
        mean = np.where(g_us > top, mean * taper, mean)
        drive = np.minimum(np.exp((v - sp.v_ref) / sp.v_slope) * (width / sp.width_ref_s) ** sp.width_exponent,
                           sp.max_drive)
        g_lim_us = cp.g_per_v_us * np.maximum(v_gate - self.vth[idx], 0.0)
        g_lim_us = g_lim_us * (1.0 + cp.landing_cv * self.rng.standard_normal(idx.size))
        gate = np.clip((g_lim_us - g_us) / cp.soft_us, 0.0, 1.0)
        step = gate * (mean * drive * self.set_scale[idx]
                       + sigma * np.sqrt(drive) * self._noise(idx.size, sp.clip_sigmas))
        step = step + self._snap_fraction(sp.snap, drive) * np.maximum(g_lim_us - g_us, 0.0)
        g_new_us = self._write_noise_us(np.minimum(g_us + step, np.maximum(g_us, g_lim_us)))
        g_new = np.clip(g_new_us * S_PER_US, p.defects.g_floor_us * S_PER_US, p.defects.g_max_us * S_PER_US)
        self._restart(idx, g_new, t, ok & (gate > 0))

    def reset_pulse(self, idx, v, v_gate, width, t) -> None:
        """RESET: SL amplitude v (reverse polarity), gate v_gate, width."""
        p, rp = self.p, self.p.reset
        ok = self.formed[idx] & (self.stuck[idx] == STUCK_NONE)
        g = self.conductance(idx, t)
        g_us = g / S_PER_US
        mean, sigma = self._table_step(g_us, rp.table_g_us, rp.mean_dg_us, rp.sigma_dg_us)
        lo, hi = rp.table_g_us[0], rp.table_g_us[-1]
        mean = np.where(g_us < lo, rp.mean_dg_us[0] * g_us / lo, mean)
        mean = np.where(g_us > hi, rp.mean_dg_us[-1] * g_us / hi, mean)
        gate_on = np.clip((v_gate - self.vth[idx]) / rp.gate_full_on_v, 0.0, 1.0)
        drive = np.minimum(np.exp((v - rp.v_ref) / rp.v_slope) * (width / rp.width_ref_s) ** rp.width_exponent,
                           rp.max_drive) * gate_on
        step = mean * drive * self.reset_scale[idx] + sigma * np.sqrt(drive) * self._noise(idx.size, rp.clip_sigmas)
        step = step - self._snap_fraction(rp.snap, drive) * g_us
        g_new = np.clip(self._write_noise_us(g_us + step) * S_PER_US, p.defects.g_floor_us * S_PER_US, p.defects.g_max_us * S_PER_US)
        self._restart(idx, g_new, t, ok & (drive > 0))

    def form_pulse(self, idx, v, v_gate, width, t) -> None:
        """FORM: high BL amplitude; forms fresh cells with a probability set by V and width."""
        fp, cp = self.p.form, self.p.compliance
        fresh = ~self.formed[idx] & (self.stuck[idx] == STUCK_NONE)
        rate = (width / fp.tau_s) * np.exp((v - self.v_form[idx]) / fp.v_slope)
        forms = fresh & (self.rng.random(idx.size) < -np.expm1(-rate))
        if forms.any():
            i = idx[forms]
            g_lim_us = cp.g_per_v_us * np.maximum(v_gate[forms] - self.vth[i], 0.0)
            g_us = np.maximum(g_lim_us * (1 + fp.formed_cv * self.rng.standard_normal(i.size)), 1.0)
            self.formed[i] = True
            self._restart(i, np.minimum(g_us, self.p.defects.g_max_us) * S_PER_US, t, np.ones(i.size, bool))
        # A FORM pulse on a formed cell acts as a strong SET.
        again = self.formed[idx] & ~forms & (self.stuck[idx] == STUCK_NONE)
        if again.any():
            self.set_pulse(idx[again], v[again], v_gate[again], width[again], t)

    # ---- persistence ------------------------------------------------------------------
    STATE_FIELDS = ("set_scale", "reset_scale", "vth", "v_form", "disturb_scale", "stuck", "g_stuck",
                    "formed", "g0", "t_prog", "xi_relax", "xi_drift", "dose")
    #: the fields that change after manufacture (the rest is fixed when the chip is made)
    MUTABLE_FIELDS = ("formed", "g0", "t_prog", "xi_relax", "xi_drift", "dose")

    def _mark(self, idx: np.ndarray) -> None:
        if self._changed is None:
            return
        self._n_changed += idx.size
        if self._n_changed > self.n:
            self._changed = None
        else:
            self._changed.append(np.asarray(idx))

    def take_changed(self) -> np.ndarray | None:
        """Indices of the cells whose mutable state changed since the last call, each once, in
        order (None: more changes than cells, i.e. save everything); then forget them."""
        changed, self._changed, self._n_changed = self._changed, [], 0
        if changed is None:
            return None
        if not changed:
            return np.zeros(0, np.int64)
        seen = np.zeros(self.n, dtype=bool)      # a bitmap: linear, no sort
        for i in changed:
            seen[i] = True
        return np.flatnonzero(seen)

    @property
    def changed_bytes(self) -> int:
        """Bytes of mutable state per cell (with its index)."""
        return 8 + sum(getattr(self, k).itemsize for k in self.MUTABLE_FIELDS)

    def changes(self, idx: np.ndarray) -> dict:
        """The mutable state of cells `idx` (for an incremental save)."""
        return {k: getattr(self, k)[idx] for k in self.MUTABLE_FIELDS}

    def apply_changes(self, idx: np.ndarray, arrays: dict) -> None:
        """Set the mutable state of cells `idx` (from `changes`)."""
        for k in self.MUTABLE_FIELDS:
            getattr(self, k)[idx] = arrays[k]

    def state(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE_FIELDS}

    def load_state(self, arrays: dict, rng_state: dict) -> None:
        for k in self.STATE_FIELDS:
            a = np.asarray(arrays[k])
            if a.shape != (self.n,):
                raise ValueError(f"state array {k} has shape {a.shape}, expected ({self.n},)")
            setattr(self, k, a.copy())
        self.rng.bit_generator.state = rng_state
        self._changed, self._n_changed = [], 0
