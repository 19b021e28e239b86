"""Amplitude-encoded VMM (Wang 2019 inputs: signed row voltages, one read, one bipolar conversion).

On the simulated chip and through the board protocol (VMM_AMP, protocol 2) over the emulated
board of stations/sim-instruments.toml: the ideal signed dot product within the ADC bound (read
noise off), the same statistics on both paths (noise on), bad input refused before a byte is
sent, and protocol 1 still working in both directions (v1 host on the v2 board, v2 host on a v1
board). Request bytes are written by hand from docs/board-protocol.md.
"""
from __future__ import annotations

import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import serial

import sim_backend.urlhandler  # noqa: F401  (registers hilsim://)
from drivers import board_frames as bf
from drivers.board import ArrayBoard
from drivers.crossbar_1t1r import InstrumentCrossbar
from hil.crossbar import AmplitudeResult, bipolar_adc_lsb
from hil.errors import AddressError, BackendError, SafetyViolation
from hil.geometry import WANG, YAO, Cells
from hil.ops.dryrun import DryRunCrossbar
from hil.registry import open_station
from sim_backend.board_firmware import board_for
from sim_backend.chip import SimulatedCrossbar
from sim_backend.params import DeviceParams, ReadNoiseParams
from sim_backend.world import EmulatedWorld, drop_world, get_world, register_world
from tests.fakes import ToyCrossbar

SIM_INSTRUMENTS = Path(__file__).resolve().parents[1] / "stations" / "sim-instruments.toml"
QUIET = DeviceParams(read_noise=ReadNoiseParams(rel=0.0, abs_us=0.0))
_ids = itertools.count()


def signed_volts(rng, batch: int, n_rows: int, v_max: float = 0.2) -> np.ndarray:
    """Random signed inputs; every other vector drives row pairs (2k, 2k+1) at +V and -V."""
    v = rng.uniform(-v_max, v_max, (batch, n_rows))
    v[1::2, 1::2] = -v[1::2, 0:n_rows - n_rows % 2:2]
    return v


def assert_ideal(res: AmplitudeResult, volts: np.ndarray, G: np.ndarray, slack_a=0.0) -> None:
    ideal = volts @ G
    assert res.codes.dtype == np.int64 and res.codes.shape == ideal.shape
    top = 2 ** (res.adc_bits - 1) - 1
    assert np.abs(res.codes).max() <= top
    ok = ~res.saturated
    assert ok.all()
    err = np.abs(res.currents - ideal)
    assert (err <= res.quantization_bound_a * (1 + 1e-6) + slack_a + 1e-15).all()
    assert (ideal < -res.lsb_a).any() and (ideal > res.lsb_a).any()      # both signs were exercised


# ---- simulated chip -------------------------------------------------------------------------------
def test_simulator_equals_the_ideal_signed_dot_product_within_the_adc_bound():
    x = SimulatedCrossbar(WANG, params=QUIET, seed=3)
    rows, cols = np.arange(10, 46), np.arange(0, 64, 3)
    G = x.true_conductance(Cells.block(0, rows, cols, WANG)).reshape(rows.size, cols.size)
    volts = signed_volts(np.random.default_rng(0), 200, rows.size)
    res = x.vmm_amplitude(0, volts, rows, cols)
    assert res.lsb_a == pytest.approx(100e-6 / 127) and res.full_scale_a == pytest.approx(100e-6)
    assert_ideal(res, volts, G)
    # a weight as a pair on adjacent rows driven +V and -V reads (G+ - G-) V
    pair = np.zeros((1, rows.size))
    pair[0, 4], pair[0, 5] = 0.2, -0.2
    r = x.vmm_amplitude(0, pair, rows, cols, adc_full_scale_a=10e-6)
    assert np.abs(r.currents[0] - 0.2 * (G[4] - G[5])).max() <= r.quantization_bound_a * (1 + 1e-6)
    assert x.counters["vmm_calls"] == 2 and x.counters["vmm_slots"] == 201      # one conversion per vector


def test_bipolar_adc_saturates_symmetrically_and_counts_as_one_read():
    x = SimulatedCrossbar(WANG, params=QUIET, seed=3)
    rows, cols = np.arange(64), np.arange(8)
    G = x.true_conductance(Cells.block(0, rows, cols, WANG)).reshape(64, 8)
    volts = np.vstack([np.full(64, 0.2), np.full(64, -0.2), np.zeros(64)])
    fs = 20e-6                                          # 64 rows x 0.2 V x ~10 uS is far above
    t0 = x.now()
    res = x.vmm_amplitude(0, volts, rows, cols, adc_full_scale_a=fs)
    assert (volts @ G)[:2].min() > -np.inf and np.abs(volts @ G)[:2].min() > fs
    assert res.saturated[:2].all() and not res.saturated[2].any()
    assert (res.codes[0] == 127).all() and (res.codes[1] == -127).all() and (res.codes[2] == 0).all()
    tp = x.params.timing
    assert x.now() - t0 == pytest.approx(tp.call_overhead_s + 3 * (tp.slot_s + tp.slot_overhead_s))


def test_noise_follows_the_read_noise_model_of_the_bit_serial_read():
    p = DeviceParams(read_noise=ReadNoiseParams(rel=0.05, abs_us=0.5))
    x = SimulatedCrossbar(WANG, params=p, seed=5)
    rows, cols = np.arange(16), np.arange(32)
    G = x.true_conductance(Cells.block(0, rows, cols, WANG)).reshape(16, 32)
    v = signed_volts(np.random.default_rng(1), 1, 16, 0.05)
    res = x.vmm_amplitude(0, np.repeat(v, 4000, axis=0), rows, cols, adc_full_scale_a=20e-6)
    sigma = np.sqrt((v * v) @ ((0.05 * G) ** 2 + 0.5e-6 ** 2))[0]
    measured = res.currents.std(axis=0)
    expected = np.sqrt(sigma ** 2 + res.lsb_a ** 2 / 12)
    assert np.median(measured / expected) == pytest.approx(1.0, abs=0.06)
    assert np.abs(res.currents.mean(axis=0) - (v @ G)[0]).max() < 5 * expected.max() / np.sqrt(4000) + res.lsb_a / 2


def test_read_noise_is_fresh_for_every_call_column_and_vector():
    # Wang in-situ training reads the same weights call after call: the noise of a read must not
    # repeat in the next call (the old NoisePool could), nor correlate across columns or vectors
    p = DeviceParams(read_noise=ReadNoiseParams(rel=0.05, abs_us=0.5))
    x = SimulatedCrossbar(WANG, params=p, seed=7)
    rows, cols = np.arange(16), np.arange(32)
    G = x.true_conductance(Cells.block(0, rows, cols, WANG)).reshape(16, 32)
    v = np.repeat(signed_volts(np.random.default_rng(2), 1, 16, 0.05), 2000, axis=0)
    err = [x.vmm_amplitude(0, v, rows, cols, adc_full_scale_a=20e-6).currents - v @ G for _ in range(2)]
    z = [(e - e.mean(axis=0)) / e.std(axis=0) for e in err]           # 64,000 values a call
    bound = 5 / np.sqrt(z[0].size)                                    # 5 standard errors
    assert abs(np.mean(z[0] * z[1])) < bound                          # call to call, same cell and vector
    assert abs(np.mean(z[0][:, 1:] * z[0][:, :-1])) < bound           # adjacent columns
    assert abs(np.mean(z[0][1:] * z[0][:-1])) < bound                 # consecutive vectors
    assert abs(np.mean(z[0][1000:] * z[0][:1000])) < bound            # Box-Muller pairs (n/2 apart)


def test_bad_inputs_are_one_line_errors_and_leave_the_chip_untouched():
    x = SimulatedCrossbar(WANG, seed=1)
    rows = np.arange(4)
    before = (dict(x.counters), x.now())
    cases = [(lambda: x.vmm_amplitude(0, [[0.1, np.nan, 0.0, 0.0]], rows), ValueError, r"NaN.*vector 0, input 1"),
             (lambda: x.vmm_amplitude(0, [[0.1, 0.2, np.inf, 0.0]], rows), ValueError, "NaN or infinite"),
             (lambda: x.vmm_amplitude(0, np.zeros((2, 5)), rows), ValueError, r"shape \(batch, 4\)"),
             (lambda: x.vmm_amplitude(0, np.zeros((2, 2, 4)), rows), ValueError, "shape"),
             (lambda: x.vmm_amplitude(0, [["a", 0, 0, 0]], rows), ValueError, "numbers"),
             (lambda: x.vmm_amplitude(0, [[0.1, -0.6, 0, 0]], rows), SafetyViolation,
              r"READ rejected: \|V\| -0.6 V exceeds the limit 0.5 V at input vector 0, row 1"),
             (lambda: x.vmm_amplitude(0, np.zeros((1, 4)), [1, 2, 2, 3]), AddressError, "must not repeat"),
             (lambda: x.vmm_amplitude(1, np.zeros((1, 4)), rows), AddressError, "PE 1"),
             (lambda: x.vmm_amplitude(0, np.zeros((1, 1)), [0], [64]), AddressError, "column"),
             (lambda: x.vmm_amplitude(0, np.zeros((1, 4)), rows, adc_full_scale_a=-1.0), ValueError, "full_scale")]
    for call, exc, frag in cases:
        with pytest.raises(exc, match=frag) as info:
            call()
        assert "\n" not in str(info.value)
    assert (dict(x.counters), x.now()) == before


def test_dry_run_and_the_recording_fake_answer_the_amplitude_vmm():
    shadow = SimulatedCrossbar(WANG, params=QUIET, seed=2)
    dry = DryRunCrossbar(WANG, shadow.limits, shadow, station="t")
    rows, cols = np.arange(8), np.arange(4)
    volts = signed_volts(np.random.default_rng(2), 5, 8)
    G = shadow.true_conductance(Cells.block(0, rows, cols, WANG)).reshape(8, 4)
    assert_ideal(dry.vmm_amplitude(0, volts, rows, cols, adc_full_scale_a=20e-6), volts, G)
    toy = ToyCrossbar()
    r = toy.vmm_amplitude(0, [[0.1, -0.1, 0.0, 0.05]], [0, 1, 2, 3], [1, 2])
    assert toy.calls[-1][0] == "vmm_amplitude" and toy.touched() == {1, 2, 5, 6, 9, 10, 13, 14}
    g = toy.g.reshape(4, 4)[:, 1:3]
    assert np.abs(r.currents - np.array([0.1, -0.1, 0.0, 0.05]) @ g).max() <= r.quantization_bound_a * 1.000001


def test_bipolar_lsb_needs_two_bits():
    assert bipolar_adc_lsb(127e-6, 8) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="at least 2 bits"):
        bipolar_adc_lsb(1e-6, 1)


# ---- through the board protocol -------------------------------------------------------------------
@pytest.fixture
def station(tmp_path):
    """factory(params=None, read_max_v=None) -> (InstrumentCrossbar on stations/sim-instruments.toml
    over a fresh emulated world, the world)."""
    opened, worlds = [], []

    def make(params: DeviceParams | None = None, read_max_v: float | None = None):
        world = f"t-amp-{os.getpid()}-{next(_ids)}"
        text = SIM_INSTRUMENTS.read_text()
        text = text.replace('world = "sim-instruments"', f'world = "{world}"')
        text = text.replace("hilsim://sim-instruments/board", f"hilsim://{world}/board")
        d = tmp_path / world
        d.mkdir()
        if params is not None:
            params.save(d / "params.toml")
            text = text.replace('# params = "my-device.toml"', 'params = "params.toml"')
        if read_max_v is not None:
            text = text.replace("[limits.READ]\nmax_v = 0.5", f"[limits.READ]\nmax_v = {read_max_v}")
        (d / "sim-instruments.toml").write_text(text)
        worlds.append(world)
        xb = open_station(str(d / "sim-instruments.toml"))
        opened.append(xb)
        assert isinstance(xb, InstrumentCrossbar)
        return xb, get_world(world)

    yield make
    for xb in opened:
        xb.close()
    for w in worlds:
        drop_world(w)


def test_board_path_equals_the_ideal_signed_dot_product_within_the_adc_bound(station):
    xb, world = station(params=QUIET)
    rows, cols = np.arange(20, 120), np.arange(16)
    G = world.chip.true_conductance(Cells.block(5, rows, cols, YAO)).reshape(rows.size, cols.size)
    volts = signed_volts(np.random.default_rng(4), 60, rows.size, 0.1)        # 60 x 100 -> two frames
    res = xb.vmm_amplitude(5, volts, rows, cols, adc_full_scale_a=200e-6)
    moved = np.abs(world.chip.true_conductance(Cells.block(5, rows, cols, YAO)).reshape(G.shape) - G)
    assert moved.max() < 1e-4 * G.max()                      # read disturb of the reads themselves
    assert_ideal(res, volts, G, slack_a=np.abs(volts) @ moved)
    assert res.lsb_a == pytest.approx(200e-6 / 127, rel=1e-6)
    assert xb.board.version == 2 and xb.board.describe()["protocol"] == 2
    per = (8192 - 12 - 2 * 116) // (4 * 100)                                  # 19 vectors per request
    assert sum(e.kind == "vmm_amp" for e in world.events) == -(-60 // per) == 4
    assert world.max_applied_v["BL"] == pytest.approx(np.abs(volts).max(), rel=1e-6)


def test_noise_statistics_agree_between_the_simulator_and_the_board_path(station):
    xb, world = station(params=DeviceParams(read_noise=ReadNoiseParams(rel=0.05, abs_us=0.5)))
    rows, cols = np.arange(32), np.arange(16)
    v = signed_volts(np.random.default_rng(7), 2, rows.size, 0.05)
    volts = np.tile(v, (1500, 1))                                             # 3000 vectors, 2 distinct
    fs = 20e-6
    board = xb.vmm_amplitude(2, volts, rows, cols, adc_full_scale_a=fs).currents
    chip = world.chip.vmm_amplitude(2, volts, rows, cols, adc_full_scale_a=fs).currents
    G = world.chip.true_conductance(Cells.block(2, rows, cols, YAO)).reshape(rows.size, cols.size)
    ideal = v @ G
    for k in range(2):
        b, c = board[k::2], chip[k::2]
        sb, sc = b.std(axis=0), c.std(axis=0)
        assert np.median(sb / sc) == pytest.approx(1.0, abs=0.08)
        sem = np.sqrt((sb ** 2 + sc ** 2) / b.shape[0])
        assert (np.abs(b.mean(axis=0) - c.mean(axis=0)) < 5 * sem + 1e-12).all()
        assert (np.abs(b.mean(axis=0) - ideal[k]) < 5 * sb / np.sqrt(b.shape[0]) + fs / 127 / 2).all()
    assert np.median(board.std(axis=0)) > fs / 127                            # the noise is really there


def snapshot(world) -> tuple:
    return ({k: dict(v) for k, v in world.counters.items()}, len(world.events), dict(world.max_applied_v),
            dict(world.chip.counters))


def test_bad_input_is_refused_before_any_byte_reaches_the_board(station):
    xb, world = station(read_max_v=0.1)
    rows = np.arange(4)
    before = snapshot(world)
    for target in (xb, xb.board):
        for call, exc, frag in [
                (lambda t: t.vmm_amplitude(0, [[0.05, np.nan, 0, 0]], rows), ValueError, "NaN"),
                (lambda t: t.vmm_amplitude(0, [[0.05, 0.15, 0, 0]], rows), SafetyViolation, r"\|V\| 0.15 V"),
                (lambda t: t.vmm_amplitude(0, [[0.05, -0.15, 0, 0]], rows), SafetyViolation, r"\|V\| -0.15 V"),
                (lambda t: t.vmm_amplitude(0, np.zeros((3, 5)), rows), ValueError, "shape"),
                (lambda t: t.vmm_amplitude(0, np.zeros((1, 4)), [0, 1, 1, 2]), AddressError, "repeat|unique"),
                (lambda t: t.vmm_amplitude(8, np.zeros((1, 4)), rows), AddressError, "PE 8"),
                (lambda t: t.vmm_amplitude(0, np.zeros((1, 4)), rows, adc_full_scale_a=1.0), ValueError,
                 "full scale")]:
            with pytest.raises(exc, match=frag) as info:
                call(target)
            assert "\n" not in str(info.value)
            assert snapshot(world) == before, (target, frag)
    assert xb.board.version == 1                                   # not even the version-2 IDENTIFY went out


def test_the_board_range_is_checked_when_the_station_limits_are_wider(tmp_path):
    world = register_world(EmulatedWorld(YAO, seed=1, name=f"t-amp-range-{os.getpid()}"))
    try:
        with ArrayBoard(f"hilsim://{world.name}/board", expected_geometry=YAO) as b:
            before = snapshot(world)
            with pytest.raises(SafetyViolation, match="board range -0.5..0.5 V"):
                b.vmm_amplitude(0, [[0.2, -0.7]], [0, 1])
            assert snapshot(world) == before
    finally:
        drop_world(world.name)


# ---- protocol versions ----------------------------------------------------------------------------
class Recording:
    """A hilsim serial port that keeps every frame the host writes."""

    def __init__(self, url: str) -> None:
        self.port = serial.serial_for_url(url, timeout=1.0)
        self.sent: list[bytes] = []

    def write(self, data) -> int:
        self.sent.append(bytes(data))
        return self.port.write(data)

    def __getattr__(self, name):
        return getattr(self.port, name)


def hand_frame(seq: int, code: int, payload: bytes, version: int) -> bytes:
    body = struct.pack("<BBHHBB", 0xA5, version, len(payload), seq, code, 0) + payload
    return body + struct.pack("<I", zlib.crc32(body[1:]))


@pytest.fixture
def world():
    w = register_world(EmulatedWorld(YAO, params=QUIET, seed=9, name=f"t-amp-ver-{os.getpid()}-{next(_ids)}"))
    yield w
    drop_world(w.name)


def test_v2_host_upgrades_and_sends_the_documented_bytes(world):
    port = Recording(f"hilsim://{world.name}/board")
    with ArrayBoard(port, expected_geometry=YAO) as b:
        assert b.info.protocol == 1 and b.version == 1                 # connects in version 1
        assert all(f[1] == 1 for f in port.sent)
        volts = np.array([[0.1, -0.2, 0.05], [0.0, 0.2, -0.2]])
        res = b.vmm_amplitude(1, volts, [3, 4, 9], [0, 7], adc_full_scale_a=50e-6)
        probe, req = port.sent[-2:]
        assert probe[1] == 2 and probe[6] == bf.IDENTIFY and 0xA5 not in probe[1:]
        seq = int.from_bytes(req[4:6], "little")
        payload = (struct.pack("<HHHHf", 1, 3, 2, 2, 50e-6) + struct.pack("<3H", 3, 4, 9) + struct.pack("<2H", 0, 7)
                   + struct.pack("<6f", *volts.ravel()))
        assert req == hand_frame(seq, 0x32, payload, 2)
        assert b.version == 2 and b.info.protocol == 2
        G = world.chip.true_conductance(Cells.block(1, [3, 4, 9], [0, 7], YAO)).reshape(3, 2)
        f32 = volts.astype(np.float32).astype(float)
        assert np.abs(res.currents - f32 @ G).max() <= res.quantization_bound_a * (1 + 1e-6)
        b.read_cells(Cells(0, 0, 0))                                   # everything after: version 2
        assert port.sent[-1][1] == 2


def test_v1_host_keeps_talking_v1_to_the_v2_board(world):
    port = Recording(f"hilsim://{world.name}/board")
    with ArrayBoard(port, expected_geometry=YAO, protocol=1) as b:
        assert b.info.protocol == 1
        x = np.random.default_rng(0).integers(0, 256, (5, 8))
        res = b.vmm(0, x, range(8), range(4))
        G = world.chip.true_conductance(Cells.block(0, range(8), range(4), YAO)).reshape(8, 4)
        assert np.abs(res.currents - 0.2 * x @ G).max() <= res.quantization_bound_a * 1.000001
        n = len(port.sent)
        with pytest.raises(BackendError, match="needs protocol 2; this driver was opened with protocol=1"):
            b.vmm_amplitude(0, [[0.1]], [0], [0])
        assert len(port.sent) == n and all(f[1] == 1 for f in port.sent)
    emu = board_for(world)
    # a version-1 VMM_AMP is not a command of version 1, even on the protocol-2 board
    r = bf.decode_frame(emu.receive(hand_frame(40, 0x32, struct.pack("<HHHHf", 0, 1, 1, 1, 0.0)
                                               + b"\0\0\0\0" + struct.pack("<f", 0.1), 1)))
    assert r.version == 1 and bf.parse_nak(r.payload)[:2] == (0x32, 4)      # UNKNOWN_COMMAND
    for ver in (1, 2):
        r = bf.decode_frame(emu.receive(hand_frame(41, 0x01, b"", ver)))
        assert r.version == ver and bf.parse_identify(r.payload).protocol == ver
    v3 = bytearray(hand_frame(42, 0x01, b"", 1))
    v3[1] = 3
    r = bf.decode_frame(emu.receive(bytes(v3)))
    assert r.version == 1 and bf.parse_nak(r.payload)[1] == 3                 # BAD_VERSION, in version 1


def test_v2_host_on_a_v1_board_gets_a_clear_error_for_the_new_command(world):
    emu = board_for(world, protocol=1)                  # the board as its protocol-1 firmware
    with ArrayBoard(f"hilsim://{world.name}/board", expected_geometry=YAO) as b:
        x = np.arange(8).reshape(1, 8)
        b.vmm(0, x, range(8), range(2))                                 # version 1 works as before
        b._seq = next(s for s in range(100, 400) if 0xA5 in bf.encode_frame(s + 1, bf.IDENTIFY, version=2)[1:])
        before = dict(world.chip.counters)
        with pytest.raises(BackendError, match=r"speaks protocol 1: the amplitude VMM \(VMM_AMP\) needs "
                                               r"protocol 2; update the board firmware \(VMM_AMP was not sent\)"):
            b.vmm_amplitude(0, [[0.1, -0.1]], [0, 1], [0])
        assert emu.frames_bad == 1 and emu.last_error == 3                   # the probe: BAD_VERSION
        n = world.counters["board"]["transactions"]
        with pytest.raises(BackendError, match="speaks protocol 1"):
            b.vmm_amplitude(0, [[0.1, -0.1]], [0, 1], [0])
        assert world.counters["board"]["transactions"] == n                   # asked once
        assert world.chip.counters == before and not any(e.kind == "vmm_amp" for e in world.events)
        g = b.read_cells(Cells(0, 1, 1))                                      # the link is still in step
        assert g.shape == (1,) and b.version == 1 and b.status().frames_bad == 1
