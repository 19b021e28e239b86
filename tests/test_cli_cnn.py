"""`hil train` -> `hil transfer` -> `hil hybrid` on a directory of (small) MNIST IDX files."""
import json
from pathlib import Path

import numpy as np
import pytest

from hil.cli import main
from hil.nn.datasets import load_embedded, write_idx
from hil.runstore import RunRecord


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """Small IDX files in the official names: the code path that reads full MNIST (60k/10k)."""
    d = tmp_path_factory.mktemp("mnist")
    ds = load_embedded(seed=5)
    rng = np.random.default_rng(0)
    tr = rng.choice(len(ds.x_train), 600, replace=False)
    write_idx(d / "train-images-idx3-ubyte.gz", ds.x_train[tr], gz=True)
    write_idx(d / "train-labels-idx1-ubyte.gz", ds.y_train[tr].astype(np.uint8), gz=True)
    write_idx(d / "t10k-images-idx3-ubyte", ds.x_test[:120])
    write_idx(d / "t10k-labels-idx1-ubyte", ds.y_test[:120].astype(np.uint8))
    return d


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_train_transfer_hybrid_chain_and_resume(idx_dir, tmp_path, capsys):
    run = tmp_path / "cnn.h5"
    assert main(["train", "--out", str(run), "--data", str(idx_dir), "--epochs", "2", "--seed", "1", "--json"]) == 0
    r = _json(capsys)
    assert r["dataset"]["n_train"] == 600 and r["dataset"]["n_test"] == 120
    assert 0 < r["software_acc"] <= 1

    assert main(["transfer", "--run", str(run), "--station", "sim", "--seed", "1", "--groups", "1", "--json"]) == 0
    t = _json(capsys)
    assert not t["resumed"] and t["transfer"]["program"]["cells"] == 2 * 936 + 2 * 1920
    assert t["transfer"]["program"]["in_band_fraction"] > 0.99

    args = ["hybrid", "--run", str(run), "--station", "sim", "--seed", "1", "--data", str(idx_dir),
            "--fraction", "0.5", "--json"]
    assert main(args + ["--epochs", "2"]) == 0
    h = _json(capsys)
    assert [e["epoch"] for e in h["history"]] == [0, 1, 2]
    assert h["history"][-1]["pulses"] > 0
    # a second call continues from the recorded epochs instead of starting over
    assert main(args + ["--epochs", "3"]) == 0
    h2 = _json(capsys)
    assert h2["resumed_from_epoch"] == 2 and [e["epoch"] for e in h2["history"]] == [3]
    with RunRecord.open(run) as rec:
        assert rec.table("hybrid/epochs")["epoch"].tolist() == [0, 1, 2, 3]
        assert "model/c1" in rec.datasets()
    assert (tmp_path / "cnn.h5.chip.npz").exists()          # the simulated chip kept its state
    # a bad argument is refused without touching the record
    with RunRecord.open(run) as rec:
        status = rec.status
    assert main(args + ["--group", "9"]) == 2
    assert "--group must be 'all' or a convolver group 1..1" in capsys.readouterr().err
    with RunRecord.open(run) as rec:
        assert rec.status == status == "hybrid-trained"


def test_demo_refuses_a_chip_the_network_does_not_fit_before_any_work(tmp_path, capsys):
    wang = Path(__file__).resolve().parents[1] / "stations" / "sim-wang.toml"
    assert main(["demo", "--quick", "--station", str(wang), "--out", str(tmp_path / "d")]) == 2
    assert "network does not fit" in capsys.readouterr().err
    assert not list((tmp_path / "d").glob("demo*.h5*"))


def test_cnn_commands_give_clear_errors(idx_dir, tmp_path, capsys):
    assert main(["transfer", "--run", str(tmp_path / "none.h5")]) == 2
    assert "hil train" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    assert main(["train", "--out", str(tmp_path / "x.h5"), "--data", str(bad)]) == 2
    assert "lacks train-images-idx3-ubyte" in capsys.readouterr().err
    for f in idx_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "t10k-images-idx3-ubyte").write_bytes((idx_dir / "t10k-images-idx3-ubyte").read_bytes()[:-100])
    assert main(["train", "--out", str(tmp_path / "y.h5"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "hil: error:" in err and "t10k-images-idx3-ubyte" in err
    assert not (tmp_path / "y.h5").exists()
