"""Frame codec and payload layouts of the array-board protocol 2 (docs/board-protocol.md), host side.

Pure functions over bytes and numpy arrays: no I/O, no serial port. The emulated firmware has its
own implementation written from the same document, so each checks the other.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

SOF = 0xA5
VERSION = 2                            # the newest protocol version this host speaks
VERSIONS = (1, 2)                      # frame versions it reads and writes (§1.4)
HEADER = struct.Struct("<BBHHBB")      # SOF, VER, LEN, SEQ, CODE, FLAGS
HEADER_SIZE = HEADER.size              # 8
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE
MAX_LEN_FIELD = 0xFFFF

# command codes
IDENTIFY = 0x01
STATUS = 0x02
WATCHDOG = 0x03
GROUND_ALL = 0x04
ROUTE = 0x10
SET_GATE = 0x11
PULSE = 0x20
READ_CELLS = 0x30
VMM = 0x31
VMM_AMP = 0x32
PROGRAM_JOB = 0x40
ACK_BIT = 0x80
NAK = 0xFF

COMMAND_NAMES = {IDENTIFY: "IDENTIFY", STATUS: "STATUS", WATCHDOG: "WATCHDOG", GROUND_ALL: "GROUND_ALL",
                 ROUTE: "ROUTE", SET_GATE: "SET_GATE", PULSE: "PULSE", READ_CELLS: "READ_CELLS",
                 VMM: "VMM", VMM_AMP: "VMM_AMP", PROGRAM_JOB: "PROGRAM_JOB"}
IDEMPOTENT = frozenset({IDENTIFY, STATUS, WATCHDOG, GROUND_ALL, ROUTE, SET_GATE, READ_CELLS, VMM, VMM_AMP})
#: the first protocol version of commands added after version 1
SINCE_VERSION = {VMM_AMP: 2}

# NAK error codes
ERROR_NAMES = {1: "BAD_CRC", 2: "BAD_LENGTH", 3: "BAD_VERSION", 4: "UNKNOWN_COMMAND", 5: "BAD_ARGUMENT",
               6: "OUT_OF_RANGE", 7: "BUSY", 8: "WATCHDOG_FIRED", 9: "NOT_ROUTED", 10: "INTERNAL"}
ERR_BAD_CRC = 1
ERR_BAD_VERSION = 3
ERR_WATCHDOG_FIRED = 8

# reply FLAGS bits
EV_RESET = 0x01
EV_WATCHDOG = 0x02
FLAG_ROUTED = 0x04

DRIVES = {"open": 0, "ground": 1, "bus": 2, "dac": 3}
OPS = {"SET": 1, "RESET": 2, "FORM": 3}

# PROGRAM_JOB policy block: (field, struct code) in document order
POLICY_FIELDS = (("n_verify_reads", "H"), ("max_pulses", "H"), ("width_s", "f"), ("set_v_bl", "f"),
                 ("set_gate_start", "f"), ("set_gate_step", "f"), ("set_gate_max", "f"),
                 ("reset_v_sl_start", "f"), ("reset_v_sl_step", "f"), ("reset_v_sl_max", "f"),
                 ("reset_gate", "f"), ("form_threshold_s", "f"), ("form_v_start", "f"),
                 ("form_v_step", "f"), ("form_v_max", "f"), ("form_gate", "f"), ("stuck_after", "H"),
                 ("verify_margin", "f"))
POLICY = struct.Struct("<" + "".join(c for _, c in POLICY_FIELDS))    # 66 bytes


def command_name(code: int) -> str:
    return COMMAND_NAMES.get(code, f"0x{code:02X}")


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"error {code}")


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(seq: int, code: int, payload: bytes = b"", flags: int = 0, version: int = 1) -> bytes:
    """One complete frame of protocol `version` (1, which every board reads, unless given):
    header, payload, CRC-32 over VER..payload."""
    if len(payload) > MAX_LEN_FIELD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the 16-bit length field")
    if version not in VERSIONS:
        raise ValueError(f"protocol version {version} is not one of {VERSIONS}")
    head = HEADER.pack(SOF, version, len(payload), seq & 0xFFFF, code, flags)
    body = head + bytes(payload)
    return body + struct.pack("<I", crc32(body[1:]))


@dataclass(frozen=True)
class Frame:
    seq: int
    code: int
    flags: int
    payload: bytes
    version: int = 1


class FrameError(ValueError):
    """Bytes that are not a valid frame (bad SOF, version, length or CRC)."""


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one complete frame; FrameError when anything is wrong."""
    if len(data) < OVERHEAD:
        raise FrameError(f"frame too short ({len(data)} bytes, minimum {OVERHEAD})")
    sof, ver, length, seq, code, flags = HEADER.unpack_from(data)
    if sof != SOF:
        raise FrameError(f"bad start byte 0x{sof:02X} (expected 0x{SOF:02X})")
    if ver not in VERSIONS:
        raise FrameError(f"protocol version {ver}, expected one of {VERSIONS}")
    if len(data) != OVERHEAD + length:
        raise FrameError(f"frame has {len(data)} bytes, its length field says {OVERHEAD + length}")
    (crc,) = struct.unpack_from("<I", data, HEADER_SIZE + length)
    if crc != crc32(data[1:HEADER_SIZE + length]):
        raise FrameError(f"CRC mismatch in frame seq {seq} code 0x{code:02X}")
    return Frame(seq, code, flags, bytes(data[HEADER_SIZE:HEADER_SIZE + length]), ver)


def clean_seq(seq: int, code: int, payload: bytes = b"", version: int = 2) -> int:
    """The first sequence number from `seq` on (1..65535, wrapping) whose frame has no SOF byte
    after its own: a protocol-1 board rescans a refused version-2 frame from its second byte."""
    for k in range(0x10000):
        s = (seq - 1 + k) % 0xFFFF + 1
        if SOF not in encode_frame(s, code, payload, version=version)[1:]:
            return s
    raise ValueError("no sequence number gives a frame without a stray start byte")


# ---- payload helpers ------------------------------------------------------------------------
class Reader:
    """Sequential little-endian reader of a payload; PayloadError when it is short or long."""

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf, self.off, self.what = buf, 0, what

    def take(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        if self.off + s.size > len(self.buf):
            raise PayloadError(f"{self.what} reply is truncated ({len(self.buf)} bytes)")
        v = s.unpack_from(self.buf, self.off)
        self.off += s.size
        return v

    def array(self, dtype, n: int) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        size = dt.itemsize * int(n)
        if self.off + size > len(self.buf):
            raise PayloadError(f"{self.what} reply is truncated ({len(self.buf)} bytes, needs more for {n} values)")
        a = np.frombuffer(self.buf, dt, int(n), self.off).astype(dt.newbyteorder("="))
        self.off += size
        return a

    def str8(self) -> str:
        (n,) = self.take("B")
        if self.off + n > len(self.buf):
            raise PayloadError(f"{self.what} reply is truncated in a string")
        s = self.buf[self.off:self.off + n].decode("ascii", "replace")
        self.off += n
        return s

    def end(self) -> None:
        if self.off != len(self.buf):
            raise PayloadError(f"{self.what} reply has {len(self.buf) - self.off} unexpected trailing bytes")


class PayloadError(ValueError):
    """A reply payload does not match the layout of its command."""


def u16s(a) -> bytes:
    return np.asarray(a).astype("<u2").tobytes()


def f32s(a) -> bytes:
    return np.asarray(a, dtype=float).astype("<f4").tobytes()


def cell_list(pe, row, col) -> bytes:
    n = int(np.size(pe))
    return struct.pack("<H", n) + u16s(pe) + u16s(row) + u16s(col)


def pack_policy(policy) -> bytes:
    """Policy block of PROGRAM_JOB from a WriteVerifyPolicy (or any object with those attributes)."""
    return POLICY.pack(*[int(getattr(policy, name)) if c == "H" else float(getattr(policy, name))
                         for name, c in POLICY_FIELDS])


@dataclass(frozen=True)
class BoardInfo:
    """IDENTIFY reply."""

    protocol: int
    n_pe: int
    rows: int
    cols: int
    adc_bits: int
    input_bits: int
    max_payload: int
    v_pulse_max: float
    v_gate_max: float
    v_read_max: float
    width_min_s: float
    width_max_s: float
    adc_fs_default_a: float
    adc_fs_min_a: float
    adc_fs_max_a: float
    n_avg_max: int
    model: str
    firmware: str
    serial: str

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_identify(payload: bytes) -> BoardInfo:
    r = Reader(payload, "IDENTIFY")
    ints = r.take("BHHHBBH")
    floats = r.take("ffffffff")
    (n_avg_max,) = r.take("H")
    strings = (r.str8(), r.str8(), r.str8())
    r.end()
    return BoardInfo(*ints, *(float(x) for x in floats), n_avg_max, *strings)


@dataclass(frozen=True)
class BoardStatus:
    """STATUS reply (state before any clearing)."""

    events: int
    routed: bool
    boot_count: int
    last_seq: int
    last_error: int
    last_error_cmd: int
    watchdog_s: float
    since_host_s: float
    uptime_s: float
    frames_ok: int
    frames_bad: int
    pulses: int

    @property
    def reset_seen(self) -> bool:
        return bool(self.events & EV_RESET)

    @property
    def watchdog_fired(self) -> bool:
        return bool(self.events & EV_WATCHDOG)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["last_error_name"] = error_name(self.last_error) if self.last_error else ""
        return d


def parse_status(payload: bytes) -> BoardStatus:
    r = Reader(payload, "STATUS")
    ev, routed, boot, last_seq, err, err_cmd = r.take("BBHHBB")
    wd, since, up = r.take("fff")
    ok, bad, pulses = r.take("III")
    r.end()
    return BoardStatus(ev, bool(routed), boot, last_seq, err, err_cmd, float(wd), float(since), float(up),
                       ok, bad, pulses)


def parse_nak(payload: bytes) -> tuple[int, int, Optional[int], str]:
    """(command, error code, detail index or None, message) of a NAK payload."""
    if len(payload) < 4:
        return 0, 0, None, f"malformed NAK payload {payload.hex()}"
    cmd, err, detail = struct.unpack_from("<BBH", payload)
    msg = payload[4:].decode("ascii", "replace")
    return cmd, err, (None if detail == 0xFFFF else detail), msg
