"""I–V physics of the simulated 1T1R cell under a DC sweep (the `dc_sweep` capability).

A sweep steps the cell voltage V = V_BL − V_SL through a list of levels, dwelling at each; at
every point, vectorized over the swept cells:

- conduction is nonlinear: I_cell = G · V · (1 + β V²) (the cubic term of trap-assisted tunnelling
  through the filament gap), so R = V / I falls with |V| even without switching;
- the access transistor limits the current: in the SET direction it passes at most the
  gate-limited compliance current I_ch = G_lim · V_set,0, with G_lim = g_per_v · (V_gate − V_th)
  the compliance-limited conductance of the pulse model; the SMU compliance clips |I| as well;
- SET is abrupt: where V reaches the cell's SET voltage the filament grows until the compliance
  stops it, G → max(G, min(G_lim, I_compliance / V)); the cell's SET voltage is `v_set` shifted by
  its device-to-device SET strength (stronger cells switch earlier);
- RESET is gradual: beyond −`v_reset` each point removes a fraction 1 − exp(−r) of (G − G_floor),
  r = `reset_rate` · exp((|V| − v_reset) / `reset_slope_v`) · (dwell / dwell_ref)^exponent, scaled by the
  cell's RESET strength;
- a fresh cell forms where V reaches its forming voltage (onto G_lim); stuck and open cells never
  switch.

The parameters are the device's `iv` section (sim_backend.params.IVParams: saved, loaded and
fitted with the rest of the parameter set). The state (G, programming time) is written back to the device when the sweep ends, so reads,
relaxation and drift continue from it. Read noise is added to every current.
"""
from __future__ import annotations

import numpy as np

from .device import S_PER_US, STUCK_NONE, DeviceArray


def set_voltage(device: DeviceArray, idx: np.ndarray) -> np.ndarray:
    """The SET voltage of cells `idx` under a DC sweep (V)."""
    iv = device.p.iv
    return iv.v_set - iv.v_set_per_ln_strength * np.log(device.set_scale[idx])


def dc_sweep(device: DeviceArray, idx: np.ndarray, v_cell: np.ndarray, v_gate: np.ndarray,
             compliance_a: np.ndarray, dwell_s: float, t: float) -> np.ndarray:
    """Sweep cells `idx` through cell voltages `v_cell` (one per point, with `v_gate` and
    `compliance_a` per point) at time `t` with the device's `iv` parameters; returns the currents
    (points, cells) in amperes and leaves the cells in their final state."""
    p = device.p
    iv = p.iv
    cp = p.compliance
    g_floor, g_max = p.defects.g_floor_us * S_PER_US, p.defects.g_max_us * S_PER_US
    g = device.conductance(idx, t)
    g_start = g.copy()
    working = device.stuck[idx] == STUCK_NONE
    formed = device.formed[idx].copy()
    vth = device.vth[idx]
    v_set = set_voltage(device, idx)
    v_form = device.v_form[idx]
    v_set0 = iv.v_set
    dwell = (dwell_s / iv.dwell_ref_s) ** iv.dwell_exponent
    out = np.empty((v_cell.size, idx.size))
    for k, v in enumerate(v_cell):
        g_lim = cp.g_per_v_us * S_PER_US * np.maximum(v_gate[k] - vth, 0.0)
        if v > 0:
            cap = np.minimum(g_lim, compliance_a[k] / v)
            forms = working & ~formed & (v >= v_form)
            formed |= forms
            g = np.where(forms, np.maximum(cap, g_floor), g)
            sets = working & formed & (v >= v_set)
            g = np.where(sets, np.maximum(g, cap), g)
        elif v < 0:
            drive = working & formed & (-v > iv.v_reset)
            lost = -np.expm1(-iv.reset_rate * np.exp((-v - iv.v_reset) / iv.reset_slope_v) * dwell
                             * device.reset_scale[idx])
            g = np.where(drive, g - lost * np.maximum(g - g_floor, 0.0), g)
        g = np.clip(g, 0.0, g_max)
        i = g * v * (1.0 + iv.beta_per_v2 * v * v)
        lim = compliance_a[k] if v <= 0 else np.minimum(compliance_a[k], g_lim * v_set0)
        i = np.clip(i, -lim, lim)
        out[k] = i + device.read_noise_sigma(g) * abs(v) * device.rng.standard_normal(idx.size)
    changed = working & ((g != g_start) | (formed != device.formed[idx]))
    device.formed[idx] = formed
    device._restart(idx, np.maximum(g, g_floor), t, changed)
    return out
