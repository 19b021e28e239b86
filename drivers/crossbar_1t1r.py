"""The 1T1R crossbar of a physical station: hil's Crossbar contract composed of the array board
and the SMUs named by the station file's channel map (drivers/station.py).

Fastest path per operation:
- `read`: the board's TIA/ADC (READ_CELLS, many cells per frame); with read.path = "smu" (or
  `read_smu`) one precise SMU reading per cell, the board routing each cell to the SMU bus.
- `pulse`: the board's pulse generator (PULSE, chunked); `vmm`: the board's parallel bit-serial read;
  `vmm_amplitude`: the board's amplitude read (VMM_AMP, protocol 2).
- capability `program`: the board firmware job (program.path = "board-firmware", PROGRAM_JOB in
  chunks) or the on-instrument 2600B script, one bus transaction per cell ("smu-script");
  "host" leaves programming to hil's generic loop over read/pulse.
Safety limits are checked by the Crossbar base class before anything is sent (this class
implements only its hooks); the board and the SMU drivers a station opens carry the station's
limits as well and check them, and their own hardware ranges, before any byte is written. `close()` switches every SMU output off and
grounds the board, best effort and idempotent, also after errors and Ctrl+C.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import numpy as np

from hil.crossbar import AmplitudeResult, Crossbar, VmmResult, check_read
from hil.errors import ConfigError, HilError
from hil.geometry import Cells
from hil.limits import Op
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

from .board import BOARD_READ_GATE_V, FIRMWARE_V_READ

log = logging.getLogger(__name__)

__all__ = ["InstrumentCrossbar"]

DEFAULT_NPLC = 1.0
DEFAULT_COMPLIANCE_A = 1e-3
DEFAULT_GATE_COMPLIANCE_A = 1e-6


class InstrumentCrossbar(Crossbar):
    """Crossbar over an `ArrayBoard` and SMU drivers, per a validated `StationSpec`.

    Takes ownership of the instruments: `close()` closes them all."""

    def __init__(self, spec, board, smus: dict) -> None:
        self.spec = spec
        self.board = board
        self.smus = dict(smus)
        self.geometry = spec.geometry
        self.limits = spec.limits
        # reads and VMMs on the board use its fixed read gate, SMU reads read.gate_v: check the higher
        self.read_gate_v = max(spec.read_gate_v, BOARD_READ_GATE_V)
        caps = set()
        if spec.program_path in ("board-firmware", "smu-script"):
            caps.add("program")
        self._bl = spec.smu_of("bl")
        self._gate = spec.smu_of("gate")
        if self._bl is not None:
            caps.update({"smu_read", "dc_sweep"})
        self.capabilities = frozenset(caps)
        self._armed: dict = {}                 # (instrument, channel) -> purpose it is configured for
        self._script_policy = None
        self._clock_offset = 0.0
        self._clock_last = 0.0
        self.stats = {"smu_reads": 0, "script_cells": 0, "board_jobs": 0}

    # ---- reads, pulses, vmm -----------------------------------------------------------------
    def _read(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        if self.spec.read_path == "smu":
            return self._read_smu(cells, v_read, n_avg)
        n_max = max(1, int(self.board.info.n_avg_max))
        total, left = np.zeros(len(cells)), n_avg
        while left > 0:                                   # averages beyond the board's n_avg_max
            k = min(left, n_max)
            total += k * self.board.read_cells(cells, v_read=v_read, n_avg=k)
            left -= k
        return total / n_avg

    def _read_smu(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        """Hook of `read_smu` (capability smu_read): one SMU measurement per cell."""
        if self._bl is None:
            raise ConfigError(f"station {self.spec.name}: read_smu needs channels.bl on an SMU channel")
        check_read(self.limits, v_read, self.spec.read_gate_v)
        bl = self._bl
        smu = self.smus[bl.instrument]
        comp = min(self._opt(bl, "compliance_a", DEFAULT_COMPLIANCE_A), self.limits["READ"].max_compliance_a)
        self._arm(bl, "read", comp)
        gate_on_board = self._gate is None
        if not gate_on_board:
            self._arm(self._gate, "gate", self._opt(self._gate, "gate_compliance_a", DEFAULT_GATE_COMPLIANCE_A))
        out = np.empty(len(cells))
        try:
            if not gate_on_board:
                self._level(self._gate, self.spec.read_gate_v)
            for i in range(len(cells)):
                self.board.route(cells[i:i + 1], bl="bus", sl="ground", wl="dac" if gate_on_board else "bus",
                                 gate_v=self.spec.read_gate_v if gate_on_board else 0.0)
                self._level(bl, v_read)
                cur = [self._measure(bl) for _ in range(n_avg)]
                self._level(bl, 0.0)
                out[i] = float(np.mean(cur)) / v_read
                self.stats["smu_reads"] += n_avg
        finally:
            self._quiet(bl, self._gate)
        return out

    def _pulse(self, cells: Cells, op: Op, v, v_gate, width) -> None:
        if self.spec.pulse_path == "smu":
            self._pulse_smu(cells, op, v, v_gate, width)
        else:
            self.board.pulse(cells, op.value, v, v_gate, width)

    def _pulse_smu(self, cells: Cells, op: Op, v, v_gate, width) -> None:
        """One SMU pulse per cell: the board routes the cell with BL (SET/FORM) or SL (RESET) on the
        SMU bus and the other line grounded; the gate comes from the board DAC or the gate SMU."""
        role = "sl" if op is Op.RESET else "bl"
        ref = self.spec.smu_of(role)
        comp = min(self._opt(ref, "compliance_a", DEFAULT_COMPLIANCE_A), self.limits[op].max_compliance_a)
        self._arm(ref, "pulse", comp)
        gate_on_board = self._gate is None
        if not gate_on_board:
            self._arm(self._gate, "gate", self._opt(self._gate, "gate_compliance_a", DEFAULT_GATE_COMPLIANCE_A))
        smu = self.smus[ref.instrument]
        drive = {"bl": "ground", "sl": "bus"} if op is Op.RESET else {"bl": "bus", "sl": "ground"}
        try:
            for i in range(len(cells)):
                self.board.route(cells[i:i + 1], **drive, wl="dac" if gate_on_board else "bus",
                                 gate_v=float(v_gate[i]) if gate_on_board else 0.0)
                if not gate_on_board:
                    self._level(self._gate, float(v_gate[i]))
                smu.pulse(float(v[i]), float(width[i]), **self._kw(ref))
        finally:
            self._quiet(ref, self._gate)

    def _dc_sweep(self, cells: Cells, volts, v_gate, compliance_a, terminal: str, dwell_s: float) -> np.ndarray:
        """Hook of `dc_sweep` (capability dc_sweep, every point checked): for each cell in turn the
        board routes it with `terminal` on the SMU bus and the other line grounded; the SMU is
        configured (compliance, ranges) before its output goes on, steps through the levels,
        waits `dwell_s` and measures the current at each; levels to 0 V and output off after."""
        ref = self.spec.smu_of(terminal.lower())
        if ref is None:
            raise ConfigError(f"station {self.spec.name}: dc_sweep on the {terminal} needs channels."
                              f"{terminal.lower()} on an SMU channel")
        gate_on_board = self._gate is None
        sign = 1.0 if terminal == "BL" else -1.0             # current through the cell, BL to SL
        drive = {"bl": "bus", "sl": "ground"} if terminal == "BL" else {"bl": "ground", "sl": "bus"}
        out = np.empty((volts.size, len(cells)))
        try:
            if not gate_on_board:
                self._arm(self._gate, "gate", self._opt(self._gate, "gate_compliance_a", DEFAULT_GATE_COMPLIANCE_A))
            for i in range(len(cells)):
                gate = None
                for k in range(volts.size):
                    if gate != v_gate[k]:
                        gate = float(v_gate[k])
                        if (ref.instrument, ref.channel) in self._armed:
                            self._level(ref, 0.0)              # never re-route a line at a level
                        self.board.route(cells[i:i + 1], **drive, wl="dac" if gate_on_board else "bus",
                                         gate_v=gate if gate_on_board else 0.0)
                        if not gate_on_board:
                            self._level(self._gate, gate)
                    self._arm(ref, "sweep", float(compliance_a[k]))
                    self._level(ref, float(volts[k]))
                    time.sleep(dwell_s)
                    out[k, i] = sign * self._measure(ref)
                self._level(ref, 0.0)
        finally:
            self._quiet(ref, self._gate)
            self._output_off(ref)
        return out

    def _output_off(self, ref) -> None:
        """`ref`'s output off (it is armed again, compliance first, before its next use)."""
        try:
            self.smus[ref.instrument].output(False, **self._kw(ref))
        except Exception as e:
            log.warning("station %s: could not switch %s off: %s", self.spec.name, ref, e)
        self._armed.pop((ref.instrument, ref.channel), None)

    def _vmm(self, pe, inputs, rows, cols, v_read, adc_full_scale_a) -> VmmResult:
        return self.board.vmm(pe, inputs, rows, cols, v_read=v_read, adc_full_scale_a=adc_full_scale_a)

    def _vmm_amplitude(self, pe, volts, rows, cols, adc_full_scale_a) -> AmplitudeResult:
        return self.board.vmm_amplitude(pe, volts, rows, cols, adc_full_scale_a=adc_full_scale_a)

    def now(self) -> float:
        """Board clock (STATUS uptime, kept monotonic across board reboots) or the host clock.
        When the board cannot be reached, the last reading (an error report must not be masked
        by the clock query that hil.ops.write_verify makes while handling it)."""
        if self.spec.clock == "host":
            return time.monotonic()
        try:
            t = float(self.board.status().uptime_s)
        except HilError as e:        # never let a clock query mask the error being handled
            log.warning("station %s: board clock unavailable (%s); using the last reading", self.spec.name, e)
            return self._clock_last
        if t + self._clock_offset < self._clock_last:         # the board rebooted
            self._clock_offset = self._clock_last
        self._clock_last = t + self._clock_offset
        return self._clock_last

    # ---- program capability ---------------------------------------------------------------------
    def _program(self, cells: Cells, targets_s, lo_s, hi_s, policy, *,
                 on_step: Optional[Callable] = None, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None):
        """Hook of `Crossbar.program` (policy and verify reads already checked against the limits):
        write-verify where it runs fastest (see the module docstring)."""
        if self.spec.program_path == "board-firmware":
            return self._program_board(cells, targets_s, lo_s, hi_s, policy, on_step, progress, cancel)
        if self.spec.program_path == "smu-script":
            return self._program_script(cells, targets_s, lo_s, hi_s, policy, on_step, progress, cancel)
        return super()._program(cells, targets_s, lo_s, hi_s, policy, on_step=on_step, progress=progress,
                                cancel=cancel)

    def _program_reads(self) -> tuple[float, float]:
        """Verify reads of the programming path: the 2600B script reads at `v_read_default` with
        program.read_gate_v on the gate; the board firmware at its fixed 0.2 V / 3.3 V gate."""
        if self.spec.program_path == "smu-script":
            return self.v_read_default, self.spec.script_read_gate_v
        if self.spec.program_path == "board-firmware":
            return FIRMWARE_V_READ, BOARD_READ_GATE_V
        return super()._program_reads()

    def _program_board(self, cells, targets_s, lo_s, hi_s, policy, on_step, progress, cancel):
        from hil.programming import ProgramStep
        it = [0]

        def on_chunk(pos: np.ndarray, rep) -> None:
            if on_step is not None:
                on_step(ProgramStep(iteration=it[0], time_s=self.now(), done_idx=np.asarray(pos, np.int64),
                                    done_g_s=rep.final_s, done_pulses=rep.pulses, done_status=rep.status))
            it[0] += 1

        self.stats["board_jobs"] += 1
        self.board.ground_all()          # the job routes each cell itself; start from a safe state
        return self.board.program_job(cells, targets_s, lo_s, hi_s, policy, progress=progress, cancel=cancel,
                                      on_chunk=on_chunk)

    def _program_script(self, cells, targets_s, lo_s, hi_s, policy, on_step, progress, cancel):
        from hil.programming import NOT_FINISHED, ProgramReport, ProgramStep
        cancel, progress = ensure(cancel, progress)
        bl, gate = self._bl, self._gate
        smu = self.smus[bl.instrument]
        n = len(cells)
        tgt, lo, hi = (np.broadcast_to(np.asarray(a, float), (n,)).copy() for a in (targets_s, lo_s, hi_s))
        final = np.full(n, np.nan)
        pulses = np.zeros(n, np.int64)
        status = np.full(n, NOT_FINISHED, np.int64)
        t0, tb0 = time.perf_counter(), self.now()
        done = 0

        def report() -> ProgramReport:
            return ProgramReport(tgt.copy(), final.copy(), pulses.copy(), status.copy(),
                                 time.perf_counter() - t0, float(self.now() - tb0), done)

        comp = min(self._opt(bl, "compliance_a", DEFAULT_COMPLIANCE_A),
                   *(self.limits[op].max_compliance_a for op in ("SET", "RESET", "FORM")))
        wd_old = self.board.watchdog_s
        # one cell may keep the board silent for the whole script: the watchdog must outlast it
        cell_s = 2.0 + policy.max_pulses * (policy.width_s + 0.05)
        wd_new = min(3600.0, max(wd_old, 2.0 * cell_s))
        try:
            self._arm(bl, "script", comp)
            self._arm(gate, "gate", self._opt(gate, "gate_compliance_a", DEFAULT_GATE_COMPLIANCE_A))
            if self._script_policy is None:
                smu.load_write_verify_script()
            if self._script_policy != policy:
                smu.set_write_verify_policy(policy, v_read=self.v_read_default,
                                            read_gate_v=self.spec.script_read_gate_v)
                self._script_policy = policy
            if wd_new != wd_old:
                self.board.set_watchdog(wd_new)
            for i in range(n):
                cancel.raise_if_cancelled()
                t_cell = self.now() if on_step is not None else 0.0
                self.board.route(cells[i:i + 1], bl="bus", sl="ground", wl="bus", gate_v=0.0)
                r = smu.write_verify_cell(lo[i], hi[i])
                final[i], pulses[i], status[i] = r.g_s, r.pulses, r.status
                done += 1
                self.stats["script_cells"] += 1
                if on_step is not None:
                    on_step(ProgramStep(iteration=i, time_s=t_cell, done_idx=np.array([i], np.int64),
                                        done_g_s=np.array([r.g_s]), done_pulses=np.array([r.pulses], np.int64),
                                        done_status=np.array([r.status], np.int64)))
                progress(Progress(i + 1, n, f"2600B script write-verify: {i + 1}/{n} cells, "
                                            f"{int(np.count_nonzero(status[:i + 1] == 0))} in band"))
        except HilError as e:
            e.report = report()
            raise
        finally:
            self._quiet(bl, gate)
            if wd_new != wd_old:
                try:
                    self.board.set_watchdog(wd_old)
                except Exception as e:           # best effort; close() grounds everything anyway
                    log.warning("station %s: could not restore the board watchdog: %s", self.spec.name, e)
        return report()

    # ---- SMU helpers ----------------------------------------------------------------------------
    def _opt(self, ref, key: str, default: float) -> float:
        return float(self.spec.instruments[ref.instrument].options.get(key, default))

    def _kw(self, ref) -> dict:
        return {} if ref.channel is None else {"channel": ref.channel}

    def _arm(self, ref, purpose: str, compliance_a: float) -> None:
        """Configure `ref` (compliance and ranges before output on), then output on at 0 V."""
        key = (ref.instrument, ref.channel)
        if self._armed.get(key) == (purpose, compliance_a):
            return
        smu = self.smus[ref.instrument]
        opts = self.spec.instruments[ref.instrument].options
        smu.configure(compliance_a, opts.get("v_range"), None, float(opts.get("nplc", DEFAULT_NPLC)), **self._kw(ref))
        smu.source_voltage(0.0, **self._kw(ref))
        smu.output(True, **self._kw(ref))
        self._armed[key] = (purpose, compliance_a)

    def _level(self, ref, volts: float) -> None:
        self.smus[ref.instrument].source_voltage(volts, **self._kw(ref))

    def _measure(self, ref) -> float:
        return float(self.smus[ref.instrument].measure_current(**self._kw(ref)))

    def _quiet(self, *refs) -> None:
        """SMU levels to 0 V and the board's routing released, best effort (outputs stay armed)."""
        for ref in refs:
            if ref is None:
                continue
            try:
                self._level(ref, 0.0)
            except Exception as e:
                log.warning("station %s: could not set %s to 0 V: %s", self.spec.name, ref, e)
        try:
            self.board.route(None)
        except Exception as e:
            log.warning("station %s: could not release the board routing: %s", self.spec.name, e)

    # ---- describe, close --------------------------------------------------------------------------
    def _describe(self) -> dict:
        insts = {}
        for name, s in self.spec.instruments.items():
            d = s.to_dict()
            if s.is_board:
                d["board"] = self.board.describe()
            else:
                smu = self.smus.get(name)
                d["identity"] = smu.identity.to_dict() if smu is not None and smu.identity else None
            insts[name] = d
        return {"backend": "instruments", "station": self.spec.name, "station_file": self.spec.path,
                "instruments": insts, "channels": {r: str(c) for r, c in self.spec.channels.items()},
                "program_path": self.spec.program_path, "read_path": self.spec.read_path,
                "pulse_path": self.spec.pulse_path,
                "read_gate_v": self.spec.read_gate_v, "clock": self.spec.clock,
                "emulated": self.spec.emulation is not None, "stats": dict(self.stats)}

    def _safe(self) -> None:
        """Outputs off and everything grounded, instruments stay connected (after an abort)."""
        errors = []
        for name, smu in self.smus.items():
            try:
                smu.safe_off()
            except Exception as e:
                errors.append(f"{name}: {e!r}")
        try:
            self.board.ground_all()
        except Exception as e:
            errors.append(f"{self.board.name}: {e!r}")
        if errors:
            log.error("station %s: making safe was incomplete: %s", self.spec.name, "; ".join(errors))

    def _close(self) -> None:
        """Every SMU output off (levels 0), then the board grounds everything. Each step is
        independent and best effort; failures are logged, never raised."""
        errors = []
        for name, smu in self.smus.items():
            try:
                smu.close()
            except BaseException as e:           # noqa: BLE001 - keep going on Ctrl+C as well
                errors.append(f"{name}: {e!r}")
        try:
            self.board.close()
        except BaseException as e:               # noqa: BLE001
            errors.append(f"{self.board.name}: {e!r}")
        if errors:
            log.error("station %s: closing was incomplete: %s", self.spec.name, "; ".join(errors))
        else:
            log.info("station %s: every SMU output off and the board grounded", self.spec.name)
