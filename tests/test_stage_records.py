"""One stage pipeline, one record shape: train -> transfer -> hybrid once through the CLI and once
through the GUI (pytest-qt, offscreen) on the same small MNIST files. The two records hold the
same groups, datasets, tables and attribute names; values differ only where the front end is
named (the station snapshot). Configs are stored in the record and a resumed stage reads them."""
import os

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
