"""GUI tests of the CNN tabs (Network, Convolver, Hybrid training), pytest-qt offscreen: each
panel driven through real jobs on the simulated Yao chip at small sizes (embedded digits, 5 %
training subset, 1 epoch, 100 test images), asserting on displayed values, plot data and
enabled states; the plan error on a chip that is too small; abort mid-hybrid-training."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import Qt

import hil.yao2020.hybrid
from hil.runstore import RunRecord
from hil.stats import wilson

from gui.panels.network import FC_COLOR, GAP, tag_color

def cnn_window(make_window, geometry="yao"):
    w = make_window(seed=5, geometry=geometry)
    w.panels["convolver"].auto.setChecked(False)
    return w


@pytest.fixture
def win(make_window):
    return cnn_window(make_window)


def wait_idle(qtbot, w, timeout=30_000):
    qtbot.waitUntil(lambda: not w.s.busy, timeout=timeout)


def train(qtbot, w):
    net = w.panels["network"]
    net.fraction.setValue(0.05)
    net.epochs.setValue(1)
    assert net.train()
    wait_idle(qtbot, w)
    return net


def transfer(qtbot, w, groups):
    net = w.panels["network"]
    net.groups.setValue(groups)
    assert net.start_transfer()
    wait_idle(qtbot, w)
    return net


def rgb(color: str) -> list:
    return list(pg.mkColor(color).getRgb()[:3])


# ---- 5 network -------------------------------------------------------------------------------
def test_network_train_plan_and_transfer(win, qtbot, errors):
    net = win.panels["network"]
    assert not net.transfer_btn.isEnabled() and "model" in net.transfer_btn.toolTip()
    train(qtbot, win)
    cnn = net.cnn
    assert cnn.model is not None and cnn.dataset.n_train == 4000
    assert "trained on 180 digits" in net.model_label.text()     # 5% of 4,000, 10% of it held out
    assert f"{wilson_text(cnn.software_acc, 1000)} on 1,000 test digits" in net.model_label.text()
    x, y = net.curve_test.getData()
    assert list(x) == [1] and y[0] == pytest.approx(100 * cnn.train_history[0]["test_acc_quant"])

    # the plan of 3 groups is drawn: table, mosaic colours, legend
    plan = net.preview
    assert plan.groups == 3 and net.plan_table.rowCount() == len(plan.tiles) == 15
    assert net.plan_table.item(0, 2).text() == "0"
    img, cols = net.plan_view.image, win.s.geometry.cols
    assert img.shape == (128, 8 * cols + 7 * GAP, 3)
    labels = plan.label_map()
    for pe in (0, 2, 4, 6):
        r, c = np.argwhere(labels[pe] != "")[0]
        assert list(img[r, pe * (cols + GAP) + c]) == rgb(tag_color(labels[pe, r, c]))
    assert list(img[0, 7 * (cols + GAP)]) == rgb(FC_COLOR)
    assert "c1 · G3" in net.legend.text() and "fc · shared" in net.legend.text()
    assert "planned, not transferred" in net.mosaic_title.text()
    net.groups.setValue(1)
    assert net.plan_table.rowCount() == len(net.preview.tiles) and net.preview.groups == 1

    # transfer with 2 groups: buttons while running, summary per layer, map, record
    seen = []
    win.s.job_started.connect(lambda n: seen.append((n, net.transfer_btn.isEnabled(), net.train_btn.isEnabled(),
                                                     win.abort_btn.isEnabled())))
    transfer(qtbot, win, 2)
    assert seen == [("weight transfer", False, False, True)]
    rep = net.report
    s = rep.summary()
    assert net.bar.value() == 1000 and "done" in net.eta.text()
    assert [net.summary.item(i, 0).text() for i in range(3)] == ["c1", "c3", "fc"]
    assert net.summary.item(1, 2).text() == f"{s['weight_rms_error_levels']['c3']:.3f}"
    assert net.summary.item(2, 1).text() == f"{100 * (1 - s['out_of_band_fraction']['fc']):.2f} %"
    assert f"{100 * s['program']['in_band_fraction']:.2f} % in band" in net.summary_label.text()
    assert s["program"]["in_band_fraction"] > 0.98
    assert "transferred" in net.mosaic_title.text() and "not" not in net.mosaic_title.text()
    assert cnn.hw is not None and cnn.plan.groups == 2 and cnn.hw.adc_fs["c1"] > 0
    used = cnn.plan.label_map() != ""
    assert np.isfinite(win.s.g_map[used]).all() and np.isnan(win.s.g_map[~used]).all()
    with RunRecord.open(net.out) as rec:
        assert rec.kind == "mcnn" and rec.status == "transferred"     # resumable by `hil hybrid --run`
        assert "model/c1" in rec.datasets() and rec.group_attrs("plan")["plan"]["groups"] == 2
    assert win.panels["convolver"].run_btn.isEnabled() and win.panels["hybrid"].start_btn.isEnabled()
    # hovering the mosaic names what the cell holds
    tile = cnn.plan.tiles_for("fc")[0]
    net.plan_view.hovered.emit(tile.pe, tile.row0, tile.col0 + 1)
    assert f"PE {tile.pe} · row {tile.row0}" in net.hover_label.text()
    assert "fc · shared FC" in net.hover_label.text() and "negative cell" in net.hover_label.text()
    n, r, c = cnn.plan.geometry.shape
    assert net.plan_view.cell_at(tile.pe * (c + 3) + tile.col0 + 1.5, tile.row0 + 0.5) == (tile.pe, tile.row0,
                                                                                          tile.col0 + 1)

    # the record holds the model: load it back
    old = cnn.model
    assert net.load_model(net.out)
    wait_idle(qtbot, win)
    assert cnn.model is not old and "loaded from" in net.model_label.text()
    np.testing.assert_array_equal(cnn.model.weight_levels("fc"), old.weight_levels("fc"))
    assert cnn.hw is None and not win.panels["hybrid"].start_btn.isEnabled()   # new model: not on the chip
    assert errors == []


def test_small_chip_shows_that_the_network_does_not_fit(qtbot, make_window, errors):
    w = cnn_window(make_window, geometry="small")
    net = train(qtbot, w)
    assert net.preview is None and not net.plan_error.isHidden()
    assert "does not fit" in net.plan_error.text() and "2 PEs of 16x8" in net.plan_error.text()
    assert "does not fit" in net.mosaic_title.text() and net.plan_table.rowCount() == 0
    assert not net.transfer_btn.isEnabled() and "does not fit" in net.transfer_btn.toolTip()
    assert not net.start_transfer()
    assert errors[-1][0] == "Invalid settings" and "fewer groups or a larger chip" in errors[-1][1]


# ---- 6 convolver -----------------------------------------------------------------------------
def test_convolver_shows_hardware_software_and_difference_per_group(win, qtbot, errors):
    conv = win.panels["convolver"]
    assert not conv.run_btn.isEnabled()
    train(qtbot, win)
    assert conv.index.maximum() == 999
    transfer(qtbot, win, 2)
    cnn = conv.cnn
    assert [conv.group.itemText(i) for i in range(conv.group.count())] == ["convolver G1", "convolver G2"]
    conv.index.setValue(3)
    assert conv.run()
    wait_idle(qtbot, win)
    x = cnn.dataset.x_test[3]
    soft = cnn.model.features(x[None], "c1")[0]
    hw2 = cnn.hw.conv("c1", 1, x[None, None].astype(np.int64))[0]
    for k in (0, 7):
        np.testing.assert_array_equal(conv.images["software"][k].image, soft[k])
    np.testing.assert_array_equal(conv.images["hardware"][0].image, conv.result["groups"][0]["c1"][0])
    d = conv.result["groups"][0]["c1"] - soft
    np.testing.assert_array_equal(conv.images["difference"][5].image, d[5])
    assert np.abs(d).mean() < 0.2 * soft.mean()                    # device error, not a different network
    conv.group.setCurrentIndex(1)
    np.testing.assert_allclose(conv.images["hardware"][2].image, hw2[2], atol=3)   # re-read noise: a few codes
    assert conv.row_titles["hardware"].text == "chip G2"
    y = int(cnn.dataset.y_test[3])
    soft_pred = int(cnn.model.predict(x[None])[0])
    assert f"label <b>{y}</b>" in conv.pred_text.text() and f"software: <b>{soft_pred}</b>" in conv.pred_text.text()
    assert f"chip G2: <b>{conv.result['groups'][1]['pred']}</b>" in conv.pred_text.text()
    assert conv.group_table.rowCount() == 2 and conv.group_table.item(1, 0).text() == "G2"
    assert "chip G2 vs software" in conv.stats.text()
    # another digit: software maps at once, chip maps cleared until run again
    conv.index.setValue(4)
    assert conv.result is None and conv.images["hardware"][0].image is None
    np.testing.assert_array_equal(conv.images["software"][1].image, cnn.model.features(cnn.dataset.x_test[4][None], "c1")[0, 1])
    assert "not run for this digit" in conv.pred_text.text()
    assert errors == []


# ---- 7 hybrid training -----------------------------------------------------------------------
def wilson_text(acc: float, n: int) -> str:
    """How the GUI shows an accuracy measured on `n` images: value and Wilson 95% interval."""
    iv = wilson(round(acc * n), n)
    return f"{100 * acc:.2f}% [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]"


def setup_hybrid(win, qtbot, epochs, groups):
    train(qtbot, win)
    transfer(qtbot, win, groups)
    hyb = win.panels["hybrid"]
    hyb.fraction.setValue(0.025)            # 100 digits: one mini-batch per epoch
    hyb.epochs.setValue(epochs)
    hyb.test_images.setValue(50)
    hyb.lr.setValue(0.1)
    return hyb


def test_hybrid_training_live_curves_bars_and_paper_table(win, qtbot, errors):
    hyb = win.panels["hybrid"]
    assert not hyb.start_btn.isEnabled() and not hyb.stop_btn.isEnabled()
    hyb = setup_hybrid(win, qtbot, 2, 2)
    assert hyb.mode.itemText(0) == "G1–G2 (dispatched)" and hyb.selected_groups() == [0, 1]
    states = []
    win.s.job_started.connect(lambda n: states.append((hyb.start_btn.isEnabled(), hyb.stop_btn.isEnabled())))
    assert hyb.start()
    wait_idle(qtbot, win)
    assert states == [(False, True)]
    assert hyb.start_btn.isEnabled() and not hyb.stop_btn.isEnabled()
    h = hyb.history
    assert [r["epoch"] for r in h] == [0, 1, 2]
    x, y = hyb.curve_test.getData()
    np.testing.assert_allclose(y, [100 * r["acc_test"] for r in h])
    x, y = hyb.curve_loss.getData()
    assert list(x) == [1, 2] and np.all(y > 0)
    before = hyb.bars_before.opts["height"]
    after = hyb.bars_after.opts["height"]
    np.testing.assert_allclose(before, [100 * h[0]["acc_g1"], 100 * h[0]["acc_g2"]])
    np.testing.assert_allclose(after, [100 * h[-1]["acc_g1"], 100 * h[-1]["acc_g2"]])
    # every accuracy in the table: its Wilson 95% interval and the number of test images
    rows = {hyb.table.item(i, 0).text(): tuple(hyb.table.item(i, j).text() for j in (1, 2, 3))
            for i in range(hyb.table.rowCount())}
    assert rows["transfer, parallel"][:2] == (wilson_text(h[0]["acc_test"], 50), "50")
    assert rows["hybrid (2 ep.), parallel"] == (wilson_text(h[-1]["acc_test"], 50), "50", "95.83 %")
    assert rows["software (quantized)"] == (wilson_text(win.panels["network"].cnn.software_acc, 1000), "1,000",
                                            "97.99 %")
    assert rows["G2 transfer"] == (wilson_text(h[0]["acc_g2"], 50), "50", "train 93.57 %")
    assert rows["G2 hybrid"] == (wilson_text(h[-1]["acc_g2"], 50), "50", "train 95.78 %")
    assert "finished 2 epoch(s)" in hyb.phase.text()
    assert f"test {wilson_text(h[-1]['acc_test'], 50)} on 50 images" in hyb.phase.text()
    assert hyb.message.text() == f"record {hyb.out}"
    assert hyb.out == win.panels["network"].out                 # continues the transfer's record
    with RunRecord.open(hyb.out) as rec:
        assert rec.status == "hybrid-trained"
        assert list(rec.table("hybrid/epochs")["epoch"]) == [0, 1, 2]
        assert rec.group_attrs("hybrid")["stage_config"]["hybrid"]["epochs"] == 2
    assert errors == []


def test_hybrid_training_stops_mid_run(win, qtbot, errors, monkeypatch):
    hyb = setup_hybrid(win, qtbot, 6, 1)
    gate, calls = threading.Event(), []
    orig = hil.yao2020.hybrid.softmax

    def held(z):                       # one call per mini-batch (= epoch): hold the job in epoch 3
        calls.append(1)
        if len(calls) == 3:
            gate.wait(10)
        return orig(z)
    monkeypatch.setattr(hil.yao2020.hybrid, "softmax", held)
    outcomes = []
    win.s.job_finished.connect(lambda name, outcome: outcomes.append(outcome))
    assert hyb.start()
    qtbot.waitUntil(lambda: len(calls) >= 3, timeout=20_000)
    assert hyb.stop_btn.isEnabled() and not hyb.start_btn.isEnabled()
    qtbot.mouseClick(hyb.stop_btn, Qt.LeftButton)
    gate.set()
    wait_idle(qtbot, win)
    assert outcomes == ["cancelled"] and win.s.last_abort_stop_s < 0.5
    assert [r["epoch"] for r in hyb.history] == [0, 1, 2]
    assert "stopped after 2 epoch(s)" in hyb.phase.text() and "stopped" in hyb.message.text()
    assert hyb.start_btn.isEnabled() and not hyb.stop_btn.isEnabled()
    with RunRecord.open(hyb.out) as rec:
        assert rec.status == "stopped" and rec.marks[-1]["event"] == "stopped"
        assert list(rec.table("hybrid/epochs")["epoch"]) == [0, 1, 2]
    assert errors == []


def test_programming_over_the_weights_takes_the_network_off_the_chip(win, qtbot, errors, tmp_path):
    train(qtbot, win)
    transfer(qtbot, win, 1)
    assert win.panels["convolver"].run_btn.isEnabled()
    prog = win.panels["programming"]
    prog.folder.setText(str(tmp_path / "runs"))
    prog.pes.setText("0")
    assert prog.start()
    wait_idle(qtbot, win)
    assert win.panels["network"].cnn.hw is None
    assert not win.panels["convolver"].run_btn.isEnabled() and not win.panels["hybrid"].start_btn.isEnabled()
    assert "planned, not transferred" in win.panels["network"].mosaic_title.text()
