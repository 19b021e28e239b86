"""Station files (validation errors name the key), identities, `hil station check` and
`hil sim-station serve` against the emulated instruments."""
from __future__ import annotations

import argparse
import itertools
import json
import re
import tomllib

import pytest

from drivers.station import load_station_spec, open_instrument_station
from hil.errors import BackendError, ConfigError
from hil.registry import load_station_file, open_station
from hil.cli.station import DEFAULT_SIM_STATION, add_parsers, cmd_sim_station_serve, serve_station
from hil.ops.station_check import station_check
from sim_backend.world import drop_world

_ids = itertools.count()

STATION = """
[station]
backend = "instruments"
name = "test station"

[geometry]
{geometry}

[limits.SET]
max_v = 3.0
max_v_gate = {set_gate_max}

[instruments.board]
kind = "array-board"
port = "hilsim://{world}/board"
identity = "{board_identity}"

[instruments.smu1]
kind = "{smu_kind}"
resource = "GPIB0::26::INSTR"
visa_library = "station.toml@hilsim"
nplc = 0.1
{smu_extra}

[instruments.smu2]
kind = "keithley2450"
resource = "GPIB0::18::INSTR"
visa_library = "station.toml@hilsim"

[channels]
board = "board"
bl = "{bl}"
sl = "{bl}"
gate = "{gate}"

[program]
path = "{program}"

[read]
path = "{read}"

[emulation]
world = "{world}"
seed = {seed}
geometry = {em_geometry}

[emulation.instruments.smu1]
kind = "keithley2602b"
resource = "GPIB0::26::INSTR"
bus = "gpib"
wiring = {{ smua = ["BL", "SL"], smub = ["WL"] }}

[emulation.instruments.smu2]
kind = "keithley2450"
resource = "GPIB0::18::INSTR"
bus = "usb"
wiring = {{ "1" = ["BL", "SL"] }}
"""

DEFAULTS = dict(geometry='preset = "yao"', em_geometry='"yao"', set_gate_max=3.0, board_identity="HILSIM-AB1",
                smu_kind="keithley2600", smu_extra="min_pulse_s = 1e-8", bl="smu1.a", gate="board",
                program="board-firmware", read="board", seed=0)


def make_station(tmp_path, **kw) -> tuple[str, str]:
    """Write an emulated station file on a fresh world; returns (path, world name)."""
    world = kw.pop("world", None) or f"t-station-{next(_ids)}"
    p = tmp_path / "station.toml"
    p.write_text(STATION.format(world=world, **{**DEFAULTS, **kw}))
    return str(p), world


@pytest.fixture
def station(tmp_path):
    path, world = make_station(tmp_path)
    yield path
    drop_world(world)


# ---- validation (nothing is opened) -------------------------------------------------------------
def _cfg(tmp_path, **kw) -> dict:
    path, _ = make_station(tmp_path, **kw)
    return load_station_file(path)


def _mutated(tmp_path, fn) -> dict:
    cfg = _cfg(tmp_path)
    fn(cfg)
    return cfg


BAD = [
    ("unknown kind", lambda c: c["instruments"]["smu1"].update(kind="keithley9999"),
     r"instruments\.smu1\.kind 'keithley9999' is not a known instrument kind"),
    ("missing resource", lambda c: c["instruments"]["smu1"].pop("resource"),
     r"instruments\.smu1: missing 'resource' \(VISA resource string\)"),
    ("board with resource", lambda c: c["instruments"]["board"].update(resource=c["instruments"]["board"].pop("port")),
     r"instruments\.board: missing 'port'.*'resource' is for SMUs; use 'port'"),
    ("unknown instrument key", lambda c: c["instruments"]["smu1"].update(compliance=1e-3),
     r"unknown key\(s\) \['compliance'\] in \[instruments\.smu1\]"),
    ("channel to unknown instrument", lambda c: c["channels"].update(bl="smu9.a"),
     r"channels\.bl = 'smu9\.a' points at an unknown instrument 'smu9'"),
    ("2600 without channel", lambda c: c["channels"].update(bl="smu1"),
     r"channels\.bl = 'smu1': a keithley2600 needs a channel: smu1\.a, smu1\.b"),
    ("channel on a single-channel SMU", lambda c: c["channels"].update(gate="smu2.b"),
     r"channels\.gate = 'smu2\.b': a keithley2450 has one channel"),
    ("board channel is an SMU", lambda c: c["channels"].update(board="smu2"),
     r"channels\.board = 'smu2' is a keithley2450, not an array-board"),
    ("bad limit value", lambda c: c["limits"]["SET"].update(max_v=-1.0),
     r"\[limits\]: limit max_v must be a positive finite number"),
    ("unknown limit key", lambda c: c["limits"]["SET"].update(max_volts=1.0),
     r"\[limits\]: limits\.SET: unknown key\(s\) \['max_volts'\]"),
    ("unknown limit op", lambda c: c["limits"].update(ZAP={"max_v": 1.0}),
     r"\[limits\]: unknown operation 'ZAP'"),
    ("missing geometry", lambda c: c.pop("geometry"), r"missing \[geometry\] table"),
    ("unknown table", lambda c: c.update(smus={}), r"unknown key\(s\) \['smus'\] in \[top level\]"),
    ("bad program path", lambda c: c["program"].update(path="fast"),
     r"program\.path 'fast' unknown; use one of \['board-firmware', 'smu-script', 'host'\]"),
    ("script without SMU gate", lambda c: c["program"].update(path="smu-script"),
     r"program\.path = \"smu-script\".*channels\.gate = \"NAME\.b\""),
    ("smu read without SMU", lambda c: (c["read"].update(path="smu"), c["channels"].update(bl="board")),
     r"read\.path = \"smu\" needs channels\.bl on an SMU channel"),
    ("negative timeout", lambda c: c["instruments"]["smu1"].update(timeout=-1),
     r"instruments\.smu1\.timeout must be a number > 0"),
    ("duplicate resource", lambda c: c["instruments"]["smu2"].update(resource="GPIB0::26::INSTR"),
     r"instruments\.smu2 uses the same resource 'GPIB0::26::INSTR' as instruments\.smu1"),
    ("bad identity regex", lambda c: c["instruments"]["smu1"].update(identity="Model (26"),
     r"instruments\.smu1\.identity is not a valid regular expression"),
    ("no instruments", lambda c: c.update(instruments={}), r"\[instruments\] lists no instrument"),
    ("wrong backend", lambda c: c["station"].update(backend="sim"), r"station\.backend must be \"instruments\""),
    ("min_pulse_s on a 2450", lambda c: c["instruments"]["smu2"].update(min_pulse_s=1e-6),
     r"instruments\.smu2\.min_pulse_s applies to kind 'keithley2600' only"),
    ("read gate above the limit", lambda c: c["read"].update(gate_v=9.0),
     r"read\.gate_v = 9 V exceeds limits\.READ\.max_v_gate = 5\.5 V"),
]


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_bad_station_files_name_the_key(tmp_path, name, mutate, message):
    cfg = _mutated(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message) as ei:
        load_station_spec(cfg)
    assert "station file" in str(ei.value) or "[limits]" in str(ei.value)


def test_good_station_file_and_shipped_files_validate(tmp_path):
    spec = load_station_spec(_cfg(tmp_path))
    assert spec.board.name == "board" and spec.smu_of("bl").channel == "a" and spec.smu_of("gate") is None
    assert spec.instruments["smu1"].visa_library.endswith("/station.toml@hilsim")       # relative to the file
    for f in ("stations/sim-instruments.toml", "stations/example-lab.toml"):
        s = load_station_spec(load_station_file(f))
        assert s.geometry.n_cells > 0 and s.program_path in ("board-firmware", "smu-script", "host")
    with open("stations/sim-instruments.toml", "rb") as fh:
        assert tomllib.load(fh)["emulation"]["world"] == "sim-instruments"


def test_malformed_toml_and_unknown_options(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[station\nbackend = 1")
    with pytest.raises(ConfigError, match="malformed"):
        open_station(str(p))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for an instrument station: \['turbo'\]"):
        open_instrument_station(_cfg(tmp_path), turbo=True)


# ---- identities ----------------------------------------------------------------------------------
def test_wrong_smu_model_is_refused(tmp_path):
    """A 2450 at the resource where the station file expects a 2600B."""
    path, world = make_station(tmp_path)
    cfg = load_station_file(path)
    cfg["instruments"]["smu1"]["resource"] = "GPIB0::18::INSTR"
    cfg["instruments"]["smu2"]["resource"] = "GPIB0::26::INSTR"
    try:
        with pytest.raises(BackendError, match=r"expected a Keithley 2600B at GPIB0::18::INSTR but \*IDN\? says "
                                               r"'KEITHLEY INSTRUMENTS,MODEL 2450"):
            open_instrument_station(cfg)
    finally:
        drop_world(world)


def test_identity_patterns_and_board_geometry(tmp_path):
    path, world = make_station(tmp_path, board_identity="HILSIM-XX9")
    try:
        with pytest.raises(ConfigError, match=r"instruments\.board: the instrument at hilsim://.* identifies as "
                                              r"'HILSIM-AB1,.*does not match identity = 'HILSIM-XX9'"):
            open_station(path)
        cfg = load_station_file(path)
        cfg["instruments"]["smu1"]["identity"] = "Model 2636B"
        cfg["instruments"]["board"]["identity"] = "HILSIM"
        with pytest.raises(ConfigError, match=r"instruments\.smu1: .*Model 2602B.*does not match identity = 'Model 2636B'"):
            open_instrument_station(cfg)
        cfg["instruments"]["smu1"].pop("identity")
        cfg["geometry"] = {"preset": "wang"}
        with pytest.raises(ConfigError, match=r"reports geometry 8x128x16 but the station expects 1x128x64"):
            open_instrument_station(cfg)
    finally:
        drop_world(world)


def test_unreachable_board_is_a_clear_error(tmp_path):
    path, world = make_station(tmp_path)
    cfg = load_station_file(path)
    cfg["instruments"]["board"]["port"] = "/dev/does-not-exist-hil"
    try:
        with pytest.raises(BackendError, match=r"cannot open the array board 'board' on /dev/does-not-exist-hil"):
            open_instrument_station(cfg)
    finally:
        drop_world(world)


# ---- station check and CLI --------------------------------------------------------------------------
def test_station_check_reports_identities_and_dry_run(station):
    res = station_check(station, cells=8)
    assert res["ok"]
    d = res["describe"]
    assert d["instruments"]["board"]["board"]["info"]["model"] == "HILSIM-AB1"
    assert d["instruments"]["smu1"]["identity"]["model"] == "2602B"
    assert d["instruments"]["smu2"]["identity"]["model"] == "2450"
    assert d["channels"] == {"board": "board", "bl": "smu1.a", "sl": "smu1.a", "gate": "board"}
    assert d["limits"]["SET"]["max_v_gate"] == 3.0
    dr = res["dry_run"]
    assert dr["dry_run"] and dr["cells"] == 8 and dr["reads"] > 0
    assert dr["pulses"]["SET"]["max_v_gate"] <= 3.0
    json.dumps(res)


def test_station_check_dry_run_refuses_a_policy_above_the_limits(tmp_path):
    path, world = make_station(tmp_path, set_gate_max=2.0)          # default policy ramps the gate to 2.2 V
    try:
        from hil.errors import SafetyViolation
        with pytest.raises(SafetyViolation, match=r"set_gate_max = 2\.2 V exceeds the SET limit"):
            station_check(path, cells=4)
    finally:
        drop_world(world)


def _parser():
    p = argparse.ArgumentParser(prog="hil")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parsers(sub)
    return p


def test_cli_station_check(station, capsys):
    args = _parser().parse_args(["station", "check", station, "--cells", "4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"board: array board HILSIM-AB1 firmware \S+ serial \S+ protocol 1", out)
    assert "smu1: keithley2600 Keithley Instruments Inc. 2602B" in out and "limits SET" in out
    assert out.rstrip().endswith("OK")
    args = _parser().parse_args(["station", "check", station, "--json", "--cells", "4"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_cli_station_check_json_error(tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text('[station]\nbackend = "instruments"\n[geometry]\npreset = "yao"\n')
    args = _parser().parse_args(["station", "check", str(p), "--json"])
    assert args.func(args) == 2
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] is False and "missing [instruments] table" in res["error"] and res["error_type"] == "ConfigError"


# ---- TCP serving ------------------------------------------------------------------------------------
def test_sim_station_serve_reaches_the_emulators_over_tcp(station):
    """SMUs through pyvisa-py raw sockets, the board through pyserial socket://, same world."""
    from drivers.board import ArrayBoard
    from drivers.keithley2450 import Keithley2450
    from drivers.keithley2600 import Keithley2600
    from hil.geometry import Cells

    with serve_station(station, port_base=0) as srv:
        assert set(srv.addresses) == {"smu1", "smu2", "board"}
        assert srv.addresses["smu1"].startswith("TCPIP0::127.0.0.1::") and srv.addresses["smu1"].endswith("::SOCKET")
        assert srv.addresses["board"].startswith("socket://127.0.0.1:")
        with Keithley2600(srv.addresses["smu1"], "@py", timeout_s=2.0) as smu:
            assert smu.identity.model == "2602B"
        with Keithley2450(srv.addresses["smu2"], "@py", timeout_s=2.0) as smu:
            assert smu.identity.model == "2450"
        with ArrayBoard(srv.addresses["board"], timeout_s=2.0) as board:
            assert board.info.model == "HILSIM-AB1"
            g = board.read_cells(Cells(0, [0, 1], [0, 0]))
            assert g.shape == (2,) and (g > 0).all()
        before = srv.world.counters["board"]["transactions"]
        assert before > 0                                    # the bridge reached the emulated board


def test_cli_sim_station_serve_prints_the_addresses(station, capsys):
    import threading
    args = _parser().parse_args(["sim-station", "serve", "--station", station, "--port-base", "0"])
    stop = threading.Event()
    stop.set()                                               # serve, print, stop at once
    assert cmd_sim_station_serve(args, wait=stop) == 0
    out = capsys.readouterr().out
    assert re.search(r"smu1: TCPIP0::127\.0\.0\.1::\d+::SOCKET", out)
    assert re.search(r"board: socket://127\.0\.0\.1:\d+", out)


def test_cli_sim_station_serve_without_station_serves_the_repository_file(capsys):
    """No --station: stations/sim-instruments.toml of the repository (not a path inside the package)."""
    import threading
    args = _parser().parse_args(["sim-station", "serve", "--port-base", "0"])
    stop = threading.Event()
    stop.set()
    try:
        assert cmd_sim_station_serve(args, wait=stop) == 0
    finally:
        drop_world("sim-instruments")
    out = capsys.readouterr().out
    assert f"emulated station {DEFAULT_SIM_STATION} (world 'sim-instruments') serving:" in out
    assert re.search(r"smu1: TCPIP0::127\.0\.0\.1::\d+::SOCKET", out)


def test_hil_program_and_read_through_the_drivers(tmp_path, capsys):
    """`hil program --station FILE` and `hil read --station FILE` on an emulated instrument station."""
    from hil.cli import main
    path, world = make_station(tmp_path, geometry="n_pe = 1\nrows = 16\ncols = 16",
                               em_geometry="{ n_pe = 1, rows = 16, cols = 16 }")
    try:
        out = tmp_path / "p.h5"
        assert main(["program", "--station", path, "--out", str(out), "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["cells"] == 256 and res["in_band_fraction"] >= 0.95
        assert main(["read", "--station", path, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["cells"] == 256 and 8 < res["pes"][0]["mean_us"] < 14
    finally:
        drop_world(world)
