"""Emulated SMUs: protocol behaviour, physics wiring, faults, the @hilsim pyvisa backend, the TCP
server, and the drivers end to end against the emulators."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import pyvisa

from drivers.keithley2400 import Keithley2400
from drivers.keithley2450 import Keithley2450
from drivers.keithley2600 import Keithley2600
from drivers.keysight_b2900 import KeysightB2900
from hil.errors import BackendError, ConfigError, InstrumentTimeout
from hil.geometry import Cells, Geometry
from hil.programming import WriteVerifyPolicy
from sim_backend.smu import InstrumentDisconnected, make_instrument
from sim_backend.visa_backend import build_bench, load_emulation, serve
from sim_backend.world import EmulatedWorld, drop_world

SMALL = Geometry(1, 8, 4, "small")
_ids = itertools.count()

STATION = """
[station]
backend = "instruments"

[emulation]
world = "{world}"
seed = 3
geometry = {{ n_pe = 1, rows = 8, cols = 4, name = "small" }}

[emulation.instruments.k2602]
kind = "keithley2602b"
resource = "GPIB0::26::INSTR"
bus = "gpib"
wiring = {{ smua = ["BL", "SL"], smub = ["WL"] }}

[emulation.instruments.k2450]
kind = "keithley2450"
resource = "GPIB0::18::INSTR"
bus = "usb"
wiring = {{ "1" = ["BL", "SL"] }}

[emulation.instruments.k2400]
kind = "keithley2400"
resource = "GPIB0::24::INSTR"
wiring = {{ "1" = ["BL", "SL"] }}

[emulation.instruments.b2901]
kind = "keysight_b2901a"
resource = "GPIB0::23::INSTR"
bus = "lan"
wiring = {{ "1" = ["BL", "SL"] }}
"""


@pytest.fixture
def station(tmp_path):
    """A station TOML with an [emulation] table on a fresh small world; yields (path, world)."""
    name = f"t-smu-{next(_ids)}"
    path = tmp_path / "station.toml"
    path.write_text(STATION.format(world=name))
    bench = build_bench(load_emulation(path))
    yield str(path), bench.world
    drop_world(name)


@pytest.fixture
def world():
    return EmulatedWorld(SMALL, seed=1, name=f"t-raw-{next(_ids)}")


def route(w, row=0, col=0, gate="bus", pe=0):
    w.route(Cells(pe, row, col))
    w.set_drive("BL", "bus")
    w.set_drive("SL", "ground")
    w.set_drive("WL", gate)
    if gate == "dac":
        w.dac_gate_v = 3.0


def g_of(w, row=0, col=0):
    return float(w.chip.device.read(Cells(0, row, col).flat(w.geometry), w.now(), 8)[0])


def x(inst, msg):
    return inst.exchange((msg + "\n").encode()).reply.decode().strip()


# ---- SCPI error queue and common commands ------------------------------------------------
@pytest.mark.parametrize("kind", ["keithley2400", "keithley2450", "keysight_b2901a"])
def test_scpi_error_queue_for_malformed_commands(world, kind):
    smu = make_instrument(kind, world, "s", {"1": ["BL"]})
    x(smu, ":SOUR:VOLTAGE:FOO 1;:SOUR:VOLT:RANG abc;:SOUR:VOLT:RANG 5000;:SENS:FUNC \"BOGUS\";"
           ":SENS:CURR:NPLC;:OUTP:STAT MAYBE")
    errs = [x(smu, ":SYST:ERR?") for _ in range(7)]
    codes = [int(e.split(",")[0]) for e in errs]
    assert codes == [-113, -104, -222, -224, -109, -224, 0]
    assert '"Undefined header"' in errs[0] and '"Data out of range"' in errs[2]


def test_scpi_long_forms_relative_headers_and_queue_overflow(world):
    smu = make_instrument("keithley2400", world, "s", {"1": ["BL"]})
    x(smu, ":SOURce:VOLTage:RANGe 2;LEVel 0.5;:OUTPut:STATe ON")
    c = smu.channels["1"]
    assert (c.v_range, c.level_v, c.on) == (2.0, 0.5, True)
    for _ in range(15):
        x(smu, ":NOPE")
    errs = [x(smu, ":SYST:ERR?") for _ in range(11)]
    assert errs[9].startswith("-350") and errs[10].startswith("0,")
    x(smu, ":NOPE")
    x(smu, "*CLS")
    assert x(smu, ":SYST:ERR?").startswith("0,")
    x(smu, "*RST")
    assert not smu.channels["1"].on


def test_output_changes_are_logged_in_the_world(world):
    smu = make_instrument("keithley2450", world, "k2450", {"1": ["BL", "SL"]})
    n0 = len(world.events)
    x(smu, ":SOUR:VOLT 0.2;:OUTP ON;:SOUR:VOLT 0.3;:OUTP OFF")
    ev = [(e.detail["terminal"], e.detail["volts"], e.detail["on"]) for e in world.events[n0:]
          if e.source == "k2450" and e.kind == "output"]
    assert ev == [("BL", 0.2, True), ("SL", 0.2, True), ("BL", 0.3, True), ("SL", 0.3, True),
                  ("BL", 0.0, False), ("SL", 0.0, False)]
    assert world.counters["k2450"]["transactions"] == 1


def test_b2900_pulse_mode_programs_the_routed_cell(world):
    smu = make_instrument("keysight_b2901a", world, "b", {"1": ["BL", "SL"]})
    route(world, gate="dac")
    g0 = g_of(world)
    t0 = world.now()
    x(smu, ":SOUR:VOLT 0;:OUTP ON;:SOUR:FUNC:SHAP PULS;:SOUR:VOLT:TRIG 1.8;:SOUR:PULS:WIDT 1e-3;:INIT:TRAN")
    assert g_of(world) > g0 + 1e-6           # a SET pulse happened
    assert world.now() - t0 >= 1e-3
    assert world.max_applied_v["BL"] == pytest.approx(1.8)
    x(smu, ":SOUR:PULS:WIDT 1e-6")           # below the 50 µs minimum
    assert x(smu, ":SYST:ERR?").startswith("-222")


# ---- 2600B TSP ---------------------------------------------------------------------------------
def test_tsp_errors_scripts_and_delay(world):
    smu = make_instrument("keithley2602b", world, "k", {"smua": ["BL", "SL"], "smub": ["WL"]})
    x(smu, "smua.source.levelv = ")                     # syntax error
    x(smu, "nosuch.thing()")                            # runtime error
    x(smu, "smua.source.bogus = 1")                     # unknown attribute
    assert x(smu, "print(errorqueue.count)") == "3.00000e+00"
    lines = x(smu, "for i = 1, errorqueue.count do local c, m = errorqueue.next() print(c, m) end").split("\n")
    assert [ln.split("\t")[0] for ln in lines] == ["-2.85000e+02", "-2.86000e+02", "-2.86000e+02"]
    assert "bogus" in lines[2]
    x(smu, "loadscript demo\nfunction twice(v) return 2 * v end\nendscript")
    assert x(smu, "print(twice)") == "nil"               # not run yet
    assert x(smu, "demo.run() print(twice(21))") == "4.20000e+01"
    t0 = world.now()
    x(smu, "delay(0.25)")
    assert world.now() - t0 == pytest.approx(0.25, abs=0.01)
    assert x(smu, "*IDN?").startswith("Keithley Instruments Inc., Model 2602B")


def test_tsp_pulse_width_is_virtual_time_at_level_and_negative_bl_resets(world):
    smu = make_instrument("keithley2602b", world, "k", {"smua": ["BL", "SL"], "smub": ["WL"]})
    route(world)
    x(smu, "smub.source.levelv = 1.6 smub.source.output = 1 smua.source.output = 1")
    g0 = g_of(world)
    x(smu, "smua.source.levelv = 1.8 delay(1e-4) smua.source.levelv = 0")
    g1 = g_of(world)
    assert g1 > g0 + 1e-6
    x(smu, "smub.source.levelv = 4.0 smua.source.levelv = -1.5 delay(1e-4) smua.source.levelv = 0")
    assert g_of(world) < g1 - 1e-6                     # reverse polarity = RESET
    world.route(None)                                  # nothing routed: no effect
    g2 = g_of(world)
    x(smu, "smua.source.levelv = 1.8 delay(1e-3) smua.source.levelv = 0")
    assert g_of(world) == pytest.approx(g2, rel=0.05)


def test_tsp_runaway_script_is_stopped(world, monkeypatch):
    import sim_backend.smu.k2600 as k2600
    monkeypatch.setattr(k2600, "INSTRUCTION_LIMIT", 3_000_000)
    smu = make_instrument("keithley2602b", world, "k", {"smua": ["BL"]})
    x(smu, "while true do end")
    assert "instruction limit" in x(smu, "print(errorqueue.next())")


# ---- faults ------------------------------------------------------------------------------------
def test_faults_timeout_drop_garble_reset_disconnect(world):
    smu = make_instrument("keithley2450", world, "k", {"1": ["BL"]})
    world.faults.arm("k", "timeout")
    assert smu.exchange(b":OUTP ON\n").fault == "timeout" and not smu.channels["1"].on   # not executed
    world.faults.arm("k", "drop")
    assert smu.exchange(b"*IDN?\n").reply == b""
    world.faults.arm("k", "garble")
    assert b"#" in smu.exchange(b"*IDN?\n").reply
    world.faults.arm("k", "garble")
    smu.exchange(b":OUTP ON\n")                            # garbled request -> error, not executed
    assert not smu.channels["1"].on and x(smu, ":SYST:ERR?") != '0,"No error"'
    x(smu, ":SOUR:VOLT:ILIM 1e-5;:OUTP ON")
    world.faults.arm("k", "reset")
    smu.exchange(b":MEAS:CURR?\n")
    assert not smu.channels["1"].on and smu.channels["1"].limit_i == pytest.approx(105e-6)
    world.faults.arm("k", "disconnect", after=1)
    x(smu, "*IDN?")
    for _ in range(2):
        with pytest.raises(InstrumentDisconnected):
            smu.exchange(b"*IDN?\n")
    assert [k for s, k in world.faults.fired if s == "k"] == ["timeout", "drop", "garble", "garble", "reset",
                                                             "disconnect"]


# ---- the pyvisa backend ------------------------------------------------------------------------
def test_hilsim_backend_lists_opens_and_times_out_virtually(station):
    path, world = station
    rm = pyvisa.ResourceManager(f"{path}@hilsim")
    assert set(rm.list_resources()) == {"GPIB0::26::INSTR", "GPIB0::18::INSTR", "GPIB0::24::INSTR",
                                        "GPIB0::23::INSTR"}
    r = rm.open_resource("GPIB0::18::INSTR", read_termination="\n", write_termination="\n", timeout=3000)
    assert r.query("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450")
    t_virtual, t_wall = world.now(), time.perf_counter()
    with pytest.raises(pyvisa.errors.VisaIOError) as e:
        r.read()
    assert e.value.error_code == pyvisa.constants.StatusCode.error_timeout
    assert world.now() - t_virtual == pytest.approx(3.0) and time.perf_counter() - t_wall < 0.5
    world.faults.arm("k2450", "timeout")
    with pytest.raises(pyvisa.errors.VisaIOError):
        r.write(":OUTP ON")
    world.faults.arm("k2450", "disconnect")
    with pytest.raises(pyvisa.errors.VisaIOError) as e:
        r.query("*IDN?")
    assert e.value.error_code == pyvisa.constants.StatusCode.error_connection_lost
    with pytest.raises(pyvisa.errors.VisaIOError):
        rm.open_resource("GPIB0::5::INSTR")
    r.close()


def test_emulation_table_errors_name_the_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[emulation.instruments.x]\nkind = "keithley2450"\n')
    with pytest.raises(ConfigError, match=r"\[emulation.instruments.x\]: 'resource' is required"):
        load_emulation(p)
    p.write_text('[emulation.instruments.x]\nkind = "keithley2450"\nresource = "GPIB0::1::INSTR"\nbus = "pci"\n')
    with pytest.raises(ConfigError, match="bus 'pci' unknown"):
        load_emulation(p)
    p.write_text('[emulation]\nwrold = "x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_emulation(p)
    p.write_text(f'[emulation]\nworld = "t-bad-{next(_ids)}"\n[emulation.instruments.x]\nkind = "keithley9999"\n'
                 f'resource = "GPIB0::1::INSTR"\n')
    with pytest.raises(ConfigError, match="unknown instrument kind 'keithley9999'"):
        build_bench(load_emulation(p))


# ---- drivers end to end ------------------------------------------------------------------------
def test_wrong_identity_through_hilsim(station):
    path, _ = station
    with pytest.raises(BackendError, match=r"expected a Keithley 2600B at GPIB0::18::INSTR but \*IDN\? says "
                                           r"'KEITHLEY INSTRUMENTS,MODEL 2450"):
        Keithley2600("GPIB0::18::INSTR", f"{path}@hilsim")


@pytest.mark.parametrize("cls,res,name", [(Keithley2400, "GPIB0::24::INSTR", "k2400"),
                                          (Keithley2450, "GPIB0::18::INSTR", "k2450"),
                                          (KeysightB2900, "GPIB0::23::INSTR", "b2901")])
def test_scpi_drivers_end_to_end(station, cls, res, name):
    path, world = station
    route(world, row=2, col=1, gate="dac")
    g = g_of(world, 2, 1)
    with cls(res, f"{path}@hilsim") as smu:
        smu.configure(1e-3, 2.0, 1e-4, 0.01)
        smu.source_voltage(0.2)
        smu.output(True)
        i = smu.measure_current()
        assert i == pytest.approx(0.2 * g, rel=0.1)
        smu.source_voltage(0.0)
        smu.pulse(1.8, 2e-3)
        smu.source_voltage(0.2)
        smu.output(True)
        assert smu.measure_current() > i             # the pulse SET the cell
        smu.check_errors("test")
    last = {}
    for e in world.events:
        if e.source == name and e.kind == "output":
            last[e.detail["terminal"]] = e.detail["on"]
    assert last == {"BL": False, "SL": False}


def test_exit_on_exception_leaves_outputs_off_in_world_log(station):
    path, world = station
    with pytest.raises(RuntimeError):
        with Keithley2600("GPIB0::26::INSTR", f"{path}@hilsim") as smu:
            for ch in ("a", "b"):
                smu.configure(1e-4, 6.0, None, 0.1, channel=ch)
                smu.source_voltage(1.0, channel=ch)
                smu.output(True, channel=ch)
            assert world.bus_level[("k2602", "WL")] == (1.0, True)
            raise RuntimeError("boom")
    final = {}
    for e in world.events:
        if e.source == "k2602" and e.kind == "output":
            final[e.detail["terminal"]] = (e.detail["volts"], e.detail["on"])
    assert final == {"BL": (0.0, False), "SL": (0.0, False), "WL": (0.0, False)}


def _program_cells(smu, world, cells, lo, hi):
    out = []
    for r, c in cells:
        route(world, r, c)
        out.append(smu.write_verify_cell(lo, hi))
    return out


def test_2600_script_write_verify_end_to_end(station):
    path, world = station
    pol = WriteVerifyPolicy(width_s=1e-6)
    cells = [(r, c) for r in range(4) for c in range(4)]
    with Keithley2600("GPIB0::26::INSTR", f"{path}@hilsim", min_pulse_s=1e-7) as smu:
        smu.configure(1e-3, 6.0, 1e-4, 0.1, channel="a")
        smu.configure(1e-6, 6.0, None, 0.1, channel="b")
        smu.output(True, channel="a")
        smu.output(True, channel="b")
        smu.load_write_verify_script()
        smu.set_write_verify_policy(pol)
        n0 = world.counters["k2602"]["transactions"]
        res = _program_cells(smu, world, cells, 9.5e-6, 10.5e-6)
        assert world.counters["k2602"]["transactions"] - n0 == len(cells)     # one per cell
    ok = [r for r in res if r.status == 0]
    assert len(ok) >= 14
    for (r, c), res_c in zip(cells, res):
        if res_c.status == 0:
            assert 9.5e-6 <= res_c.g_s <= 10.5e-6
            assert g_of(world, r, c) == pytest.approx(10e-6, abs=1.5e-6)
    assert np.mean([r.pulses for r in res]) > 1


def test_2600_job_fault_stops_with_clear_error_and_resumes(station):
    path, world = station
    pol = WriteVerifyPolicy(width_s=1e-6)
    with Keithley2600("GPIB0::26::INSTR", f"{path}@hilsim", min_pulse_s=1e-7) as smu:
        for ch, comp in (("a", 1e-3), ("b", 1e-6)):
            smu.configure(comp, 6.0, None, 0.1, channel=ch)
            smu.output(True, channel=ch)
        smu.load_write_verify_script()
        smu.set_write_verify_policy(pol)
        world.faults.arm("k2602", "drop")
        route(world, 5, 0)
        with pytest.raises(InstrumentTimeout, match=r"Keithley 2600B \(2602B\) at GPIB0::26::INSTR did not "
                                                    r"answer 'hilwv_cell"):
            smu.write_verify_cell(9.5e-6, 10.5e-6)
        assert smu.write_verify_cell(9.5e-6, 10.5e-6).status == 0      # resynced, the job continues
        world.faults.arm("k2602", "reset")                              # power cycle: script lost
        smu.measure_current()
        with pytest.raises(BackendError, match="attempt to call"):
            smu.write_verify_cell(9.5e-6, 10.5e-6)
    assert all(not on for (src, _), (_, on) in world.bus_level.items() if src == "k2602")


def test_tcp_server_with_pyvisa_py(world):
    smu = make_instrument("keithley2450", world, "tcp2450", {"1": ["BL", "SL"]})
    with serve(world, {"tcp2450": smu}, port_base=0) as srv:
        rm = pyvisa.ResourceManager("@py")
        r = rm.open_resource(srv.resources["tcp2450"], read_termination="\n", write_termination="\n",
                             timeout=2000)
        try:
            assert r.query("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450")
            r.write(":SOUR:VOLT 0.2;:OUTP ON")
            assert r.query(":OUTP?") == "1"
            r.write(":BOGUS")
            assert r.query(":SYST:ERR?").startswith("-113")
        finally:
            r.close()
            rm.close()
    assert world.counters["tcp2450"]["transactions"] == 5
