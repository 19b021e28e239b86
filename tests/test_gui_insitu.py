"""GUI tests of the In-situ training tab (Wang 2019), pytest-qt offscreen, on the simulated
128 x 64 station stations/sim-wang.toml: the yield map and its counts against the record, a few
CNN batches drawn from the record (curves, conductance map, gate-voltage histogram), the
ConvLSTM's three per-step accuracy curves, abort with Esc within a bounded number of batches
(record "stopped") and Resume continuing the same record, and a Yao station refused in one line."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from hil.runstore import RunRecord, read_content
from hil.wang2019 import insitu
from hil.wang2019.yield_scan import YieldMap

from gui.panels.insitu import CKPT_G, CKPT_VG, yield_image
from test_gui_cnn import wilson_text

STATION = Path(__file__).resolve().parents[1] / "stations" / "sim-wang.toml"


@pytest.fixture
def win(make_window, qtbot):
    w = make_window(seed=0, geometry="wang")
    st = w.panels["station"]
    st.set_choice(str(STATION))
    assert st.connect_station()
    qtbot.waitUntil(lambda: w.s.connected and not w.s.busy and w.s.station_spec == str(STATION), timeout=10_000)
    w.show_panel("insitu")
    return w


def wait_idle(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.s.busy, timeout=timeout)


def scan(qtbot, w):
    p = w.panels["insitu"]
    assert not p.start_btn.isEnabled() and "yield scan first" in p.start_btn.toolTip()
    assert p.run_yield_scan()
    wait_idle(qtbot, w)
    return p


def small_run(p, net="cnn", train=150, batch=50, test=100, every=1):
    p.net.setCurrentIndex(p.net.findData(net))
    p.epochs.setValue(1)
    p.batch.setValue(batch)
    p.train_samples.setValue(train)
    p.test_samples.setValue(test)
    p.eval_every.setValue(every)


def n_points(curve) -> int:
    x, _ = curve.getData()
    return 0 if x is None else len(x)


def batches(path, net="cnn") -> dict:
    with RunRecord.open(path) as rec:
        return rec.table(f"insitu/{net}/batches"), rec.status


def test_yield_scan_shows_the_map_with_its_counts(win, qtbot, errors):
    p = scan(qtbot, win)
    with RunRecord.open(p.out) as rec:
        assert rec.status == "scanned"
        m = YieldMap.from_record(rec)
    assert not m.rows.all() and not m.cols.all()                    # the chip has dead lines
    n_rows, n_cols = int(m.rows.sum()), int(m.cols.sum())
    assert f"{n_rows}/128 rows, {n_cols}/64 columns good" in p.yield_title.text()
    assert f"good rows {n_rows}/128 · good columns {n_cols}/64" in p.yield_label.text()
    img = p.yield_img.image
    assert img.shape == (128, 64, 3) and np.array_equal(img, yield_image(m))
    bad = np.all(img == img[~m.rows][0][0], axis=2)                  # the bad-line colour
    assert np.flatnonzero(bad.all(axis=1)).tolist() == np.flatnonzero(~m.rows).tolist()
    assert np.flatnonzero(bad.all(axis=0)).tolist() == np.flatnonzero(~m.cols).tolist()
    assert int((~bad).sum()) == n_rows * n_cols
    assert np.allclose(p.g_img.image, 1e6 * m.g_reset_s, atol=1e-3)    # the scan's last read, µS
    assert p.start_btn.isEnabled() and errors == []


def test_cnn_batches_update_curves_map_and_histogram(win, qtbot, errors):
    p = scan(qtbot, win)
    g_scan = np.array(p.g_img.image, float)
    small_run(p)
    assert p.start()
    wait_idle(qtbot, win)
    assert errors == []
    t, status = batches(p.out)
    assert status == "trained" and list(t["batch"]) == [1, 2, 3]
    x, y = p.loss_curve.getData()
    assert list(x) == [1, 2, 3] and np.allclose(y, t["loss"])
    x, y = p.acc_curves[0].getData()
    assert list(x) == [1, 2, 3] and np.allclose(y, 100 * t["test_acc"])
    assert n_points(p.acc_curves[1]) == n_points(p.acc_curves[2]) == 0
    assert "batch 3" in p.g_title.text() and "finished 3 batches" in p.status.text()
    assert f"test {wilson_text(t['test_acc'][-1], 100)} on 100 samples" in p.status.text()
    assert f"{int(t['pulses_total'][-1]):,} pulses" in p.status.text()
    # the map shows the last checkpoint at the placed cells and the yield scan's read elsewhere
    with RunRecord.open(p.out) as rec:
        ckpt = rec.dataset("insitu/cnn/checkpoint")[0]
        rows = np.concatenate([rec.dataset(f"insitu/cnn/placement/{n}/rows")[0].reshape(-1, 4)
                               for n in ("conv1", "conv2", "dense")])
        cols = np.concatenate([rec.dataset(f"insitu/cnn/placement/{n}/cols")[0].reshape(-1, 4)
                               for n in ("conv1", "conv2", "dense")])
    shown = np.array(p.g_img.image, float)
    assert np.allclose(shown[rows, cols], 1e6 * ckpt[:, CKPT_G], rtol=1e-6)
    other = np.ones(shown.shape, bool)
    other[rows, cols] = False
    assert np.allclose(shown[other], g_scan[other])
    assert not np.allclose(shown[rows, cols], g_scan[rows, cols])
    assert np.allclose(win.s.g_map[0][rows, cols], ckpt[:, CKPT_G])        # the Array map tab too
    edges, counts = p.vg_curve.getData()
    assert counts.sum() == rows.size == 4060
    assert np.array_equal(counts, np.histogram(ckpt[:, CKPT_VG], bins=edges)[0])
    # the CNN of this record is trained: Start refuses it, the ConvLSTM may follow on the array
    assert not p.start_btn.isEnabled() and "already holds a CNN" in p.start_btn.toolTip()
    assert p.start_why.text() == p.start_btn.toolTip()
    assert not p.start() and "already holds a CNN" in errors[-1][1]
    errors.clear()
    small_run(p, "convlstm", train=100, test=60)
    assert p.start_btn.isEnabled()
    assert p.start()
    wait_idle(qtbot, win)
    assert errors == []
    t, _ = batches(p.out, "convlstm")
    for step, curve in enumerate(p.acc_curves):
        x, y = curve.getData()
        assert list(x) == [1, 2] and np.allclose(y, 100 * t[f"test_acc_{step + 1}"])
    title = p.acc_plot.getPlotItem().titleLabel.text
    assert "after frame" in title and all(f"</span> {k}" in title for k in (1, 2, 3))
    assert not p.paper_line.isVisible()
    assert p.vg_curve.getData()[1].sum() == 3400


def test_abort_with_escape_stops_then_resume_continues_the_record(win, qtbot, errors, monkeypatch):
    p = scan(qtbot, win)
    gate, calls = threading.Event(), []
    orig = insitu.ArrayNetwork.update

    def held(self, deltas):
        calls.append(1)
        if len(calls) == 3:                  # hold the job inside batch 3's update
            gate.wait(10)
        return orig(self, deltas)
    monkeypatch.setattr(insitu.ArrayNetwork, "update", held)
    outcomes = []
    win.s.job_finished.connect(lambda name, outcome: outcomes.append(outcome))
    small_run(p, train=500, every=5)                                    # 10 batches
    assert p.start()
    try:
        qtbot.waitUntil(lambda: len(calls) >= 3 and n_points(p.loss_curve) >= 1, timeout=30_000)
        live, row, (rows, cols) = np.array(p.g_img.image, float), p.rows[-1], p._live.cells    # drawn live
        assert p.stop_btn.isEnabled() and not p.start_btn.isEnabled() and not p.resume_btn.isEnabled()
        win.activateWindow()
        qtbot.keyClick(win, Qt.Key_Escape)
        assert win.s.cancel_token.cancelled
    finally:
        gate.set()
    wait_idle(qtbot, win)
    assert row["batch"] < 3 and np.isclose(live[rows, cols].mean(), 1e6 * row["g_mean_s"])
    assert outcomes == ["cancelled"]
    t, status = batches(p.out)
    assert status == "stopped" and list(t["batch"]) == [1, 2, 3]      # batch 3 finishes, 4 never starts
    assert list(p.loss_curve.getData()[0]) == [1, 2, 3]
    assert "stopped after batch 3/10" in p.status.text() and "batch 4" in p.status.text()
    assert p.resume_btn.isEnabled() and not p.start_btn.isEnabled()
    monkeypatch.setattr(insitu.ArrayNetwork, "update", orig)
    first = p.out
    assert p.resume()
    wait_idle(qtbot, win)
    assert outcomes[-1] == "done" and p.out == first and errors == []
    t, status = batches(first)
    assert status == "trained" and list(t["batch"]) == list(range(1, 11))
    with RunRecord.open(first) as rec:
        assert sum(m["event"] == "resumed" for m in rec.marks) == 2       # by the training, by Resume
    x, y = p.loss_curve.getData()
    assert list(x) == list(range(1, 11)) and np.allclose(y, t["loss"])
    assert not p.resume_btn.isEnabled() and "finished 10 batches (resumed at batch 3)" in p.status.text()


def test_yao_station_disables_the_panel_with_the_reason(make_window, errors):
    w = make_window(seed=0, geometry="yao")
    p = w.panels["insitu"]
    assert not p.yield_btn.isEnabled() and not p.start_btn.isEnabled() and not p.resume_btn.isEnabled()
    text = p.reason.text()
    assert p.reason.isVisibleTo(p) and "\n" not in text
    assert "Wang-geometry station (1 PE of 128 × 64)" in text and "8 PEs of 128 × 16 (yao)" in text
    assert p.start_btn.toolTip() == text and not p.start_why.isVisibleTo(p)
    assert not p.run_yield_scan() and errors[-1][1] == text


def test_too_few_good_lines_refuse_start_with_the_reason(make_window, qtbot, errors):
    w = make_window(seed=0, geometry="wang")          # the Yao device on the Wang geometry: no cell passes
    p = w.panels["insitu"]
    assert p.station_reason() == "" and p.yield_btn.isEnabled()
    p = scan(qtbot, w)
    assert "good rows 0/128 · good columns 0/64" in p.yield_label.text()
    for net in ("cnn", "convlstm"):
        p.net.setCurrentIndex(p.net.findData(net))
        why = p.start_btn.toolTip()
        assert not p.start_btn.isEnabled() and "does not fit the good lines of PE 0 (0 rows, 0 columns)" in why
        assert "\n" not in why and p.start_why.isVisibleTo(p) and p.start_why.text() == why
    assert not p.start() and errors[-1][1] == why


def test_screenshot_session_on_the_wang_station_trains_in_situ(qapp, tmp_path, settings, errors, monkeypatch):
    """`hil gui --screenshot DIR --station stations/sim-wang.toml`: the scripted programming runs with
    the write-verify defaults capped at the file's 2 V RESET limit (and says so), and the In-situ tab
    holds a finished short training when the panels are rendered."""
    from gui.app import screenshot_session
    from gui.mainwindow import MainWindow

    seen = {}
    save = MainWindow.save_screenshots

    def spy(self, folder):
        p, prog = self.panels["insitu"], self.panels["programming"]
        seen.update(status=p.status.text(), rows=len(p.rows), out=p.out, note=prog.policy_note.text(),
                    note_shown=not prog.policy_note.isHidden(),
                    policy=read_content(prog.out).attrs["/programming"]["policy"])
        return save(self, folder)

    monkeypatch.setattr(MainWindow, "save_screenshots", spy)
    assert screenshot_session(tmp_path / "shots", station=str(STATION), settings=settings, size=(1280, 800)) == 0
    assert errors == []
    assert seen["status"].startswith("finished 20 batches") and seen["rows"] == 20
    assert read_content(seen["out"]).attrs["/"]["status"] == "trained"
    assert seen["note_shown"] and "reset_v_sl_max 2.2 V → 2 V (limits.RESET.max_v)" in seen["note"]
    assert seen["policy"]["reset_v_sl_max"] == 2.0 and seen["policy"]["set_gate_max"] == 2.2
    assert (tmp_path / "shots" / "11-insitu.png").stat().st_size > 10_000
