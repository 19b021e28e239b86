"""The mCNN on the simulated chip: transfer, hardware inference, hybrid training, demo stages."""
import json

import numpy as np
import pytest

from hil.nn.datasets import load_embedded
from hil.yao2020 import stages
from hil.yao2020.demo import DemoConfig, load_model, run_demo
from hil.errors import ConfigError, DataError
from hil.geometry import Geometry
from hil.yao2020.hwnet import HardwareMCNN, plan_mcnn, transfer
from hil.yao2020.hybrid import HybridConfig, accuracy, holdout_indices, hybrid_train
from hil.yao2020.mcnn import MCNN, train_mcnn
from hil.yao2020.report import write_report
from hil.runstore import RunRecord, RunWriter
from sim_backend.chip import SimulatedCrossbar
from sim_backend.params import DeviceParams


@pytest.fixture(scope="module")
def small():
    ds = load_embedded(seed=0).subset(0.25, seed=0)           # 1,000 training digits
    model, _ = train_mcnn(ds, epochs=4, batch=16, lr=3e-3, seed=0)     # ~92% quantized
    return ds, model


def test_transfer_and_hardware_inference_follow_the_software_network(small, tmp_path):
    ds, model = small
    # No stuck cells here: a stuck-on cell (40-60 µS) in the FC layer is a weight error of ~20
    # levels that only hybrid training compensates; this test isolates the computation path.
    xbar = SimulatedCrossbar(seed=1, params=DeviceParams.from_dict({"defects": {"stuck_on_rate": 0.0,
                                                                               "stuck_off_rate": 0.0}}))
    plan = plan_mcnn(xbar.geometry, model, groups=1)
    with RunWriter.create(tmp_path / "t.h5", "mcnn", {}) as w:
        rep = transfer(xbar, model, plan, w)
    s = rep.summary()
    assert s["program"]["in_band_fraction"] > 0.99 and s["program"]["unresponsive"] == 0
    assert max(s["weight_rms_error_levels"].values()) < 0.3
    hw = HardwareMCNN(xbar, model, plan)
    hw.calibrate_adc(ds.x_train[:32])
    x, y = ds.x_test[:200], ds.y_test[:200]
    codes = hw.features(x, 0)
    soft = model.features(x, "c3")
    assert codes.shape == soft.shape == (200, 192)
    assert np.mean(np.abs(codes - soft)) < 0.1 * np.mean(soft)     # device errors, not a different network
    agree = np.mean(np.argmax(hw.fc_logits(codes), 1) == model.predict(x))
    assert agree > 0.9
    assert abs(accuracy(hw, codes, y) - model.accuracy(x, y)) < 0.06
    # read-back weights are the programmed levels within the tolerance band
    assert np.mean(np.abs(hw.read_levels("c1") - model.weight_matrix("c1"))) < 0.4


def test_hybrid_training_repairs_a_damaged_fc_layer(small, tmp_path):
    ds, model = small
    xbar = SimulatedCrossbar(seed=2)
    plan = plan_mcnn(xbar.geometry, model, groups=1)
    rng = np.random.default_rng(0)
    damaged = MCNN({**model.params, "fc": model.params["fc"] * rng.uniform(0.0, 1.6, model.params["fc"].shape)},
                   model.act_scale)
    with RunWriter.create(tmp_path / "h.h5", "mcnn", {}) as w:
        transfer(xbar, model, plan, w, layers=["c1", "c3"])
        transfer(xbar, damaged, plan, w, layers=["fc"], prefix="transfer_fc")
        hw = HardwareMCNN(xbar, model, plan)
        hw.calibrate_adc(ds.x_train[:32])
        sub = ds.subset(0.4, seed=0)
        codes = hw.features(sub.x_train, 0)
        test = hw.features(ds.x_test[:300], 0)
        hist = hybrid_train(hw, codes, sub.y_train, HybridConfig(epochs=4, lr_levels=0.1),
                            evals={"test": (test, ds.y_test[:300])}, writer=w)
    assert hist[0]["epoch"] == 0 and len(hist) == 5
    assert hist[-1]["pulses"] > 0 and hist[-1]["updates"] > 0
    assert hist[-1]["acc_test"] > hist[0]["acc_test"] + 0.03
    with RunRecord.open(tmp_path / "h.h5") as rec:
        assert list(rec.table("hybrid/epochs")["epoch"]) == [0, 1, 2, 3, 4]


def test_hybrid_training_keeps_its_best_state_on_the_held_out_part(small, tmp_path):
    """A step far too large makes every epoch worse on the held-out digits; the stage programs
    the best state (here the transferred one) back, so it never ends worse than it started."""
    ds, model = small
    xbar = SimulatedCrossbar(seed=4)
    plan = plan_mcnn(xbar.geometry, model, groups=1)
    with RunWriter.create(tmp_path / "k.h5", "mcnn", {}) as w:
        transfer(xbar, model, plan, w)
    hw = HardwareMCNN(xbar, model, plan)
    hw.calibrate_adc(ds.x_train[:32])
    sub = ds.subset(0.3, seed=1)
    codes = hw.features(sub.x_train, 0)
    cfg = HybridConfig(epochs=2, batch=50, lr_levels=4.0, threshold_levels=0.5, max_pulses=6, seed=1)
    held = holdout_indices(sub.y_train, 0.3, seed=1)
    fit = np.setdiff1d(np.arange(len(codes)), held)
    hist = hybrid_train(hw, codes[fit], sub.y_train[fit], cfg, holdout=(codes[held], sub.y_train[held]))
    start = hist[0]["acc_holdout"]
    assert [r["kept_epoch"] for r in hist] == [0, 0, 0]
    assert max(r["acc_holdout_trained"] for r in hist[1:]) < start - 0.1    # training alone ends far worse
    # the kept state does not: programmed back within tolerance, it scores within 2 digits of the start
    assert all(r["acc_holdout"] >= start - 2 / held.size for r in hist)


def test_hybrid_stops_on_digits_ex_situ_training_never_saw(tmp_path, monkeypatch):
    """The train stage keeps a stratified, seeded 10% of the training digits out (stored in the
    record); hybrid training runs its subset of the others, then those, through the chip."""
    ds = load_embedded(seed=5).subset(0.1, seed=5)                 # 400 training digits
    seen = []
    with RunWriter.create(tmp_path / "t.h5", "mcnn", {}) as w:
        monkeypatch.setattr(stages, "train_mcnn", lambda sub, **kw: (seen.append(sub.x_train), train_mcnn(sub, **kw))[1])
        res = stages.train(None, w, stages.TrainConfig(epochs=1, seed=5), dataset=ds)
        held = w.content.datasets["training/holdout"][0]
        x, y, k = stages.hybrid_digits(w.content, stages.HybridStageConfig(), ds)
    assert np.bincount(ds.y_train[held], minlength=10).tolist() == [
        round(0.1 * c) for c in np.bincount(ds.y_train, minlength=10)]
    assert res.train_images == len(seen[0]) == ds.n_train - len(held) == len(x) - k
    trained = {im.tobytes() for im in seen[0]}
    assert not trained & {im.tobytes() for im in ds.x_train[held]}
    np.testing.assert_array_equal(x[-k:], ds.x_train[held])
    np.testing.assert_array_equal(y[-k:], ds.y_train[held])
    assert {im.tobytes() for im in x[:-k]} == trained              # the subset: every other digit
    np.testing.assert_array_equal(held, holdout_indices(ds.y_train, 0.1, 5))
    assert not np.array_equal(held, holdout_indices(ds.y_train, 0.1, 6))


def test_bad_inputs_get_clear_errors(small):
    ds, model = small
    with pytest.raises(DataError, match="NaN"):
        MCNN({**model.params, "fc": np.full((10, 192), np.nan)}, model.act_scale)
    with pytest.raises(ConfigError, match="does not fit|FC layers"):
        plan_mcnn(Geometry(2, 128, 16), model, groups=3)
    xbar = SimulatedCrossbar(seed=0)
    hw = HardwareMCNN(xbar, model, plan_mcnn(xbar.geometry, model, 1))
    with pytest.raises(DataError, match="28, 28"):
        hw.features(np.zeros((3, 27, 28), np.uint8))
    with pytest.raises(DataError, match="NaN"):
        hw.features(np.full((1, 28, 28), np.nan))
    with pytest.raises(DataError, match="codes"):
        hybrid_train(hw, np.zeros((5, 100)), np.zeros(5), HybridConfig())


def test_demo_stages_end_to_end_at_small_size(tmp_path):
    ds = load_embedded(seed=3).subset(0.15, seed=3)
    cfg = DemoConfig(seed=3, train_epochs=2, hybrid=HybridConfig(epochs=2, lr_levels=0.05, seed=3),
                     test_images=150, after_images=60, disturb_reads=10_000, after_times_s=(600.0, 86400.0))
    xbar = SimulatedCrossbar(seed=3)
    with RunWriter.create(tmp_path / "demo.h5", "mcnn", {}) as w:
        res = run_demo(xbar, ds, w, cfg)
    for key in ("software_acc", "transfer_acc", "hybrid_acc", "parallel_acc", "gops_per_w"):
        assert 0 < res[key]
    assert len(res["group_acc_transfer"]) == len(res["group_acc_hybrid"]) == 3
    assert res["conv_throughput_ratio"] == pytest.approx(3.0, rel=0.05)
    assert res["after"]["time_s"] == [600.0, 86400.0] and len(res["after"]["acc"]) == 2
    with RunRecord.open(tmp_path / "demo.h5") as rec:
        content = rec.content()
        assert rec.table("hybrid_parallel/epochs")["epoch"].tolist() == [0, 1, 2]
    again = load_model(content)
    np.testing.assert_array_equal(again.weight_levels("fc"), res and again.weight_levels("fc"))
    md = write_report(res, tmp_path / "report", content)
    text = md.read_text()
    assert "Yao 2020" in text and "96.19%" in text
    for png in ("accuracy", "groups", "hybrid", "after", "transfer_cdf", "transfer_pulses"):
        assert (tmp_path / "report" / "figures" / f"{png}.png").stat().st_size > 5000
    assert json.loads((tmp_path / "report" / "results.json").read_text())["seed"] == 3
