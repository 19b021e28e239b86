"""SimulatedCrossbar: implements hil's Crossbar contract directly on the device physics."""
from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from hil.crossbar import INPUT_BITS, AmplitudeResult, Crossbar, VmmResult, bipolar_adc_lsb
from hil.errors import ConfigError, DataError
from hil.geometry import YAO, Cells, Geometry
from hil.limits import Op, SafetyLimits
from hil.ops.vmm import adc_lsb
from hil.ops.write_verify import has_repeats
from hil.runstore.journal import JournalScan, RecordType, encode_record, file_header, iter_journal

from . import iv_physics
from .device import DeviceArray
from .bitserial import bitserial_vmm
from .noise import GaussianStream
from .params import DeviceParams

log = logging.getLogger(__name__)
STATE_FORMAT = "memristor-hil-sim-chip"


class SimulatedCrossbar(Crossbar):
    """A seeded, simulated chip. Optional `state_path` persists the chip between processes
    (like a physical chip keeps its state), written atomically after every programming call."""

    capabilities = frozenset({"advance", "read_stress", "dc_sweep"})

    def __init__(self, geometry: Geometry = YAO, params: Optional[DeviceParams] = None, seed: int = 0,
                 limits: Optional[SafetyLimits] = None, state_path=None) -> None:
        self.geometry = geometry
        self.params = params or DeviceParams()
        self.limits = limits or SafetyLimits()
        self.seed = int(seed)
        self.device = DeviceArray(geometry.n_cells, self.params, self.seed, shape=geometry.shape)
        self._t = 0.0
        self.counters = {"reads": 0, "pulses": 0, "vmm_calls": 0, "vmm_slots": 0}
        self.chip_id = uuid.uuid4().hex    # identity of this chip, kept in its state file
        self.state_path = Path(state_path) if state_path else None
        if self.state_path and self.state_path.exists():
            self.load_state(self.state_path)
        elif self.state_path:
            self.save_state(self.state_path)    # the chip (and its id) exists from the start

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
        self._dirty = True
        return g

    def _pulse(self, cells: Cells, op: Op, v, v_gate, width) -> None:
        idx = cells.flat(self.geometry)
        if has_repeats(idx, self.geometry.n_cells):
            raise ValueError("pulse(): a cell appears twice in one call; apply the pulses in separate calls")
        tp = self.params.timing
        self._t += tp.call_overhead_s + float(np.sum(width)) + len(cells) * tp.pulse_overhead_s
        fn = {Op.SET: self.device.set_pulse, Op.RESET: self.device.reset_pulse, Op.FORM: self.device.form_pulse}[op]
        fn(idx, v, v_gate, width, self._t)
        self.counters["pulses"] += len(cells)
        self._autosave()

    def _noise_stream(self) -> GaussianStream:
        """Lazily built source of fresh read-noise normals, seeded from the chip seed (deterministic)."""
        stream = getattr(self, "_stream", None)
        if stream is None or self._stream_seed != self.seed:
            self._stream = stream = GaussianStream(np.random.default_rng(np.random.SeedSequence([self.seed, 0x4E015E])))
            self._stream_seed = self.seed
        return stream

    def _selected_conductance(self, pe, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """(flat cell indices, conductance (len(rows), len(cols)) seen by a parallel read): the
        cells' conductance now, in series with the optional line resistance to the drivers."""
        g = self.geometry
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        idx = ((pe * g.rows + rr) * g.cols + cc).ravel()
        G = self.device.conductance(idx, self._t).reshape(rr.shape)
        r_seg = self.params.lines.r_segment_ohm
        if r_seg > 0:
            G = G / (1.0 + G * r_seg * (rr + cc + 2))
        return idx, G

    def _vmm(self, pe, inputs, rows, cols, v_read, adc_full_scale_a) -> VmmResult:
        """The fused bit-serial read (sim_backend.bitserial): exact per-slot read noise, ADC
        rounding and saturation, shift-add; each driven row's cells get one read pulse per slot."""
        adc, tp, rn = self.params.adc, self.params.timing, self.params.read_noise
        fs = adc.full_scale_a if adc_full_scale_a is None else adc_full_scale_a
        lsb = adc_lsb(fs, adc.bits)
        idx, G = self._selected_conductance(pe, rows, cols)
        scale = v_read / lsb                       # slot current / lsb = scale * sum_i b_i G_ij
        noisy = rn.rel > 0 or rn.abs_us > 0
        var = (self.device.read_noise_sigma(G) * scale) ** 2 if noisy else None
        r = bitserial_vmm(inputs, G * scale, var, 2 ** adc.bits - 1, self._noise_stream() if noisy else None)
        nb, batch = INPUT_BITS, inputs.shape[0]
        self.device.add_dose(idx, np.repeat(r.row_pulses, len(cols)), v_read, tp.slot_s)
        self._t += tp.call_overhead_s + nb * batch * (tp.slot_s + tp.slot_overhead_s)
        self.counters["vmm_calls"] += 1
        self._dirty = True
        self.counters["vmm_slots"] += nb * batch
        return VmmResult(codes=r.codes, lsb_a=lsb, v_read=v_read,
                         saturated=r.saturated, adc_bits=adc.bits, input_bits=nb)

    def _vmm_amplitude(self, pe, volts, rows, cols, adc_full_scale_a) -> AmplitudeResult:
        """One read with signed row voltages and one bipolar conversion per vector; the read
        noise, line resistance and disturb models of the bit-serial read."""
        adc, tp, rn = self.params.adc, self.params.timing, self.params.read_noise
        fs = adc.full_scale_a if adc_full_scale_a is None else adc_full_scale_a
        try:
            lsb = bipolar_adc_lsb(fs, adc.bits)
        except ValueError as e:
            raise ConfigError(f"amplitude VMM: {e} (params adc.bits)") from None
        top = float(2 ** (adc.bits - 1) - 1)
        idx, G = self._selected_conductance(pe, rows, cols)
        q = (volts @ G) / lsb                                       # mean codes: sum_i V_i G_ij / lsb
        if rn.rel > 0 or rn.abs_us > 0:
            # each driven cell adds current noise of sigma = |V_i| sqrt((rel G)^2 + abs^2)
            var = (volts * volts) @ ((rn.rel * G) ** 2 + (rn.abs_us * 1e-6) ** 2)
            q += np.sqrt(var) / lsb * self._noise_stream().normals(q.size).reshape(q.shape)
        np.rint(q, out=q)
        sat = np.abs(q) >= top
        np.clip(q, -top, top, out=q)
        # disturb: each driven row's cells see |V| for one conversion, expressed in reference reads
        d = self.params.disturb
        a = np.abs(volts)
        dose = np.where(a > 0, np.exp((a - d.v_ref) / d.v_slope), 0.0).sum(axis=0)
        self.device.add_dose(idx, np.repeat(dose, len(cols)), d.v_ref, tp.slot_s)
        batch = volts.shape[0]
        self._t += tp.call_overhead_s + batch * (tp.slot_s + tp.slot_overhead_s)
        self.counters["vmm_calls"] += 1
        self.counters["vmm_slots"] += batch
        self._dirty = True
        return AmplitudeResult(codes=q.astype(np.int64), lsb_a=lsb, saturated=sat, adc_bits=adc.bits)

    def _read_stress(self, cells: Cells, n_reads: int, v_read: float, width_s: float) -> None:
        """`n_reads` read pulses on every cell of the selection in parallel (no readout)."""
        self.device.add_dose(cells.flat(self.geometry), n_reads, v_read, width_s)
        self._t += n_reads * (width_s + self.params.timing.slot_overhead_s + 1e-7)
        self._autosave()

    def _dc_sweep(self, cells: Cells, volts, v_gate, compliance_a, terminal: str, dwell_s: float) -> np.ndarray:
        """DC staircase with the I–V physics of iv_physics (an SMU sweeps the cells one after another)."""
        idx = cells.flat(self.geometry)
        if has_repeats(idx, self.geometry.n_cells):
            raise ValueError("dc_sweep(): a cell appears twice in the selection")
        v_cell = volts if terminal == "BL" else -volts
        i_a = iv_physics.dc_sweep(self.device, idx, v_cell, v_gate, compliance_a, dwell_s, self._t)
        self._t += self.params.timing.call_overhead_s + idx.size * volts.size * (dwell_s + self.params.timing.read_cell_s)
        self.counters["reads"] += idx.size * volts.size
        self._autosave()
        return i_a

    def _describe(self) -> dict:
        return {"backend": "sim", "model": "SimulatedCrossbar", "seed": self.seed,
                "params": self.params.to_dict(), "state_path": str(self.state_path or ""),
                "clock_s": self._t, "counters": dict(self.counters), "chip": self.identity()}

    def identity(self) -> dict:
        """What tells this chip from any other: its random id, seed and geometry."""
        return {"id": self.chip_id, "seed": self.seed, "geometry": self.geometry.to_dict()}

    def _close(self) -> None:
        if self.state_path is not None and (self._dirty or self._logged):
            self.save_state(self.state_path)

    # ---- oracle access for experiments and tests (not available on hardware) -----------
    def true_conductance(self, cells: Optional[Cells] = None) -> np.ndarray:
        """Noise-free conductance (S) of cells (default all, shaped like the geometry)."""
        if cells is None:
            return self.device.conductance(np.arange(self.geometry.n_cells), self._t).reshape(self.geometry.shape)
        return self.device.conductance(cells.validate(self.geometry).flat(self.geometry), self._t)

    def stuck_mask(self) -> np.ndarray:
        return (self.device.stuck != 0).reshape(self.geometry.shape)

    # ---- persistence ------------------------------------------------------------------
    # The chip's own state file is rewritten whole only once its change log has grown to the
    # file's size, and on close; in between, each call that changes the chip appends the cells it
    # changed (their mutable state, the clock and the random state) to `<state>.log` as one framed,
    # checksummed journal record, so a killed process loses nothing it applied, at a cost linear
    # in the cells changed. Records carry the chip id and a sequence number; loading applies those
    # of this chip newer than the file, up to the first damaged one.
    def save_state(self, path) -> Path:
        """Write the whole chip state atomically (temp file + rename); for the chip's own state
        file this also retires its change log."""
        path = Path(path)
        meta = {"format": STATE_FORMAT, "version": 1, "chip_id": self.chip_id, "seed": self.seed, "clock_s": self._t,
                "geometry": self.geometry.to_dict(), "params": self.params.to_dict(),
                "rng": self.device.rng.bit_generator.state, "counters": self.counters, "log_seq": self._log_seq}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **self.device.state())
        os.replace(tmp, path)
        if path == self.state_path:
            self.device.take_changed()
            change_log(path).unlink(missing_ok=True)
            self._log_bytes, self._logged = 0, False
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
        self.chip_id = str(meta.get("chip_id") or f"unnamed-seed-{self.seed}")
        self._t = float(meta["clock_s"])
        self.counters.update(meta.get("counters", {}))
        self.device.load_state(arrays, meta["rng"])
        self._log_seq = int(meta.get("log_seq", 0))
        self._apply_log(change_log(path))

    def _apply_log(self, log_path: Path) -> None:
        if not log_path.exists():
            return
        scan = JournalScan(log_path)
        try:
            for rec in iter_journal(log_path, scan):
                h = rec.header.get("attrs", {})
                if scan.damaged:
                    break                      # later changes would build on a lost one
                if h.get("chip") != self.chip_id or int(h.get("seq", 0)) <= self._log_seq:
                    continue
                self.device.apply_changes(rec.arrays["idx"], rec.arrays)
                self._t, self._log_seq = float(h["clock_s"]), int(h["seq"])
                self.counters.update(h["counters"])
                self.device.rng.bit_generator.state = h["rng"]
        except (DataError, KeyError, ValueError) as e:
            raise DataError(f"simulated chip change log {log_path} is unreadable ({e}); delete it to "
                            f"keep the chip as its state file holds it") from None
        # after a damaged record nothing may be appended (it would be skipped): rewrite first
        self._log_bytes = float("inf") if scan.damaged else scan.file_bytes

    def _log_changes(self, idx: np.ndarray) -> None:
        """Append the state of the changed cells `idx` to the chip's change log (one write)."""
        self._log_seq += 1
        head = {"chip": self.chip_id, "seq": self._log_seq, "clock_s": self._t, "counters": self.counters,
                "rng": self.device.rng.bit_generator.state}
        data = encode_record(RecordType.PUT, {"name": "chip", "attrs": head},
                             [("idx", idx), *self.device.changes(idx).items()])
        log_path = change_log(self.state_path)
        if not log_path.exists():
            data = file_header() + data
        with open(log_path, "ab") as f:
            f.write(data)
        self._log_bytes += len(data)
        self._logged = True

    _dirty = False
    _log_seq = 0          # last change-log record applied or written
    _log_bytes = 0        # size of the change log since the state file was last written
    _logged = False       # this session appended to the change log (close folds it into the file)

    def _autosave(self) -> None:
        if self.state_path is None:
            return
        idx = self.device.take_changed()
        whole = sum(a.nbytes for a in self.device.state().values())
        # the file is rewritten once the log has outgrown it, or when a record would be half its size
        if idx is None or self._log_bytes > whole or 2 * idx.size * self.device.changed_bytes > whole:
            self.save_state(self.state_path)
        else:
            self._log_changes(idx)
        self._dirty = False


def change_log(state_path: Path) -> Path:
    """The change log beside a simulated chip's state file."""
    return state_path.with_name(state_path.name + ".log")
