"""One schema-driven validator for station and parameter files (issue 9 findings 4, 6, 7, 8):
channel conflicts, a dry run that validates exactly like a real run, one-line errors instead of
tracebacks, physically sensible bounds, unknown keys, sizes, read-only limits."""
from __future__ import annotations

import copy
import json
import tomllib
import tracemalloc
from pathlib import Path

import pytest
import tomli_w

import drivers.station as dstation
from drivers.station import load_station_spec
from hil.cli import main
from hil.ops.dryrun import open_dry_run
from hil.errors import ConfigError
from hil.geometry import Geometry
from hil.limits import Op, OpLimits, SafetyLimits
from hil.registry import check_station, load_station_file, open_station
from hil.schema import Number, SchemaError, Table, Text, validate
from sim_backend import world as world_mod
from sim_backend.params import DeviceParams

ROOT = Path(__file__).resolve().parents[1]
STATIONS = ROOT / "stations"


def _good(name: str) -> dict:
    return tomllib.loads((STATIONS / name).read_text())


def _write(tmp_path, cfg: dict, name: str = "station.toml") -> Path:
    p = tmp_path / name
    p.write_text(tomli_w.dumps(cfg))
    return p


# ---- finding 4: one SMU channel on two terminals driven together -----------------------------------
@pytest.mark.parametrize("base, changes, uses", [
    ("sim-instruments.toml", {"gate": "smu1.a"}, ("channels.gate = 'smu1.a'", "channels.bl = 'smu1.a'")),
    ("example-lab.toml", {"gate": "smu1.a"}, ("channels.gate", "channels.bl")),
    ("example-lab.toml", {"sl": "smu1.b"}, ("channels.gate = 'smu1.b'", "channels.sl = 'smu1.b'")),
])
def test_a_channel_on_the_gate_and_a_line_is_refused_at_load(tmp_path, base, changes, uses):
    cfg = _good(base)
    cfg["channels"].update(changes)
    if base == "sim-instruments.toml":
        cfg["read"]["path"] = "smu"
    p = _write(tmp_path, cfg)
    with pytest.raises(ConfigError, match="same SMU channel") as ei:
        load_station_spec(load_station_file(p))
    assert all(u in str(ei.value) for u in uses) and "\n" not in str(ei.value)


def test_bl_and_sl_sharing_a_channel_through_the_bus_relays_stays_allowed():
    spec = load_station_spec(load_station_file(STATIONS / "sim-instruments.toml"))
    assert spec.channels["bl"] == spec.channels["sl"] and str(spec.channels["bl"]) == "smu1.a"


def test_station_check_and_dry_run_refuse_the_duplicated_channel(tmp_path, capsys):
    cfg = _good("sim-instruments.toml")
    cfg["channels"]["gate"] = "smu1.a"
    cfg["read"]["path"] = "smu"
    p = _write(tmp_path, cfg)
    worlds = set(world_mod._WORLDS)
    for argv in (["station", "check", str(p)], ["program", "--dry-run", "--station", str(p), "--pe", "0"],
                 ["read", "--station", str(p), "--pe", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "channels.gate" in err and "channels.bl" in err
    assert set(world_mod._WORLDS) == worlds         # nothing was opened, no BL got 3.3 V


# ---- finding 6: the dry run validates the whole file like a real run, then opens nothing ----------
BROKEN = [
    ("sim-yao.toml", lambda c: c["station"].update(backend="quantum"), "station.backend"),
    ("sim-yao.toml", lambda c: c["sim"].update(sed=5), "sim.sed"),
    ("sim-yao.toml", lambda c: c["sim"].update(params="missing.json"), "sim.params"),
    ("sim-instruments.toml", lambda c: c["instruments"]["smu1"].update(kind="keithley9999"), "instruments.smu1.kind"),
    ("sim-instruments.toml", lambda c: c["program"].update(path="fast"), "program.path"),
    ("sim-instruments.toml", lambda c: c["emulation"].update(seed=-1), "emulation.seed"),
    ("sim-instruments.toml", lambda c: c["emulation"].update(params="missing.toml"), "emulation.params"),
    ("example-lab.toml", lambda c: c["channels"].update(bl="smu9.a"), "channels.bl"),
]


@pytest.mark.parametrize("base, mutate, key", BROKEN)
def test_dry_run_refuses_what_a_real_run_refuses_with_the_same_message(tmp_path, base, mutate, key):
    cfg = _good(base)
    mutate(cfg)
    p = str(_write(tmp_path, cfg))
    with pytest.raises(ConfigError) as real:
        open_station(p)
    with pytest.raises(ConfigError) as dry:
        open_dry_run(p)
    assert str(dry.value) == str(real.value) and key in str(dry.value)


def test_dry_run_of_an_emulated_station_opens_no_instrument_and_builds_no_world(tmp_path, monkeypatch):
    cfg = _good("sim-instruments.toml")
    cfg["emulation"]["world"] = "t-schema-dry-run"
    cfg["instruments"]["board"]["port"] = "hilsim://t-schema-dry-run/board"
    p = str(_write(tmp_path, cfg))

    def forbidden(*a, **k):
        raise AssertionError("the dry run opened an instrument")
    monkeypatch.setattr(dstation, "open_instruments", forbidden)
    monkeypatch.setattr(dstation, "prepare_emulation", forbidden)
    with open_dry_run(p) as dry:
        assert dry.geometry.shape == (8, 128, 16) and dry.limits["FORM"].max_v == 4.5
    assert "t-schema-dry-run" not in world_mod._WORLDS
    with pytest.raises(ConfigError, match=r"--params .*emulation\.params"):
        open_dry_run(p, params_path=str(tmp_path / "p.json"))


def test_every_shipped_station_file_validates():
    for f in sorted(STATIONS.glob("*.toml")):
        checked = check_station(str(f))
        assert checked.geometry.n_cells > 0 and checked.limits["READ"].max_v > 0
    assert check_station("sim").geometry.shape == (8, 128, 16)


# ---- finding 7: one-line ConfigErrors instead of tracebacks -----------------------------------------
TRACEBACKS = [
    ("sim-yao.toml", lambda c: c["station"].update(backend=["sim"]), "station.backend"),
    ("sim-yao.toml", lambda c: c["station"].update(backend={"a": 1}), "station.backend"),
    ("sim-instruments.toml", lambda c: c["instruments"]["smu1"].update(kind=["keithley2600"]),
     "instruments.smu1.kind"),
    ("sim-yao.toml", lambda c: c.update(limits=3), "limits"),
    ("sim-yao.toml", lambda c: c.update(limits=[1, 2]), "limits"),
    ("sim-yao.toml", lambda c: c.update(sim=5), "sim"),
    ("sim-yao.toml", lambda c: c["geometry"].update(preset=5), "geometry.preset"),
    ("sim-yao.toml", lambda c: c["sim"].update(params=5), "sim.params"),
    ("sim-yao.toml", lambda c: c.update(geometry={"n_pe": 1e9, "rows": 128, "cols": 16}), "geometry.n_pe"),
    ("sim-yao.toml", lambda c: c.update(geometry={"n_pe": 1_000_000_000, "rows": 128, "cols": 16}), "geometry.n_pe"),
    ("sim-instruments.toml", lambda c: c["emulation"].update(geometry=5), "emulation.geometry"),
]


@pytest.mark.parametrize("base, mutate, key", TRACEBACKS)
def test_malformed_values_are_one_line_config_errors(tmp_path, base, mutate, key):
    cfg = _good(base)
    mutate(cfg)
    p = str(_write(tmp_path, cfg))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as ei:
            open_station(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(ei.value)
    assert key in msg and p in msg and "\n" not in msg
    assert peak < 50 * 2**20            # refused before anything chip-sized was allocated


def test_deeply_nested_parameter_json_is_a_config_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"deep\.json nests tables/lists deeper than"):
        DeviceParams.load(p)
    q = tmp_path / "deep.toml"
    q.write_text("x = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"deep\.toml nests"):
        DeviceParams.load(q)


# ---- finding 8: silently accepted nonsense ---------------------------------------------------------
@pytest.mark.parametrize("table, value, message", [
    ({"SET": {"max_v": 1e6}}, None, r"limit max_v must be <= 20 V, got 1000000\.0 \(limits\.SET\.max_v\)"),
    ({"RESET": {"max_v_gate": 1e3}}, None, r"max_v_gate must be <= 20 V"),
    ({"FORM": {"max_compliance_a": 1e3}}, None, r"max_compliance_a must be <= 0\.1 A"),
    ({"SET": {"max_width_s": 1e9}}, None, r"max_width_s must be <= 10 s"),
    ({"SET": {"max_v": "3"}}, None, r"got text '3'"),
    ({"SET": {"max_v": True}}, None, r"got true \(a boolean\)"),
])
def test_limit_values_are_typed_and_physically_bounded(table, value, message):
    with pytest.raises(ConfigError, match=message):
        SafetyLimits.from_dict(table)


@pytest.mark.parametrize("geometry, message", [
    ({"n_pe": 2.7, "rows": 128, "cols": 16}, r"geometry\.n_pe must be an integer, got 2\.7"),
    ({"n_pe": True, "rows": 128, "cols": 16}, r"geometry\.n_pe must be an integer, got true"),
    ({"n_pe": "8", "rows": 128, "cols": 16}, r"geometry\.n_pe must be an integer, got text '8'"),
    ({"n_pe": 4096, "rows": 4096, "cols": 4096}, r"68719476736 cells; at most 16777216"),
    ({"preset": "yao", "sed": 5}, r"unknown key\(s\) \['sed'\] in \[geometry\]"),
])
def test_geometry_values_are_typed_and_sized(geometry, message):
    with pytest.raises(ConfigError, match=message):
        Geometry.from_dict(geometry)
    with pytest.raises(ConfigError):
        Geometry(4096, 4096, 4096)


@pytest.mark.parametrize("table, key, message", [
    ("sim", "sed", r"unknown key\(s\) \['sed'\] in \[sim\] \(sim\.sed: did you mean 'seed'\?\)"),
    ("station", "nmae", r"unknown key\(s\) \['nmae'\] in \[station\] \(station\.nmae: did you mean 'name'\?\)"),
    ("geometry", "prest", r"\(geometry\.prest: did you mean 'preset'\?\)"),
])
def test_typos_in_sim_station_geometry_are_refused(tmp_path, table, key, message):
    cfg = _good("sim-yao.toml")
    cfg[table][key] = 5
    with pytest.raises(ConfigError, match=message):
        check_station(str(_write(tmp_path, cfg)))


def test_params_option_with_an_emulated_station_is_an_error(tmp_path):
    pp = DeviceParams().save(tmp_path / "p.json")
    with pytest.raises(ConfigError, match=r"--params .* applies to simulated chips only.*emulation\.params"):
        open_station(str(STATIONS / "sim-instruments.toml"), params_path=str(pp))


def test_board_url_naming_another_world_is_refused(tmp_path):
    cfg = _good("sim-instruments.toml")
    cfg["instruments"]["board"]["port"] = "hilsim://no-such-world/board"
    p = _write(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"instruments\.board\.port .* names emulated world 'no-such-world', "
                                          r"but \[emulation\] builds world 'sim-instruments'"):
        open_station(str(p))
    assert "no-such-world" not in world_mod._WORLDS
    del cfg["emulation"]
    with pytest.raises(ConfigError, match=r"no \[emulation\] table to build world 'no-such-world'"):
        check_station(str(_write(tmp_path, cfg, "noem.toml")))


# ---- limits are frozen once a station is open -----------------------------------------------------
def test_limits_cannot_be_edited_in_place():
    limits = SafetyLimits.from_dict({"SET": {"max_v": 2.0}})
    with pytest.raises(TypeError):
        limits.per_op[Op.SET] = OpLimits(9.0, 9.0, 1e-3, 1e-9, 1.0)
    with open_station(str(STATIONS / "sim-yao.toml")) as xbar:
        with pytest.raises(TypeError):
            xbar.limits.per_op[Op.SET] = OpLimits(9.0, 9.0, 1e-3, 1e-9, 1.0)
        assert xbar.limits["SET"].max_v == 3.0
    assert limits["SET"].max_v == 2.0


# ---- the validator itself --------------------------------------------------------------------------
def test_schema_types_ranges_unknown_keys_and_depth():
    spec = Table({"n": Number(1, 10, integer=True), "x": Number(0, 1), "mode": Text(["fast", "slow"])})
    assert validate({"n": 3, "x": 1, "mode": "fast"}, spec) == {"n": 3, "x": 1.0, "mode": "fast"}
    for value, message in [({"n": True}, "n must be an integer, got true"), ({"x": "0.5"}, "got text '0.5'"),
                           ({"x": float("nan")}, "must be a finite number"), ({"n": 11}, "n must be <= 10"),
                           ({"mode": "fsat"}, "did you mean 'fast'"), ({"moed": 1}, "(moed: did you mean 'mode'?)"),
                           ([1], "must be a table")]:
        with pytest.raises(SchemaError) as ei:
            validate(value, spec)
        assert message in str(ei.value)
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(SchemaError, match="deeper than"):
        validate({"x": deep}, Table({"x": Number()}))


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "latin.json"
    bad.write_bytes(b'{"initial": {"state": "form\xe9d"}}')
    with pytest.raises(ConfigError, match=r"latin\.json is not UTF-8 text \(byte 0xe9 at offset 27\)"):
        DeviceParams.load(bad)
    with pytest.raises(ConfigError, match=r"is a directory"):
        DeviceParams.load(tmp_path)
    s = tmp_path / "s.toml"
    s.write_text("# no tables\n")
    with pytest.raises(ConfigError, match=r"s\.toml: station is missing|s\.toml.*\[station\]"):
        load_station_file(s)
    # a good parameter file round-trips through the schema
    assert DeviceParams.load(DeviceParams().save(tmp_path / "ok.toml")) == DeviceParams()
    assert copy.deepcopy(SafetyLimits()) == SafetyLimits()
