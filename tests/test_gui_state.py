"""One chip model shared by every tab (issue 12, problem 1), the menu bar and keys, and Ctrl+C
in the launching terminal: real jobs on small simulated chips, asserting on what is displayed."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import logging
import signal
import threading

import numpy as np
import pytest
from PySide6.QtCore import Qt

from hil import __version__
from hil.geometry import Cells
from hil.limits import Op
from hil.runstore import RunRecord

from gui.app import close_on_sigint
from test_gui import program, wait_idle


@pytest.fixture
def small(make_window):
    return make_window(seed=3, geometry="small")


def test_experiments_warn_of_targets_rewritten_by_the_cnn_and_retarget(make_window, qtbot, errors, caplog):
    """Program PE 0, then train and transfer the CNN (1 group, which rewrites PE 0): the
    Experiments tab says what is on the chip, refuses to compare against the old targets, re-targets
    to the CNN weights; the drift says it moved the clock; Station shows the crossbar's counters;
    Hybrid no longer says 'transfer first'."""
    w = make_window(seed=5, geometry="yao")
    w.panels["convolver"].auto.setChecked(False)
    w.resize(1480, 940)
    size0 = w.size()
    prog = program(qtbot, w, "0")
    exp, hyb = w.panels["experiments"], w.panels["hybrid"]
    assert exp.target.record == prog.out and exp.dr_btn.isEnabled()
    assert "Transfer the network" in hyb.phase.text()
    net = w.panels["network"]
    net.fraction.setValue(0.05)
    net.epochs.setValue(1)
    assert net.train()
    wait_idle(qtbot, w, 60_000)
    net.groups.setValue(1)
    assert net.start_transfer()
    wait_idle(qtbot, w, 60_000)
    assert errors == [] and w.size() == size0          # the window did not widen itself after the transfer
    tw = w.s.chip.write_of(net.out, "transfer")
    assert tw is not None and np.isin(prog.plan.flat, tw.flat).any()
    # the summary is the chip's, not the old programming run's
    assert "CNN weights" in exp.cells_label.text()
    live = np.setdiff1d(prog.plan.flat, tw.flat).size
    assert (f"{live:,} cells on PE 0 · programming run" in exp.cells_label.text() if live else
            "programming run" not in exp.cells_label.text())
    stale = np.intersect1d(prog.plan.flat, tw.flat).size
    assert exp.stale_label.isVisibleTo(exp) and f"{stale:,} of {prog.plan.flat.size:,} cells" in exp.stale_label.text()
    assert "CNN weights" in exp.stale_label.text()
    assert not exp.dr_btn.isEnabled() and "stale" in exp.dr_btn.toolTip()
    assert not exp.start_drift() and "stale" in errors[-1][1]
    assert exp.retarget_btn.isVisibleTo(exp)
    exp.retarget()
    assert exp.target is tw and not exp.stale_label.isVisibleTo(exp) and exp.dr_btn.isEnabled()
    assert "ready: the network is on the chip" in hyb.phase.text()
    # drift on the CNN weights: compared against the transfer targets, the clock jump is announced
    errors.clear()
    exp.days.setValue(30.0)
    assert "every cell on the chip ages" in exp.clock_note.text()
    with caplog.at_level(logging.WARNING, logger="gui.chipstate"):
        assert exp.start_drift()
        wait_idle(qtbot, w, 60_000)
    assert errors == []
    g0 = exp.result.snapshots[next(iter(exp.result.snapshots))]
    first_in_band = np.mean(np.abs(g0 - tw.plan.targets_s) <= tw.plan.tolerance_s)
    assert first_in_band > 0.9                    # the CNN weights against their own targets
    _, y = exp.dr_view.curve.getData()
    assert y[0] == pytest.approx(100 * first_in_band)
    assert any("drift advanced the station clock by 30 d" in r.getMessage() for r in caplog.records)
    assert "advanced the station clock" in w.statusBar().currentMessage()
    assert "station clock 30 d" in w.clock_label.text()
    with RunRecord.open(exp.out) as rec:
        assert rec.group_attrs("experiment")["targets_record"] == str(net.out)
    # Station: clock and counters read from the crossbar
    st = w.panels["station"]
    counters = w.s.xbar.describe()["counters"]
    assert counters["pulses"] > 10_000
    assert f"pulses {counters['pulses']:,}" in st.chip_label.text()
    assert "station clock 30 d" in st.chip_label.text()
    keys = [st.identity.topLevelItem(i).text(0) for i in range(st.identity.topLevelItemCount())]
    item = st.identity.topLevelItem(keys.index("counters"))
    pulses = [item.child(i).text(1) for i in range(item.childCount()) if item.child(i).text(0) == "pulses"]
    assert pulses == [str(counters["pulses"])]


def test_cell_history_covers_manual_rewrite_and_clears_on_station_switch(small, qtbot, errors):
    w = small
    prog = program(qtbot, w)
    amap, ops = w.panels["arraymap"], w.panels["cellops"]
    flat = int(prog.plan.flat[5])
    w.s.select_cells(Cells.from_flat([flat], w.s.geometry))
    tl = amap.timeline
    n_prog = len(tl.points)
    assert tl.target_s == pytest.approx(prog.plan.targets_s[5]) and "target" in amap.hist_info.text()
    # a manual RESET rewrites the cell: the history goes on, the target is gone
    ops.do_pulse(Op.RESET)
    wait_idle(qtbot, w)
    _, _, after = ops.last_result
    tl = amap.timeline
    assert len(tl.points) == n_prog + 1 and tl.points[-1].g_s == pytest.approx(after[0])
    assert tl.points[-1].pulse == tl.points[-2].pulse + 1 and tl.target_s is None
    assert f"now {after[0] * 1e6:.2f} µS" in amap.hist_info.text()
    assert "last written by manual RESET" in amap.hist_info.text() and "target" not in amap.hist_info.text()
    x, y = amap.g_curve.getData()
    assert y[-1] == pytest.approx(after[0]) and x[-1] == tl.points[-1].pulse
    # R and I views, log scale
    amap.quantity.setCurrentText("R (resistance)")
    assert amap.g_curve.getData()[1][-1] == pytest.approx(1 / after[0])
    amap.quantity.setCurrentText("I (read current)")
    assert amap.g_curve.getData()[1][-1] == pytest.approx(after[0] * w.s.xbar.v_read_default)
    amap.log_y.setChecked(True)
    assert amap.g_plot.getPlotItem().ctrl.logYCheck.isChecked()
    # the Experiments tab sees the manual write too
    exp = w.panels["experiments"]
    assert "1 of 128 cells" in exp.stale_label.text() and "manual RESET" in exp.stale_label.text()
    # another station: nothing of the old chip is shown
    st = w.panels["station"]
    st.set_choice("sim", 4, "small")
    assert st.connect_station()
    qtbot.waitUntil(lambda: w.s.connected and not w.s.busy, timeout=10_000)
    w.s.select_cells(Cells.from_flat([flat], w.s.geometry))
    assert w.s.run_path is None and amap.timeline.points == []
    assert "No reads of this cell on this chip" in amap.hist_info.text()
    assert amap.g_curve.getData()[0] is None or len(amap.g_curve.getData()[0]) == 0
    assert "Nothing programmed" in exp.cells_label.text() and exp.target is None


def test_menu_bar_tab_keys_about_and_quit(small, qtbot):
    w = small
    menus = [a.text() for a in w.menuBar().actions()]
    assert menus == ["&File", "&View", "&Help"]
    file_items = [a.text() for a in w.menuBar().actions()[0].menu().actions() if a.text()]
    assert file_items == ["&Open run…", "Save &screenshots…", "&Quit"]
    assert w.quit_action.shortcut().toString() == "Ctrl+Q"
    assert [a.shortcut().toString() for a in w.tab_actions[:9]] == [f"Ctrl+{i}" for i in range(1, 10)]
    qtbot.keyClick(w, Qt.Key_3, Qt.ControlModifier)
    assert w.tabs.currentIndex() == 2
    qtbot.keyClick(w, Qt.Key_8, Qt.ControlModifier)
    assert w.tabs.tabText(w.tabs.currentIndex()) == "8 Experiments"
    assert __version__ in w.about_text()
    xbar = w.s.xbar
    qtbot.keyClick(w, Qt.Key_Q, Qt.ControlModifier)
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=5000)
    assert w.s.xbar is None and xbar._closed


def test_ctrl_c_in_the_terminal_aborts_the_job_and_closes_safely(small, qtbot, monkeypatch):
    w = small
    xbar = w.s.xbar
    safe_calls, calls, released = [], [], threading.Event()
    monkeypatch.setattr(xbar, "_safe", lambda: safe_calls.append(1))
    orig_read, orig_abort = xbar._read, w.s.abort

    def held_read(cells, v, n):          # the job waits inside its 3rd verify iteration until aborted
        calls.append(len(cells))
        if len(calls) == 4:
            released.wait(10)
        return orig_read(cells, v, n)

    def abort(reason="aborted"):
        done = orig_abort(reason)
        released.set()
        return done
    monkeypatch.setattr(xbar, "_read", held_read)
    monkeypatch.setattr(w.s, "abort", abort)
    restore = close_on_sigint(w)
    try:
        w.panels["programming"].pes.setText("0,1")
        assert w.panels["programming"].start()
        qtbot.waitUntil(lambda: len(calls) >= 4, timeout=10_000)
        job = w.s.job
        os.kill(os.getpid(), signal.SIGINT)
        qtbot.waitUntil(lambda: not w.isVisible(), timeout=10_000)
    finally:
        restore()
    assert w.s.xbar is None and xbar._closed
    assert job.isFinished() and job.outcome == "cancelled"     # stopped before the station closed
    assert safe_calls                    # aborted: outputs made safe before the station closed
    with RunRecord.open(w.panels["programming"].out) as rec:
        assert rec.status == "stopped"
