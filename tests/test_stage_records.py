"""One stage pipeline, one record shape: train -> transfer -> hybrid once through the CLI and once
through the GUI (pytest-qt, offscreen) on the same small MNIST files. The two records hold the
same groups, datasets, tables and attribute names; values differ only where the front end is
named (the station snapshot). Configs are stored in the record and a resumed stage reads them."""
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

from hil.cli import main
from hil.nn.datasets import load_embedded, write_idx
from hil.runstore import RunRecord, read_content
from hil.runstore.lifecycle import run_record
from hil.errors import Cancelled, ConfigError
from hil.yao2020 import stages


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    ds = load_embedded(seed=2)
    tr = np.random.default_rng(0).choice(len(ds.x_train), 400, replace=False)
    write_idx(d / "train-images-idx3-ubyte", ds.x_train[tr])
    write_idx(d / "train-labels-idx1-ubyte", ds.y_train[tr].astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", ds.x_test[:60])
    write_idx(d / "t10k-labels-idx1-ubyte", ds.y_test[:60].astype(np.uint8))
    return d


def shape(path):
    """(groups with their attribute names, datasets, tables with their columns, root attr names)."""
    with RunRecord.open(path) as rec:
        c = rec.content()
    groups = {g: sorted(a) for g, a in c.attrs.items()}
    return groups, sorted(c.datasets), {t: sorted(c.tables[t]) for t in c.tables}, c.station, rec.status


def test_cli_and_gui_stages_make_the_same_record(idx_dir, tmp_path, make_window, qtbot, capsys, errors):
    cli = tmp_path / "cli.h5"
    data = ["--data", str(idx_dir)]
    assert main(["train", "--out", str(cli), "--epochs", "1", "--seed", "1", "--json"] + data) == 0
    assert main(["transfer", "--run", str(cli), "--groups", "1", "--seed", "4", "--json"]) == 0
    assert main(["hybrid", "--run", str(cli), "--fraction", "0.1", "--epochs", "1", "--seed", "1", "--json"]
                + data) == 0
    capsys.readouterr()

    w = make_window(4, "yao")
    net, hyb = w.panels["network"], w.panels["hybrid"]
    net.data_edit.setText(str(idx_dir))
    net.fraction.setValue(1.0)
    net.epochs.setValue(1)
    net.seed.setValue(1)
    assert net.train()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    net.groups.setValue(1)
    assert net.start_transfer()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=120_000)
    hyb.fraction.setValue(0.1)
    hyb.epochs.setValue(1)
    hyb.seed.setValue(1)
    hyb.test_images.setValue(60)
    assert hyb.start()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=120_000)
    assert errors == []
    gui = hyb.out
    assert gui == net.out == w.panels["network"].cnn.record        # one record through all stages

    g_cli, d_cli, t_cli, st_cli, s_cli = shape(cli)
    g_gui, d_gui, t_gui, st_gui, s_gui = shape(gui)
    assert g_cli == g_gui and d_cli == d_gui and t_cli == t_gui
    assert s_cli == s_gui == "hybrid-trained"
    assert sorted(st_cli) == sorted(st_gui)                             # one station snapshot function
    assert (st_cli["client"], st_gui["client"]) == ("cli", "gui")
    for name in ("convolvers/test", "convolvers/train", "model/c1", "hybrid/checkpoint"):
        assert name in d_cli
    assert "full_scale_a" in g_cli["/adc"] and "stage_config" in g_cli["/transfer"]
    # the stored configs are the stage's own, read back as typed configs
    c_cli, c_gui = read_content(cli), read_content(gui)
    for c in (c_cli, c_gui):
        h = stages.stored_config(c, "hybrid", stages.HybridStageConfig)
        assert h.hybrid.epochs == 1 and h.hybrid.fraction == 0.1 and h.data.source == str(idx_dir)
        assert stages.stored_config(c, "transfer", stages.TransferConfig).groups == 1


def test_resumed_hybrid_reads_its_config_from_the_record(idx_dir, tmp_path, capsys):
    run = tmp_path / "r.h5"
    data = ["--data", str(idx_dir)]
    assert main(["train", "--out", str(run), "--epochs", "1", "--json"] + data) == 0
    assert main(["transfer", "--run", str(run), "--groups", "1", "--json"]) == 0
    assert main(["hybrid", "--run", str(run), "--fraction", "0.1", "--lr", "0.05", "--epochs", "1", "--json"]
                + data) == 0
    capsys.readouterr()
    before = run.read_bytes()
    # a conflicting value is refused with one line, the record unchanged
    assert main(["hybrid", "--run", str(run), "--lr", "0.1", "--epochs", "2"] + data) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--lr 0.1 (recorded 0.05)" in err
    assert run.read_bytes() == before
    # without the options, the recorded ones are used (not the defaults): the training continues
    assert main(["hybrid", "--run", str(run), "--epochs", "2", "--json"] + data) == 0
    assert "resumed_from_epoch\": 1" in capsys.readouterr().out
    h = stages.stored_config(read_content(run), "hybrid", stages.HybridStageConfig)
    assert h.hybrid.lr_levels == 0.05 and h.hybrid.fraction == 0.1


def test_lifecycle_end_states_and_untouched_record(tmp_path):
    ok, stop, bad = tmp_path / "ok.h5", tmp_path / "stop.h5", tmp_path / "bad.h5"
    with run_record(ok, "t", station={}) as w:
        w.put("x", np.arange(3))
    with pytest.raises(Cancelled):
        with run_record(stop, "t", station={}) as w:
            w.put("x", np.arange(3))
            raise Cancelled("stopped by the user")
    with pytest.raises(ZeroDivisionError):
        with run_record(bad, "t", station={}) as w:
            1 / 0
    for path, status in ((ok, "complete"), (stop, "stopped"), (bad, "failed")):
        with RunRecord.open(path) as rec:
            assert rec.status == status
        assert (tmp_path / (path.name + ".journal")).exists() == (status != "complete")
    with RunRecord.open(bad) as rec:
        assert rec.marks[-1]["event"] == "failed" and "ZeroDivisionError" in rec.marks[-1]["error"]
    # a stopped run resumes from its journal and completes
    with run_record(stop, "t", resume=True) as w:
        assert "x" in w.content.datasets
    with RunRecord.open(stop) as rec:
        assert rec.status == "complete"
    # the wrong kind is refused before a byte changes
    before = bad.read_bytes()
    with pytest.raises(Exception, match="kind"):
        with run_record(bad, "other", resume=True):
            pass
    assert bad.read_bytes() == before


def test_configs_round_trip_and_refuse_unknown_keys():
    cfg = stages.ParallelConfig()
    assert stages.ParallelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown HybridConfig setting.*lr"):
        stages.HybridStageConfig.from_dict({"hybrid": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="HybridConfig.fraction must be in"):
        stages.HybridConfig(fraction=1.5)
    with pytest.raises(ConfigError, match="must be a whole number"):
        stages.TransferConfig(groups=True)


# ---- programming and the device experiments: CLI and GUI write one record shape ------------------
def record_shape(path):
    """shape() with the experiment's snapshots (one per read count or time) as one name: the two
    front ends choose different checkpoints (values of their stored configs)."""
    groups, datasets, tables, station, status = shape(path)
    datasets = {"experiment/snapshots/<label>" if d.startswith("experiment/snapshots/") else d for d in datasets}
    return groups, sorted(datasets), tables, station, status


def same_shape(cli, gui):
    g_cli, d_cli, t_cli, st_cli, s_cli = record_shape(cli)
    g_gui, d_gui, t_gui, st_gui, s_gui = record_shape(gui)
    assert g_cli == g_gui and d_cli == d_gui and t_cli == t_gui
    assert s_cli == s_gui == "complete"
    assert sorted(st_cli) == sorted(st_gui) and (st_cli["client"], st_gui["client"]) == ("cli", "gui")
    assert (st_cli["spec"], st_cli["seed"]) == (st_gui["spec"], st_gui["seed"]) == ("sim", 3)
    chip_cli, chip_gui = (dict(st["describe"]["chip"], id=None) for st in (st_cli, st_gui))
    assert chip_cli == chip_gui and sorted(st_cli["describe"]) == sorted(st_gui["describe"])  # each chip its id
    return d_cli


def test_cli_and_gui_programming_and_experiments_make_the_same_records(tmp_path, make_window, qtbot, capsys,
                                                                       errors):
    from hil.modules import stability
    from hil.ops.jobs import ProgramConfig, stored_program_config
    cli = {k: tmp_path / f"{k}.h5" for k in ("program", "read-disturb", "drift")}
    base = ["--pe", "0", "--seed", "3", "--json"]
    assert main(["program", "--out", str(cli["program"])] + base) == 0
    assert main(["experiment", "read-disturb", "--reads", "1000", "--out", str(cli["read-disturb"])] + base) == 0
    assert main(["experiment", "drift", "--days", "2", "--out", str(cli["drift"])] + base) == 0
    capsys.readouterr()

    w = make_window(3, "yao")
    p, exp = w.panels["programming"], w.panels["experiments"]
    p.pes.setText("0")
    assert p.start()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    gui = {"program": p.out}
    exp.reads.setValue(1000)
    assert exp.start_read_disturb()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    gui["read-disturb"] = exp.out
    exp.days.setValue(2)
    assert exp.start_drift()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    gui["drift"] = exp.out
    assert errors == []

    d = same_shape(cli["program"], gui["program"])
    assert {"programming/targets", "snapshots/before_programming", "snapshots/after_programming"} <= set(d)
    for kind in ("read-disturb", "drift"):
        d = same_shape(cli[kind], gui[kind])
        assert {"experiment/cells", "programming/targets", "snapshots/after_programming"} <= set(d)
        for path in (cli[kind], gui[kind]):
            with RunRecord.open(path) as rec:
                assert rec.kind == kind
    # the configs are stored, typed: the CLI's defaults and the GUI's settings
    for path in (cli["program"], gui["program"], cli["drift"], gui["drift"]):
        c = read_content(path)
        assert stored_program_config(c).pes == (0,) and stored_program_config(c).levels == 32
        assert isinstance(stored_program_config(c), ProgramConfig)
    c_cli, c_gui = read_content(cli["read-disturb"]), read_content(gui["read-disturb"])
    rd = [stability.ReadDisturbConfig.from_dict(c.attrs["/experiment"]["stage_config"]) for c in (c_cli, c_gui)]
    assert rd[0].reads == rd[1].reads == 1000 and rd[0].checkpoints == () and rd[1].checkpoints[-1] == 1000
    snaps = [len([n for n in c.datasets if n.startswith("experiment/snapshots/")]) for c in (c_cli, c_gui)]
    assert snaps == [4 + 1, len(rd[1].checkpoints) + 1]
    dr = stability.DriftConfig.from_dict(read_content(gui["drift"]).attrs["/experiment"]["stage_config"])
    assert dr.days == 2 and dr.times_s[-1] == 2 * 86400


def _sigint_in(stage: str):
    """A progress_bar stand-in that sends this process SIGINT at the first progress report of
    `stage` (the bar's description): the command's Ctrl+C handler stops the job at its next step."""
    import signal
    from contextlib import contextmanager

    @contextmanager
    def bar(args, desc, unit="cell"):
        yield lambda p: os.kill(os.getpid(), signal.SIGINT) if desc == stage else None
    return bar


def _fail_reads_after(monkeypatch, n_calls: int):
    """The simulated chip's reads fail with a BackendError after `n_calls` more calls."""
    from hil.errors import BackendError
    from sim_backend.chip import SimulatedCrossbar
    orig, calls = SimulatedCrossbar._read, []

    def read(self, cells, v, n):
        calls.append(1)
        if len(calls) > n_calls:
            raise BackendError("array board did not answer")
        return orig(self, cells, v, n)
    monkeypatch.setattr(SimulatedCrossbar, "_read", read)


def _hold_after_first_progress(monkeypatch):
    """The GUI worker waits after its first progress report until the job is aborted, so the
    abort lands mid-stage however busy the machine is (a fast job could otherwise finish first)."""
    import gui.jobs
    orig = gui.jobs.JobContext.progress

    def progress(self, p):
        orig(self, p)
        deadline = time.monotonic() + 30
        while not self.cancel.cancelled and time.monotonic() < deadline:
            time.sleep(0.005)
    monkeypatch.setattr(gui.jobs.JobContext, "progress", progress)


def ending(path):
    """(status, last mark, journal kept) of a record."""
    with RunRecord.open(path) as rec:
        return rec.status, rec.marks[-1], path.with_name(path.name + ".journal").exists()


@pytest.mark.parametrize("cmd", ["program", "drift"])
def test_stopped_and_failed_runs_end_alike_from_cli_and_gui(cmd, tmp_path, make_window, qtbot, capsys, errors,
                                                            monkeypatch):
    import hil.cli.experiments
    import hil.cli.program
    argv = (["program"] if cmd == "program" else ["experiment", "drift", "--days", "2"]) + ["--pe", "0", "--seed", "3"]
    cli_module = hil.cli.program if cmd == "program" else hil.cli.experiments
    stage = "write-verify" if cmd == "program" else "drift"
    # CLI: Ctrl+C at the stage's first progress report; then reads that fail
    cli_stop, cli_bad = tmp_path / "stop.h5", tmp_path / "bad.h5"
    with monkeypatch.context() as m:
        m.setattr(cli_module, "progress_bar", _sigint_in(stage))
        assert main(argv + ["--out", str(cli_stop)]) == 130
    assert "stopped" in capsys.readouterr().err
    with monkeypatch.context() as m:
        _fail_reads_after(m, 2)
        assert main(argv + ["--out", str(cli_bad)]) == 2
    assert "array board did not answer" in capsys.readouterr().err

    # GUI: Abort at the stage's first progress report; then reads that fail
    w = make_window(3, "yao")
    p, exp = w.panels["programming"], w.panels["experiments"]
    p.pes.setText("0")
    exp.days.setValue(2)
    if cmd == "drift":
        assert p.start()
        qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    panel, start = (p, p.start) if cmd == "program" else (exp, exp.start_drift)
    panel.bar.setValue(1)
    with monkeypatch.context() as m:
        _hold_after_first_progress(m)
        assert start()
        panel.bar.valueChanged.connect(lambda v: w.s.abort("stopped by the test"))
        qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
        panel.bar.valueChanged.disconnect()
    gui_stop = panel.out
    with monkeypatch.context() as m:
        _fail_reads_after(m, 2)
        assert start()
        qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    gui_bad = panel.out
    assert [e[0] for e in errors] == ["Station error"]

    for cli, gui, status in ((cli_stop, gui_stop, "stopped"), (cli_bad, gui_bad, "failed")):
        (s_cli, m_cli, j_cli), (s_gui, m_gui, j_gui) = ending(cli), ending(gui)
        assert s_cli == s_gui == status and m_cli["event"] == m_gui["event"] == status
        assert j_cli and j_gui                                    # the journal is kept: resumable
    assert m_cli["error"] == m_gui["error"] == "BackendError: array board did not answer"


def test_resumed_hil_program_reads_its_config_from_the_record(tmp_path, monkeypatch, capsys):
    import hil.cli.program
    from hil.ops.jobs import stored_program_config
    run = tmp_path / "r.h5"
    with monkeypatch.context() as m:
        m.setattr(hil.cli.program, "progress_bar", _sigint_in("write-verify"))
        assert main(["program", "--pe", "1", "--levels", "8", "--max-pulses", "40", "--out", str(run)]) == 130
    capsys.readouterr()
    before = run.read_bytes()
    assert main(["program", "--resume", str(run), "--max-pulses", "50"]) == 2       # refused, record unchanged
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--max-pulses 50 (recorded 40)" in err and run.read_bytes() == before
    assert main(["program", "--resume", str(run), "--json"]) == 0                   # the recorded settings
    c = read_content(run)
    cfg = stored_program_config(c)
    assert (cfg.pes, cfg.levels, cfg.max_pulses) == ((1,), 8, 40)
    assert c.attrs["/programming"]["policy"]["max_pulses"] == 40
    assert len(c.datasets["programming/targets"][1]["levels_s"]) == 8
