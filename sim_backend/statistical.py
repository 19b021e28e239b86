"""Statistical fast programming: write-verify outcomes drawn from a pulse-level run.

A `ProgrammingModel` holds, per target level, the empirical joint distribution of what the
pulse-level write-verify gave: final verify reading minus target, pulse count and status. It is
fitted once from a pulse-level run (a `hil program` record, or `fit_programming_model` running
one on a simulated chip) and saved with the digest of the parameter set it came from.

`StatisticalCrossbar` is a simulated chip whose `program` capability draws from the model: each
cell gets an outcome drawn from the model level nearest its target, the device state is set to
the drawn conductance (relaxation, drift and disturb restart as after a real pulse), and the
virtual clock advances by what the pulses would take. Cells the model does not describe on this
chip (stuck, unformed, on dead lines) are programmed pulse by pulse. The public `program` stays
the Crossbar's final checked method, so the policy and the verify reads pass the limits first.

Scope: outcomes depend on the starting states of the fit run (its chip's initial states), the
policy and the band; a call with another policy or band is refused.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.levels import LevelTable, format_us
from hil.ops.write_verify import write_verify, write_verify_host
from hil.programming import ProgramReport, ProgramStep, WriteVerifyPolicy
from hil.progress import Progress, ensure
from hil.registry import check_station

from .chip import SimulatedCrossbar
from .device import STUCK_NONE, S_PER_US
from .params import DeviceParams

MODEL_FORMAT = "memristor-hil-programming-model"
MODEL_VERSION = 1
#: fewest pulse-level outcomes a level needs to be drawn from
MIN_SAMPLES_PER_LEVEL = 10
#: relative difference of band half-widths accepted between the model and a program call
BAND_RTOL = 0.01


def _policy(policy) -> WriteVerifyPolicy:
    if policy is None:
        return WriteVerifyPolicy()
    if isinstance(policy, WriteVerifyPolicy):
        return policy
    return WriteVerifyPolicy.from_dict(policy)


@dataclass(frozen=True)
class ProgrammingModel:
    """Per-level empirical outcomes of pulse-level write-verify (siemens, one row per sample)."""

    levels_s: np.ndarray        # (K,) target levels, increasing
    tolerance_s: float          # band half-width of the fit run
    policy: dict                # WriteVerifyPolicy.to_dict() of the fit run
    params_digest: str          # DeviceParams.digest() of the fit run ("" when unknown)
    level: np.ndarray           # (M,) level index of each sample
    dev_s: np.ndarray           # (M,) final verify reading − target
    pulses: np.ndarray          # (M,) pulses used
    status: np.ndarray          # (M,) hil.programming status code
    source: str = ""

    def __post_init__(self) -> None:
        counts = np.bincount(self.level, minlength=self.levels_s.size)
        if self.levels_s.size == 0 or counts.min() < MIN_SAMPLES_PER_LEVEL:
            k = int(np.argmin(counts)) if counts.size else 0
            raise DataError(f"programming model from {self.source or 'this run'}: level #{k} has "
                            f"{int(counts[k]) if counts.size else 0} programmed cells; at least "
                            f"{MIN_SAMPLES_PER_LEVEL} per level are needed")
        order = np.argsort(self.level, kind="stable")
        for name in ("level", "dev_s", "pulses", "status"):
            object.__setattr__(self, name, getattr(self, name)[order])
        object.__setattr__(self, "_start", np.concatenate([[0], np.cumsum(counts)[:-1]]))
        object.__setattr__(self, "_count", counts)

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def from_report(cls, report: ProgramReport, level_index, levels_s, tolerance_s: float, policy,
                    params_digest: str = "", source: str = "", keep=None) -> "ProgrammingModel":
        """Model from a pulse-level report; `keep` (bool per cell) selects the cells it describes."""
        keep = np.ones(len(report), bool) if keep is None else np.asarray(keep, bool)
        keep &= np.isfinite(report.final_s) & report.finished
        li = np.asarray(level_index, np.int64)[keep]
        levels = np.asarray(levels_s, float)
        return cls(levels, float(tolerance_s), _policy(policy).to_dict(), params_digest,
                   li, report.final_s[keep] - levels[li], report.pulses[keep], report.status[keep], source)

    @classmethod
    def from_record(cls, path) -> "ProgrammingModel":
        """Model from the programming of a `hil program` record (every finished cell)."""
        from sim_backend.fit import read_programming      # the one reader of programming records
        rec = read_programming(path)
        levels, li = np.unique(rec.targets_s, return_inverse=True)
        report = ProgramReport(rec.targets_s, rec.final_s, rec.pulses, rec.status)
        return cls.from_report(report, li, levels, rec.tolerance_s, rec.policy, rec.params_digest, str(path))

    # ---- files ---------------------------------------------------------------------------
    def save(self, path, key: str = "") -> Path:
        """Write as .npz (atomically), with the format, policy, params digest and source."""
        path = Path(path)
        meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "tolerance_s": self.tolerance_s,
                "policy": self.policy, "params_digest": self.params_digest, "source": self.source, "key": key}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), levels_s=self.levels_s,
                     level=self.level, dev_s=self.dev_s, pulses=self.pulses, status=self.status)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "ProgrammingModel":
        """Read a model file; DataError naming the file if it is missing, unreadable or not a model."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"programming model {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: z[k] for k in ("levels_s", "level", "dev_s", "pulses", "status")}
        except Exception as e:
            raise DataError(f"programming model {path} is unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT or meta.get("version") != MODEL_VERSION:
            raise DataError(f"{path} is not a programming model file (format {MODEL_FORMAT} v{MODEL_VERSION})")
        model = cls(arrays["levels_s"].astype(float), float(meta["tolerance_s"]), dict(meta["policy"]),
                    str(meta["params_digest"]), arrays["level"].astype(np.int64), arrays["dev_s"].astype(float),
                    arrays["pulses"].astype(np.int64), arrays["status"].astype(np.int64), str(meta["source"]))
        object.__setattr__(model, "key", str(meta.get("key", "")))
        return model

    # ---- use -----------------------------------------------------------------------------
    def check_call(self, half_width_s: np.ndarray, policy: WriteVerifyPolicy) -> None:
        """ConfigError if the policy or the band half-widths are not the model's."""
        if policy.to_dict() != self.policy:
            diff = {k: v for k, v in policy.to_dict().items() if self.policy.get(k) != v}
            raise ConfigError(f"programming model ({self.source}) was fitted with another write-verify policy "
                              f"(this call differs in {diff}); fit a model with this policy")
        bad = np.abs(half_width_s - self.tolerance_s) > BAND_RTOL * self.tolerance_s
        if bad.any():
            raise ConfigError(f"programming model ({self.source}) was fitted with tolerance "
                              f"{format_us(self.tolerance_s)} µS; this call asks "
                              f"{format_us(float(half_width_s[np.argmax(bad)]))} µS; fit a model with it")

    def nearest(self, targets_s: np.ndarray) -> np.ndarray:
        """Index of the model level nearest each target; ConfigError for a target more than one
        level spacing outside the model's levels."""
        lv = self.levels_s
        spacing = float(np.min(np.diff(lv))) if lv.size > 1 else self.tolerance_s
        out = (targets_s < lv[0] - spacing) | (targets_s > lv[-1] + spacing)
        if out.any():
            raise ConfigError(f"target {format_us(float(targets_s[np.argmax(out)]))} µS is outside the "
                              f"programming model's levels {format_us(lv[0])}..{format_us(lv[-1])} µS")
        pos = np.clip(np.searchsorted(lv, targets_s), 1, max(lv.size - 1, 1))
        left = np.clip(pos - 1, 0, lv.size - 1)
        right = np.clip(pos, 0, lv.size - 1)
        return np.where(np.abs(targets_s - lv[left]) <= np.abs(lv[right] - targets_s), left, right)

    def draw(self, targets_s, rng: np.random.Generator, levels=None):
        """(final_s, pulses, status) per target, each cell's outcome drawn jointly from the
        samples of its level (`levels`, default the nearest level of each target)."""
        targets_s = np.asarray(targets_s, float)
        k = self.nearest(targets_s) if levels is None else np.asarray(levels, np.int64)
        j = self._start[k] + np.floor(rng.random(k.size) * self._count[k]).astype(np.int64)
        return targets_s + self.dev_s[j], self.pulses[j].copy(), self.status[j].copy()


class StatisticalCrossbar(SimulatedCrossbar):
    """A simulated chip whose `program` capability draws write-verify outcomes from a model."""

    capabilities = SimulatedCrossbar.capabilities | {"program"}

    def __init__(self, model: ProgrammingModel, *args, **kwargs) -> None:
        self.model = model
        super().__init__(*args, **kwargs)

    def _program(self, cells: Cells, targets_s, lo_s, hi_s, policy, *, on_step=None, progress=None,
                 cancel=None) -> ProgramReport:
        cancel, progress = ensure(cancel, progress)
        n = len(cells)
        half = (hi_s - lo_s) / (2 * policy.verify_margin)
        self.model.check_call(half, policy)
        k = self.model.nearest(targets_s)
        cancel.raise_if_cancelled()
        idx = cells.flat(self.geometry)
        dev = self.device
        drawn = dev.formed[idx] & (dev.stuck[idx] == STUCK_NONE)
        final, pulses, status = np.full(n, np.nan), np.zeros(n, np.int64), np.zeros(n, np.int64)
        t0 = self._t
        d = np.flatnonzero(drawn)
        final[d], pulses[d], status[d] = self.model.draw(targets_s[d], dev.rng, k[d])
        if d.size:
            self._settle(idx[d], final[d], pulses[d], policy)
            if on_step is not None:
                on_step(ProgramStep(iteration=0, time_s=self._t, done_idx=d, done_g_s=final[d],
                                    done_pulses=pulses[d], done_status=status[d]))
        progress(Progress(d.size, n, f"write-verify: {d.size} cells drawn from the programming model"))
        iterations = int(pulses.max()) + 1 if d.size else 0
        rest = np.flatnonzero(~drawn)
        if rest.size:                          # defective or unformed here: pulse by pulse
            sub = write_verify_host(self, cells[rest], targets_s[rest], lo_s[rest], hi_s[rest], policy,
                                    on_step=None if on_step is None else (lambda s: on_step(s.remap(rest))),
                                    cancel=cancel)
            final[rest], pulses[rest], status[rest] = sub.final_s, sub.pulses, sub.status
            iterations = max(iterations, sub.iterations)
        progress(Progress(n, n, "write-verify done"))
        return ProgramReport(targets_s.copy(), final, pulses, status, 0.0, self._t - t0, iterations)

    def _settle(self, idx: np.ndarray, g_s: np.ndarray, pulses: np.ndarray, policy: WriteVerifyPolicy) -> None:
        """Put cells `idx` in state `g_s` as their last pulse would have, and advance the clock by
        what the vectorized pulse-level loop would take (one read call and one pulse call per
        iteration; every cell read n_verify_reads times per iteration it is active)."""
        tp, dp = self.params.timing, self.params.defects
        reads = float(np.sum(pulses + 1)) * policy.n_verify_reads
        iters = int(pulses.max()) + 1
        total = (2 * iters * tp.call_overhead_s + reads * tp.read_cell_s
                 + float(pulses.sum()) * (policy.width_s + tp.pulse_overhead_s))
        t_last = self._t + total * pulses / max(int(pulses.max()), 1)
        g = np.clip(g_s, dp.g_floor_us * S_PER_US, dp.g_max_us * S_PER_US)
        self.device._restart(idx, g, t_last, np.ones(idx.size, bool))
        self._t += total
        self.counters["reads"] += int(reads)
        self.counters["pulses"] += int(pulses.sum())
        self._autosave()

    def _describe(self) -> dict:
        return {**super()._describe(), "programming_model": {"source": self.model.source,
                                                             "params_digest": self.model.params_digest}}


def open_model(path, base: Optional[Path] = None) -> ProgrammingModel:
    """The model at `path` (relative to `base`, a station file's folder, when given)."""
    p = Path(path)
    return ProgrammingModel.load(p if base is None or p.is_absolute() else base / p)


def fit_programming_model(station="sim", params=None, seed: int = 0, policy=None, n_cells: int = 4096,
                          levels: int = 32, g_min_s: float = 2e-6, g_max_s: float = 20e-6,
                          tolerance_s: Optional[float] = None, out=None) -> Path:
    """Run pulse-level write-verify of `n_cells` cells (levels in turn, LevelTable.linear(g_min_s,
    g_max_s, levels), band ± `tolerance_s`, default the table's) on a simulated chip of `station`
    ('sim' or a sim station file) with `params` (None: the station's; a DeviceParams or a parameter
    file) and `seed`, fit a ProgrammingModel to the cells working on that chip and save it to
    `out` (default: a cache file in the temp folder named by every argument, reused when present).
    Returns the model file's path."""
    spec = check_station(station, seed=seed, **({"params_path": params} if isinstance(params, (str, Path)) else {}))
    if not hasattr(spec, "params"):
        raise ConfigError(f"fit_programming_model needs a simulated station, got {station!r}")
    p = params if isinstance(params, DeviceParams) else spec.params
    pol = _policy(policy)
    table = LevelTable.linear(g_min_s, g_max_s, levels)
    tol = table.tolerance_s if tolerance_s is None else float(tolerance_s)
    if not (np.isfinite(tol) and tol > 0):
        raise ConfigError(f"tolerance_s must be a positive number of siemens, got {tolerance_s!r}")
    geom = spec.geometry
    if not 1 <= int(n_cells) <= geom.n_cells:
        raise ConfigError(f"n_cells must be 1..{geom.n_cells} (the chip's cells), got {n_cells!r}")
    key = hashlib.sha256(json.dumps({"v": MODEL_VERSION, "params": p.digest(), "seed": int(seed),
                                     "policy": pol.to_dict(), "n": int(n_cells), "levels": table.levels_s.tolist(),
                                     "tol": tol, "geometry": geom.to_dict()}, sort_keys=True).encode()).hexdigest()
    out = Path(out) if out is not None else Path(tempfile.gettempdir()) / f"hil-programming-model-{key[:20]}.npz"
    if out.is_file():
        try:
            if getattr(ProgrammingModel.load(out), "key", "") == key:
                return out
        except (ConfigError, DataError):
            pass                               # a stale or damaged cache file is rebuilt
    flat = np.arange(int(n_cells))
    li = flat % table.levels_s.size
    with SimulatedCrossbar(geom, p, seed=int(seed), limits=spec.limits) as xbar:
        working = xbar.device.formed[flat] & (xbar.device.stuck[flat] == STUCK_NONE)
        report = write_verify(xbar, Cells.from_flat(flat, geom), table.levels_s[li], tol, pol)
    model = ProgrammingModel.from_report(report, li, table.levels_s, tol, pol, p.digest(),
                                         f"pulse-level run, seed {int(seed)}, {int(n_cells)} cells", keep=working)
    return model.save(out, key)
