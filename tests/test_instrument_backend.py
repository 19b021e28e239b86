"""The 1T1R instrument backend end to end through the drivers against the emulated instruments:
consistency with the simulated chip, every programming path, faults with resume, safety and
the board watchdog."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.board import BoardNak
from drivers.crossbar_1t1r import InstrumentCrossbar
from drivers.station import open_instrument_station
from hil.errors import BackendError, HilError, InstrumentTimeout, SafetyViolation
from hil.geometry import YAO, Cells
from hil.ops.jobs import ProgramPlan, program_job
from hil.levels import LevelTable, make_pattern
from hil.programming import NOT_FINISHED, WriteVerifyPolicy
from hil.ops.write_verify import write_verify
from hil.registry import load_station_file, open_station
from hil.runstore import RunRecord, RunWriter
from sim_backend.board_firmware import board_for
from sim_backend.chip import SimulatedCrossbar
from sim_backend.visa_backend import build_bench, load_emulation
from sim_backend.world import FAULT_KINDS, drop_world, get_world

from tests.test_station import make_station

TABLE = LevelTable.linear()


@pytest.fixture
def emulated(tmp_path):
    """factory(**station keys) -> (station path, world name); the world is built from the file's
    [emulation] table first (as opening the station would), and dropped afterwards."""
    made = []

    def make(**kw):
        d = tmp_path / f"s{len(made)}"
        d.mkdir()
        path, name = make_station(d, **kw)
        made.append(name)
        build_bench(load_emulation(path))
        return path, name
    yield make
    for name in made:
        drop_world(name)


def _open(path, **kw) -> InstrumentCrossbar:
    return open_instrument_station(load_station_file(path), **kw)


def _targets(n):
    return make_pattern("levels32", n, TABLE)[1]


def _tx(world) -> dict:
    return {k: int(v["transactions"]) for k, v in world.counters.items()}


def assert_safe(world):
    """No SMU output on, nothing routed, the board's last wiring action grounded everything."""
    assert world.outputs_off(), world.summary()
    assert world.selected is None
    for ev in reversed(world.events):
        if ev.source == "board" and ev.kind in ("route", "drive", "ground_all"):
            assert ev.kind == "ground_all", ev
            break
    last = {}
    for ev in world.events:
        if ev.kind == "output":
            last[(ev.source, ev.detail["terminal"])] = ev.detail["on"]
    assert not any(last.values()), last


# ---- consistency with the simulated chip ------------------------------------------------------------
def test_board_firmware_programming_and_vmm_match_the_simulated_chip(emulated):
    n = 256
    cells = Cells.from_flat(np.arange(n), YAO)              # PE 0, rows 0..15, all 16 columns
    targets = _targets(n)
    x = np.random.default_rng(0).integers(0, 256, size=(64, 16))
    ideal = x @ targets.reshape(16, 16)
    res = {"drivers": [], "sim": []}
    for seed in (1, 2):
        path, name = emulated(seed=seed)
        with _open(path) as xb:
            tx0 = _tx(get_world(name))
            r = write_verify(xb, cells, targets, TABLE.tolerance_s)
            tx = _tx(get_world(name))["board"] - tx0["board"]
            v = xb.vmm(0, x, np.arange(16))
        assert tx <= 5, "firmware job: a handful of frames, not one per pulse"
        sim = SimulatedCrossbar(YAO, seed=seed + 100)
        r2 = write_verify(sim, cells, targets, TABLE.tolerance_s)
        v2 = sim.vmm(0, x, np.arange(16))
        for key, rep, vm in (("drivers", r, v), ("sim", r2, v2)):
            s = rep.summary()
            err = float(np.median(np.abs(vm.dot - ideal) / ideal))
            res[key].append((s["in_band_fraction"], s["mean_pulses"], err))
    d, s = np.mean(res["drivers"], axis=0), np.mean(res["sim"], axis=0)
    assert d[0] >= 0.97 and s[0] >= 0.97 and abs(d[0] - s[0]) <= 0.03
    assert 0.75 <= d[1] / s[1] <= 1.33, (d, s)
    assert d[2] < 0.02 and s[2] < 0.02 and 0.5 <= d[2] / s[2] <= 2.0, (d, s)


def test_smu_script_path_one_transaction_per_cell_and_smu_reads(emulated):
    path, name = emulated(gate="smu1.b", program="smu-script")
    world = get_world(name)
    n = 24
    cells = Cells.block(1, range(3), range(8))
    with _open(path) as xb:
        assert xb.has("program") and xb.describe()["program_path"] == "smu-script"
        tx0 = _tx(world)
        r = write_verify(xb, cells, _targets(n), TABLE.tolerance_s)
        tx = _tx(world)
        assert r.summary()["in_band_fraction"] >= 0.9
        assert 10 <= r.summary()["mean_pulses"] <= 60
        smu_tx = tx["smu1"] - tx0["smu1"]
        assert n <= smu_tx <= n + 20, smu_tx                   # setup + one hilwv_cell per cell
        g_board = xb.read(cells, n_avg=4)
        g_smu = xb.read_smu(cells, n_avg=2)
        assert np.allclose(g_smu, g_board, rtol=0.05, atol=0.2e-6)
        in_band = np.abs(g_smu - _targets(n)) <= TABLE.tolerance_s * 1.5
        assert in_band.mean() >= 0.9
    assert_safe(world)


def test_host_path_with_smu_pulses_and_reads(emulated):
    path, name = emulated(program="host", read="smu")
    with _open(path, pulse_path="smu") as xb:
        assert not xb.has("program") and xb.spec.pulse_path == "smu"
        cells = Cells.block(2, [0], range(6))
        r = write_verify(xb, cells, _targets(6), TABLE.tolerance_s, WriteVerifyPolicy(max_pulses=80))
        assert r.summary()["in_band_fraction"] >= 5 / 6
        assert xb.stats["smu_reads"] > 0
    assert_safe(get_world(name))


def test_describe_close_and_reopen(emulated):
    path, name = emulated()
    xb = open_station(path)
    d = xb.describe()
    assert d["backend"] == "instruments" and d["emulated"] is True
    assert d["instruments"]["smu1"]["identity"]["model"] == "2602B"
    assert d["instruments"]["board"]["board"]["info"]["firmware"]
    assert d["channels"]["bl"] == "smu1.a" and d["limits"]["SET"]["max_v"] == 3.0
    t1 = xb.now()
    xb.read(Cells(0, 0, 0))
    assert xb.now() > t1                                     # the board's (virtual) clock
    xb.close()
    xb.close()                                               # idempotent
    with pytest.raises(BackendError, match="closed"):
        xb.read(Cells(0, 0, 0))
    assert_safe(get_world(name))
    with open_station(path) as xb2:                          # the instruments are free again
        assert xb2.read(Cells(0, 0, 0)).shape == (1,)


# ---- faults during a journaled programming run --------------------------------------------------------
def _plan(n):
    flat = np.arange(n, dtype=np.int64)
    li, t = make_pattern("levels32", n, TABLE)
    return ProgramPlan(flat, np.asarray(li, np.int64), np.asarray(t, float), TABLE.tolerance_s)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_board_fault_during_programming_stops_safely_and_resume_completes(emulated, tmp_path, kind):
    path, name = emulated(geometry='n_pe = 1\nrows = 64\ncols = 16', em_geometry="{ n_pe = 1, rows = 64, cols = 16 }")
    world = get_world(name)
    n = 1024                                                  # 3 PROGRAM_JOB chunks of <= 451 cells
    plan, policy = _plan(n), WriteVerifyPolicy()
    out = tmp_path / f"run-{kind}.h5"
    armed = []

    def progress(p):
        if not armed and p.done > 0:                          # after the first chunk
            world.faults.arm("board", kind)
            armed.append(p.done)

    writer = RunWriter.create(out, "program", {"spec": path}, checkpoint_interval_s=None)
    err = None
    try:
        with _open(path) as xb:
            program_job(xb, writer, plan, policy, progress=progress)
    except HilError as e:
        err = e
    finally:
        writer.close()
    assert armed and ("board", kind) in world.faults.fired, err
    assert err is not None, "the fault must not pass silently"
    msg = str(err)
    assert "board 'board'" in msg and "PROGRAM_JOB" in msg, msg
    if kind in ("drop", "reset"):
        assert "did NOT execute" in msg and err.applied is False
    if kind == "timeout":
        assert isinstance(err, InstrumentTimeout) and err.applied is True
    if kind == "disconnect":
        # the host cannot reach the board any more: its watchdog grounds everything
        world.faults.reconnect("board")
        board_for(world, "board").advance(10.0)
        assert any(e.kind == "watchdog" for e in world.events)
    assert_safe(world)

    # the record is intact: the first chunk is journaled, nothing beyond what was reported
    writer = RunWriter.resume(out, checkpoint_interval_s=None)
    cells_tab = writer.content.tables["programming/cells"]
    assert len(cells_tab["cell"]) == armed[0] and len(set(cells_tab["cell"].tolist())) == armed[0]
    with _open(path) as xb:
        rep = program_job(xb, writer, plan, policy, resume=True)
    writer.finalize()
    s = rep.summary()
    assert s["not_finished"] == 0 and s["cells"] == n and s["in_band_fraction"] >= 0.97
    with RunRecord.open(out) as rec:
        tab = rec.table("programming/cells")
        assert sorted(tab["cell"].tolist()) == list(range(n))
    assert_safe(world)


def test_smu_timeout_during_script_job_stops_with_outputs_off(emulated, tmp_path):
    path, name = emulated(gate="smu1.b", program="smu-script")
    world = get_world(name)
    cells = Cells.block(0, [0], range(8))
    calls = []

    def progress(p):
        if len(calls) == 2:
            world.faults.arm("smu1", "timeout")
        calls.append(p.done)

    with _open(path) as xb:
        with pytest.raises(InstrumentTimeout, match=r"Keithley 2600B.*did not answer 'hilwv_cell") as ei:
            write_verify(xb, cells, _targets(8), TABLE.tolerance_s, progress=progress)
        rep = ei.value.report
        assert (rep.status[:2] != NOT_FINISHED).all() and (rep.status[3:] == NOT_FINISHED).all()
        # the session resynchronised: the rest of the job can run (resume)
        r2 = write_verify(xb, cells, _targets(8), TABLE.tolerance_s, **rep.resume_kwargs())
        assert (r2.status != NOT_FINISHED).all()
    assert_safe(world)


def test_ctrl_c_during_a_script_job_leaves_every_output_off(emulated):
    path, name = emulated(gate="smu1.b", program="smu-script")
    world = get_world(name)

    def progress(p):
        if p.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with _open(path) as xb:
            write_verify(xb, Cells.block(0, [1], range(6)), _targets(6), TABLE.tolerance_s, progress=progress)
    on = [e for e in world.events if e.kind == "output" and e.detail["on"]]
    assert on, "the SMU outputs were on during the job"
    assert_safe(world)


# ---- safety ------------------------------------------------------------------------------------------
def test_a_job_beyond_the_limits_is_refused_before_a_single_byte(emulated):
    path, name = emulated(set_gate_max=2.0, gate="smu1.b", program="smu-script")
    world = get_world(name)
    cells = Cells.block(0, range(4), range(4))
    with _open(path) as xb:
        tx0, bytes0 = _tx(world), {k: v["bytes_in"] for k, v in world.counters.items()}
        ev0 = len(world.events)
        with pytest.raises(SafetyViolation, match=r"set_gate_max = 2\.2 V exceeds the SET limit"):
            write_verify(xb, cells, _targets(16), TABLE.tolerance_s)
        with pytest.raises(SafetyViolation, match=r"SET rejected: gate voltage 2\.5 V exceeds the limit 2 V at PE 0"):
            xb.pulse(cells, "SET", 1.5, np.r_[np.full(15, 1.0), 2.5], 50e-9)
        with pytest.raises(SafetyViolation, match="RESET rejected: |V| 3.5"):
            xb.pulse(cells, "RESET", 3.5, 4.0, 50e-9)
        with pytest.raises(SafetyViolation, match="READ rejected"):
            xb.vmm(0, np.zeros((1, 128), int), v_read=0.8)
        with pytest.raises(SafetyViolation, match="READ rejected"):
            xb.read_smu(cells, v_read=0.6)
        with pytest.raises(SafetyViolation, match="width"):
            xb.pulse(cells, "SET", 1.5, 1.0, 1.0)
        assert _tx(world) == tx0
        assert {k: v["bytes_in"] for k, v in world.counters.items()} == bytes0
        assert len(world.events) == ev0
        # a policy within the limits runs on the same station
        r = write_verify(xb, cells[:2], _targets(2), TABLE.tolerance_s, WriteVerifyPolicy(set_gate_max=2.0))
        assert (r.status != NOT_FINISHED).all() and _tx(world)["smu1"] > tx0["smu1"]


def test_watchdog_grounds_the_board_when_the_host_stops_talking(emulated):
    path, name = emulated()
    world = get_world(name)
    with _open(path) as xb:
        xb.board.route(Cells(0, 3, 4), bl="bus", sl="ground", wl="dac", gate_v=1.0)
        assert world.selected is not None
        board_for(world, "board").advance(4.0)                 # within the 5 s watchdog
        assert world.selected is not None
        board_for(world, "board").advance(2.0)                 # host silent > 5 s
        assert world.selected is None and world.drive == {"BL": "ground", "SL": "ground", "WL": "ground"}
        assert [e for e in world.events if e.kind == "watchdog"]
        with pytest.raises(BoardNak, match="WATCHDOG_FIRED.*watchdog grounded everything"):
            xb.read(Cells(0, 0, 0))
        xb.board.clear_events()
        assert xb.read(Cells(0, 0, 0)).shape == (1,)
    assert_safe(world)


def test_script_job_extends_the_watchdog_and_restores_it(emulated):
    path, name = emulated(gate="smu1.b", program="smu-script")
    world = get_world(name)
    with _open(path) as xb:
        write_verify(xb, Cells.block(0, [2], range(3)), _targets(3), TABLE.tolerance_s)
        assert xb.board.watchdog_s == 5.0
        sets = [e.detail["timeout_s"] for e in world.events if e.kind == "watchdog_set"]
        assert max(sets) > 5.0 and sets[-1] == 5.0
        assert not [e for e in world.events if e.kind == "watchdog"]



def test_safe_turns_everything_off_without_closing(emulated):
    """`Crossbar.safe()` (called by the GUI after an abort) leaves the station usable."""
    path, name = emulated(gate="smu1.b", program="smu-script")
    world = get_world(name)
    cells = Cells.block(1, [0], range(4))
    with _open(path) as xb:
        write_verify(xb, cells, _targets(4), TABLE.tolerance_s)
        xb.safe()
        assert_safe(world)
        assert xb.read(cells).shape == (4,)          # still connected and working


def test_emulated_chip_keeps_its_state_between_sessions(emulated, tmp_path):
    """With a state file the emulated chip persists like the chip at a real station, so
    `hil transfer` and `hil hybrid` can run in separate processes."""
    from sim_backend.visa_backend import _BENCHES
    path, name = emulated()
    state = tmp_path / "chip.npz"
    cells = Cells.block(3, range(2), range(8))
    targets = _targets(len(cells))

    def fresh_process():
        drop_world(name)
        _BENCHES.pop(name, None)

    fresh_process()
    with _open(path, state_path=state) as xb:
        assert write_verify(xb, cells, targets, TABLE.tolerance_s).summary()["in_band_fraction"] >= 0.9
    assert state.exists()
    fresh_process()
    with _open(path, state_path=state) as xb:
        g = xb.read(cells, n_avg=4)
    assert np.mean(np.abs(g - targets) <= 2 * TABLE.tolerance_s) >= 0.9
    fresh_process()
    with _open(path) as xb:                           # no state file: a fresh chip
        g = xb.read(cells, n_avg=4)
    assert np.mean(np.abs(g - targets) <= 2 * TABLE.tolerance_s) < 0.5
