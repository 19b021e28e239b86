"""The update engine: signed weight updates applied to a mapped layer's differential pairs.

An `UpdateEngine` keeps the last measured conductances of every pair of one `MappedLayer` and
turns a matrix of weight updates (weight units, n_in × n_out) into pulses through the Crossbar
contract, according to a policy:

- `ClosedLoop` (Yao 2020 hybrid training): per weight, raise one cell of the pair or lower the
  other by write-verify to the new target (a few pulses at most), then keep the conductance
  actually reached. The caller decides which updates are due (threshold, accumulation).
- `OpenLoopGate` (Wang 2019 in-situ training): no verify. Each cell's gate voltage moves by
  ΔV_g = ±gain × ΔW (+ on the positive cell, − on the negative); a cell whose ΔV_g < 0 is first
  RESET; then every cell with ΔV_g ≠ 0 gets one SET pulse at V_g = clip(V_g,last + ΔV_g). The
  layer is read back afterwards.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np

from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.limits import Op
from hil.programming import WriteVerifyPolicy
from hil.progress import CancelToken
from hil.analog.layer import MappedLayer
from hil.ops.write_verify import write_verify


@dataclass(frozen=True)
class ClosedLoop:
    """Closed-loop pair updates within [g_min_s, g_max_s], write-verify to ± tolerance_s."""

    g_min_s: float
    g_max_s: float
    tolerance_s: float
    max_pulses: int = 12
    n_avg: int = 2

    def __post_init__(self) -> None:
        if not (0 <= self.g_min_s < self.g_max_s and np.isfinite(self.g_max_s)):
            raise ConfigError(f"closed-loop update needs 0 <= g_min < g_max, got {self.g_min_s}, {self.g_max_s}")
        if not (np.isfinite(self.tolerance_s) and self.tolerance_s > 0):
            raise ConfigError(f"closed-loop tolerance must be positive, got {self.tolerance_s}")
        if int(self.max_pulses) < 1:
            raise ConfigError(f"closed-loop max_pulses must be >= 1, got {self.max_pulses}")


@dataclass(frozen=True)
class OpenLoopGate:
    """Open-loop updates by gate voltage (Wang 2019; PAPERS.md §B). Volts and seconds."""

    gain_v: float = 1.5           # ΔV_g per weight unit
    v_set: float = 2.5            # SET amplitude on the BL
    v_reset: float = 1.7          # RESET amplitude on the SL
    reset_gate: float = 5.0
    gate_min: float = 0.5
    gate_max: float = 2.5
    gate_init: float = 1.6        # gate of the initial SET after a RESET (weights start near 0)
    width_s: float = 1e-6
    n_avg: int = 1

    def __post_init__(self) -> None:
        for f, v in asdict(self).items():
            if isinstance(v, bool) or not np.isfinite(v) or v <= 0:
                raise ConfigError(f"open-loop update: {f} must be a positive number, got {v!r}")
        if not self.gate_min <= self.gate_init <= self.gate_max:
            raise ConfigError(f"open-loop update: gate_init {self.gate_init} V outside "
                              f"{self.gate_min}..{self.gate_max} V")


Policy = Union[ClosedLoop, OpenLoopGate]


class UpdateEngine:
    """Applies weight updates to the pairs of `layer` under `policy`; counts pulses and updates.

    The pairs are read once at construction, unless `state` (from `state()`, e.g. a checkpoint)
    restores what a previous engine knew, without touching the chip."""

    def __init__(self, layer: MappedLayer, policy: Policy, state: Optional[dict] = None) -> None:
        if not isinstance(policy, (ClosedLoop, OpenLoopGate)):
            raise ConfigError(f"unknown update policy {type(policy).__name__}")
        self.layer = layer
        self.policy = policy
        self.pos, self.neg = layer.pair_grids()
        self.pulses = 0
        self.updates = 0
        self.v_gate_pos = np.full(layer.shape, getattr(policy, "gate_init", np.nan))
        self.v_gate_neg = self.v_gate_pos.copy()
        if state is None:
            self.read_back()
        else:
            self.load_state(state)

    @property
    def xbar(self):
        return self.layer.xbar

    def _read(self, cells: Cells) -> np.ndarray:
        return self.xbar.read(cells, n_avg=self.policy.n_avg).reshape(self.layer.shape)

    def weights(self) -> np.ndarray:
        """Weights (weight units) from the last measured conductances."""
        return (self.g_pos - self.g_neg) / self.layer.step_s

    def read_back(self) -> np.ndarray:
        """Read every pair again; return the weights."""
        self.g_pos = self._read(self.pos)
        self.g_neg = self._read(self.neg)
        return self.weights()

    def _check(self, delta) -> np.ndarray:
        d = np.asarray(delta, dtype=float)
        if d.shape != self.layer.shape:
            raise DataError(f"update of layer {self.layer.name!r} has shape {d.shape}, expected {self.layer.shape}")
        if not np.all(np.isfinite(d)):
            raise DataError(f"update of layer {self.layer.name!r} contains NaN or infinite values")
        return d

    def apply(self, delta, cancel: Optional[CancelToken] = None) -> np.ndarray:
        """Move the weights by `delta` (weight units, zeros left alone); return the change reached."""
        d = self._check(delta)
        if isinstance(self.policy, ClosedLoop):
            return self._closed_loop(d, cancel)
        return self._open_loop(d, cancel)

    # ---- closed loop -----------------------------------------------------------------------
    def _closed_loop(self, delta: np.ndarray, cancel) -> np.ndarray:
        p: ClosedLoop = self.policy
        step = self.layer.step_s
        i, o = np.nonzero(delta)
        if i.size == 0:
            return np.zeros_like(delta)
        d = delta[i, o]
        gp, gn = self.g_pos[i, o], self.g_neg[i, o]
        # Raise one cell of the pair, or lower the other when it still holds a negative/positive part.
        lower_neg = (d > 0) & (gn > p.g_min_s + 0.5 * step)
        lower_pos = (d < 0) & (gp > p.g_min_s + 0.5 * step)
        on_pos = ((d > 0) & ~lower_neg) | lower_pos
        g_now = np.where(on_pos, gp, gn)
        target = np.clip(g_now + np.where(on_pos, d, -d) * step, p.g_min_s, p.g_max_s)
        sel = np.abs(target - g_now) > 0.25 * p.tolerance_s
        if not sel.any():
            return np.zeros_like(delta)
        i, o, on_pos, target, g_now = i[sel], o[sel], on_pos[sel], target[sel], g_now[sel]
        flat = np.ravel_multi_index((i, o), self.layer.shape)
        cells = Cells(*(np.where(on_pos, a.reshape(-1)[flat], b.reshape(-1)[flat])
                        for a, b in ((self.pos.pe, self.neg.pe), (self.pos.row, self.neg.row),
                                     (self.pos.col, self.neg.col))))
        rep = write_verify(self.xbar, cells, target, p.tolerance_s, WriteVerifyPolicy(max_pulses=int(p.max_pulses)),
                           cancel=cancel)
        g_new = np.where(np.isfinite(rep.final_s), rep.final_s, g_now)
        self.pulses += int(rep.pulses.sum())
        self.updates += int(i.size)
        reached = np.zeros_like(delta)
        dg = (g_new - g_now) / step
        reached[i, o] = np.where(on_pos, dg, -dg)
        self.g_pos[i[on_pos], o[on_pos]] = g_new[on_pos]
        self.g_neg[i[~on_pos], o[~on_pos]] = g_new[~on_pos]
        return reached

    # ---- open loop by gate voltage ---------------------------------------------------------------
    def initialize_open_loop(self) -> None:
        """Weights to about 0: RESET every cell, then SET both cells of each pair at gate_init."""
        p = self._open_policy()
        both = self._both()
        self.xbar.pulse(both, Op.RESET, p.v_reset, p.reset_gate, p.width_s)
        self.xbar.pulse(both, Op.SET, p.v_set, p.gate_init, p.width_s)
        self.pulses += 2 * len(both)
        self.v_gate_pos[...] = p.gate_init
        self.v_gate_neg[...] = p.gate_init
        self.read_back()

    def _open_policy(self) -> OpenLoopGate:
        if not isinstance(self.policy, OpenLoopGate):
            raise ConfigError("this engine's policy is closed loop; open-loop initialization needs OpenLoopGate")
        return self.policy

    def _both(self) -> Cells:
        return Cells(np.concatenate([self.pos.pe, self.neg.pe]), np.concatenate([self.pos.row, self.neg.row]),
                     np.concatenate([self.pos.col, self.neg.col]))

    def _open_loop(self, delta: np.ndarray, cancel) -> np.ndarray:
        p = self._open_policy()
        before = self.weights()
        dv = np.concatenate([(p.gain_v * delta).ravel(), (-p.gain_v * delta).ravel()])
        v_last = np.concatenate([self.v_gate_pos.ravel(), self.v_gate_neg.ravel()])
        both = self._both()
        if cancel is not None:
            cancel.raise_if_cancelled()
        down = dv < 0
        if down.any():
            self.xbar.pulse(both[np.flatnonzero(down)], Op.RESET, p.v_reset, p.reset_gate, p.width_s)
        move = dv != 0
        v_new = np.clip(v_last + dv, p.gate_min, p.gate_max)
        if move.any():
            idx = np.flatnonzero(move)
            self.xbar.pulse(both[idx], Op.SET, p.v_set, v_new[idx], p.width_s)
        v_last = np.where(move, v_new, v_last)
        n = self.layer.n_in * self.layer.n_out
        self.v_gate_pos = v_last[:n].reshape(self.layer.shape)
        self.v_gate_neg = v_last[n:].reshape(self.layer.shape)
        self.pulses += int(down.sum() + move.sum())
        self.updates += int(np.count_nonzero(delta))
        return self.read_back() - before

    # ---- resume -----------------------------------------------------------------------------------
    def _state_arrays(self) -> tuple:
        return ("g_pos", "g_neg") + (("v_gate_pos", "v_gate_neg") if isinstance(self.policy, OpenLoopGate) else ())

    def state(self) -> dict:
        """Arrays and counters that make a resumed engine equal an uninterrupted one: the host's
        conductances (S), for the open loop the last gate voltages (V), pulse and update counts."""
        return {**{k: getattr(self, k).copy() for k in self._state_arrays()},
                "pulses": self.pulses, "updates": self.updates}

    def load_state(self, s: dict) -> None:
        """Restore `state()`; DataError names a missing or misshapen entry."""
        missing = [k for k in (*self._state_arrays(), "pulses", "updates") if k not in s]
        if missing:
            raise DataError(f"update-engine state lacks {', '.join(missing)}")
        for k in self._state_arrays():
            a = np.asarray(s[k], dtype=float)
            if a.shape != self.layer.shape:
                raise DataError(f"update-engine state {k} has shape {a.shape}, expected {self.layer.shape}")
            setattr(self, k, a.copy())
        self.pulses, self.updates = int(s["pulses"]), int(s["updates"])
