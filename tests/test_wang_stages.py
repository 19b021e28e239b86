"""Wang 2019 stages (hil.wang2019.stages) and `hil wang`: the record a training leaves, kill and
resume equal to an uninterrupted run, evaluation, the demo, and bad input through the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest

from hil.cli import main
from hil.errors import Cancelled, ConfigError, DataError
from hil.progress import CancelToken
from hil.registry import open_station
from hil.runstore import RunRecord, read_content
from hil.runstore.lifecycle import run_record
from hil.wang2019 import stages
from hil.wang2019.data import load_mnist8
from hil.wang2019.demo import WangDemoConfig, run_wang_demo

STATIONS = Path(__file__).resolve().parents[1] / "stations"
CFG = stages.InsituConfig(net="cnn", train_samples=300, test_samples=100, epochs=3, eval_every=4,
                          snapshot_every=4)          # 9 batches of 100


@pytest.fixture(scope="module")
def digits():
    return stages.load_data(stages.DataConfig(), "cnn")


def chip(seed=0):
    return open_station(str(STATIONS / "sim-wang.toml"), seed=seed)


def scanned(path, seed=0):
    x = chip(seed)
    with run_record(path, stages.KIND, done=stages.STAGE_DONE["yield"]) as w:
        stages.yield_scan(x, w, stages.YieldScanConfig())
    return x


class Kill(Exception):
    pass


def train(path, x, cfg, data, kill_at=(), how="cancel"):
    """Train, cut off after each batch in `kill_at` (cancel token or an exception), resuming each time."""
    kills = list(kill_at)
    while True:
        token = CancelToken()

        def hook(row):
            if kills and row["batch"] == kills[0]:
                kills.pop(0)
                if how == "cancel":
                    token.cancel("test kill")
                else:
                    raise Kill(row["batch"])
        try:
            with run_record(path, stages.KIND, resume=True, done=stages.STAGE_DONE["train"]) as w:
                return stages.train_insitu(x, w, cfg, cancel=token, data=data, on_batch=hook)
        except (Cancelled, Kill):
            pass


def content(path):
    with RunRecord.open(path) as rec:
        return rec.content()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("wang") / "a.h5"
    r = train(path, scanned(path), CFG, digits)
    return path, r


def test_the_record_of_a_training(uninterrupted):
    path, r = uninterrupted
    c = content(path)
    assert c.attrs["/"]["status"] == "trained"
    attrs = c.attrs["/insitu/cnn"]
    assert stages.InsituConfig.from_dict(attrs["stage_config"]) == CFG
    assert attrs["n_weights"] == 1015 and attrs["n_cells"] == 4060 and attrs["done"] is True
    t = c.tables["insitu/cnn/batches"]
    assert list(t["batch"]) == list(range(1, 10)) and list(t["epoch"]) == [1] * 3 + [2] * 3 + [3] * 3
    assert np.all(t["pulses"] > 4000) and np.all(np.diff(t["pulses_total"]) == t["pulses"][1:])
    evaluated = ~np.isnan(t["test_acc"])
    assert list(np.flatnonzero(evaluated) + 1) == [4, 8, 9]          # every 4 batches and the last
    assert attrs["test_acc"] == t["test_acc"][-1] == r.test_acc and r.updates == 9
    snaps = sorted({k.split("/")[3] for k in c.datasets if "/snapshots/" in k})
    assert snaps == ["b00000", "b00004", "b00008", "b00009"]
    g = c.datasets["insitu/cnn/snapshots/b00000/g_s"][0]
    assert g.shape == (2, 1015, 2) and 200e-6 < g.mean() < 400e-6          # SET at 1.6 V: ~291 µS
    assert np.all(c.datasets["insitu/cnn/snapshots/b00000/v_gate_v"][0] == 1.6)
    assert c.datasets["insitu/cnn/checkpoint"][1]["batch"] == 9
    assert {"insitu/cnn/placement/conv1/rows", "yield/rows"} <= set(c.datasets)


@pytest.mark.parametrize("kill_at, how", [((1,), "cancel"), ((4, 7), "raise"), ((8,), "cancel")])
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, digits, uninterrupted, kill_at, how):
    ref_path, ref = uninterrupted
    path = tmp_path / "b.h5"
    r = train(path, scanned(path), CFG, digits, kill_at, how)
    assert r.resumed_from == kill_at[-1]
    a, b = content(ref_path), content(path)
    ta, tb = a.tables["insitu/cnn/batches"], b.tables["insitu/cnn/batches"]
    assert list(ta) == list(tb)
    for col in ta:
        np.testing.assert_array_equal(ta[col], tb[col], err_msg=col)
    assert set(a.datasets) == set(b.datasets)
    for name in a.datasets:
        np.testing.assert_array_equal(a.datasets[name][0], b.datasets[name][0], err_msg=name)
    assert [m["event"] for m in b.marks].count("resumed") == len(kill_at) + 1   # + the train stage's own
    assert r.test_acc == ref.test_acc and r.pulses == ref.pulses


def test_a_started_training_refuses_other_settings_and_evaluate_reads_the_chip(tmp_path, digits):
    path = tmp_path / "c.h5"
    x = scanned(path, seed=1)
    train(path, x, CFG.replace(epochs=1), digits)
    with run_record(path, stages.KIND, resume=True, done="trained") as w:
        with pytest.raises(ConfigError, match=r"started with other settings \(epochs=1\)"):
            stages.train_insitu(x, w, CFG, data=digits)
        e = stages.evaluate(x, w, stages.EvalConfig(net="cnn", test_samples=100), data=digits)
    last = content(path).tables["insitu/cnn/batches"]["test_acc"][-1]
    assert e.n_test == 100 and abs(e.test_acc - last) < 0.1          # the same array, read again
    lstm = stages.InsituConfig(net="convlstm", train_samples=50, test_samples=30, epochs=1,
                               data=stages.DataConfig(train_sequences=60, test_sequences=30))
    train(path, x, lstm, None)
    with run_record(path, stages.KIND, resume=True, done="trained") as w:
        with pytest.raises(DataError, match="convlstm was trained on this array after the cnn"):
            stages.evaluate(x, w, stages.EvalConfig(net="cnn"), data=digits)


def test_training_needs_a_yield_map(tmp_path, digits):
    with run_record(tmp_path / "d.h5", stages.KIND) as w:
        with pytest.raises(DataError, match="no yield map; run the yield scan first"):
            stages.train_insitu(chip(), w, CFG, data=digits)


def test_quick_demo_returns_the_wang_figures(tmp_path):
    x = chip(0)
    with run_record(tmp_path / "demo.h5", stages.KIND) as w:
        r = run_wang_demo(x, w, WangDemoConfig.quick(0))
    for k in ("wang_cnn_acc", "wang_cnn_software_acc", "wang_cnn_exsitu_acc"):
        assert 0.4 < r[k] <= 1.0, k
    assert r["wang_cnn_updates"] == 40 and r["wang_convlstm_updates"] == 24
    assert len(r["wang_convlstm_acc_steps"]) == len(r["wang_convlstm_software_acc_steps"]) == 3
    assert r["wang_convlstm_acc_steps"][-1] > 0.5                 # chance 1/6
    assert content(tmp_path / "demo.h5").attrs["/results"]["wang_cnn_acc"] == r["wang_cnn_acc"]


def test_default_cnn_updates_match_the_paper():
    cfg = stages.InsituConfig(net="cnn")
    assert cfg.batch_size() == 100 and cfg.n_epochs(4000) == 30 and cfg.n_epochs(60000) == 2
    lstm = stages.InsituConfig(net="convlstm")
    assert lstm.batch_size() == 50 and lstm.n_epochs(6000) == 2
    assert cfg.policy(stages.make_net("cnn")).gate_max == 2.5
    assert lstm.policy(stages.make_net("convlstm")).gate_max == 2.4


# ---- the CLI --------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_yield_train_evaluate(tmp_path, capsys):
    rec = str(tmp_path / "r.h5")
    code, out, _ = run_cli(capsys, "wang", "yield", "--out", rec, "--json")
    assert code == 0 and json.loads(out)["yield"]["good_rows"] > 100
    code, out, _ = run_cli(capsys, "wang", "train", "--run", rec, "--train-samples", "200", "--epochs", "1",
                           "--test-samples", "50", "--json")
    r = json.loads(out)
    assert code == 0 and r["updates"] == 2 and r["pulses"] > 8000 and 0 <= r["test_acc"] <= 1
    code, out, _ = run_cli(capsys, "wang", "evaluate", "--run", rec, "--test-samples", "50", "--json")
    assert code == 0 and json.loads(out)["n_test"] == 50
    code, _, err = run_cli(capsys, "wang", "train", "--run", rec, "--epochs", "2")
    assert code == 2 and "--epochs 2 (recorded 1)" in err and err.count("\n") == 1


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "wang", "yield", "--station", "sim", "--out", str(tmp_path / "y.h5"))
    assert code == 2 and "does not fit a 128 x 16 PE (yao geometry)" in err and err.count("\n") == 1
    assert not (tmp_path / "y.h5").exists()
    rec = str(tmp_path / "r.h5")
    assert run_cli(capsys, "wang", "yield", "--out", rec)[0] == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 7, 7)), y_train=np.zeros(4, int), x_test=np.zeros((2, 7, 7)),
             y_test=np.zeros(2, int))
    code, _, err = run_cli(capsys, "wang", "train", "--run", rec, "--data", str(bad))
    assert code == 2 and "(N, 8, 8) digits or (N, 3, 8, 8) sequences" in err and err.count("\n") == 1
    d = load_mnist8()
    d.x_train[0, 0, 0] = np.nan
    nan = tmp_path / "nan.npz"
    np.savez(nan, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    code, _, err = run_cli(capsys, "wang", "train", "--run", rec, "--data", str(nan))
    assert code == 2 and "NaN" in err and err.count("\n") == 1
    assert "/insitu/cnn" not in read_content(rec).attrs                  # refused before the record changed
    for argv, msg in ((("--net", "lenet"), "invalid choice"), (("--epochs", "0"), "--epochs"),
                      (("--data", str(tmp_path / "missing.npz")), "no such file")):
        code, _, err = run_cli(capsys, "wang", "train", "--run", rec, *argv)
        assert code == 2 and msg in err and err.count("\n") == 1, argv
