"""Array-board protocol: frame codec, and exact byte exchanges of every ArrayBoard command.

Frames and payloads here are built by hand from docs/board-protocol.md (struct + zlib.crc32),
independently of drivers/board_frames.py, and the fake port fails on any unexpected byte."""
import struct
import zlib

import numpy as np
import pytest

from drivers import board_frames as bf
from drivers.board import ArrayBoard, BoardNak
from hil.errors import BackendError, Cancelled, ConfigError, InstrumentTimeout, SafetyViolation
from hil.geometry import Cells, Geometry
from hil.programming import WriteVerifyPolicy
from hil.progress import CancelToken

GEO = Geometry(1, 64, 64, "test")
MAX_PAYLOAD = 1024


def frame(seq, code, payload=b"", flags=0):
    body = struct.pack("<BBHHBB", 0xA5, 1, len(payload), seq, code, flags) + payload
    return body + struct.pack("<I", zlib.crc32(body[1:]))


def ack(seq, cmd, payload=b"", flags=0):
    return frame(seq, cmd | 0x80, payload, flags)


def nak(seq, cmd, err, detail=0xFFFF, msg=b"", flags=0):
    return frame(seq, 0xFF, struct.pack("<BBH", cmd, err, detail) + msg, flags)


def str8(s):
    return bytes([len(s)]) + s.encode()


def identify_payload(geo=GEO, max_payload=MAX_PAYLOAD):
    return (struct.pack("<BHHHBBH", 1, geo.n_pe, geo.rows, geo.cols, 8, 8, max_payload)
            + struct.pack("<ffffffffH", 5.0, 5.5, 0.5, 10e-9, 10e-3, 100e-6, 1e-6, 1e-3, 1024)
            + str8("AB1") + str8("fw-9") + str8("SN42"))


def status_payload(events=0, routed=0, boot=1, last_seq=0, wd=5.0):
    return struct.pack("<BBHHBBfffIII", events, routed, boot, last_seq, 0, 0, wd, 0.01, 12.0, 10, 0, 0)


def cells_bytes(pe, row, col):
    return (struct.pack("<H", len(pe)) + np.asarray(pe, "<u2").tobytes() + np.asarray(row, "<u2").tobytes()
            + np.asarray(col, "<u2").tobytes())


def connect_script(flags_identify=0x01, status_events=0x01):
    """IDENTIFY, WATCHDOG 5 s, STATUS clear=1 — the documented connect sequence (seq 1..3)."""
    return [(frame(1, 0x01), ack(1, 0x01, identify_payload(), flags_identify)),
            (frame(2, 0x03, struct.pack("<f", 5.0)), ack(2, 0x03, struct.pack("<f", 5.0), flags_identify)),
            (frame(3, 0x02, b"\x01"), ack(3, 0x02, status_payload(events=status_events), flags_identify))]


class ScriptedPort:
    """Serial-port stand-in: every write must equal the next recorded request; its reply is queued."""

    def __init__(self, exchanges):
        self.exchanges = list(exchanges)
        self.rx = bytearray()
        self.timeout = 1.0
        self.port = "scripted"
        self.closed = False
        self.flushes = 0

    def write(self, data):
        assert self.exchanges, f"unexpected write {bytes(data).hex()}"
        req, rep = self.exchanges.pop(0)
        assert bytes(data) == req, f"expected {req.hex()}\n     got {bytes(data).hex()}"
        self.rx += rep
        return len(data)

    def read(self, n=1):
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def reset_input_buffer(self):
        self.flushes += 1
        self.rx.clear()

    def close(self):
        self.closed = True


def open_board(extra, geometry=GEO, **kw):
    port = ScriptedPort(connect_script() + extra)
    return ArrayBoard(port, expected_geometry=geometry, **kw), port


def finish(board, port, seq):
    """Close (expects GROUND_ALL at `seq`) and check every recorded exchange was used."""
    port.exchanges.append((frame(seq, 0x04), ack(seq, 0x04)))
    board.close()
    assert port.exchanges == [] and port.closed


# ---- codec --------------------------------------------------------------------------------------
def test_golden_frames_match_the_document():
    assert bf.encode_frame(1, bf.IDENTIFY) == bytes.fromhex("a501000001000100ee82bc9a")
    assert bf.encode_frame(3, bf.STATUS, b"\x01") == bytes.fromhex("a501010003000200016b4adc3c")
    assert frame(3, 0x02, b"\x01") == bf.encode_frame(3, bf.STATUS, b"\x01")


def test_frame_roundtrip_and_every_single_byte_corruption_is_detected():
    payload = bytes(range(200))
    raw = bf.encode_frame(0xBEEF, bf.VMM | bf.ACK_BIT, payload, flags=bf.EV_RESET)
    f = bf.decode_frame(raw)
    assert (f.seq, f.code, f.flags, f.payload) == (0xBEEF, 0xB1, 1, payload)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x5A
        with pytest.raises(bf.FrameError):
            bf.decode_frame(bytes(bad))
    with pytest.raises(bf.FrameError, match="length"):
        bf.decode_frame(raw[:-1])
    with pytest.raises(ValueError):
        bf.encode_frame(1, 1, bytes(70000))


def test_policy_block_is_66_bytes_in_document_order():
    p = WriteVerifyPolicy()
    blk = bf.pack_policy(p)
    assert len(blk) == 66
    vals = struct.unpack("<HHffffffffffffffHf", blk)
    assert vals[0:2] == (p.n_verify_reads, p.max_pulses) and vals[16] == p.stuck_after
    assert vals[3] == pytest.approx(p.set_v_bl) and vals[17] == pytest.approx(p.verify_margin)


# ---- exact exchanges per command -----------------------------------------------------------------
def test_connect_identifies_sets_watchdog_and_clears_power_on_event():
    board, port = open_board([])
    assert board.info.model == "AB1" and board.info.firmware == "fw-9" and board.info.serial == "SN42"
    assert (board.info.n_pe, board.info.rows, board.info.cols, board.info.max_payload) == (1, 64, 64, 1024)
    assert board.stats["resets_seen"] == 0          # the power-on reset is expected, not a reboot
    finish(board, port, 4)


def test_wrong_geometry_is_a_config_error_and_closes_the_port():
    port = ScriptedPort(connect_script()[:1])
    with pytest.raises(ConfigError, match=r"1x64x64 but the station expects 8x128x16"):
        ArrayBoard(port, expected_geometry=Geometry(8, 128, 16))
    assert port.closed and port.exchanges == []


def test_status_watchdog_and_ground():
    board, port = open_board([
        (frame(4, 0x02, b"\x00"), ack(4, 0x02, status_payload(routed=1, last_seq=77, wd=2.0), 0x04)),
        (frame(5, 0x03, struct.pack("<f", 2.0)), ack(5, 0x03, struct.pack("<f", 2.0))),
        (frame(6, 0x04), ack(6, 0x04)),
    ])
    st = board.status()
    assert st.routed and st.last_seq == 77 and st.watchdog_s == 2.0 and not st.watchdog_fired
    assert board.set_watchdog(2.0) == 2.0
    board.ground_all()
    with pytest.raises(ValueError, match="watchdog"):
        board.set_watchdog(1e-5)                     # refused before any byte
    finish(board, port, 7)


def test_route_and_set_gate():
    pe, row, col = [0, 0], [3, 3], [5, 6]
    board, port = open_board([
        (frame(4, 0x10, struct.pack("<BBBBf", 2, 1, 3, 0, 1.25) + cells_bytes(pe, row, col)), ack(4, 0x10)),
        (frame(5, 0x11, struct.pack("<f", 1.5)), ack(5, 0x11)),
        (frame(6, 0x10, struct.pack("<BBBBf", 0, 0, 0, 0, 0.0) + cells_bytes([], [], [])), ack(6, 0x10)),
    ])
    board.route(Cells(pe, row, col), bl="bus", sl="ground", wl="dac", gate_v=1.25)
    board.set_gate(1.5)
    board.route(None)
    with pytest.raises(ValueError, match="BL drive 'dac'"):
        board.route(Cells(0, 0, 0), bl="dac")
    with pytest.raises(SafetyViolation, match="gate voltage 6"):
        board.set_gate(6.0)
    finish(board, port, 7)


def test_pulse_is_chunked_to_max_payload_and_checked_before_sending():
    n = 60                                            # (1024 - 4) // 18 = 56 per frame -> 56 + 4
    rng = np.random.default_rng(0)
    flat = rng.choice(64 * 64, n, replace=False)
    cells = Cells.from_flat(flat, GEO)
    v = np.full(n, 1.6)
    g = np.linspace(0.8, 2.2, n)
    w = np.full(n, 50e-9)

    def req(seq, s):
        return frame(seq, 0x20, b"\x01\x00" + cells_bytes(cells.pe[s], cells.row[s], cells.col[s])
                     + v[s].astype("<f4").tobytes() + g[s].astype("<f4").tobytes() + w[s].astype("<f4").tobytes())

    board, port = open_board([(req(4, slice(0, 56)), ack(4, 0x20, struct.pack("<H", 56))),
                              (req(5, slice(56, 60)), ack(5, 0x20, struct.pack("<H", 4)))])
    assert board.pulse(cells, "SET", v, g, w) == 60
    with pytest.raises(SafetyViolation, match="pulse amplitude 7"):
        board.pulse(cells[:2], "RESET", 7.0, 4.0, 50e-9)
    with pytest.raises(SafetyViolation, match="pulse width"):
        board.pulse(cells[:2], "SET", 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="twice"):
        board.pulse(Cells([0, 0], [1, 1], [2, 2]), "SET", 1.0, 1.0, 50e-9)
    with pytest.raises(ValueError, match="SET, RESET or FORM"):
        board.pulse(cells[:1], "READ", 0.2, 1.0, 50e-9)
    finish(board, port, 6)


def test_read_cells():
    cells = Cells([0, 0, 0], [1, 2, 3], [4, 5, 6])
    g = np.array([1e-6, 5.5e-6, 20e-6], "<f4")
    board, port = open_board([
        (frame(4, 0x30, struct.pack("<fH", 0.2, 4) + cells_bytes(cells.pe, cells.row, cells.col)),
         ack(4, 0x30, struct.pack("<H", 3) + g.tobytes()))])
    out = board.read_cells(cells, n_avg=4)
    assert out.dtype == np.float64 and np.allclose(out, g)
    with pytest.raises(SafetyViolation, match="read voltage"):
        board.read_cells(cells, v_read=1.0)
    finish(board, port, 5)


def test_vmm_batch_is_chunked_and_results_concatenated():
    rows = np.arange(64)
    cols = np.array([0, 7, 9, 63])
    x = np.random.default_rng(1).integers(0, 256, (20, 64))
    per = min((1024 - (16 + 2 * 68)) // 64, (1024 - 10) // 20)           # 13 vectors per frame
    assert per == 13
    codes = np.random.default_rng(2).integers(0, 65025, (20, 4))
    sat = codes > 60000
    exchanges = []
    for seq, (a, b) in zip((4, 5), ((0, 13), (13, 20))):
        req = (struct.pack("<HHHHff", 0, 64, 4, b - a, 0.2, 50e-6) + rows.astype("<u2").tobytes()
               + cols.astype("<u2").tobytes() + x[a:b].astype("u1").tobytes())
        rep = (struct.pack("<HHBBf", b - a, 4, 8, 8, 50e-6 / 255) + codes[a:b].astype("<u4").tobytes()
               + sat[a:b].astype("u1").tobytes())
        exchanges.append((frame(seq, 0x31, req), ack(seq, 0x31, rep)))
    board, port = open_board(exchanges)
    res = board.vmm(0, x, rows, cols, adc_full_scale_a=50e-6)
    assert np.array_equal(res.codes, codes) and np.array_equal(res.saturated, sat)
    assert res.lsb_a == pytest.approx(50e-6 / 255) and res.v_read == 0.2 and res.adc_bits == 8
    with pytest.raises(ValueError, match="0..255"):
        board.vmm(0, x + 1, rows, cols)
    finish(board, port, 6)


def test_program_job_chunks_and_builds_a_report():
    policy = WriteVerifyPolicy(max_pulses=100)
    cells = Cells.block(0, [0, 1], np.arange(5), GEO)                  # 10 cells, 4 per job
    tgt = np.linspace(2e-6, 20e-6, 10)
    lo, hi = tgt - 0.5e-6, tgt + 0.5e-6
    final = tgt.astype("<f4")
    pulses = np.arange(10, dtype="<u2")
    status = np.array([0, 0, 0, 1, 0, 0, 2, 0, 0, 0], "i1")
    exchanges = []
    for seq, (a, b) in zip((4, 5, 6), ((0, 4), (4, 8), (8, 10))):
        req = (bf.pack_policy(policy) + cells_bytes(cells.pe[a:b], cells.row[a:b], cells.col[a:b])
               + tgt[a:b].astype("<f4").tobytes() + lo[a:b].astype("<f4").tobytes() + hi[a:b].astype("<f4").tobytes())
        rep = (struct.pack("<HHf", b - a, 7 + seq, 0.5) + final[a:b].tobytes() + pulses[a:b].tobytes()
               + status[a:b].tobytes())
        exchanges.append((frame(seq, 0x40, req), ack(seq, 0x40, rep)))
    board, port = open_board(exchanges)
    chunks = []
    rep = board.program_job(cells, tgt, lo, hi, policy, chunk_cells=4,
                            on_chunk=lambda pos, r: chunks.append(pos.tolist()))
    assert np.array_equal(rep.status, status) and np.array_equal(rep.pulses, pulses)
    assert np.allclose(rep.final_s, final) and rep.iterations == 13 and rep.backend_seconds == pytest.approx(1.5)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(SafetyViolation, match="reset_gate = 6"):
        board.program_job(cells, tgt, lo, hi, WriteVerifyPolicy(reset_gate=6.0))
    finish(board, port, 7)


def test_program_job_cancel_between_chunks_carries_partial_report():
    policy = WriteVerifyPolicy()
    cells = Cells.block(0, 0, [0, 1], GEO)
    req = (bf.pack_policy(policy) + cells_bytes([0], [0], [0]) + np.array([5e-6, 4e-6, 6e-6], "<f4").tobytes())
    rep = struct.pack("<HHf", 1, 3, 0.1) + np.array([5e-6], "<f4").tobytes() + struct.pack("<H", 9) + b"\x00"
    board, port = open_board([(frame(4, 0x40, req), ack(4, 0x40, rep))])
    token = CancelToken()
    with pytest.raises(Cancelled) as ei:
        board.program_job(cells, 5e-6, 4e-6, 6e-6, policy, chunk_cells=1,
                          on_chunk=lambda pos, r: token.cancel("stop"), cancel=token)
    assert ei.value.report.status.tolist() == [0, -1] and ei.value.report.pulses.tolist() == [9, 0]
    finish(board, port, 5)


# ---- errors and recovery --------------------------------------------------------------------------
def test_nak_names_command_and_error():
    board, port = open_board([(frame(4, 0x11, struct.pack("<f", 1.0)),
                               nak(4, 0x11, 9, msg=b"nothing is routed; ROUTE first"))])
    with pytest.raises(BoardNak, match=r"refused SET_GATE: NAK NOT_ROUTED: nothing is routed") as ei:
        board.set_gate(1.0)
    assert ei.value.error == "NOT_ROUTED" and ei.value.command == "SET_GATE"
    finish(board, port, 5)


def test_nak_bad_crc_is_resent_because_nothing_was_executed():
    pulse = b"\x01\x00" + cells_bytes([0], [0], [0]) + np.array([1.6, 1.0, 50e-9], "<f4").tobytes()
    board, port = open_board([(frame(4, 0x20, pulse), nak(4, 0x20, 1)),
                              (frame(5, 0x20, pulse), ack(5, 0x20, struct.pack("<H", 1)))])
    assert board.pulse(Cells(0, 0, 0), "SET", 1.6, 1.0, 50e-9) == 1
    finish(board, port, 6)


def test_timeout_on_idempotent_command_resyncs_and_retries():
    g = np.array([3e-6], "<f4")
    req = struct.pack("<fH", 0.2, 1) + cells_bytes([0], [1], [2])
    board, port = open_board([
        (frame(4, 0x30, req), b""),                                           # no reply
        (frame(5, 0x01), ack(5, 0x01, identify_payload())),                  # resync
        (frame(6, 0x30, req), ack(6, 0x30, struct.pack("<H", 1) + g.tobytes())),
    ])
    assert board.read_cells(Cells(0, 1, 2))[0] == pytest.approx(3e-6)
    assert board.stats["timeouts"] == 1 and board.stats["resyncs"] == 1 and port.flushes >= 1
    finish(board, port, 7)


def test_stale_and_garbled_replies():
    req = struct.pack("<fH", 0.2, 1) + cells_bytes([0], [1], [2])
    good = ack(6, 0x30, struct.pack("<H", 1) + np.array([3e-6], "<f4").tobytes())
    bad = bytearray(ack(4, 0x30, struct.pack("<H", 1) + np.array([3e-6], "<f4").tobytes()))
    bad[9] ^= 0x5A
    board, port = open_board([
        (frame(4, 0x30, req), bytes(bad)),                                    # corrupted reply
        (frame(5, 0x01), ack(3, 0x02, status_payload()) + ack(5, 0x01, identify_payload())),   # stale first
        (frame(6, 0x30, req), b"\x00\x13" + good),                          # line noise first
    ])
    assert board.read_cells(Cells(0, 1, 2))[0] == pytest.approx(3e-6)
    assert board.stats["garbled"] == 1 and board.stats["stale_replies"] == 1
    finish(board, port, 7)


def test_pulse_timeout_is_not_retried_and_says_whether_it_was_applied():
    pulse = b"\x02\x00" + cells_bytes([0], [0], [0]) + np.array([1.2, 4.0, 50e-9], "<f4").tobytes()
    board, port = open_board([
        (frame(4, 0x20, pulse), b""),
        (frame(5, 0x01), ack(5, 0x01, identify_payload())),
        (frame(6, 0x02, b"\x00"), ack(6, 0x02, status_payload(last_seq=4))),
    ])
    with pytest.raises(InstrumentTimeout, match=r"no reply to PULSE \(seq 4\).*the board executed it") as ei:
        board.pulse(Cells(0, 0, 0), "RESET", 1.2, 4.0, 50e-9)
    assert ei.value.applied is True
    finish(board, port, 7)


def test_garbled_program_job_reply_says_results_lost():
    policy = WriteVerifyPolicy()
    req = bf.pack_policy(policy) + cells_bytes([0], [0], [0]) + np.array([5e-6, 4e-6, 6e-6], "<f4").tobytes()
    rep = bytearray(ack(4, 0x40, struct.pack("<HHf", 1, 3, 0.1) + np.array([5e-6], "<f4").tobytes() + b"\x09\x00\x00"))
    rep[-7] ^= 0xFF
    board, port = open_board([
        (frame(4, 0x40, req), bytes(rep)),
        (frame(5, 0x01), ack(5, 0x01, identify_payload())),
        (frame(6, 0x02, b"\x00"), ack(6, 0x02, status_payload(last_seq=3))),
    ])
    with pytest.raises(BackendError, match="corrupted.*did NOT execute") as ei:
        board.program_job(Cells(0, 0, 0), 5e-6, 4e-6, 6e-6, policy)
    assert ei.value.applied is False and ei.value.report.status.tolist() == [-1]
    finish(board, port, 7)


def test_reset_event_reapplies_watchdog_and_route():
    route = struct.pack("<BBBBf", 2, 1, 3, 0, 1.0) + cells_bytes([0], [2], [3])
    req = struct.pack("<fH", 0.2, 1) + cells_bytes([0], [1], [2])
    board, port = open_board([
        (frame(4, 0x10, route), ack(4, 0x10)),
        (frame(5, 0x30, req), ack(5, 0x30, struct.pack("<H", 1) + np.array([3e-6], "<f4").tobytes(), flags=0x01)),
        (frame(6, 0x02, b"\x01"), ack(6, 0x02, status_payload(events=1, boot=2), flags=0x01)),
        (frame(7, 0x03, struct.pack("<f", 5.0)), ack(7, 0x03, struct.pack("<f", 5.0))),
        (frame(8, 0x10, route), ack(8, 0x10, flags=0x04)),
    ])
    board.route(Cells(0, 2, 3), bl="bus", sl="ground", wl="dac", gate_v=1.0)
    board.read_cells(Cells(0, 1, 2))
    assert board.stats["resets_seen"] == 1
    finish(board, port, 9)


def test_exit_grounds_even_on_exception_and_close_is_idempotent():
    board, port = open_board([(frame(4, 0x04), ack(4, 0x04))])
    with pytest.raises(RuntimeError, match="boom"):
        with board:
            raise RuntimeError("boom")
    assert port.exchanges == [] and port.closed
    board.close()                                     # no further bytes
    with pytest.raises(BackendError, match="closed"):
        board.status()


def test_close_is_best_effort_when_the_board_is_gone(caplog):
    board, port = open_board([(frame(4, 0x04), b""), (frame(5, 0x01), b""), (frame(6, 0x01), b""),
                              (frame(7, 0x01), b"")])
    board.close()
    assert port.closed and "could not ground" in caplog.text
