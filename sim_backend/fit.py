"""Fit the simulated device model to a programming record (the digital twin).

`fit_params(record, base)` estimates the parameters that the pulses and verify reads of a
`hil program` record constrain, starting from `base` (every other parameter keeps its value):

- read noise (`read_noise.rel`, `abs_us`): the first verify reading minus the snapshot before
  programming (no pulse between: pure read noise, unselected by any band), so
  E[d² / (1/n_verify + 1/n_snapshot)] = (rel G)² + abs², a weighted linear fit;
- compliance (`compliance.g_per_v_us`, `vth_v`) and a common factor on the SET step table: the
  record's SET ramps are replayed on simulated cells from their starting readings (the pulses
  mostly ride the compliance, so the steps themselves are seen only through it; which cells
  are still ramping is a selection no per-pulse regression can undo), matching binned moments
  (`_fit_set_by_simulation`);
- RESET step table (`reset.mean_dg_us`, `sigma_dg_us`) and its device-to-device spread
  (`variation.reset_sigma_ln`): every RESET pulse's ΔG (next verify reading − this one) divided
  by its drive (SL amplitude and width through the base `v_ref`, `v_slope`, `width_*`, and the
  gate) is regressed on the table's interpolation basis, each cell weighing the same (weak cells
  take more pulses). The cell-to-cell variance of the step multiplier comes from products of
  residuals of one cell's non-adjacent pulses (which share no reading), the cycle-to-cycle σ per
  bin from what remains of the squared residuals.

Each estimate carries a 95 % interval (± 1.96 standard deviations of its bootstrap over cells)
and its group's goodness of fit
(χ²/dof of binned moments against the fitted model: about 1 when the model describes the data).
A bin with fewer than `MIN_PULSES_PER_BIN` weighted pulses is not constrained and keeps the base.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np

from hil.errors import DataError
from hil.limits import OP_CODES, Op
from hil.programming import IN_BAND, UNRESPONSIVE, WriteVerifyPolicy
from hil.runstore import RunRecord

from .params import DeviceParams

PREFIX = "programming"
#: hil.ops.jobs snapshots the chip (before and after programming) with 4 averaged reads per cell
SNAPSHOT_READS = 4
MIN_PULSES_PER_BIN = 30
MIN_PULSES = 200
MIN_CELLS = 20
US = 1e-6
#: the estimate of a common factor on the SET step table (all bins)
SET_FACTOR = "set.mean_dg_us (common factor)"


@dataclass
class ProgrammingData:
    """What a programming record holds, per plan cell and per pulse (siemens, volts, seconds)."""

    path: str
    cell: np.ndarray            # plan cells (flat index)
    targets_s: np.ndarray
    tolerance_s: float
    policy: dict
    final_s: np.ndarray         # per plan cell (NaN: not finished)
    pulses: np.ndarray
    status: np.ndarray          # -1: not finished
    before_s: Optional[np.ndarray]     # per plan cell: snapshot read before programming
    after_s: Optional[np.ndarray]      # per plan cell: snapshot read after programming
    first_read_s: np.ndarray    # per plan cell: the first verify reading (before any pulse; NaN: none)
    pairs: dict                 # per pulse with a reading before and after: cell, iteration, op, v, v_gate, width_s, g0, g1
    params_digest: str = ""


def read_programming(path) -> ProgrammingData:
    """Read a programming record (DataError, one line, if it is not one or is damaged)."""
    from hil.programming import NOT_FINISHED
    path = Path(path)
    with RunRecord.open(path) as rec:
        if rec.kind != "programming":
            raise DataError(f"{path} is a {rec.kind!r} run, not a programming record made by `hil program`")
        try:
            (plan, attrs), group = rec.dataset(f"{PREFIX}/targets"), rec.group_attrs(PREFIX)
            cells = rec.table(f"{PREFIX}/cells")
            # an instrument's own write-verify loop (board firmware, SMU script) journals no pulses
            verify, pulses = ({k: np.zeros(0, np.int64 if k != "g_s" else float) for k in cols}
                              if f"{PREFIX}/{t}" not in rec.tables() else rec.table(f"{PREFIX}/{t}")
                              for t, cols in (("verify", ("iteration", "cell", "g_s")),
                                              ("pulses", ("iteration", "cell", "op", "v", "v_gate", "width_s"))))
            snap, after = (rec.dataset(f"snapshots/{w}_programming")[0] if f"snapshots/{w}_programming"
                           in rec.datasets() else None for w in ("before", "after"))
            params = (rec.station.get("describe") or {}).get("params")
        except (KeyError, DataError, OSError, ValueError) as e:
            raise DataError(f"{path} is not a complete programming record ({type(e).__name__}: {e})") from None
    try:
        flat, targets = plan[0].astype(np.int64), np.asarray(plan[2], float)
        policy = WriteVerifyPolicy.from_dict(group["policy"]).to_dict()
        tolerance = float(attrs["tolerance_s"])
    except Exception as e:
        raise DataError(f"{path}: programming plan or policy unreadable ({type(e).__name__}: {e})") from None
    pos = np.full(int(flat.max()) + 1 if flat.size else 1, -1, np.int64)
    pos[flat] = np.arange(flat.size)
    n = flat.size
    final, npulses, status = np.full(n, np.nan), np.zeros(n, np.int64), np.full(n, NOT_FINISHED, np.int64)
    if cells["cell"].size:
        i = pos[cells["cell"]]
        final[i], npulses[i], status[i] = cells["final_g_s"], cells["pulses"], cells["status"]
    # a pulse at iteration i on cell c sits between the verify readings of c at i and i + 1
    span = int(max(verify["iteration"].max(initial=0), pulses["iteration"].max(initial=0))) + 2
    vkey = verify["cell"] * span + verify["iteration"]
    order = np.argsort(vkey)
    vkey, vg = vkey[order], verify["g_s"][order]

    def lookup(key):
        j = np.clip(np.searchsorted(vkey, key), 0, max(vkey.size - 1, 0))
        ok = (vkey[j] == key) if vkey.size else np.zeros(key.size, bool)
        return np.where(ok, vg[j] if vkey.size else 0.0, np.nan)

    pkey = pulses["cell"] * span + pulses["iteration"]
    g0, g1 = lookup(pkey), lookup(pkey + 1)
    ok = np.isfinite(g0) & np.isfinite(g1)
    pairs = {k: np.asarray(pulses[k])[ok] for k in ("cell", "iteration", "op", "v", "v_gate", "width_s")}
    pairs.update(g0=g0[ok], g1=g1[ok])
    first = np.full(n, np.nan)
    at0 = verify["iteration"] == 0
    first[pos[verify["cell"][at0]]] = verify["g_s"][at0]
    digest = ""
    if isinstance(params, dict):
        try:
            digest = DeviceParams.from_dict(params).digest()
        except Exception:
            digest = ""
    return ProgrammingData(str(path), flat, targets, tolerance, policy, final, npulses, status,
                           None if snap is None else snap.ravel()[flat], None if after is None else after.ravel()[flat],
                           first, pairs, digest)


# ---- estimators --------------------------------------------------------------------------
def _clip_var(c: float) -> float:
    """Variance of a standard normal clipped (winsorized) at ±c."""
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    tail = 0.5 * math.erfc(c / math.sqrt(2))
    return (1 - 2 * tail) - 2 * c * phi + 2 * c * c * tail


def _basis(g_us: np.ndarray, table, kind: str, p: DeviceParams) -> np.ndarray:
    """Columns B_k(g) with the model's mean(g) = sum_k B_k(g) mean_k: np.interp over the table,
    and the model's extrapolation (SET tapers to the ceiling above the table, RESET scales with
    G outside it)."""
    t = np.asarray(table, float)
    B = np.stack([np.interp(g_us, t, np.eye(t.size)[k]) for k in range(t.size)], axis=1)
    lo, hi = t[0], t[-1]
    if kind == "set":
        taper = np.clip((p.set.ceiling_us - g_us) / (p.set.ceiling_us - hi), 0.0, 1.0)
        B[:, -1] = np.where(g_us > hi, taper, B[:, -1])
    else:
        B[:, 0] = np.where(g_us < lo, g_us / lo, B[:, 0])
        B[:, -1] = np.where(g_us > hi, g_us / hi, B[:, -1])
    return B


def _read_sigma2(g_us, rel, abs_us):
    return (rel * g_us) ** 2 + abs_us ** 2


def _fit_read_noise(d: dict, n_verify: int) -> dict:
    g, dd = d["g"], d["d"]
    z = dd ** 2 / (1.0 / n_verify + 1.0 / SNAPSHOT_READS)
    X = np.stack([g ** 2, np.ones_like(g)], axis=1)
    w = np.ones_like(g)
    coef = np.zeros(2)
    for _ in range(3):                       # E[z] = rel^2 g^2 + abs^2; var(z) = 2 E[z]^2
        coef = np.linalg.lstsq(X * w[:, None], z * w, rcond=None)[0]
        coef = np.maximum(coef, 1e-12)
        w = 1.0 / (X @ coef)
    return {"read_noise.rel": float(np.sqrt(coef[0])), "read_noise.abs_us": float(np.sqrt(coef[1])),
            "_gof.read_noise": _binned_chi2(g, z, X @ coef), "_n.read_noise": int(g.size)}


def _binned_chi2(x, y, model, bins: int = 10) -> float:
    """χ²/dof of the mean of y against the mean of the model in `bins` quantile bins of x."""
    if x.size < 2 * bins:
        return float("nan")
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    k = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    chi = []
    for b in range(bins):
        m = k == b
        if m.sum() > 2:
            r = y[m] - model[m]
            chi.append(r.mean() ** 2 / (r.var(ddof=1) / m.sum() + 1e-300))
    return float(np.mean(chi)) if chi else float("nan")


def _drive(v, w, grp) -> np.ndarray:
    return np.minimum(np.exp((v - grp.v_ref) / grp.v_slope) * (w / grp.width_ref_s) ** grp.width_exponent,
                      grp.max_drive)


def _fit_steps(s: dict, kind: str, p: DeviceParams, sig2, n_verify: int) -> dict:
    """Mean and σ tables of one operation and its device-to-device σ_ln (see the module doc)."""
    grp = p.set if kind == "set" else p.reset
    table = np.asarray(grp.table_g_us, float)
    g0, dg = s["g0"] / US, (s["g1"] - s["g0"]) / US
    drive = _drive(s["v"], s["width_s"], grp)
    if kind == "reset":
        drive = drive * np.clip((s["v_gate"] - p.compliance.vth_v) / grp.gate_full_on_v, 0.0, 1.0)
    keep = drive > 0.02
    g0, dg, drive = g0[keep], dg[keep], drive[keep]
    cell, it = s["cell"][keep], s["iteration"][keep]
    out: dict = {f"_n.{kind}": int(g0.size)}
    if g0.size < MIN_PULSES:
        return out
    y = dg / drive
    B = _basis(g0, table, kind, p)
    free = B.sum(axis=0) >= MIN_PULSES_PER_BIN
    if free.sum() == 0:
        return out
    vclip = _clip_var(grp.clip_sigmas)
    rn = 2 * sig2(g0) / n_verify / drive ** 2            # reading noise of ΔG / drive
    sig_ln = p.variation.set_sigma_ln if kind == "set" else p.variation.reset_sigma_ln
    es = math.exp(sig_ln ** 2 / 2)
    a_k = np.asarray(grp.mean_dg_us, float) * es
    s2_k = np.asarray(grp.sigma_dg_us, float) ** 2
    c = math.expm1(sig_ln ** 2)
    cw = _cell_weights(cell)
    for _ in range(3):
        a = B @ a_k
        var = c * a ** 2 + (B @ s2_k) * vclip / drive + rn
        w = cw / np.maximum(var, 1e-12)
        fixed = B[:, ~free] @ a_k[~free]
        sw = np.sqrt(w)
        a_k = a_k.copy()
        a_k[free] = np.linalg.lstsq(B[:, free] * sw[:, None], (y - fixed) * sw, rcond=None)[0]
        a = B @ a_k
        e = y - a
        c = max(_within_cell(e, a, cell, it), 0.0)
        r = (e ** 2 - c * a ** 2 - rn) * drive / vclip
        s2 = s2_k.copy()
        s2[free] = np.linalg.lstsq(B[:, free], r - B[:, ~free] @ s2_k[~free], rcond=None)[0]
        s2_k = np.maximum(s2, 0.0)
    sig_ln = math.sqrt(math.log1p(c))
    es = math.exp(sig_ln ** 2 / 2)
    for k in np.flatnonzero(free):
        out[f"{kind}.mean_dg_us[{k}]"] = float(a_k[k] / es)
        out[f"{kind}.sigma_dg_us[{k}]"] = float(math.sqrt(s2_k[k]))
    out[f"variation.{kind}_sigma_ln"] = sig_ln
    var = c * a ** 2 + (B @ s2_k) * vclip / drive + rn
    out[f"_gof.{kind}"] = _binned_chi2(g0, y, a)
    out[f"_gof.{kind}_spread"] = _binned_chi2(g0, e ** 2, var)
    return out


def _cell_weights(cell: np.ndarray) -> np.ndarray:
    """1 / (rows of the same cell): each cell weighs the same in a pooled estimate."""
    _, inv, cnt = np.unique(cell, return_inverse=True, return_counts=True)
    return 1.0 / cnt[inv]


def _within_cell(e, a, cell, it) -> float:
    """Var(step multiplier)/E² from products of one cell's residuals, leaving out neighbours in
    time (they share a verify reading, whose noise enters both with opposite signs)."""
    order = np.lexsort((it, cell))
    e, a, cell, it = e[order], a[order], cell[order], it[order]
    _, start = np.unique(cell, return_index=True)
    s_e, s_a = np.add.reduceat(e, start), np.add.reduceat(a, start)
    q_e, q_a = np.add.reduceat(e * e, start), np.add.reduceat(a * a, start)
    adj = (cell[1:] == cell[:-1]) & (it[1:] == it[:-1] + 1)
    num = float(np.sum(s_e ** 2 - q_e) - 2 * np.sum((e[1:] * e[:-1])[adj]))
    den = float(np.sum(s_a ** 2 - q_a) - 2 * np.sum((a[1:] * a[:-1])[adj]))
    return num / den if den > 0 else 0.0


def _set_ramps(s: dict, start: float) -> dict:
    """The SET ramps of the record: each from a pulse at the ramp's start gate (a cell's first
    SET, or the first after a RESET) to the last SET pulse before the next ramp or the end."""
    order = np.lexsort((s["iteration"], s["cell"]))
    c, it, vg = s["cell"][order], s["iteration"][order], s["v_gate"][order]
    first = np.isclose(vg, start)
    first[0] = True
    cont = np.zeros(c.size, bool)
    cont[1:] = (c[1:] == c[:-1]) & (it[1:] == it[:-1] + 1) & ~first[1:]
    ramp = np.cumsum(~cont) - 1
    heads = np.flatnonzero(~cont)
    ok = np.isclose(vg[heads], start)               # ramps seen from their start only
    return {"order": order, "ramp": ramp, "heads": heads[ok], "ok_ramp": ok,
            "g_start": s["g0"][order][heads[ok]], "lo": s["lo"][order][heads[ok]]}


def _fit_set_by_simulation(s: dict, p: DeviceParams, policy: dict, sig2, x0=None, seed: int = 0) -> dict:
    """Compliance curve (k, V_th) and a common factor on the SET step table: every SET ramp of
    the record is replayed on simulated cells from its starting reading (gate ramp, verify reads,
    stop in band or above it, as write-verify does), and binned moments (mean ΔG and fraction of
    pulses that moved, per reading and gate bin; ramp length per starting bin) are matched to
    the record's (common random numbers; Nelder-Mead from `x0`, else from the best point of a
    coarse grid)."""
    from scipy.optimize import minimize

    from .device import DeviceArray
    n_verify = int(policy["n_verify_reads"])
    start, step, vmax = policy["set_gate_start"], policy["set_gate_step"], policy["set_gate_max"]
    if s["g0"].size < MIN_PULSES:
        return {}
    r = _set_ramps(s, start)
    n_r = r["g_start"].size
    if n_r < MIN_CELLS:
        return {}
    o = r["order"]
    keep = r["ok_ramp"][r["ramp"]]
    g_obs, dg_obs, vg_obs = s["g0"][o][keep] / US, (s["g1"] - s["g0"])[o][keep] / US, s["v_gate"][o][keep]
    len_obs = np.bincount(r["ramp"][keep])[r["ok_ramp"]] if keep.any() else np.zeros(0)
    g_edges = np.asarray(p.set.table_g_us) - 0.9
    v_edges = start + step * np.arange(0, int(round((vmax - start) / step)) + 2, 3) - step / 2

    def moments(g, dg, vg, lengths):
        sd = np.sqrt(2 * sig2(g) / n_verify)
        key = np.digitize(g, g_edges) * 1000 + np.digitize(vg, v_edges)
        kk = np.bincount(key, minlength=12000)
        m = np.bincount(key, dg, 12000) / np.maximum(kk, 1)
        f = np.bincount(key, (dg > 3 * sd).astype(float), 12000) / np.maximum(kk, 1)
        sk = np.digitize(r["g_start"] / US, g_edges)
        ln = np.bincount(sk, lengths, 12) / np.maximum(np.bincount(sk, minlength=12), 1)
        return kk, m, f, ln

    cnt, obs_m, obs_f, obs_l = moments(g_obs, dg_obs, vg_obs, len_obs)
    key_o = np.digitize(g_obs, g_edges) * 1000 + np.digitize(vg_obs, v_edges)
    var_m = np.bincount(key_o, (dg_obs - obs_m[key_o]) ** 2, 12000) / np.maximum(cnt - 1, 1) / np.maximum(cnt, 1)
    var_f = np.maximum(obs_f * (1 - obs_f), 0.05) / np.maximum(cnt, 1)
    sk = np.digitize(r["g_start"] / US, g_edges)
    ns = np.bincount(sk, minlength=12)
    var_l = np.maximum(np.bincount(sk, (len_obs - obs_l[sk]) ** 2, 12) / np.maximum(ns - 1, 1), 1.0) / np.maximum(ns, 1)
    valid, valid_l = cnt >= 20, ns >= 10
    q = replace(p, defects=replace(p.defects, dead_row_rate=0.0, dead_col_rate=0.0, stuck_off_rate=0.0,
                                   stuck_on_rate=0.0), initial=replace(p.initial, state="formed"))
    n_steps = int(min(policy["max_pulses"], 3 * max(len_obs.max(initial=1), 1)))
    noise = np.random.default_rng(seed + 1).standard_normal((n_steps + 1, n_r))
    g_start = r["g_start"] / US

    def simulate(theta):
        k, vth, scale = theta
        par = replace(q, compliance=replace(q.compliance, g_per_v_us=k, vth_v=vth),
                      set=replace(q.set, mean_dg_us=tuple(scale * m for m in q.set.mean_dg_us)))
        dev = DeviceArray(n_r, par, seed)
        dev.g0 = np.maximum(g_start - np.sqrt(sig2(g_start) / n_verify) * noise[0], 0.01) * US
        dev.t_prog = np.zeros(n_r)
        read = g_start.copy()
        active = np.ones(n_r, bool)
        lengths = np.zeros(n_r)
        gs, dgs, vgs = [], [], []
        idx = np.arange(n_r)
        for j in range(n_steps):
            a = idx[active]
            if a.size == 0:
                break
            vg = min(start + j * step, vmax)
            dev.set_pulse(a, np.full(a.size, policy["set_v_bl"]), np.full(a.size, vg),
                          np.full(a.size, policy["width_s"]), 0.0)
            g_true = dev.g0[a] / US
            new = g_true + np.sqrt(sig2(g_true) / n_verify) * noise[j + 1, a]
            gs.append(read[a]), dgs.append(new - read[a]), vgs.append(np.full(a.size, vg))
            read[a] = new
            lengths[a] += 1
            active[a] = new < r["lo"][a] / US
        return moments(np.concatenate(gs), np.concatenate(dgs), np.concatenate(vgs), lengths)

    def loss(theta):
        k, vth, scale = theta
        if k <= 0.1 or scale <= 0 or not 0 <= vth <= 3:
            return 1e12
        _, m, f, ln = simulate(theta)
        return float(np.sum(((obs_m - m) ** 2 / np.maximum(var_m, 1e-6) + (obs_f - f) ** 2 / var_f)[valid])
                     + np.sum(((obs_l - ln) ** 2 / var_l)[valid_l]))

    if x0 is None:           # the loss has local minima along V_th x SET factor: start from a coarse grid's best
        k0, v0 = p.compliance.g_per_v_us, p.compliance.vth_v
        grid = [(k0 * fk, v0 + dv, f) for fk in (0.8, 1.0, 1.25) for dv in (-0.15, -0.075, 0.0, 0.075, 0.15)
                for f in (0.5, 0.7, 1.0, 1.4, 2.0)]
        x0 = min(grid, key=loss)
    x0 = list(x0)
    res = minimize(loss, x0, method="Nelder-Mead",
                   options={"xatol": 1e-3, "fatol": 1e-2, "maxiter": 300, "initial_simplex": [
                       x0, [x0[0] * 1.2, x0[1], 1.0], [x0[0], x0[1] + 0.1, 1.0], [x0[0], x0[1], 1.3]]})
    k, vth, scale = res.x
    dof = max(2 * int(valid.sum()) + int(valid_l.sum()) - 3, 1)
    return {"compliance.g_per_v_us": float(k), "compliance.vth_v": float(vth), SET_FACTOR: float(scale),
            "_gof.compliance": float(res.fun) / dof, "_n.compliance": int(g_obs.size)}


def _estimate(data: dict, p: DeviceParams, policy: dict, x0=None) -> dict:
    """Every estimate from the (resampled) tables `data` (see `fit_params`); `x0` starts the SET
    simulation fit."""
    n_verify = int(policy["n_verify_reads"])
    out = _fit_read_noise(data["snap"], n_verify) if data["snap"]["g"].size >= MIN_CELLS else {}
    rel = out.get("read_noise.rel", p.read_noise.rel)
    ab = out.get("read_noise.abs_us", p.read_noise.abs_us)

    def sig2(g_us):
        return _read_sigma2(g_us, rel, ab)

    out.update(_fit_set_by_simulation(data["set"], p, policy, sig2, x0))
    cp = replace(p.compliance, **{k.split(".")[1]: out[k] for k in ("compliance.g_per_v_us", "compliance.vth_v")
                                  if k in out and np.isfinite(out[k]) and out[k] > 0})
    out.update(_fit_steps(data["reset"], "reset", replace(p, compliance=cp), sig2, n_verify))
    return out


def _tables(d: ProgrammingData) -> dict:
    """Tables (each with a `cell` column) the estimators use: first verify reading and snapshot
    before programming per cell, and the SET and RESET pulse pairs (with the cell's band) of cells
    that responded."""
    if d.before_s is not None and np.isfinite(d.first_read_s).any():
        ok = np.isfinite(d.first_read_s) & np.isfinite(d.before_s)
        g, diff = d.before_s, d.first_read_s - d.before_s
    else:                           # no verify history: final reading vs the snapshot after (in-band cells)
        after = d.final_s if d.after_s is None else d.after_s
        ok = (d.status == IN_BAND) & np.isfinite(d.final_s) & np.isfinite(after) & (d.after_s is not None)
        g, diff = d.final_s, after - d.final_s
    snap = {"cell": d.cell[ok], "g": g[ok] / US, "d": diff[ok] / US}
    pos = np.zeros(int(d.cell.max()) + 1, np.int64)
    pos[d.cell] = np.arange(d.cell.size)
    plan_i = pos[d.pairs["cell"]]
    pairs = {**d.pairs, "lo": d.targets_s[plan_i] - d.tolerance_s * d.policy["verify_margin"]}
    responsive = d.status[plan_i] != UNRESPONSIVE
    out = {"snap": snap}
    for name, op in (("set", Op.SET), ("reset", Op.RESET)):
        m = responsive & (pairs["op"] == OP_CODES[op])
        out[name] = {k: v[m] for k, v in pairs.items()}
    return out


def _resample(tables: dict, cells: np.ndarray, rng: np.random.Generator) -> dict:
    """The tables over cells drawn with replacement (a drawn cell's rows get a new cell id)."""
    pick = rng.choice(cells, cells.size)
    out = {}
    for name, t in tables.items():
        order = np.argsort(t["cell"], kind="stable")
        lo, hi = np.searchsorted(t["cell"][order], pick, "left"), np.searchsorted(t["cell"][order], pick, "right")
        counts = hi - lo
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = order[np.repeat(lo, counts) + within]
        out[name] = {k: v[rows] for k, v in t.items()}
        out[name]["cell"] = np.repeat(np.arange(pick.size), counts)
    return out


@dataclass
class Estimate:
    """One fitted parameter: estimate, base value, 95 % interval (± 1.96 bootstrap SD), goodness of fit."""

    name: str
    estimate: float
    base: float
    lo95: float
    hi95: float
    gof_name: str
    gof: float
    n: int


@dataclass
class FitResult:
    """The fitted parameter set, each estimate, what the record does not constrain."""

    params: DeviceParams
    estimates: list[Estimate]
    not_constrained: list[str]
    gof: dict = field(default_factory=dict)
    record: str = ""

    def to_dict(self) -> dict:
        def finite(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        return {"record": self.record,
                "estimates": [{k: finite(v) for k, v in vars(e).items()} for e in self.estimates],
                "not_constrained": self.not_constrained, "gof": {k: finite(v) for k, v in self.gof.items()},
                "params_digest": self.params.digest()}


def _get(p: DeviceParams, name: str, base: DeviceParams) -> float:
    if name == SET_FACTOR:
        return float(p.set.mean_dg_us[0] / base.set.mean_dg_us[0]) if base.set.mean_dg_us[0] else float("nan")
    group, rest = name.split(".")
    if "[" in rest:
        f, k = rest[:-1].split("[")
        return float(getattr(getattr(p, group), f)[int(k)])
    return float(getattr(getattr(p, group), rest))


def _apply(p: DeviceParams, est: dict) -> DeviceParams:
    """`p` with every estimate in place, clipped into the parameter ranges and signs."""
    groups: dict = {}
    if np.isfinite(est.get(SET_FACTOR, np.nan)):
        groups["set"] = {"mean_dg_us": [est[SET_FACTOR] * m for m in p.set.mean_dg_us]}
    for name, v in est.items():
        if name.startswith("_") or name == SET_FACTOR or not np.isfinite(v):
            continue
        group, rest = name.split(".")
        g = groups.setdefault(group, {})
        if "[" in rest:
            f, k = rest[:-1].split("[")
            arr = list(g.get(f, getattr(getattr(p, group), f)))
            arr[int(k)] = v
            g[f] = arr
        else:
            meta = {f.name: f.metadata for f in fields(getattr(p, group))}[rest]
            g[rest] = float(np.clip(v, meta.get("lo", -np.inf), meta.get("hi", np.inf)))
    if "reset" in groups and "mean_dg_us" in groups["reset"]:
        groups["reset"]["mean_dg_us"] = [min(x, 0.0) for x in groups["reset"]["mean_dg_us"]]
    for g in groups.values():
        for f, v in g.items():
            if isinstance(v, list):
                g[f] = tuple(round(max(float(x), 0.0) if f == "sigma_dg_us" else float(x), 6) for x in v)
    return replace(p, **{group: replace(getattr(p, group), **g) for group, g in groups.items()})


def _gof_key(name: str) -> str:
    if name.startswith("variation."):
        return name.split(".")[1].split("_")[0]
    return {"read_noise": "read_noise", "compliance": "compliance"}.get(name.split(".")[0],
                                                                        "compliance" if name == SET_FACTOR else "reset")


def fit_params(record, base: Optional[DeviceParams] = None, *, bootstrap: int = 20, seed: int = 0) -> FitResult:
    """Fit the parameters a programming record constrains (module doc), over `base` (default
    the yao2020 preset), with 95 % intervals from `bootstrap` resamplings of the cells.
    DataError, one line, for a record that is not one or holds too little to fit."""
    base = base or DeviceParams()
    d = read_programming(record)
    tables = _tables(d)
    n_pairs = tables["set"]["g0"].size + tables["reset"]["g0"].size
    if d.cell.size < MIN_CELLS or (n_pairs < MIN_PULSES and tables["snap"]["g"].size < MIN_CELLS):
        raise DataError(f"{record}: too few pulses to fit ({d.cell.size} cells, {n_pairs} pulses between verify "
                        f"reads, {tables['snap']['g'].size} cells read twice; need {MIN_CELLS} cells and "
                        f"{MIN_PULSES} pulses or {MIN_CELLS} cells read twice)")
    est = _estimate(tables, base, d.policy)
    names = [k for k in est if not k.startswith("_")]
    x0 = [est.get(k) for k in ("compliance.g_per_v_us", "compliance.vth_v", SET_FACTOR)]
    rng = np.random.default_rng(seed)
    cells = np.unique(d.cell)
    boots = np.full((bootstrap, len(names)), np.nan)
    for b in range(bootstrap):
        e = _estimate(_resample(tables, cells, rng), base, d.policy, None if None in x0 else x0)
        boots[b] = [e.get(k, np.nan) for k in names]
    fitted = _apply(base, est)
    estimates = []
    for j, name in enumerate(names):
        key = _gof_key(name)
        col = boots[:, j][np.isfinite(boots[:, j])]
        value = _get(fitted, name, base)
        half = 1.96 * col.std(ddof=1) if col.size >= 2 else np.nan
        lo, hi = value - half, value + half
        estimates.append(Estimate(name, value, 1.0 if name == SET_FACTOR else _get(base, name, base),
                                  float(lo), float(hi), "chi2/dof", float(est.get(f"_gof.{key}", np.nan)),
                                  int(est.get(f"_n.{key}", 0))))
    fitted_names = {n.split("[")[0] for n in names} | ({"set.mean_dg_us"} if SET_FACTOR in est else set())
    not_constrained = [f"{g}.{f.name}" for g, grp in fitted._groups() for f in fields(grp)
                       if f"{g}.{f.name}" not in fitted_names]
    for k, g_us in enumerate(base.reset.table_g_us):
        if f"reset.mean_dg_us[{k}]" not in est:
            not_constrained.append(f"reset.mean_dg_us[{k}], reset.sigma_dg_us[{k}] (fewer than "
                                   f"{MIN_PULSES_PER_BIN} RESET pulses near {g_us} µS)")
    if n_pairs == 0:
        not_constrained.append("every pulse parameter: the record holds no pulse history (programmed by the "
                               "instrument's own write-verify loop)")
    gof = {k[5:]: v for k, v in est.items() if k.startswith("_gof.")}
    return FitResult(fitted, estimates, not_constrained, gof, str(record))
