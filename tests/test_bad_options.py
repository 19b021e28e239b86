"""Every bad option value ends with exit 2 and one stderr line naming the option, before any work
(issue 9 findings 7, 8, 10): nothing is trained, programmed or opened, and no record changes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from hil.cli import main
from hil.runstore import RunWriter
from hil.runstore.journal import journal_path

ROOT = Path(__file__).resolve().parents[1]

WORK = ("hil.yao2020.demo.run_demo", "hil.yao2020.stages.train", "hil.yao2020.stages.transfer",
        "hil.yao2020.stages.measure", "hil.yao2020.stages.hybrid", "hil.yao2020.mcnn.train_mcnn",
        "hil.yao2020.hybrid.hybrid_train", "hil.ops.jobs.program_job", "hil.modules.stability.read_disturb", "hil.modules.stability.drift",
        "hil.nn.datasets.load_dataset", "gui.app.screenshot_session")
OPENING = ("hil.registry.open_station", "hil.cli.common.open_station", "hil.ops.dryrun.open_dry_run", "gui.app.main",
           "hil.cli.station.serve_station")


def _forbid(monkeypatch, names):
    for name in names:
        module, attr = name.rsplit(".", 1)

        def boom(*a, _name=name, **k):
            raise AssertionError(f"{_name} was called for a bad option")
        monkeypatch.setattr(f"{module}.{attr}", boom)


@pytest.fixture
def files(tmp_path):
    """A CNN record, a programming record, a plain file and a folder to misuse."""
    mcnn = tmp_path / "cnn.h5"
    w = RunWriter.create(mcnn, "mcnn", {"spec": None, "note": "test"}, {"seed": 0})
    w.put("model/w", np.arange(6.0).reshape(2, 3))
    w.finalize("trained")
    prog = tmp_path / "prog.h5"
    w = RunWriter.create(prog, "programming", {"spec": "sim", "seed": 0}, {"pattern": "levels32", "levels": 32})
    w.close()                                             # an interrupted run: record + journal
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder")
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"cnn": mcnn, "prog": prog, "file": plain, "dir": folder, "tmp": tmp_path}


def _state(folder: Path) -> dict:
    """Every file under `folder` (the records, their journals, anything a command left) and its hash."""
    return {str(q): hashlib.sha256(q.read_bytes()).hexdigest() for q in sorted(folder.rglob("*")) if q.is_file()}


# (argv with {cnn} {prog} {file} {dir} {tmp} placeholders, text the one error line must contain)
BAD = [
    # hil program
    ("program --levels 100000", "--levels"),
    ("program --levels 1", "--levels"),
    ("program --levels many", "--levels"),
    ("program --max-pulses 0", "--max-pulses"),
    ("program --max-pulses 1000000", "--max-pulses"),
    ("program --pe -1", "--pe"),
    ("program --pe 0,0", "--pe"),
    ("program --pe 1;2", "--pe"),
    ("program --seed -1", "--seed"),
    ("program --seed 4294967296", "--seed"),
    ("program --seed 1.5", "--seed"),
    ("program --pattern zigzag", "--pattern"),
    ("program --out {dir}", "--out"),
    ("program --out {file}/x/run.h5", "--out"),
    ("program --plot {file}", "--plot"),
    ("program --resume {tmp}/none.h5", "--resume"),
    ("program --station {tmp}/nope.toml", "--station"),
    ("program --station {dir}", "--station"),
    ("program --params {tmp}/none.json", "--params"),
    ("program --resume {prog} --levels 100000", "--levels"),
    # hil read
    ("read --n-avg 1000000000000", "--n-avg"),
    ("read --n-avg 0", "--n-avg"),
    ("read --n-avg 10**12", "--n-avg"),
    ("read --pe 70000", "--pe"),
    ("read --plot {file}", "--plot"),
    # hil experiment
    ("experiment read-disturb --reads 1000000000000000000000000000000", "--reads"),
    ("experiment read-disturb --reads 0", "--reads"),
    ("experiment read-disturb --reads 2.5", "--reads"),
    ("experiment read-disturb --out {dir}", "--out"),
    ("experiment drift --days 1e300", "--days"),
    ("experiment drift --days inf", "--days"),
    ("experiment drift --days nan", "--days"),
    ("experiment drift --days 0", "--days"),
    ("experiment drift --days -1", "--days"),
    # hil demo
    ("demo --hybrid-fraction 2", "--hybrid-fraction"),
    ("demo --hybrid-fraction 0", "--hybrid-fraction"),
    ("demo --hybrid-fraction nan", "--hybrid-fraction"),
    ("demo --out {file}", "--out"),
    ("demo --data {tmp}/no-such-dir", "--data"),
    ("demo --seed -7", "--seed"),
    # hil train
    ("train --out {tmp}/t.h5 --epochs 0", "--epochs"),
    ("train --out {tmp}/t.h5 --epochs 100000", "--epochs"),
    ("train --out {dir}", "--out"),
    ("train --epochs 3", "--out"),
    # hil transfer
    ("transfer --run {cnn} --groups 0", "--groups"),
    ("transfer --run {cnn} --groups 1000", "--groups"),
    ("transfer --run {tmp}/none.h5", "--run"),
    ("transfer --run {cnn} --seed 99999999999", "--seed"),
    # hil hybrid
    ("hybrid --run {cnn} --lr inf", "--lr"),
    ("hybrid --run {cnn} --lr nan", "--lr"),
    ("hybrid --run {cnn} --lr 0", "--lr"),
    ("hybrid --run {cnn} --lr -0.1", "--lr"),
    ("hybrid --run {cnn} --lr 5", "--lr"),
    ("hybrid --run {cnn} --fraction 1.5", "--fraction"),
    ("hybrid --run {cnn} --epochs 0", "--epochs"),
    ("hybrid --run {cnn} --epochs 1000", "--epochs"),
    ("hybrid --run {cnn} --group 0", "--group"),
    ("hybrid --run {cnn} --group first", "--group"),
    # hil station check
    ("station check sim --cells 0", "--cells"),
    ("station check sim --cells -5", "--cells"),
    ("station check sim --pe -1", "--pe"),
    ("station check {tmp}/nope.toml", "file"),
    # hil gui
    ("gui --station {tmp}/nope.toml --screenshot {tmp}/shots", "--station"),
    ("gui --seed -3", "--seed"),
    ("gui --screenshot {file}", "--screenshot"),
    ("gui --geometry hexagonal", "--geometry"),
    ("gui --run {tmp}/none.h5", "--run"),
    # hil info / runs
    ("info --params {tmp}/none.toml", "--params"),
    ("runs show {tmp}/none.h5", "file"),
    ("runs recover {dir}", "file"),
    ("sim-station serve --port-base 70000", "--port-base"),
    ("sim-station serve --port-base -1", "--port-base"),
]


@pytest.mark.parametrize("argv, option", BAD, ids=[a for a, _ in BAD])
def test_bad_option_is_one_line_exit_2_before_any_work(argv, option, files, monkeypatch, capsys):
    _forbid(monkeypatch, WORK + OPENING)
    monkeypatch.chdir(files["tmp"])                 # default outputs (runs/...) would land here
    before = _state(files["tmp"])
    args = [a.format(**files) for a in argv.split()]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert option in lines[0] and "error" in lines[0]
    assert "Traceback" not in err
    assert _state(files["tmp"]) == before
    assert not (files["tmp"] / "shots").exists()


# Checks that need the station (geometry) or the record: done after opening, before any work.
AFTER_OPEN = [
    ("program --pe 8", "--pe 8"),
    ("read --pe 0,9", "--pe 9"),
    ("experiment read-disturb --pe 0,8", "--pe 8"),
    ("station check sim --cells 5000", "--cells"),
    ("station check sim --pe 8", "--pe"),
    ("program --resume {cnn}", "mcnn"),
]


@pytest.mark.parametrize("argv, text", AFTER_OPEN, ids=[a for a, _ in AFTER_OPEN])
def test_checks_against_the_station_come_before_any_work(argv, text, files, monkeypatch, capsys):
    _forbid(monkeypatch, WORK)
    monkeypatch.chdir(files["tmp"])
    before = _state(files["tmp"])
    assert main([a.format(**files) for a in argv.split()]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], err
    assert "Traceback" not in err
    assert _state(files["tmp"]) == before          # no record, journal or chip file appeared or changed


def test_resume_of_a_cnn_record_names_the_file_and_its_kind(files, capsys):
    assert main(["program", "--resume", str(files["cnn"])]) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(files["cnn"]) in line and "'mcnn'" in line and "programming" in line


def test_demo_hybrid_fraction_is_validated_by_the_stage_config_too(monkeypatch):
    """Even past the parser, the demo's hybrid settings go through HybridConfig's checks before training."""
    import argparse

    from hil.cli import yao as cli_cnn
    from hil.errors import ConfigError
    _forbid(monkeypatch, WORK + OPENING)
    args = argparse.Namespace(seed=0, quick=True, hybrid_fraction=2.0, out="unused", json=True)
    with pytest.raises(ConfigError, match="fraction"):
        cli_cnn.cmd_demo(args)


def test_every_option_has_help():
    from hil.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict):       # sub-commands
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
            elif action.dest != "help":
                yield " ".join(path), action
    missing = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in walk(build_parser(), ["hil"]) if not a.help]
    assert not missing, missing
