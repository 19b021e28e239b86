"""`hil module list|run`: headless runs with a record and PNGs, bad settings refused in one line."""
from __future__ import annotations

import json

import pytest

from hil.cli import main
from hil.runstore import RunRecord


def test_module_list_names_builtins_and_the_plugin(capsys):
    assert main(["module", "list", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    origins = {m["name"]: m["origin"] for m in d["modules"]}
    assert origins == {"curve-tracer": "built-in", "forming": "built-in", "pulse-train": "built-in",
                       "retention": "plugin"} and d["broken"] == {}


def test_module_run_writes_a_record_and_plots(tmp_path, capsys):
    out = tmp_path / "iv.h5"
    assert main(["module", "run", "curve-tracer", "--cells", "0:0:0-1", "--set", "cycles=2", "--set", "v_step=0.1",
                 "--seed", "3", "--out", str(out), "--plot", str(tmp_path / "png"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cycles"] == 2 and d["cells"] == 2 and d["r_off_median_ohm"] > d["r_on_median_ohm"]
    assert [p.endswith("iv-curve-tracer.png") for p in d["plots"]] == [True]
    assert (tmp_path / "png" / "iv-curve-tracer.png").stat().st_size > 10_000
    with RunRecord.open(out) as rec:
        assert rec.status == "complete" and rec.kind == "module"
        assert rec.group_attrs("modules/curve-tracer")["stage_config"]["cycles"] == 2


def test_module_run_reads_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "ret.toml"
    cfg.write_text("interval_s = 3600\nduration_s = 86400\n")
    assert main(["module", "run", "retention", "--config", str(cfg), "--set", "n_avg=2",
                 "--out", str(tmp_path / "r.h5"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["reads"] == 25 and d["duration"] == "1 d"


@pytest.mark.parametrize("args, message", [
    (["pulse-train", "--set", "cycles=0"], "PulseTrainConfig.cycles must be in [1,"),
    (["pulse-train", "--set", "mode=fast"], "PulseTrainConfig.mode must be one of endurance, ramp"),
    (["pulse-train", "--set", "cycles"], "--set 'cycles': give key=value"),
    (["forming", "--set", "v_stop=4.8"], "FORM rejected: |V| 4.6"),
    (["retention", "--cells", "0:0-200:0"], "row 0-200 is outside 0..127"),
    (["curve-tracer", "--set", "volts=2"], "unknown CurveTracerConfig setting(s) volts"),
    (["sweepy"], "unknown lab module 'sweepy'"),
])
def test_bad_module_settings_exit_2_in_one_line_and_create_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bad.h5"
    assert main(["module", "run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
