"""ArrayBoard driver <-> emulated board firmware through pyserial's hilsim:// URL handler."""
import itertools
import logging
import struct

import numpy as np
import pytest
import serial

import sim_backend.urlhandler  # noqa: F401  (registers hilsim://)
from drivers import board_frames as bf
from drivers.board import ArrayBoard, BoardNak
from hil.errors import BackendError, ConfigError, InstrumentTimeout, SafetyViolation
from hil.geometry import WANG, YAO, Cells
from hil.programming import WriteVerifyPolicy
from sim_backend.board_firmware import EmulatedBoard, board_for
from sim_backend.world import EmulatedWorld, drop_world, register_world

_ids = itertools.count()


@pytest.fixture
def world():
    w = register_world(EmulatedWorld(YAO, seed=11, name=f"board-test-{next(_ids)}"))
    yield w
    drop_world(w.name)


def url(w):
    return f"hilsim://{w.name}/board"


@pytest.fixture
def board(world):
    with ArrayBoard(url(world), expected_geometry=YAO) as b:
        yield b


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(float)


# ---- identify, routing, accounting ---------------------------------------------------------------
def test_identify_and_transaction_accounting(world, board):
    assert (board.info.n_pe, board.info.rows, board.info.cols) == (8, 128, 16)
    assert board.info.model == EmulatedBoard.MODEL and board.info.protocol == 1
    st = board.status()
    assert st.boot_count == 1 and st.events == 0 and st.watchdog_s == 5.0 and st.frames_bad == 0
    c = world.counters["board"]
    assert c["transactions"] == board.stats["frames_out"] == 4
    assert c["bytes_in"] == board.stats["bytes_out"] and c["bytes_out"] == board.stats["bytes_in"]
    assert world.now() >= c["bus_s"] > 4 * 0.2e-3          # serial bus latency charged to the clock


def test_wrong_geometry_via_url(world):
    with pytest.raises(ConfigError, match="8x128x16 but the station expects 1x128x64"):
        ArrayBoard(url(world), expected_geometry=WANG)


def test_unknown_url_form_is_a_clear_error():
    with pytest.raises(BackendError, match="cannot open the array board"):
        ArrayBoard("hilsim:///board")


def test_route_set_gate_and_ground(world, board):
    cells = Cells(0, 5, [2, 3, 4])
    board.route(cells, bl="bus", sl="ground", wl="dac", gate_v=1.2)
    assert np.array_equal(world.selected.flat(YAO), cells.flat(YAO))
    assert world.drive == {"BL": "bus", "SL": "ground", "WL": "dac"} and world.gate_v() == pytest.approx(1.2)
    board.set_gate(2.0)
    assert world.dac_gate_v == pytest.approx(2.0)
    board.ground_all()
    assert world.outputs_off() and set(world.drive.values()) == {"ground"} and world.dac_gate_v == 0.0
    with pytest.raises(BoardNak, match="NOT_ROUTED"):
        board.set_gate(1.0)
    kinds = [e.kind for e in world.events if e.source == "board"]
    assert kinds.count("ground_all") >= 2 and "gate" in kinds and "route" in kinds


# ---- physics through the board -----------------------------------------------------------------------
def test_pulse_changes_conductance_exactly_like_the_chip(world, board):
    twin = EmulatedWorld(YAO, seed=11, name="twin-not-registered")
    cells = Cells.block(1, np.arange(4), np.arange(8), YAO)
    idx = cells.flat(YAO)
    g0 = world.chip.true_conductance(cells)
    assert np.allclose(g0, twin.chip.true_conductance(cells), rtol=1e-5)   # clocks differ by bus time
    gates = np.linspace(0.9, 2.0, len(cells))
    board.pulse(cells, "RESET", 1.8, 4.0, 100e-9)
    twin.chip.pulse(cells, "RESET", f32(1.8), f32(4.0), f32(100e-9))
    g_reset = world.chip.true_conductance(cells)
    board.pulse(cells, "SET", 1.6, gates, 50e-9)
    twin.chip.pulse(cells, "SET", f32(1.6), f32(gates), f32(50e-9))
    g_set = world.chip.true_conductance(cells)
    assert np.median(g_reset) < 0.5 * np.median(g0)                 # RESET lowers conductance
    assert np.mean(g_set > g_reset) > 0.8 and np.median(g_set) > 3 * np.median(g_reset)   # SET raises it
    assert np.allclose(world.chip.device.g0[idx], twin.chip.device.g0[idx], rtol=1e-4)
    assert world.max_applied_v["SL"] == pytest.approx(1.8, rel=1e-6) and world.max_applied_v["BL"] == pytest.approx(1.6, rel=1e-6)
    assert board.status().pulses == 2 * len(cells)


def test_read_cells_matches_true_conductance_within_read_noise(world, board):
    cells = Cells.block(2, np.arange(16), np.arange(16), YAO)
    g = board.read_cells(cells, n_avg=8)
    true = world.chip.true_conductance(cells)
    assert np.abs(g - true).max() < 0.05 * true.max()
    assert np.median(np.abs(g - true) / true) < 0.01


def test_vmm_matches_the_chip_within_noise_and_quantization(world, board):
    rows, cols = np.arange(0, 64), np.arange(16)
    x = np.random.default_rng(3).integers(0, 256, (300, rows.size))   # 300 vectors -> several frames
    fs = 1e-3
    res = board.vmm(3, x, rows, cols, adc_full_scale_a=fs)
    direct = world.chip.vmm(3, x, rows, cols, adc_full_scale_a=fs)
    G = world.chip.true_conductance(Cells.block(3, rows, cols, YAO)).reshape(rows.size, cols.size)
    ideal = 0.2 * x @ G
    assert res.codes.shape == (300, 16) and not res.saturated.any()
    assert res.lsb_a == pytest.approx(direct.lsb_a, rel=1e-6)
    bound = 2 * res.quantization_bound_a + 0.01 * ideal.max()
    assert np.abs(res.currents - direct.currents).max() < bound
    err_board = np.abs(res.currents - ideal).mean()
    err_chip = np.abs(direct.currents - ideal).mean()
    assert err_board < 2 * err_chip + res.lsb_a                        # same statistics as the chip's own
    per = min((8192 - 16 - 2 * 80) // 64, (8192 - 10) // (5 * 16))     # 102 vectors per frame
    assert board.stats["commands"] == 3 + -(-300 // per) == 6             # connect + 3 VMM chunks


def test_program_job_brings_64_cells_into_band(world, board):
    cells = Cells.block(4, np.arange(8), np.arange(8), YAO)
    tgt = np.linspace(2e-6, 20e-6, 64)
    tol = 0.6e-6
    policy = WriteVerifyPolicy()
    lo, hi = tgt - tol * policy.verify_margin, tgt + tol * policy.verify_margin
    t0 = world.now()
    rep = board.program_job(cells, tgt, lo, hi, policy)
    assert rep.in_band.sum() >= 62 and rep.summary()["mean_pulses"] > 1
    ok = rep.in_band
    g = world.chip.true_conductance(cells)
    assert np.all(np.abs(g[ok] - tgt[ok]) < tol + 0.3e-6)
    assert np.allclose(rep.final_s[ok], tgt[ok], atol=tol)
    assert rep.backend_seconds > 0 and world.now() - t0 >= rep.backend_seconds
    assert board.status().pulses == rep.pulses.sum()
    assert board.stats["commands"] == 3 + 1 + 1            # connect, one job frame for 64 cells, status


# ---- refusal before any byte, firmware-side checks -----------------------------------------------------
def test_out_of_range_is_refused_before_a_byte_is_written(world, board):
    before = dict(world.counters["board"])
    with pytest.raises(SafetyViolation):
        board.pulse(Cells(0, 0, 0), "FORM", 6.0, 1.0, 50e-9)
    with pytest.raises(SafetyViolation):
        board.route(Cells(0, 0, 0), wl="dac", gate_v=9.0)
    assert world.counters["board"] == before and world.max_applied_v["BL"] == 0.0


def raw_exchange(emu, seq, code, payload=b""):
    return bf.decode_frame(emu.receive(bf.encode_frame(seq, code, payload)))


def test_firmware_naks_malformed_frames_and_bad_arguments(world):
    emu = board_for(world)
    g_before = world.chip.device.g0.copy()
    good = bf.encode_frame(9, bf.STATUS, b"\x00")
    bad = bytearray(good)
    bad[-1] ^= 1
    out = emu.receive(b"\x13\x37" + bytes(bad) + good)                    # noise, corrupted, good
    n1 = 12 + int.from_bytes(out[2:4], "little")
    r1 = bf.decode_frame(out[:n1])
    assert r1.code == bf.NAK and r1.seq == 9 and bf.parse_nak(r1.payload)[1] == 1     # BAD_CRC
    assert bf.decode_frame(out[n1:]).code == bf.STATUS | 0x80
    cases = [(0x77, b"", 4),                                              # UNKNOWN_COMMAND
             (bf.STATUS, b"", 2),                                         # BAD_LENGTH
             (bf.PULSE, b"\x01\x00" + struct.pack("<HHHH", 1, 0, 0, 0) + np.array([7.0, 1.0, 5e-8], "<f4").tobytes(), 6),
             (bf.PULSE, b"\x09\x00" + struct.pack("<HHHH", 1, 0, 0, 0) + np.array([1.0, 1.0, 5e-8], "<f4").tobytes(), 5),
             (bf.READ_CELLS, struct.pack("<fHHHHH", 0.2, 1, 1, 9, 0, 0), 6),    # PE 9 of 8
             (bf.SET_GATE, struct.pack("<f", 1.0), 9)]                    # NOT_ROUTED
    for seq, (code, payload, err) in enumerate(cases, 10):
        r = raw_exchange(emu, seq, code, payload)
        assert r.code == bf.NAK and r.seq == seq
        assert bf.parse_nak(r.payload)[:2] == (code, err), bf.parse_nak(r.payload)
    v2 = bytearray(bf.encode_frame(20, bf.IDENTIFY))
    v2[1] = 3
    assert bf.parse_nak(bf.decode_frame(emu.receive(bytes(v2))).payload)[1] == 3  # BAD_VERSION
    assert emu.frames_bad == 2
    assert np.array_equal(world.chip.device.g0, g_before) and emu.pulses == 0     # nothing was applied


# ---- faults ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["timeout", "drop", "garble"])
def test_idempotent_commands_recover_from_lost_or_corrupted_frames(world, board, kind):
    cells = Cells(0, 1, np.arange(4))
    world.faults.arm("board", kind)
    g = board.read_cells(cells, n_avg=4)
    assert ("board", kind) in world.faults.fired
    assert np.allclose(g, world.chip.true_conductance(cells), rtol=0.05)
    assert board.stats["retries"] == 1 and board.stats["resyncs"] == 1
    world.faults.arm("board", kind, after=1)                              # hit the second VMM chunk
    x = np.random.default_rng(0).integers(0, 256, (200, 128))
    res = board.vmm(0, x, adc_full_scale_a=1e-3)
    assert res.codes.shape == (200, 16) and board.stats["retries"] == 2


@pytest.mark.parametrize("kind,applied", [("timeout", True), ("garble", True), ("drop", False)])
def test_pulse_is_never_retried_and_the_error_says_whether_it_ran(world, board, kind, applied):
    cells = Cells(0, 2, np.arange(16))
    idx = cells.flat(YAO)
    g0 = world.chip.device.g0[idx].copy()
    world.faults.arm("board", kind)
    err = InstrumentTimeout if kind != "garble" else BackendError
    with pytest.raises(err, match="PULSE.*" + ("the board executed it" if applied else "did NOT execute")) as ei:
        board.pulse(cells, "RESET", 1.8, 4.0, 100e-9)
    assert ei.value.applied is applied
    changed = not np.array_equal(world.chip.device.g0[idx], g0)
    assert changed is applied and board.status().pulses == (16 if applied else 0)


def test_reset_mid_session_recovers_routing_and_watchdog(world, board):
    cells = Cells(0, 3, 7)
    board.set_watchdog(2.0)
    board.route(cells, bl="bus", sl="ground", wl="dac", gate_v=1.1)
    world.faults.arm("board", "reset")
    g = board.read_cells(cells)                                           # request lost in the reboot
    assert g.size == 1 and board.stats["resets_seen"] == 1
    emu = board_for(world)
    assert emu.boot_count == 2 and emu.watchdog_s == pytest.approx(2.0) and emu.events == 0
    assert np.array_equal(world.selected.flat(YAO), cells.flat(YAO)) and world.dac_gate_v == pytest.approx(1.1)
    assert [e.kind for e in world.events if e.source == "board"].count("boot") == 2


def test_reset_during_program_job_stops_with_a_clear_error(world, board):
    cells = Cells.block(5, [0, 1], np.arange(4), YAO)
    world.faults.arm("board", "reset")
    with pytest.raises(InstrumentTimeout, match="PROGRAM_JOB.*did NOT execute") as ei:
        board.program_job(cells, 10e-6, 9.5e-6, 10.5e-6)
    assert ei.value.report.status.tolist() == [-1] * 8
    rep = board.program_job(cells, 10e-6, 9.5e-6, 10.5e-6)              # resume: the board is usable again
    assert rep.in_band.all()


def test_disconnect_gives_a_clear_error_and_the_watchdog_grounds_the_board(world, caplog):
    b = ArrayBoard(url(world), expected_geometry=YAO, watchdog_s=1.0)
    b.route(Cells(0, 0, 0), bl="bus", sl="bus", wl="dac", gate_v=1.0)
    world.faults.arm("board", "disconnect")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(BackendError, match="serial port error.*READ_CELLS"):
            with b:
                b.read_cells(Cells(0, 0, 0))
    assert b.closed and "could not ground" in caplog.text
    assert world.selected is not None                                     # nobody could ground it ...
    with pytest.raises(serial.SerialException):
        serial.serial_for_url(url(world))
    board_for(world).advance(1.5)                                          # ... until the watchdog fires
    assert world.selected is None and set(world.drive.values()) == {"ground"} and world.outputs_off()
    world.faults.reconnect("board")
    with caplog.at_level(logging.WARNING), ArrayBoard(url(world), expected_geometry=YAO) as b2:
        assert b2.status().events == 0                                      # cleared on connect
    assert "watchdog had fired" in caplog.text


# ---- watchdog and safe exit -----------------------------------------------------------------------------
def test_watchdog_grounds_after_silence_and_refuses_output_until_cleared(world, board):
    emu = board_for(world)
    cells = Cells(1, 0, [0, 1])
    board.route(cells, bl="bus", sl="ground", wl="dac", gate_v=1.0)
    emu.advance(3.0)
    board.status()                                                          # traffic kicks the watchdog
    emu.advance(3.0)
    assert world.selected is not None and emu.watchdog_fires == 0
    emu.advance(2.5)                                                        # 5.5 s of silence > 5 s
    assert emu.watchdog_fires == 1 and world.outputs_off() and set(world.drive.values()) == {"ground"}
    assert any(e.kind == "watchdog" for e in world.events)
    with pytest.raises(BoardNak, match="WATCHDOG_FIRED.*clear_events"):
        board.route(cells, bl="bus", sl="ground", wl="dac", gate_v=1.0)
    assert board.clear_events().watchdog_fired
    board.route(cells, bl="bus", sl="ground", wl="dac", gate_v=1.0)
    assert world.selected is not None


def test_context_exit_grounds_everything_even_on_exception(world):
    with pytest.raises(KeyError):
        with ArrayBoard(url(world)) as b:
            b.route(Cells(0, 4, 4), bl="bus", sl="ground", wl="dac", gate_v=1.5)
            assert not world.outputs_off()
            raise KeyError("abort")
    assert b.closed and world.outputs_off() and set(world.drive.values()) == {"ground"}
    assert world.events[-1].kind == "ground_all" and world.events[-1].source == "board"
