"""Sequencer: the shipped form → program → endurance → retention file through `hil sequence run`,
up-front checks with one-line errors, loops and delays on the virtual clock, and resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hil.cli import main
from hil.errors import Cancelled, ConfigError, SafetyViolation
from hil.limits import SafetyLimits
from hil.geometry import YAO
from hil.modules.sequencer import load_sequence, run_sequence
from hil.progress import CancelToken
from hil.runstore import RunRecord
from hil.runstore.lifecycle import run_record
from sim_backend.chip import SimulatedCrossbar

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sequences" / "form-program-endurance-retention.toml"
FRESH = ROOT / "sequences" / "fresh-chip-params.toml"
DAY = 86400.0


def test_shipped_sequence_runs_headless_into_one_record(tmp_path, capsys):
    out = tmp_path / "seq.h5"
    assert main(["sequence", "run", str(SHIPPED), "--params", str(FRESH), "--seed", "7", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    steps = {s["label"]: s for s in summary["steps"]}
    assert list(steps) == ["forming", "program 8 levels", "endurance 1,000 cycles", "program again for retention",
                           "retention 1 day"]
    form = steps["forming"]
    assert form["cells"] == 16 and form["formed"] + form["failed"] == 16 and form["formed"] >= 15
    assert form["already_formed"] == 0                                  # the chip was fresh
    assert steps["program 8 levels"]["in_band_fraction"] >= 15 / 16
    endurance = steps["endurance 1,000 cycles"]
    assert endurance["cycles"] == 1000 and endurance["pulses"] == 2000 and endurance["switching_fraction"] > 0.9
    ret = steps["retention 1 day"]
    assert ret["duration_s"] == pytest.approx(DAY) and ret["virtual_clock"]
    with RunRecord.open(out) as rec:
        assert rec.status == "complete" and rec.kind == "sequence"
        assert all(rec.group_attrs(f"sequence/steps/{k:04d}")["done"] for k in range(5))
        g, _ = rec.dataset("sequence/steps/0004/result/g_s")
        assert g.shape == (ret["reads"], 16)
        assert rec.table_rows("sequence/steps/0002/series") == endurance["reads"] * 16
        assert "sequence/steps/0001/programming/cells" in rec.tables()
        assert rec.station["describe"]["clock_s"] < 1.0                # the station as it was at the start


@pytest.mark.parametrize("text, message", [
    ('[[steps]]\nmodule = "nope"\n', "unknown lab module 'nope'"),
    ('[sequence]\ncells = "0:0:0"\n[[steps]]\nmodule = "pulse-train"\n[steps.config]\ncycels = 3\n',
     "steps[0].config: unknown PulseTrainConfig setting(s) cycels"),
    ('[sequence]\ncells = "0:0:0"\n[[steps]]\nmodule = "forming"\n[steps.config]\nv_stop = 4.8\n', "FORM rejected"),
    ('[[steps]]\nmodule = "retention"\ncells = "9:0:0"\n', "steps[0]: cells '9:0:0': PE 9 is outside 0..7"),
    ('[[steps]]\ndelay_s = -1\n', "steps[0].delay_s must be"),
    ('[[steps]]\nrepeat = 2\n', "steps[0].steps: give a non-empty list"),
    ('[[steps]]\nrepeat = 2\ndelay_s = 3\n', "exactly one of"),
    ('[[steps]]\nprogram = { levels = 1 }\ncells = "0:0:0"\n', "steps[0].program: ProgramConfig.levels"),
    ('[sequence]\nname = "x"\ncolour = "red"\n[[steps]]\ndelay_s = 1\n', "[sequence]: unknown key(s) colour"),
    ('[[steps]\n', "sequence file"),
])
def test_bad_sequence_files_are_refused_in_one_line(tmp_path, capsys, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    assert main(["sequence", "check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    out = tmp_path / "bad.h5"
    assert main(["sequence", "run", str(f), "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob("bad.h5*"))    # nothing created


LOOP = {"sequence": {"name": "loop", "cells": "0:0-1:0-1"},
        "steps": [{"repeat": 3, "steps": [
            {"module": "pulse-train", "config": {"cycles": 5}},
            {"delay_s": 3600.0, "label": "an hour"}]}]}


def test_loops_and_delays_on_the_virtual_clock_and_resume_after_a_stop(tmp_path):
    xbar = SimulatedCrossbar(seed=2)
    seq = load_sequence(LOOP, xbar.geometry, xbar.limits)
    assert [s.label for s in seq.steps][:2] == ["pulse-train [1/3]", "an hour [1/3]"] and len(seq.steps) == 6
    token, seen = CancelToken(), []

    def bars(desc, unit):
        seen.append(desc)
        return lambda p: token.cancel("test stop") if len(seen) == 3 else None
    out = tmp_path / "loop.h5"
    with pytest.raises(Cancelled):
        with run_record(out, "sequence") as writer:
            run_sequence(xbar, writer, seq, bars=bars, cancel=token)
    with RunRecord.open(out) as rec:
        assert rec.status == "stopped"
        started = sorted(g.lstrip("/") for g in rec.groups() if g.count("/") == 3 and g.startswith("/sequence/steps/"))
        done = [g for g in started if rec.group_attrs(g).get("done")]
    assert started == [f"sequence/steps/{k:04d}" for k in range(3)]   # step 3 was cut off ...
    assert done == started[:2]                                         # ... steps 1 and 2 finished
    t0 = xbar.now()
    with run_record(out, "sequence", resume=True) as writer:
        ran = run_sequence(xbar, writer, seq)
    assert [s["step"] for s in ran] == [2, 3, 4, 5]
    assert xbar.now() - t0 >= 2 * 3600.0                               # two more hours on the virtual clock
    with RunRecord.open(out) as rec:
        assert rec.status == "complete"
        assert rec.group_attrs("sequence/steps/0002")["retried_in"] == "sequence/steps/0002-retry1"
        assert all(rec.group_attrs(f"sequence/steps/{k:04d}")["done"] for k in range(6))


def test_program_steps_are_checked_against_the_limits():
    doc = {"sequence": {"cells": "0:0:0-1"}, "steps": [{"program": {"levels": 4}}]}
    tight = SafetyLimits.from_dict({"READ": {"max_v": 0.1}})
    with pytest.raises(SafetyViolation, match="steps\\[0\\]: "):
        load_sequence(doc, YAO, tight)
    with pytest.raises(ConfigError, match="outside program.pes"):
        load_sequence({"sequence": {"cells": "1:0:0"}, "steps": [{"program": {"pes": [0]}}]}, YAO, SafetyLimits())
    assert np.isfinite(load_sequence(doc, YAO, SafetyLimits()).steps[0].cells.pe).all()
