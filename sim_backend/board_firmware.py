"""Emulated array-board firmware speaking protocol 2 of docs/board-protocol.md (or, with
`protocol=1`, a protocol-1 board: version-2 frames refused, no VMM_AMP).

`EmulatedBoard(world)` turns host bytes into reply bytes (`receive`) and executes every command
on an `EmulatedWorld`: routing through `world.route/set_drive/dac_gate_v`, pulses, reads, VMM,
VMM_AMP and the PROGRAM_JOB on `world.chip`; every frame is answered in the version it came in.
The job is the firmware's own write-verify (`_write_verify`), written from the algorithm in the
document's PROGRAM_JOB section, not hil's host loop. It is written from the protocol document,
not from the driver, so the two check each other.
Every pulse and read (direct or inside a job) goes through `_apply_pulse` / `_apply_read`:
the world's voltage log (`max_applied_v`, `pulse`/`read` events) and STATUS `pulses`.

Accounting: one `world.transaction(name, bytes_in, bytes_out)` per frame (bus time on the
virtual clock), `COMMAND_S` of firmware time per command, the chip's own timing for pulses,
reads and VMM. The watchdog runs on the virtual clock: it is checked whenever a frame arrives,
when the host's read times out (`idle`) and on `advance(seconds)`.

Faults (`world.faults.take(name)`, once per received frame): "drop" (request lost), "timeout"
(executed, reply lost), "garble" (executed, one reply byte corrupted), "reset" (firmware reboots:
request lost, routing cleared, sequence state reset, EV_RESET latched), "disconnect" (request
lost; the port raises SerialException from then on).
"""
from __future__ import annotations

import logging
import struct
import weakref
import zlib
from typing import Optional

import numpy as np

from hil.geometry import Cells
from hil.limits import Op

from .world import BUSES, TERMINALS, EmulatedWorld

log = logging.getLogger(__name__)

PROTOCOL = 2               # newest protocol version of this firmware
SOF = 0xA5
HDR = struct.Struct("<BBHHBB")
NAK_CODE = 0xFF
EV_RESET, EV_WATCHDOG, ROUTED = 0x01, 0x02, 0x04

(E_BAD_CRC, E_BAD_LENGTH, E_BAD_VERSION, E_UNKNOWN, E_BAD_ARG, E_RANGE, E_BUSY, E_WATCHDOG,
 E_NOT_ROUTED, E_INTERNAL) = range(1, 11)

DRIVE_NAMES = {0: "open", 1: "ground", 2: "bus", 3: "dac"}
OP_BY_CODE = {1: Op.SET, 2: Op.RESET, 3: Op.FORM}
POLICY_LAYOUT = (("n_verify_reads", "H"), ("max_pulses", "H"), ("width_s", "f"), ("set_v_bl", "f"),
                 ("set_gate_start", "f"), ("set_gate_step", "f"), ("set_gate_max", "f"),
                 ("reset_v_sl_start", "f"), ("reset_v_sl_step", "f"), ("reset_v_sl_max", "f"),
                 ("reset_gate", "f"), ("form_threshold_s", "f"), ("form_v_start", "f"),
                 ("form_v_step", "f"), ("form_v_max", "f"), ("form_gate", "f"), ("stuck_after", "H"),
                 ("verify_margin", "f"))
POLICY_STRUCT = struct.Struct("<" + "".join(c for _, c in POLICY_LAYOUT))

COMMAND_S = 20e-6          # firmware time to decode, check and answer one command
REL = 1e-6                 # float32 slack on range checks
READ_GATE_V = 3.3          # fixed WL level of READ_CELLS and of the job's verify reads
VERIFY_V_READ = 0.2        # read voltage of the job's verify reads
STUCK_FLOOR_S = 0.3e-6     # floor of the job's unresponsive threshold
IN_BAND, MAX_PULSES, UNRESPONSIVE = 0, 1, 2


class _Nak(Exception):
    def __init__(self, err: int, msg: str, detail: Optional[int] = None) -> None:
        super().__init__(msg)
        self.err, self.detail = err, detail


class _Payload:
    """Little-endian reader of a request payload; NAK BAD_LENGTH when it does not fit the layout."""

    def __init__(self, buf: bytes, cmd: str) -> None:
        self.buf, self.off, self.cmd = buf, 0, cmd

    def take(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        if self.off + s.size > len(self.buf):
            raise _Nak(E_BAD_LENGTH, f"{self.cmd} payload too short ({len(self.buf)} bytes)")
        v = s.unpack_from(self.buf, self.off)
        self.off += s.size
        return v

    def array(self, dtype: str, n: int) -> np.ndarray:
        dt = np.dtype(dtype)
        size = dt.itemsize * n
        if self.off + size > len(self.buf):
            raise _Nak(E_BAD_LENGTH, f"{self.cmd} payload too short for {n} values")
        a = np.frombuffer(self.buf, dt, n, self.off)
        self.off += size
        return a

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (n,) = self.take("H")
        return tuple(self.array("<u2", n).astype(np.int64) for _ in range(3))

    def end(self) -> None:
        if self.off != len(self.buf):
            raise _Nak(E_BAD_LENGTH, f"{self.cmd} payload has {len(self.buf) - self.off} extra bytes")


def _frame(seq: int, code: int, flags: int, payload: bytes, version: int) -> bytes:
    body = HDR.pack(SOF, version, len(payload), seq & 0xFFFF, code, flags) + payload
    return body + struct.pack("<I", zlib.crc32(body[1:]) & 0xFFFFFFFF)


def _f32(a) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


class EmulatedBoard:
    """Array-board firmware on an EmulatedWorld (one per world and board name), speaking the
    protocol versions 1..`protocol`."""

    MODEL = "HILSIM-AB1"
    FIRMWARE = "emu-1.0"

    def __init__(self, world: EmulatedWorld, name: str = "board", *, max_payload: int = 8192,
                 boot_watchdog_s: float = 5.0, serial: str = "SIM-0001", v_pulse_max: float = 5.0,
                 v_gate_max: float = 5.5, v_read_max: float = 0.5, width_min_s: float = 10e-9,
                 width_max_s: float = 10e-3, adc_fs_min_a: float = 1e-6, adc_fs_max_a: float = 1e-3,
                 n_avg_max: int = 1024, protocol: int = PROTOCOL) -> None:
        if not 1024 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload must be within 1024..65535, got {max_payload}")
        if protocol not in (1, 2):
            raise ValueError(f"protocol must be 1 or 2, got {protocol!r}")
        self.world, self.name = world, name
        self.protocol = int(protocol)
        self._ver = 1                  # version of the frame being answered
        self.max_payload = int(max_payload)
        self.boot_watchdog_s = float(boot_watchdog_s)
        self.serial = serial
        self.v_pulse_max, self.v_gate_max, self.v_read_max = v_pulse_max, v_gate_max, v_read_max
        self.width_min_s, self.width_max_s = width_min_s, width_max_s
        self.adc_fs_min_a, self.adc_fs_max_a = adc_fs_min_a, adc_fs_max_a
        self.n_avg_max = int(n_avg_max)
        world.buses.setdefault(name, BUSES["serial"])
        self.boot_count = 0
        self.watchdog_fires = 0
        self._boot()

    # ---- lifecycle ---------------------------------------------------------------------------
    def _boot(self) -> None:
        w = self.world
        with w.lock:
            self.boot_count += 1
            self.events = EV_RESET
            self.watchdog_s = self.boot_watchdog_s
            self.last_seq = 0
            self.last_error = self.last_error_cmd = 0
            self.frames_ok = self.frames_bad = 0
            self.pulses = 0
            self._rx = bytearray()
            self.t_boot = self.t_host = w.now()
            self._wd_armed = True
            w.ground_all(self.name)
            w.log(self.name, "boot", count=self.boot_count)

    def reboot(self) -> None:
        """Firmware reset: routing cleared (grounded), sequence state and watchdog back to boot values."""
        log.info("emulated board %s reboots", self.name)
        self._boot()

    def advance(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass with the host silent (then check the watchdog)."""
        self.world.spend(float(seconds))
        self.check_watchdog()

    def idle(self) -> None:
        """The line was idle for a host read timeout: a partial frame is discarded, watchdog checked."""
        with self.world.lock:
            self._rx.clear()
            self.check_watchdog()

    def check_watchdog(self) -> bool:
        """Ground everything if the host has been silent longer than the timeout; True if it fired now."""
        w = self.world
        with w.lock:
            if not self._wd_armed or self.watchdog_s <= 0 or w.now() - self.t_host <= self.watchdog_s:
                return False
            self._wd_armed = False
            self.events |= EV_WATCHDOG
            self.watchdog_fires += 1
            silent = w.now() - self.t_host
            w.ground_all(self.name)
            w.log(self.name, "watchdog", silent_s=silent, timeout_s=self.watchdog_s)
            log.warning("emulated board %s: watchdog fired after %.3g s of host silence", self.name, silent)
            return True

    # ---- byte interface ----------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Feed bytes from the host; return every reply byte they produce."""
        out = bytearray()
        with self.world.lock:
            self._rx += data
            while True:
                item = self._next_frame()
                if item is None:
                    break
                raw, reply = item
                out += self._transaction(raw, reply)
        return bytes(out)

    def _next_frame(self):
        """(raw request, NAK reply or None) for the next complete frame in the buffer, or None."""
        rx = self._rx
        i = rx.find(bytes([SOF]))
        if i < 0:
            rx.clear()
            return None
        del rx[:i]
        if len(rx) < HDR.size:
            return None
        _, ver, length, seq, code, _ = HDR.unpack_from(rx)
        known = 1 <= ver <= self.protocol
        self._ver = ver if known else 1
        if not known or length > self.max_payload:
            raw = bytes(rx[:HDR.size])
            del rx[:1]
            err, msg = ((E_BAD_VERSION, f"protocol version {ver} not supported (1..{self.protocol})")
                        if not known else
                        (E_BAD_LENGTH, f"payload length {length} exceeds max_payload {self.max_payload}"))
            return raw, self._nak_frame(seq, code, err, msg, framing=True)
        total = HDR.size + length + 4
        if len(rx) < total:
            return None
        raw = bytes(rx[:total])
        (crc,) = struct.unpack_from("<I", raw, total - 4)
        if crc != zlib.crc32(raw[1:total - 4]) & 0xFFFFFFFF:
            del rx[:1]
            return raw, self._nak_frame(seq, code, E_BAD_CRC, "CRC mismatch", framing=True)
        del rx[:total]
        return raw, None

    def _transaction(self, raw: bytes, reply: Optional[bytes]) -> bytes:
        w = self.world
        fault = w.faults.take(self.name)
        if fault in ("drop", "disconnect"):
            w.transaction(self.name, len(raw), 0)
            w.log(self.name, "fault", fault=fault)
            return b""
        if fault == "reset":
            w.transaction(self.name, len(raw), 0)
            w.log(self.name, "fault", fault=fault)
            self.reboot()
            return b""
        self.check_watchdog()
        if reply is None:
            _, _, _, seq, code, _ = HDR.unpack_from(raw)
            reply = self._execute(seq, code, raw[HDR.size:-4])
        w.transaction(self.name, len(raw), len(reply))
        self.t_host = w.now()
        self._wd_armed = True
        if fault == "timeout":
            w.log(self.name, "fault", fault=fault)
            return b""
        if fault == "garble":
            w.log(self.name, "fault", fault=fault)
            b = bytearray(reply)
            b[len(b) // 2] ^= 0x5A
            return bytes(b)
        return reply

    def _flags(self) -> int:
        return self.events | (ROUTED if self.world.selected is not None else 0)

    def _nak_frame(self, seq: int, cmd: int, err: int, msg: str, detail: Optional[int] = None,
                   framing: bool = False) -> bytes:
        if framing:
            self.frames_bad += 1
        self.last_error, self.last_error_cmd = err, cmd & 0xFF
        payload = struct.pack("<BBH", cmd & 0xFF, err, 0xFFFF if detail is None else int(detail) & 0xFFFF)
        return _frame(seq, NAK_CODE, self._flags(), payload + msg.encode("ascii", "replace")[:200], self._ver)

    # ---- command execution -------------------------------------------------------------------------
    _BLOCKED_AFTER_WATCHDOG = (0x10, 0x11, 0x20, 0x30, 0x31, 0x32, 0x40)
    _SINCE_VERSION = {0x32: 2}          # commands added after version 1

    def _execute(self, seq: int, code: int, payload: bytes) -> bytes:
        self.frames_ok += 1
        self._since_host = self.world.now() - self.t_host
        self.world.spend(COMMAND_S)
        handler = self._HANDLERS.get(code)
        if handler is None or self._ver < self._SINCE_VERSION.get(code, 1):
            return self._nak_frame(seq, code, E_UNKNOWN, f"unknown command 0x{code:02X} in protocol {self._ver}")
        if self.events & EV_WATCHDOG and code in self._BLOCKED_AFTER_WATCHDOG:
            return self._nak_frame(seq, code, E_WATCHDOG,
                                   "watchdog fired; everything grounded; send STATUS clear=1 first")
        try:
            out = handler(self, _Payload(payload, handler.__name__[1:].upper()), seq)
        except _Nak as e:
            return self._nak_frame(seq, code, e.err, str(e), e.detail)
        except Exception as e:  # firmware fault: leave the array safe, report INTERNAL
            log.exception("emulated board %s: internal error in command 0x%02X", self.name, code)
            self.world.ground_all(self.name)
            return self._nak_frame(seq, code, E_INTERNAL, f"{type(e).__name__}: {e}")
        return _frame(seq, code | 0x80, self._flags(), out, self._ver)

    # -- checks
    def _cells(self, pe, row, col) -> Cells:
        g = self.world.geometry
        for a, n in ((pe, g.n_pe), (row, g.rows), (col, g.cols)):
            bad = a >= n
            if bad.any():
                i = int(np.argmax(bad))
                raise _Nak(E_RANGE, f"address {int(a[i])} of cell #{i} outside geometry "
                                    f"{g.n_pe}x{g.rows}x{g.cols}", i)
        return Cells(pe, row, col)

    @staticmethod
    def _range(name: str, a: np.ndarray, lo: float, hi: float, open_low: bool = False) -> None:
        a = np.asarray(a, dtype=float)
        nan = ~np.isfinite(a)
        if nan.any():
            i = int(np.argmax(nan))
            raise _Nak(E_BAD_ARG, f"{name} #{i} is not a number", i)
        bad = (a > hi * (1 + REL)) | ((a <= lo) if open_low else (a < lo - abs(lo) * REL))
        if bad.any():
            i = int(np.argmax(bad))
            raise _Nak(E_RANGE, f"{name} {a[i]:.4g} #{i} outside {lo:.3g}..{hi:.3g}", i)

    def _gate(self, v: float) -> None:
        self._range("gate voltage", np.array([v]), 0.0, self.v_gate_max)

    # -- handlers (payload reader, seq) -> ACK payload
    def _identify(self, p: _Payload, seq: int) -> bytes:
        p.end()
        g = self.world.geometry
        adc = self.world.chip.params.adc
        head = struct.pack("<BHHHBBH", self._ver, g.n_pe, g.rows, g.cols, adc.bits, 8, self.max_payload)
        rng = struct.pack("<ffffffffH", self.v_pulse_max, self.v_gate_max, self.v_read_max, self.width_min_s,
                          self.width_max_s, adc.full_scale_a, self.adc_fs_min_a, self.adc_fs_max_a, self.n_avg_max)
        strs = b"".join(bytes([len(s)]) + s.encode("ascii") for s in (self.MODEL, self.FIRMWARE, self.serial))
        return head + rng + strs

    def _status(self, p: _Payload, seq: int) -> bytes:
        (clear,) = p.take("B")
        p.end()
        if clear not in (0, 1):
            raise _Nak(E_BAD_ARG, f"clear must be 0 or 1, got {clear}")
        w = self.world
        out = struct.pack("<BBHHBBfffIII", self.events, int(w.selected is not None), self.boot_count & 0xFFFF,
                          self.last_seq, self.last_error, self.last_error_cmd, self.watchdog_s,
                          self._since_host, w.now() - self.t_boot, self.frames_ok, self.frames_bad,
                          self.pulses & 0xFFFFFFFF)
        if clear:
            if self.events:
                w.log(self.name, "events_cleared", events=self.events)
            self.events = 0
        return out

    def _watchdog(self, p: _Payload, seq: int) -> bytes:
        (t,) = p.take("f")
        p.end()
        if not np.isfinite(t):
            raise _Nak(E_BAD_ARG, "watchdog timeout is not a number")
        if t != 0.0 and not 1e-3 * (1 - REL) <= t <= 3600.0 * (1 + REL):
            raise _Nak(E_RANGE, f"watchdog timeout {t:.4g} s outside 0.001..3600 s (0 = off)")
        if t != self.watchdog_s:
            self.world.log(self.name, "watchdog_set", timeout_s=float(t))
        self.watchdog_s = float(t)
        return struct.pack("<f", t)

    def _ground_all(self, p: _Payload, seq: int) -> bytes:
        p.end()
        self.world.ground_all(self.name)
        return b""

    def _route(self, p: _Payload, seq: int) -> bytes:
        bl, sl, wl, _ = p.take("BBBB")
        (gate,) = p.take("f")
        pe, row, col = p.cells()
        p.end()
        for term, c in zip(TERMINALS, (bl, sl, wl)):
            if c not in DRIVE_NAMES or (c == 3 and term != "WL"):
                raise _Nak(E_BAD_ARG, f"drive code {c} not allowed for {term}")
        self._gate(gate)
        cells = self._cells(pe, row, col) if pe.size else None
        w = self.world
        if float(gate) != w.dac_gate_v:
            w.dac_gate_v = float(gate)
            w.log(self.name, "gate", volts=float(gate))
        w.route(cells, self.name)
        for term, c in zip(TERMINALS, (bl, sl, wl)):
            if w.drive[term] != DRIVE_NAMES[c]:
                w.set_drive(term, DRIVE_NAMES[c], self.name)
        return b""

    def _set_gate(self, p: _Payload, seq: int) -> bytes:
        (gate,) = p.take("f")
        p.end()
        self._gate(gate)
        w = self.world
        if w.selected is None:
            raise _Nak(E_NOT_ROUTED, "nothing is routed; ROUTE first")
        if float(gate) != w.dac_gate_v:
            w.dac_gate_v = float(gate)
            w.log(self.name, "gate", volts=float(gate))
        return b""

    def _pulse(self, p: _Payload, seq: int) -> bytes:
        op_code, _ = p.take("BB")
        pe, row, col = p.cells()
        n = pe.size
        v, g, wd = (p.array("<f4", n).astype(float) for _ in range(3))
        p.end()
        if op_code not in OP_BY_CODE:
            raise _Nak(E_BAD_ARG, f"unknown pulse op {op_code} (1 SET, 2 RESET, 3 FORM)")
        cells = self._cells(pe, row, col)
        self._no_repeats(cells)
        self._range("amplitude", v, 0.0, self.v_pulse_max, open_low=True)
        self._range("gate", g, 0.0, self.v_gate_max)
        self._range("width", wd, self.width_min_s, self.width_max_s)
        if n:
            self._apply_pulse(cells, OP_BY_CODE[op_code], v, g, wd)
        self.last_seq = seq
        return struct.pack("<H", n)

    # -- the physics every handler goes through (voltage log and pulse count included)
    def _apply_pulse(self, cells: Cells, op: Op, v: np.ndarray, g: np.ndarray, wd: np.ndarray) -> None:
        """Pulse `cells` one after another in list order (amplitude, gate, width per cell)."""
        w = self.world
        w.chip.pulse(cells, op, v, g, wd)
        term = "SL" if op is Op.RESET else "BL"
        w.max_applied_v[term] = max(w.max_applied_v[term], float(v.max()))
        w.max_applied_v["WL"] = max(w.max_applied_v["WL"], float(g.max()))
        w.log(self.name, "pulse", op=op.value, n=len(cells), v_max=float(v.max()), gate_max=float(g.max()))
        self.pulses += len(cells)

    def _apply_read(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        """Read `cells` alone each, in list order, at `v_read` on BL and the read gate; mean of `n_avg`."""
        w = self.world
        g = w.chip.read(cells, v_read=float(v_read), n_avg=int(n_avg))
        w.max_applied_v["BL"] = max(w.max_applied_v["BL"], float(v_read))
        w.max_applied_v["WL"] = max(w.max_applied_v["WL"], READ_GATE_V)
        w.log(self.name, "read", n=len(cells), volts=float(v_read), gate=READ_GATE_V, n_avg=int(n_avg))
        return g

    def _read_cells(self, p: _Payload, seq: int) -> bytes:
        v, n_avg = p.take("fH")
        pe, row, col = p.cells()
        p.end()
        self._range("read voltage", np.array([v]), 0.0, self.v_read_max, open_low=True)
        if not 1 <= n_avg <= self.n_avg_max:
            raise _Nak(E_RANGE, f"n_avg {n_avg} outside 1..{self.n_avg_max}")
        cells = self._cells(pe, row, col)
        g = self._apply_read(cells, v, n_avg) if pe.size else np.zeros(0)
        return struct.pack("<H", pe.size) + _f32(g)

    def _lines(self, pe: int, rows: np.ndarray, cols: np.ndarray) -> None:
        """The PE, row and column lists of a parallel read (VMM, VMM_AMP)."""
        g = self.world.geometry
        if pe >= g.n_pe:
            raise _Nak(E_RANGE, f"PE {pe} outside 0..{g.n_pe - 1}")
        for what, a, n in (("row", rows, g.rows), ("column", cols, g.cols)):
            if a.size == 0 or a.max() >= n:
                raise _Nak(E_RANGE, f"{what} list empty or outside 0..{n - 1}")
            if np.unique(a).size != a.size:
                raise _Nak(E_BAD_ARG, f"{what} list repeats an index")

    def _adc_fs(self, fs: float) -> Optional[float]:
        """The requested ADC full scale (None: the default), range-checked."""
        if fs == 0.0:
            return None
        self._range("ADC full scale", np.array([fs]), self.adc_fs_min_a, self.adc_fs_max_a)
        return float(fs)

    def _vmm(self, p: _Payload, seq: int) -> bytes:
        pe, n_rows, n_cols, batch = p.take("HHHH")
        v, fs = p.take("ff")
        rows = p.array("<u2", n_rows).astype(np.int64)
        cols = p.array("<u2", n_cols).astype(np.int64)
        x = p.array("u1", batch * n_rows).reshape(batch, n_rows)
        p.end()
        self._lines(pe, rows, cols)
        self._range("read voltage", np.array([v]), 0.0, self.v_read_max, open_low=True)
        fs = self._adc_fs(fs)
        adc = self.world.chip.params.adc
        if batch == 0:
            lsb = (fs or adc.full_scale_a) / (2 ** adc.bits - 1)
            return struct.pack("<HHBBf", 0, n_cols, adc.bits, 8, lsb)
        res = self.world.chip.vmm(int(pe), x.astype(np.int64), rows, cols, v_read=float(v), adc_full_scale_a=fs)
        self.world.log(self.name, "vmm", pe=int(pe), batch=int(batch), rows=int(n_rows), cols=int(n_cols))
        return (struct.pack("<HHBBf", batch, n_cols, res.adc_bits, res.input_bits, res.lsb_a)
                + np.asarray(res.codes, dtype="<u4").tobytes() + np.asarray(res.saturated, dtype="u1").tobytes())

    def _vmm_amp(self, p: _Payload, seq: int) -> bytes:
        pe, n_rows, n_cols, batch = p.take("HHHH")
        (fs,) = p.take("f")
        rows = p.array("<u2", n_rows).astype(np.int64)
        cols = p.array("<u2", n_cols).astype(np.int64)
        volts = p.array("<f4", batch * n_rows).astype(float)
        p.end()
        self._lines(pe, rows, cols)
        self._range("row voltage", np.abs(volts), 0.0, self.v_read_max)
        fs = self._adc_fs(fs)
        adc = self.world.chip.params.adc
        if batch == 0:
            lsb = (fs or adc.full_scale_a) / (2 ** (adc.bits - 1) - 1)
            return struct.pack("<HHBBf", 0, n_cols, adc.bits, 0, lsb)
        volts = volts.reshape(batch, n_rows)
        res = self.world.chip.vmm_amplitude(int(pe), volts, rows, cols, adc_full_scale_a=fs)
        w = self.world
        w.max_applied_v["BL"] = max(w.max_applied_v["BL"], float(np.abs(volts).max()))
        w.max_applied_v["WL"] = max(w.max_applied_v["WL"], READ_GATE_V)
        w.log(self.name, "vmm_amp", pe=int(pe), batch=int(batch), rows=int(n_rows), cols=int(n_cols),
              v_max=float(np.abs(volts).max()))
        return (struct.pack("<HHBBf", batch, n_cols, res.adc_bits, 0, res.lsb_a)
                + np.asarray(res.codes, dtype="<i2").tobytes() + np.asarray(res.saturated, dtype="u1").tobytes())

    def _program_job(self, p: _Payload, seq: int) -> bytes:
        values = p.take(POLICY_STRUCT.format[1:])
        pe, row, col = p.cells()
        n = pe.size
        tgt, lo, hi = (p.array("<f4", n).astype(float) for _ in range(3))
        p.end()
        pol = {name: (int(v) if c == "H" else float(v)) for (name, c), v in zip(POLICY_LAYOUT, values)}
        self._check_policy(pol)
        cells = self._cells(pe, row, col)
        self._no_repeats(cells)
        for name, a in (("target", tgt), ("lo", lo), ("hi", hi)):
            self._range(name, a, 0.0, 1.0)
        if (lo > hi).any():
            i = int(np.argmax(lo > hi))
            raise _Nak(E_BAD_ARG, f"band of cell #{i} has lo above hi", i)
        if n == 0:
            return struct.pack("<HHf", 0, 0, 0.0)
        t0 = self.world.now()
        final, pulses, status, rounds = self._write_verify(cells, lo, hi, pol)
        job_s = self.world.now() - t0
        self.last_seq = seq
        self.world.log(self.name, "program_job", n=n, pulses=int(pulses.sum()),
                       in_band=int(np.count_nonzero(status == IN_BAND)))
        return (struct.pack("<HHf", n, min(rounds, 0xFFFF), job_s) + _f32(final)
                + np.minimum(pulses, 0xFFFF).astype("<u2").tobytes() + status.astype("i1").tobytes())

    def _no_repeats(self, cells: Cells) -> None:
        flat = cells.flat(self.world.geometry)
        _, first = np.unique(flat, return_index=True)
        if first.size != flat.size:
            dup = int(np.setdiff1d(np.arange(flat.size), first)[0])
            raise _Nak(E_BAD_ARG, f"cell #{dup} repeats an earlier cell", dup)

    def _check_policy(self, pol: dict) -> None:
        """The PROGRAM_JOB policy checks of the protocol document (BAD_ARGUMENT, then OUT_OF_RANGE)."""
        def bad(msg: str):
            return _Nak(E_BAD_ARG, f"policy: {msg}")
        for name, v in pol.items():
            if not np.isfinite(v):
                raise bad(f"{name} is not a number")
        for name in ("n_verify_reads", "max_pulses", "stuck_after"):
            if pol[name] < 1:
                raise bad(f"{name} must be at least 1")
        for name in ("width_s", "set_v_bl", "set_gate_start", "reset_v_sl_start", "reset_gate",
                     "form_v_start", "form_gate"):
            if pol[name] <= 0:
                raise bad(f"{name} {pol[name]:.4g} must be positive")
        for name in ("set_gate_step", "reset_v_sl_step", "form_v_step", "form_threshold_s"):
            if pol[name] < 0:
                raise bad(f"{name} {pol[name]:.4g} must not be negative")
        for op in ("set_gate", "reset_v_sl", "form_v"):
            if pol[f"{op}_start"] > pol[f"{op}_max"]:
                raise bad(f"{op}_start {pol[f'{op}_start']:.4g} is above {op}_max {pol[f'{op}_max']:.4g}")
        if not 0 < pol["verify_margin"] <= 1:
            raise bad(f"verify_margin {pol['verify_margin']:.4g} outside (0, 1]")
        for name in ("set_v_bl", "reset_v_sl_max", "form_v_max"):
            self._range(f"policy {name}", np.array([pol[name]]), 0.0, self.v_pulse_max, open_low=True)
        for name in ("set_gate_max", "reset_gate", "form_gate"):
            self._range(f"policy {name}", np.array([pol[name]]), 0.0, self.v_gate_max)
        self._range("policy width_s", np.array([pol["width_s"]]), self.width_min_s, self.width_max_s)
        if pol["n_verify_reads"] > self.n_avg_max:
            raise _Nak(E_RANGE, f"policy n_verify_reads {pol['n_verify_reads']} outside 1..{self.n_avg_max}")

    def _write_verify(self, cells: Cells, lo: np.ndarray, hi: np.ndarray, pol: dict):
        """The PROGRAM_JOB algorithm of the protocol document, vectorized over the cells (they
        are independent). Returns (final reading, pulses, status) per cell and the round count."""
        n = len(cells)
        final = np.full(n, np.nan)
        pulses = np.zeros(n, np.int64)
        status = np.full(n, -1, np.int64)
        k = {op: np.zeros(n, np.int64) for op in (Op.FORM, Op.SET, Op.RESET)}
        last_dir = np.zeros(n, np.int8)
        top = np.zeros(n, np.int64)
        formed = np.zeros(n, bool)
        S = pol["stuck_after"]
        # readings of the last S+1 rounds; unneeded when S > max_pulses (max pulses stops a cell first)
        ring = S + 1 if S <= pol["max_pulses"] else 1
        hist = np.zeros((n, ring))
        stuck_thr = np.maximum(hi - lo, STUCK_FLOOR_S)
        ramps = {Op.FORM: ("form_v_start", "form_v_step", "form_v_max"),
                 Op.SET: ("set_gate_start", "set_gate_step", "set_gate_max"),
                 Op.RESET: ("reset_v_sl_start", "reset_v_sl_step", "reset_v_sl_max")}
        act = np.arange(n)
        r = 0
        while act.size:
            # 1. verify read
            g = self._apply_read(cells[act], VERIFY_V_READ, pol["n_verify_reads"])
            hist[act, r % ring] = g
            formed[act] |= g >= pol["form_threshold_s"]
            # 2. stop rules: in band, unresponsive, max pulses (first match wins)
            inb = (g >= lo[act]) & (g <= hi[act])
            unresp = ~inb & (top[act] >= S)
            if unresp.any():
                unresp &= np.abs(g - hist[act, (r - S) % ring]) <= stuck_thr[act]
            maxp = ~inb & ~unresp & (pulses[act] >= pol["max_pulses"])
            stop = inb | unresp | maxp
            final[act[stop]] = g[stop]
            status[act[stop]] = np.where(inb, IN_BAND, np.where(unresp, UNRESPONSIVE, MAX_PULSES))[stop]
            act, g = act[~stop], g[~stop]
            # 3. choice of pulse, ramps with restart on a direction flip; 4. FORM, SET, RESET groups
            below = g < lo[act]
            for op, mask in ((Op.FORM, below & ~formed[act]), (Op.SET, below & formed[act]), (Op.RESET, ~below)):
                c = act[mask]
                if not c.size:
                    continue
                if op is Op.RESET:
                    k[Op.RESET][c[last_dir[c] > 0]] = 0
                else:
                    flip = c[last_dir[c] < 0]
                    k[Op.SET][flip] = 0
                    k[Op.FORM][flip] = 0
                start, step, mx = (pol[name] for name in ramps[op])
                val = np.minimum(start + k[op][c] * step, mx)
                fixed = np.full(c.size, pol["set_v_bl"] if op is Op.SET else
                                pol["reset_gate"] if op is Op.RESET else pol["form_gate"])
                v, gate = (fixed, val) if op is Op.SET else (val, fixed)
                self._apply_pulse(cells[c], op, v, gate, np.full(c.size, pol["width_s"]))
                k[op][c] += 1
                pulses[c] += 1
                last_dir[c] = -1 if op is Op.RESET else 1
                at_top = val >= mx - 1e-12 * max(1.0, abs(mx))
                top[c] = np.where(at_top, top[c] + 1, 0)
            r += 1
        return final, pulses, status, r

    _HANDLERS = {0x01: _identify, 0x02: _status, 0x03: _watchdog, 0x04: _ground_all, 0x10: _route,
                 0x11: _set_gate, 0x20: _pulse, 0x30: _read_cells, 0x31: _vmm, 0x32: _vmm_amp,
                 0x40: _program_job}


_BOARDS: "weakref.WeakKeyDictionary[EmulatedWorld, dict]" = weakref.WeakKeyDictionary()


def board_for(world: EmulatedWorld, name: str = "board", **kwargs) -> EmulatedBoard:
    """The emulated board `name` of `world`, created (powered on) with `kwargs` on first use.
    The board keeps its state across port open/close, like the physical board."""
    with world.lock:
        boards = _BOARDS.setdefault(world, {})
        b = boards.get(name)
        if b is None:
            b = boards[name] = EmulatedBoard(world, name, **kwargs)
        return b
