"""Driver of the array board over pyserial, written from docs/board-protocol.md (protocol 2).

    with ArrayBoard("hilsim://lab/board", expected_geometry=YAO) as board:
        board.pulse(cells, "SET", 1.6, gate_v, 50e-9)
        g = board.read_cells(cells)
        res = board.vmm(0, x, rows, cols)
        amp = board.vmm_amplitude(0, volts, rows, cols)      # protocol 2: signed row voltages

The driver talks version 1 (every board understands it) until a version-2 command is needed;
then it asks the board for version 2 (§1.4) and refuses the command on a protocol-1 board.

Every method maps to one protocol command (large operations are split into chunks that fit
`max_payload`). NAKs raise `BoardNak` (a BackendError naming the command and the error code).
On a timeout or a corrupted reply the driver flushes the input, re-identifies the board and
retries idempotent commands only; PULSE and PROGRAM_JOB are never repeated: the error says
whether the board executed them (STATUS `last_seq`). Leaving the context manager (normally, on
an exception or Ctrl+C) grounds everything, best effort and logged.
"""
from __future__ import annotations

import logging
import struct
import time
from typing import Callable, Optional

import numpy as np
import serial
from serial import SerialException

from hil.crossbar import (INPUT_BITS, AmplitudeResult, VmmResult, bipolar_adc_lsb, check_amplitudes,
                          check_level, check_policy, check_read, per_cell, validate_inputs, validate_volts)
from hil.errors import AddressError, BackendError, ConfigError, HilError, InstrumentTimeout, SafetyViolation
from hil.geometry import Cells, Geometry
from hil.limits import SafetyLimits
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

from . import board_frames as bf
from .board_frames import BoardInfo, BoardStatus

log = logging.getLogger(__name__)

__all__ = ["ArrayBoard", "BoardNak", "BoardInfo", "BoardStatus"]


class BoardNak(BackendError):
    """The board refused a command (NAK). Nothing was applied."""

    def __init__(self, message: str, command: str, error: str, detail: Optional[int]) -> None:
        super().__init__(message)
        self.command, self.error, self.detail = command, error, detail


class _NoReply(Exception):
    pass


class _Garbled(Exception):
    pass


_OPS = {"SET": 1, "RESET": 2, "FORM": 3}

#: fixed choices of the protocol (docs/board-protocol.md): the word-line level of READ_CELLS,
#: VMM and VMM_AMP reads, and the read voltage of PROGRAM_JOB's verify reads (neither is in the protocol)
BOARD_READ_GATE_V = 3.3
FIRMWARE_V_READ = 0.2


class ArrayBoard:
    """The array board on a serial port (`port`: a pyserial URL/device name or an open port object).

    Connecting identifies the board (ConfigError if its geometry differs from
    `expected_geometry`), sets the watchdog to `watchdog_s` and clears latched events.
    `limits` (the station's SafetyLimits): every pulse, read, VMM, gate level and programming
    policy is checked against them (SafetyViolation) before any byte is written.
    `protocol`: the newest protocol version the driver may speak (1 makes it a protocol-1 host)."""

    def __init__(self, port, *, name: str = "board", expected_geometry: Optional[Geometry] = None,
                 baudrate: int = 921600, timeout_s: float = 1.0, job_timeout_s: float = 600.0,
                 retries: int = 2, watchdog_s: float = 5.0, limits: Optional[SafetyLimits] = None,
                 protocol: int = bf.VERSION) -> None:
        if protocol not in bf.VERSIONS:
            raise ValueError(f"protocol must be one of {bf.VERSIONS}, got {protocol!r}")
        self.name = name
        self.max_protocol = int(protocol)
        self.version = 1                           # version of the conversation (frames sent)
        self._board_protocol: Optional[int] = None  # newest version the board speaks, once asked
        self.limits = limits
        self.timeout_s = float(timeout_s)
        self.job_timeout_s = float(job_timeout_s)
        self.retries = int(retries)
        self.watchdog_s = float(watchdog_s)
        self.expected_geometry = expected_geometry
        self.stats = {"commands": 0, "frames_out": 0, "bytes_out": 0, "bytes_in": 0, "retries": 0,
                      "resyncs": 0, "timeouts": 0, "garbled": 0, "stale_replies": 0, "resets_seen": 0}
        self.info: Optional[BoardInfo] = None
        self._seq = 0
        self._route: Optional[tuple] = None
        self._closed = False
        self._connected = False
        self._in_event = False
        if isinstance(port, str):
            self.port_name = port
            try:
                self._port = serial.serial_for_url(port, baudrate=baudrate, timeout=self.timeout_s)
            except (SerialException, ValueError, OSError) as e:
                raise BackendError(f"cannot open the array board '{name}' on {port}: {e}; check the "
                                   f"serial port in the station file and that the board is connected") from None
        else:
            self._port = port
            self.port_name = str(getattr(port, "port", None) or type(port).__name__)
        try:
            self._connect()
        except BaseException:
            self._closed = True
            self._close_port()
            raise

    # ---- connection -------------------------------------------------------------------
    def _connect(self) -> None:
        info = self.identify()
        if info.protocol != self.version:
            raise BackendError(f"board '{self.name}' on {self.port_name} answers a protocol-{self.version} "
                               f"IDENTIFY with protocol {info.protocol}; this driver speaks protocols "
                               f"{', '.join(map(str, bf.VERSIONS))}; update the firmware or the driver")
        g = self.expected_geometry
        if g is not None and (info.n_pe, info.rows, info.cols) != (g.n_pe, g.rows, g.cols):
            raise ConfigError(
                f"board '{self.name}' on {self.port_name} ({info.model} {info.firmware}) reports geometry "
                f"{info.n_pe}x{info.rows}x{info.cols} but the station expects {g.n_pe}x{g.rows}x{g.cols}; "
                f"fix the geometry in the station file or connect the right board")
        self.set_watchdog(self.watchdog_s)
        st = self.status(clear=True)
        if st.watchdog_fired:
            log.warning("board %s: its watchdog had fired before this connection (everything was grounded)",
                        self.name)
        log.info("board %s on %s: %s firmware %s serial %s, %dx%dx%d, boot #%d, watchdog %.3g s",
                 self.name, self.port_name, info.model, info.firmware, info.serial, info.n_pe, info.rows,
                 info.cols, st.boot_count, self.watchdog_s)
        self._connected = True

    # ---- commands -------------------------------------------------------------------------
    def identify(self) -> BoardInfo:
        """IDENTIFY: model, firmware, protocol, geometry and ranges (cached in `info`)."""
        self.info = bf.parse_identify(self._command(bf.IDENTIFY))
        return self.info

    def status(self, clear: bool = False) -> BoardStatus:
        """STATUS; `clear` acknowledges latched reset/watchdog events (needed after a watchdog)."""
        return bf.parse_status(self._command(bf.STATUS, struct.pack("<B", 1 if clear else 0)))

    def clear_events(self) -> BoardStatus:
        """Acknowledge a fired watchdog or a reboot so output commands are accepted again."""
        st = self.status(clear=True)
        if st.watchdog_fired:
            self._route = None
        return st

    def set_watchdog(self, timeout_s: float) -> float:
        """Set the watchdog timeout (0 disables; else 0.001..3600 s); returns the value in effect."""
        t = float(timeout_s)
        if not (t == 0.0 or 1e-3 <= t <= 3600.0):
            raise ValueError(f"watchdog timeout must be 0 (off) or within 0.001..3600 s, got {timeout_s}")
        (t_eff,) = struct.unpack("<f", self._command(bf.WATCHDOG, struct.pack("<f", t)))
        self.watchdog_s = t
        return float(t_eff)

    def ground_all(self) -> None:
        """Disconnect every selection and ground BL, SL and WL (gate DAC 0 V)."""
        self._command(bf.GROUND_ALL)
        self._route = None
        self._log_output("ground_all")

    def route(self, cells: Optional[Cells], *, bl: str = "open", sl: str = "open", wl: str = "open",
              gate_v: float = 0.0) -> None:
        """Connect the lines of `cells` (None: nothing) to 'open' | 'ground' | 'bus' (| 'dac' for WL),
        with the gate DAC at `gate_v` volts."""
        info = self._info()
        for term, how in (("BL", bl), ("SL", sl), ("WL", wl)):
            if how not in bf.DRIVES or (how == "dac" and term != "WL"):
                allowed = "open, ground, bus, dac" if term == "WL" else "open, ground, bus"
                raise ValueError(f"route: {term} drive {how!r} is not one of {allowed}")
        self._check_gate(gate_v)
        if cells is None:
            pe = row = col = np.zeros(0, np.int64)
        else:
            pe, row, col = self._addresses(cells)
        payload = (struct.pack("<BBBBf", bf.DRIVES[bl], bf.DRIVES[sl], bf.DRIVES[wl], 0, float(gate_v))
                   + bf.cell_list(pe, row, col))
        if len(payload) > info.max_payload:
            raise ValueError(f"route: {pe.size} cells do not fit one frame ({info.max_payload} bytes)")
        self._command(bf.ROUTE, payload)
        self._route = (None if cells is None else Cells(pe, row, col), bl, sl, wl, float(gate_v))
        self._log_output("route", n=int(pe.size), bl=bl, sl=sl, wl=wl, gate_v=float(gate_v))

    def set_gate(self, volts: float) -> None:
        """Gate DAC level (V) on the routed word lines."""
        self._check_gate(volts)
        self._command(bf.SET_GATE, struct.pack("<f", float(volts)))
        if self._route is not None:
            self._route = self._route[:4] + (float(volts),)

    def pulse(self, cells: Cells, op, v, v_gate, width_s) -> int:
        """Board pulse generator: one `op` pulse ('SET' | 'RESET' | 'FORM') per cell, in order.
        `v`, `v_gate`, `width_s` are scalars or one value per cell. Returns pulses applied."""
        info = self._info()
        opname = str(getattr(op, "value", op)).upper()
        if opname not in _OPS:
            raise ValueError(f"pulse: op must be SET, RESET or FORM, got {op!r}")
        pe, row, col = self._addresses(cells)
        n = pe.size
        v, g, w = (per_cell(a, n, name) for a, name in ((v, "v"), (v_gate, "v_gate"), (width_s, "width_s")))
        flat = (pe * info.rows + row) * info.cols + col
        if np.unique(flat).size != n:
            raise ValueError("pulse: a cell appears twice in one call; apply those pulses in separate calls")
        if self.limits is not None:
            try:
                self.limits.check(opname, v, g, w, where=lambda i: f"cell #{i}")
            except SafetyViolation as e:
                raise SafetyViolation(f"board '{self.name}': {e}") from None
        _check_range("pulse amplitude", v, 0.0, info.v_pulse_max, "V", self, open_low=True)
        _check_range("gate voltage", g, 0.0, info.v_gate_max, "V", self)
        _check_range("pulse width", w, info.width_min_s, info.width_max_s, "s", self)
        if n == 0:
            return 0
        per = max(1, (info.max_payload - 4) // 18)
        done = 0
        for a in range(0, n, per):
            s = slice(a, a + per)
            payload = (struct.pack("<BB", _OPS[opname], 0) + bf.cell_list(pe[s], row[s], col[s])
                       + bf.f32s(v[s]) + bf.f32s(g[s]) + bf.f32s(w[s]))
            (k,) = struct.unpack("<H", self._command(bf.PULSE, payload))
            done += k
        return done

    def read_cells(self, cells: Cells, *, v_read: float = 0.2, n_avg: int = 1) -> np.ndarray:
        """Single-cell reads through the board's TIA/ADC: conductances in siemens (float64)."""
        info = self._info()
        pe, row, col = self._addresses(cells)
        if self.limits is not None:
            check_read(self.limits, v_read, BOARD_READ_GATE_V, f"board '{self.name}': ")
        if not 0 < float(v_read) <= info.v_read_max * (1 + 1e-6):
            raise SafetyViolation(f"read voltage {v_read} V outside the board range 0..{info.v_read_max:.3g} V")
        if not 1 <= int(n_avg) <= info.n_avg_max:
            raise ValueError(f"n_avg must be within 1..{info.n_avg_max}, got {n_avg}")
        out = np.empty(pe.size)
        per = max(1, min((info.max_payload - 8) // 6, (info.max_payload - 2) // 4))
        for a in range(0, pe.size, per):
            s = slice(a, a + per)
            r = bf.Reader(self._command(bf.READ_CELLS, struct.pack("<fH", float(v_read), int(n_avg))
                                        + bf.cell_list(pe[s], row[s], col[s])), "READ_CELLS")
            (k,) = r.take("H")
            out[s] = r.array("<f4", k)
            r.end()
            if k != out[s].size:
                raise BackendError(f"board '{self.name}': READ_CELLS returned {k} values for {out[s].size} cells")
        return out

    def vmm(self, pe: int, inputs, rows=None, cols=None, *, v_read: float = 0.2,
            adc_full_scale_a: Optional[float] = None) -> VmmResult:
        """Parallel bit-serial read of `inputs` (batch x len(rows), 0..255) on PE `pe`;
        the batch is split into chunks that fit a frame."""
        info = self._info()
        rows, cols = self._lines("vmm", pe, rows, cols)
        x = validate_inputs(inputs, rows.size, info.input_bits)
        if self.limits is not None:
            check_read(self.limits, v_read, BOARD_READ_GATE_V, f"board '{self.name}': vmm: ")
        if not 0 < float(v_read) <= info.v_read_max * (1 + 1e-6):
            raise SafetyViolation(f"vmm read voltage {v_read} V outside the board range 0..{info.v_read_max:.3g} V")
        fs = self._adc_fs(adc_full_scale_a)
        per = self._per_frame("vmm", 16 + 2 * (rows.size + cols.size), rows.size, 5 * cols.size)
        codes = np.empty((x.shape[0], cols.size), np.int64)
        sat = np.empty((x.shape[0], cols.size), bool)
        lsb = bits = nbits = None
        for a in range(0, x.shape[0], per):
            xc = x[a:a + per]
            payload = (struct.pack("<HHHHff", int(pe), rows.size, cols.size, xc.shape[0], float(v_read), fs)
                       + bf.u16s(rows) + bf.u16s(cols) + xc.astype(np.uint8).tobytes())
            r = bf.Reader(self._command(bf.VMM, payload), "VMM")
            b, nc, bits, nbits = r.take("HHBB")
            (lsb,) = r.take("f")
            self._check_size("VMM", b, nc, xc.shape[0], cols.size)
            codes[a:a + b] = r.array("<u4", b * nc).reshape(b, nc)
            sat[a:a + b] = r.array("u1", b * nc).reshape(b, nc) != 0
            r.end()
        if lsb is None:                                   # empty batch: nothing was sent
            lsb = (fs or info.adc_fs_default_a) / (2 ** info.adc_bits - 1)
            return VmmResult(codes, float(lsb), float(v_read), sat, info.adc_bits, INPUT_BITS)
        return VmmResult(codes=codes, lsb_a=float(lsb), v_read=float(v_read), saturated=sat,
                         adc_bits=int(bits), input_bits=int(nbits))

    def vmm_amplitude(self, pe: int, volts, rows=None, cols=None, *,
                      adc_full_scale_a: Optional[float] = None) -> AmplitudeResult:
        """Parallel amplitude read (VMM_AMP, protocol 2): row rows[i] driven at the signed voltage
        volts[b, i] (batch x len(rows), V), each column digitized once by the bipolar ADC; the
        batch is split into chunks that fit a frame. On a protocol-1 board: BackendError, the
        read not sent."""
        info = self._info()
        rows, cols = self._lines("vmm_amplitude", pe, rows, cols)
        v = validate_volts(volts, rows.size)
        if self.limits is not None:
            check_amplitudes(self.limits, v, BOARD_READ_GATE_V, rows, f"board '{self.name}': vmm_amplitude: ")
        if v.size and np.abs(v).max() > info.v_read_max * (1 + 1e-6):
            raise SafetyViolation(f"vmm_amplitude row voltage {v.flat[np.abs(v).argmax()]:.4g} V outside the "
                                  f"board range -{info.v_read_max:.3g}..{info.v_read_max:.3g} V; nothing was sent")
        fs = self._adc_fs(adc_full_scale_a)
        self._require_version(bf.VMM_AMP, "the amplitude VMM")
        per = self._per_frame("vmm_amplitude", 12 + 2 * (rows.size + cols.size), 4 * rows.size, 3 * cols.size)
        codes = np.empty((v.shape[0], cols.size), np.int64)
        sat = np.empty((v.shape[0], cols.size), bool)
        lsb = bits = None
        for a in range(0, v.shape[0], per):
            vc = v[a:a + per]
            payload = (struct.pack("<HHHHf", int(pe), rows.size, cols.size, vc.shape[0], fs)
                       + bf.u16s(rows) + bf.u16s(cols) + bf.f32s(vc))
            r = bf.Reader(self._command(bf.VMM_AMP, payload), "VMM_AMP")
            b, nc, bits, _ = r.take("HHBB")
            (lsb,) = r.take("f")
            self._check_size("VMM_AMP", b, nc, vc.shape[0], cols.size)
            codes[a:a + b] = r.array("<i2", b * nc).reshape(b, nc)
            sat[a:a + b] = r.array("u1", b * nc).reshape(b, nc) != 0
            r.end()
        if lsb is None:                                   # empty batch: nothing was sent
            bits = info.adc_bits
            lsb = bipolar_adc_lsb(fs or info.adc_fs_default_a, bits)
        return AmplitudeResult(codes=codes, lsb_a=float(lsb), saturated=sat, adc_bits=int(bits))

    def program_job(self, cells: Cells, targets_s, lo_s, hi_s, policy=None, *,
                    progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                    on_chunk: Optional[Callable[[np.ndarray, "object"], None]] = None,
                    chunk_cells: Optional[int] = None):
        """Firmware write-verify of `cells` into [lo_s, hi_s] (siemens, one per cell or scalars).

        Runs as consecutive PROGRAM_JOB chunks; `on_chunk(positions, ProgramReport)` after each;
        cancel is checked between chunks (Cancelled carries `.report` with status -1 for the
        cells not yet programmed). Returns a hil.ops.write_verify.ProgramReport in selection order."""
        from hil.programming import NOT_FINISHED, ProgramReport, WriteVerifyPolicy
        policy = WriteVerifyPolicy() if policy is None else policy
        info = self._info()
        pe, row, col = self._addresses(cells)
        n = pe.size
        tgt, lo, hi = (per_cell(a, n, name) for a, name in ((targets_s, "targets_s"), (lo_s, "lo_s"), (hi_s, "hi_s")))
        if (lo > hi).any():
            raise ValueError(f"program_job: band of cell #{int(np.argmax(lo > hi))} has lo above hi")
        flat = (pe * info.rows + row) * info.cols + col
        if np.unique(flat).size != n:
            raise ValueError("program_job: a cell appears twice in the selection; program each cell once")
        if not isinstance(policy, WriteVerifyPolicy):
            raise ConfigError(f"program_job: policy must be a WriteVerifyPolicy, got {type(policy).__name__}")
        if self.limits is not None:
            check_policy(self.limits, policy, FIRMWARE_V_READ, BOARD_READ_GATE_V,
                         f"board '{self.name}': program_job: ")
        for name, value, hi_lim in (("set_v_bl", policy.set_v_bl, info.v_pulse_max),
                                    ("reset_v_sl_max", policy.reset_v_sl_max, info.v_pulse_max),
                                    ("form_v_max", policy.form_v_max, info.v_pulse_max),
                                    ("set_gate_max", policy.set_gate_max, info.v_gate_max),
                                    ("reset_gate", policy.reset_gate, info.v_gate_max),
                                    ("form_gate", policy.form_gate, info.v_gate_max)):
            if value > hi_lim * (1 + 1e-6):
                raise SafetyViolation(f"program_job: policy {name} = {value} V exceeds the board range "
                                      f"{hi_lim:.3g} V; nothing was sent")
        _check_range("pulse width", np.array([policy.width_s]), info.width_min_s, info.width_max_s, "s", self)
        cancel, progress = ensure(cancel, progress)
        per = max(1, min((info.max_payload - 68) // 18, (info.max_payload - 8) // 7))
        if chunk_cells:
            per = max(1, min(per, int(chunk_cells)))
        pol = bf.pack_policy(policy)
        final = np.full(n, np.nan)
        pulses = np.zeros(n, np.int64)
        status = np.full(n, NOT_FINISHED, np.int64)
        t0, job_s, iters = time.perf_counter(), 0.0, 0

        def report() -> ProgramReport:
            return ProgramReport(tgt.copy(), final.copy(), pulses.copy(), status.copy(),
                                 time.perf_counter() - t0, job_s, iters)

        try:
            for a in range(0, n, per):
                cancel.raise_if_cancelled()
                s = slice(a, a + per)
                payload = pol + bf.cell_list(pe[s], row[s], col[s]) + bf.f32s(tgt[s]) + bf.f32s(lo[s]) + bf.f32s(hi[s])
                r = bf.Reader(self._command(bf.PROGRAM_JOB, payload, timeout_s=self.job_timeout_s), "PROGRAM_JOB")
                k, it, js = r.take("HHf")
                if k != pe[s].size:
                    raise BackendError(f"board '{self.name}': PROGRAM_JOB returned {k} results for {pe[s].size} cells")
                final[s] = r.array("<f4", k)
                pulses[s] = r.array("<u2", k)
                status[s] = r.array("i1", k)
                r.end()
                job_s += float(js)
                iters = max(iters, int(it))
                if on_chunk is not None:
                    pos = np.arange(a, a + k)
                    on_chunk(pos, ProgramReport(tgt[s].copy(), final[s].copy(), pulses[s].copy(),
                                                status[s].copy(), 0.0, float(js), int(it)))
                done = min(a + per, n)
                progress(Progress(done, n, f"board write-verify: {done}/{n} cells, "
                                           f"{int(np.count_nonzero(status[:done] == 0))} in band"))
        except HilError as e:
            e.report = report()
            raise
        return report()

    # ---- lifecycle --------------------------------------------------------------------------
    def describe(self) -> dict:
        """Identity and counters for the run record."""
        return {"name": self.name, "port": self.port_name, "protocol": self.version,
                "info": self.info.to_dict() if self.info else None,
                "watchdog_s": self.watchdog_s, "stats": dict(self.stats)}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Ground everything (best effort, logged) and close the port. Idempotent."""
        if self._closed:
            return
        try:
            self._command(bf.GROUND_ALL, retries=1)
            self._route = None
            log.info("board %s on %s: everything grounded on close", self.name, self.port_name)
        except Exception as e:   # best effort: never mask the error that brought us here
            log.warning("board %s on %s: could not ground everything on close (%s); the board watchdog "
                        "(%.3g s) will ground it", self.name, self.port_name, e, self.watchdog_s)
        finally:
            self._closed = True
            self._close_port()

    def __enter__(self) -> "ArrayBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport ----------------------------------------------------------------------------
    def _info(self) -> BoardInfo:
        if self.info is None:
            raise BackendError(f"board '{self.name}' was not identified")
        return self.info

    def _close_port(self) -> None:
        try:
            self._port.close()
        except Exception as e:
            log.warning("board %s: error closing port %s: %s", self.name, self.port_name, e)

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF + 1          # 1..65535; 0 means "none" in STATUS
        return self._seq

    def _command(self, cmd: int, payload: bytes = b"", *, timeout_s: Optional[float] = None,
                 retries: Optional[int] = None, version: Optional[int] = None) -> bytes:
        """Send one command in the conversation's version (or `version`) and return its ACK
        payload (see the module docstring for recovery). A version-2 frame to a board that
        may speak only version 1 gets a SEQ without a stray start byte (§1.4)."""
        if self._closed:
            raise BackendError(f"board '{self.name}' on {self.port_name} is closed; open the station again")
        name = bf.command_name(cmd)
        idem = cmd in bf.IDEMPOTENT
        attempts = 1 + ((self.retries if retries is None else retries) if idem else 0)
        failures, crc_resends = 0, 0
        self.stats["commands"] += 1
        version = self.version if version is None else version
        while True:
            seq = self._next_seq()
            if version > 1 and self._board_protocol is None:
                seq = self._seq = bf.clean_seq(seq, cmd, payload, version)
            self._write(bf.encode_frame(seq, cmd, payload, version=version), name)
            try:
                frame = self._read_reply(seq, name, timeout_s)
            except (_NoReply, _Garbled) as e:
                what = "timeouts" if isinstance(e, _NoReply) else "garbled"
                self.stats[what] += 1
                failures += 1
                if not idem:
                    self._fail_non_idempotent(name, seq, e, timeout_s)
                if failures >= attempts:
                    raise InstrumentTimeout(
                        f"board '{self.name}' on {self.port_name}: {name} failed {failures} times ({e}); "
                        f"check the cable, the port and the board power") from None
                log.warning("board %s: %s (seq %d): %s; resynchronising and retrying", self.name, name, seq, e)
                self.stats["retries"] += 1
                self._resync(name)
                continue
            self._handle_flags(frame.flags)
            if frame.code == bf.NAK:
                ncmd, err, detail, msg = bf.parse_nak(frame.payload)
                if err == bf.ERR_BAD_CRC and crc_resends < 2:      # not executed: safe to resend
                    crc_resends += 1
                    self.stats["retries"] += 1
                    log.warning("board %s: %s arrived corrupted (NAK BAD_CRC); resending", self.name, name)
                    continue
                where = "" if detail is None else f" (element #{detail})"
                if err == bf.ERR_WATCHDOG_FIRED:
                    self._route = None
                    hint = ("; the watchdog grounded everything after the host was silent; "
                            "call clear_events() and route again")
                else:
                    hint = ""
                raise BoardNak(f"board '{self.name}' on {self.port_name} refused {name}: NAK "
                               f"{bf.error_name(err)}{where}: {msg}{hint}", name, bf.error_name(err), detail)
            if frame.code != (cmd | bf.ACK_BIT):
                raise BackendError(f"board '{self.name}': reply code 0x{frame.code:02X} to {name} "
                                   f"(expected 0x{cmd | bf.ACK_BIT:02X})")
            return frame.payload

    def _write(self, data: bytes, name: str) -> None:
        try:
            self._port.write(data)
        except (SerialException, OSError) as e:
            raise BackendError(f"board '{self.name}' on {self.port_name}: serial port error while sending "
                               f"{name}: {e}; check the cable/USB connection and reconnect") from None
        self.stats["frames_out"] += 1
        self.stats["bytes_out"] += len(data)

    def _read(self, n: int, name: str) -> bytes:
        try:
            data = self._port.read(n)
        except (SerialException, OSError) as e:
            raise BackendError(f"board '{self.name}' on {self.port_name}: serial port error while waiting "
                               f"for the reply to {name}: {e}; check the cable/USB connection and reconnect") from None
        self.stats["bytes_in"] += len(data)
        return data

    def _read_frame(self, name: str) -> bf.Frame:
        skipped = 0
        limit = self._info().max_payload + bf.OVERHEAD if self.info else 0x10000 + bf.OVERHEAD
        while True:
            b = self._read(1, name)
            if not b:
                raise _NoReply("no reply" if not skipped else f"no reply ({skipped} stray bytes)")
            if b[0] == bf.SOF:
                break
            skipped += 1
            if skipped > limit:
                raise _Garbled("no start byte in the reply stream")
        head = self._read(bf.HEADER_SIZE - 1, name)
        if len(head) < bf.HEADER_SIZE - 1:
            raise _Garbled("truncated reply header")
        ver, length = head[0], int.from_bytes(head[1:3], "little")
        if ver not in bf.VERSIONS or length > limit:
            raise _Garbled(f"reply header is corrupt (version {ver}, length {length})")
        rest = self._read(length + bf.CRC_SIZE, name)
        if len(rest) < length + bf.CRC_SIZE:
            raise _Garbled(f"truncated reply ({len(rest)} of {length + bf.CRC_SIZE} bytes)")
        try:
            return bf.decode_frame(b + head + rest)
        except bf.FrameError as e:
            raise _Garbled(str(e)) from None

    def _read_reply(self, seq: int, name: str, timeout_s: Optional[float]) -> bf.Frame:
        old = None
        if timeout_s is not None:
            old = self._port.timeout
            self._port.timeout = timeout_s
        try:
            for _ in range(16):
                f = self._read_frame(name)
                if f.seq == seq:
                    return f
                self.stats["stale_replies"] += 1
                log.debug("board %s: discarding stale reply seq %d while waiting for %d", self.name, f.seq, seq)
            raise _Garbled(f"no reply with sequence number {seq}")
        finally:
            if old is not None:
                self._port.timeout = old

    def _flush(self) -> None:
        try:
            self._port.reset_input_buffer()
        except (SerialException, OSError) as e:
            raise BackendError(f"board '{self.name}' on {self.port_name}: serial port error while flushing: {e}") from None

    def _resync(self, name: str) -> None:
        """Flush the input and re-identify the board (geometry must be unchanged)."""
        self._flush()
        for _ in range(3):
            seq = self._next_seq()
            self._write(bf.encode_frame(seq, bf.IDENTIFY, version=self.version), "IDENTIFY")
            try:
                f = self._read_reply(seq, "IDENTIFY", None)
            except (_NoReply, _Garbled):
                self._flush()
                continue
            if f.code != (bf.IDENTIFY | bf.ACK_BIT):
                continue
            info = bf.parse_identify(f.payload)
            old = self.info
            if old is not None and (info.n_pe, info.rows, info.cols) != (old.n_pe, old.rows, old.cols):
                raise BackendError(f"board '{self.name}' on {self.port_name} changed identity during "
                                   f"resynchronisation ({info.model} {info.n_pe}x{info.rows}x{info.cols}); stop and "
                                   f"check the wiring")
            self.info = info
            self.stats["resyncs"] += 1
            self._handle_flags(f.flags)
            return
        raise InstrumentTimeout(f"board '{self.name}' on {self.port_name} does not answer IDENTIFY while "
                                f"resynchronising after {name}; check the cable and the board power")

    def _fail_non_idempotent(self, name: str, seq: int, exc: Exception, timeout_s: Optional[float]) -> None:
        applied: Optional[bool] = None
        try:
            self._resync(name)
            applied = self.status().last_seq == seq
        except HilError as e:
            log.warning("board %s: could not learn whether %s (seq %d) was applied: %s", self.name, name, seq, e)
        state = {True: "the board executed it (its results are lost)" if name == "PROGRAM_JOB"
                 else "the board executed it", False: "the board did NOT execute it",
                 None: "whether the board executed it is unknown"}[applied]
        if isinstance(exc, _NoReply):
            t = self.timeout_s if timeout_s is None else timeout_s
            err: BackendError = InstrumentTimeout(
                f"board '{self.name}' on {self.port_name}: no reply to {name} (seq {seq}) within {t:.3g} s; "
                f"{state}. {name} is not repeated automatically; read the cells back and resume the job")
        else:
            err = BackendError(
                f"board '{self.name}' on {self.port_name}: the reply to {name} (seq {seq}) was corrupted "
                f"({exc}); {state}. {name} is not repeated automatically; read the cells back and resume the job")
        err.applied = applied
        raise err

    def _handle_flags(self, flags: int) -> None:
        if flags & bf.EV_WATCHDOG:
            self._route = None
        if not (flags & bf.EV_RESET) or not self._connected or self._in_event:
            return
        self._in_event = True
        try:
            self.stats["resets_seen"] += 1
            route = self._route
            log.warning("board %s on %s rebooted (reset event); re-applying watchdog %.3g s%s", self.name,
                        self.port_name, self.watchdog_s, " and the current route" if route else "")
            self.status(clear=True)
            self.set_watchdog(self.watchdog_s)
            if route is not None:
                cells, bl, sl, wl, gate = route
                self.route(cells, bl=bl, sl=sl, wl=wl, gate_v=gate)
        finally:
            self._in_event = False

    def _require_version(self, cmd: int, what: str) -> None:
        """Speak the protocol version command `cmd` needs, asking the board first (IDENTIFY in a
        version-2 frame, §1.4); BackendError naming the board's protocol when it cannot."""
        need = bf.SINCE_VERSION.get(cmd, 1)
        if self.version >= need:
            return
        name = bf.command_name(cmd)
        if self.max_protocol < need:
            raise BackendError(f"board '{self.name}': {what} ({name}) needs protocol {need}; this driver "
                               f"was opened with protocol={self.max_protocol}; nothing was sent")
        if self._board_protocol is None:
            try:
                info = bf.parse_identify(self._command(bf.IDENTIFY, version=need))
            except BoardNak as e:
                if e.error != "BAD_VERSION":
                    raise
                self._flush()
                self._board_protocol = 1
            else:
                if info.protocol < need:
                    raise BackendError(f"board '{self.name}' on {self.port_name} answers a protocol-{need} "
                                       f"IDENTIFY with protocol {info.protocol}; check the board firmware")
                self.info, self.version, self._board_protocol = info, need, info.protocol
                log.info("board %s on %s: protocol %d", self.name, self.port_name, need)
                return
        info = self._info()
        raise BackendError(f"board '{self.name}' on {self.port_name} ({info.model} firmware {info.firmware}) "
                           f"speaks protocol {self._board_protocol}: {what} ({name}) needs protocol {need}; "
                           f"update the board firmware ({name} was not sent)")

    def _lines(self, what: str, pe, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Checked rows and columns of a parallel read on PE `pe` (default: all)."""
        info = self._info()
        if not 0 <= int(pe) < info.n_pe:
            raise AddressError(f"{what}: PE {pe} out of range 0..{info.n_pe - 1}")
        rows = np.arange(info.rows) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
        cols = np.arange(info.cols) if cols is None else np.asarray(cols, dtype=np.int64).ravel()
        for name, a, n in (("row", rows, info.rows), ("column", cols, info.cols)):
            if a.size == 0 or a.min() < 0 or a.max() >= n or np.unique(a).size != a.size:
                raise AddressError(f"{what}: {name} indices must be non-empty, unique and within 0..{n - 1}")
        return rows, cols

    def _adc_fs(self, adc_full_scale_a: Optional[float]) -> float:
        """ADC full scale of a parallel read as sent (0.0: the board's default), range-checked."""
        if adc_full_scale_a is None:
            return 0.0
        info, fs = self._info(), float(adc_full_scale_a)
        if not info.adc_fs_min_a * (1 - 1e-6) <= fs <= info.adc_fs_max_a * (1 + 1e-6):
            raise ValueError(f"ADC full scale {fs} A outside the board range "
                             f"{info.adc_fs_min_a:.3g}..{info.adc_fs_max_a:.3g} A")
        return fs

    def _per_frame(self, what: str, fixed: int, per_vector_in: int, per_vector_out: int) -> int:
        """Input vectors per chunk of a parallel read: request and reply within `max_payload`."""
        mp = self._info().max_payload
        per = min((mp - fixed) // per_vector_in, (mp - 10) // per_vector_out, 0xFFFF)
        if per < 1:
            raise ValueError(f"{what}: the rows and columns do not fit one frame ({mp} bytes)")
        return per

    def _check_size(self, name: str, b: int, nc: int, batch: int, n_cols: int) -> None:
        if (b, nc) != (batch, n_cols):
            raise BackendError(f"board '{self.name}': {name} reply is {b}x{nc}, expected {batch}x{n_cols}")

    def _addresses(self, cells: Cells):
        if not isinstance(cells, Cells):
            raise TypeError(f"expected a Cells selection, got {type(cells).__name__}")
        info = self._info()
        for what, a, n in (("PE", cells.pe, info.n_pe), ("row", cells.row, info.rows), ("column", cells.col, info.cols)):
            bad = (a < 0) | (a >= n)
            if bad.any():
                i = int(np.argmax(bad))
                raise AddressError(f"board '{self.name}': {what} {int(a[i])} of cell #{i} out of range 0..{n - 1}")
        return cells.pe, cells.row, cells.col

    def _check_gate(self, volts: float) -> None:
        if self.limits is not None:
            check_level(self.limits, volts, {"gate"}, "gate voltage", f"board '{self.name}': ")
        info = self._info()
        if not np.isfinite(volts) or not 0.0 <= float(volts) <= info.v_gate_max * (1 + 1e-6):
            raise SafetyViolation(f"gate voltage {volts} V outside the board DAC range 0..{info.v_gate_max:.3g} V; "
                                  f"nothing was sent")

    def _log_output(self, kind: str, **detail) -> None:
        log.debug("board %s %s %s", self.name, kind, detail)


def _check_range(what: str, a: np.ndarray, lo: float, hi: float, unit: str, board: ArrayBoard,
                 open_low: bool = False) -> None:
    """SafetyViolation (nothing sent) if any value is not finite or outside the board's range."""
    bad = ~np.isfinite(a) | (a > hi * (1 + 1e-6)) | ((a <= lo) if open_low else (a < lo * (1 - 1e-6)))
    if bad.any():
        i = int(np.argmax(bad))
        raise SafetyViolation(f"board '{board.name}': {what} {a[i]:.4g} {unit} of cell #{i} outside the board "
                              f"range {lo:.3g}..{hi:.3g} {unit}; nothing was sent")
