"""GUI tests (pytest-qt, offscreen): every phase-1 panel driven through real jobs on a small
simulated chip, asserting on displayed values, plot data and enabled states."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from hil.cli import main as hil_main
from hil.errors import BackendError, ConfigError, SafetyViolation
from hil.geometry import Cells, Geometry
from hil.limits import Op
from hil.runstore import RunRecord

from hil.ops.iv import iv_sweep, sweep_voltages
from gui.mainwindow import PANELS, MainWindow
from gui.panels.experiments import drift_times
from gui.panels.programming import parse_pes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = Geometry(2, 16, 8, "small")
US_PER_S = 1e6


@pytest.fixture
def win(make_window):
    return make_window(seed=3, geometry="small", timeout_ms=5000)


def wait_idle(qtbot, w, timeout=30_000):
    qtbot.waitUntil(lambda: not w.s.busy, timeout=timeout)


def program(qtbot, w, pes="0"):
    p = w.panels["programming"]
    p.pes.setText(pes)
    assert p.start()
    wait_idle(qtbot, w)
    return p


# ---- 1 station -------------------------------------------------------------------------------
def test_station_connect_shows_identity_limits_and_state(win, qtbot, errors):
    st = win.panels["station"]
    assert "Connected" in st.state.text()
    assert "CONNECTED" in win.conn_label.text() and "small" in win.conn_label.text()
    assert "2 PEs × 16 rows × 8 columns = 256 cells" in st.geometry_label.text()
    assert st.limits.item(1, 0).text() == "3.00"            # SET max |V|
    assert st.limits.item(2, 1).text() == "5.50"            # RESET max gate
    keys = [st.identity.topLevelItem(i).text(0) for i in range(st.identity.topLevelItemCount())]
    assert {"geometry", "limits", "backend", "seed"} <= set(keys)
    assert not st.connect_btn.isEnabled() is False and st.disconnect_btn.isEnabled()
    assert not win.abort_btn.isEnabled()
    assert win.s.disconnect_station()
    assert "DISCONNECTED" in win.conn_label.text()
    assert not st.disconnect_btn.isEnabled()
    assert not win.panels["arraymap"].read_btn.isEnabled()
    assert not win.panels["programming"].start_btn.isEnabled()
    assert not win.panels["cellops"].read_g.button.isEnabled()
    assert errors == []


def test_missing_station_file_shows_dialog(win, qtbot, errors, tmp_path):
    st = win.panels["station"]
    st.set_choice(str(tmp_path / "nope.toml"))
    st.connect_station()
    qtbot.waitUntil(lambda: bool(errors) and not win.s.busy, timeout=5000)
    title, text = errors[-1]
    assert title == "Invalid settings" and "nope.toml" in text
    assert win.s.connected                       # the old station stays connected


# ---- 2 array map -----------------------------------------------------------------------------
def test_array_map_read_hover_and_selection(win, qtbot):
    amap = win.panels["arraymap"]
    qtbot.mouseClick(amap.read_btn, Qt.LeftButton)
    wait_idle(qtbot, win)
    g = win.s.g_map
    assert np.isfinite(g).all() and g.shape == SMALL.shape
    np.testing.assert_allclose(amap.map.image_data(1), g[1] * US_PER_S, rtol=1e-6)
    assert "256 of 256 cells read" in amap.stats.text()
    amap._hover(1, 3, 2)
    assert amap.hover.text().startswith("PE 1 · row   3 · col   2") and f"{g[1, 3, 2] * US_PER_S:7.3f} µS" in amap.hover.text()

    # a real mouse click on PE 0, row 5, col 6 of the rendered map
    qtbot.wait(50)
    vb = amap.map.views[0]
    scene_pt = vb.mapViewToScene(QPointF(6.5, 5.5))
    pos = amap.map.mapFromScene(scene_pt)
    qtbot.mouseClick(amap.map.viewport(), Qt.LeftButton, pos=pos)
    qtbot.waitUntil(lambda: win.s.selection[0, 5, 6], timeout=2000)
    assert win.s.selection.sum() == 1
    assert amap.sel_label.text() == "PE 0 · row 5 · col 6"
    assert amap.map.overlays[0].image[5, 6, 3] > 0 and amap.map.overlays[0].image[5, 5, 3] == 0

    amap.mode_box.setCurrentIndex(2)                       # row
    amap.map.click(1, 4, 0, False)
    assert win.s.selection[1, 4].all() and win.s.selection.sum() == SMALL.cols
    amap.mode_box.setCurrentIndex(3)                       # column
    amap.map.click(0, 0, 2, True)                          # add
    assert win.s.selection.sum() == SMALL.cols + SMALL.rows
    amap.map.select_rectangle(0, 2, 4, 1, 3)               # 3 x 3
    assert win.s.selection.sum() == 9
    assert "rows 2–4 · cols 1–3" in amap.sel_label.text()

    amap.lo.setValue(5.0)
    amap.hi.setValue(15.0)
    assert amap.map.bar.levels() == pytest.approx((5.0, 15.0))
    assert amap.map.images[0].levels == pytest.approx([5.0, 15.0])


def test_cell_history_from_the_programming_run(win, qtbot):
    p = program(qtbot, win)
    amap = win.panels["arraymap"]
    flat = p.plan.flat[37]
    c = Cells.from_flat([flat], SMALL)
    win.s.select_cells(c)
    h = amap.history
    assert h is not None and h.verify_iter.size >= 1 and h.n_pulses == h.verify_iter.size - 1
    x, y = amap.g_curve.getData()                           # siemens against pulses applied
    np.testing.assert_allclose(y, h.verify_g_s)
    assert x[0] == 0 and x[-1] == h.n_pulses and np.all(np.diff(x) >= 0)
    with RunRecord.open(p.out) as rec:
        ver = rec.table("programming/verify")
    np.testing.assert_allclose(h.verify_g_s, ver["g_s"][ver["cell"] == flat])
    assert h.target_s == pytest.approx(p.plan.targets_s[37])
    assert f"target {h.target_s * US_PER_S:.2f} µS" in amap.hist_info.text()
    n_pulse_pts = sum(len(item.getData()[0] if item.getData()[0] is not None else []) for item in amap.pulse_items.values())
    assert n_pulse_pts == h.n_pulses


# ---- 3 cell operations -----------------------------------------------------------------------
def test_cell_ops_refuse_values_beyond_limits_with_reason(win, qtbot):
    ops = win.panels["cellops"]
    set_g = ops.groups["SET"]
    assert not set_g.button.isEnabled()                    # nothing selected yet
    assert "Select cells" in set_g.button.toolTip()
    ops.pe.setValue(1), ops.row.setValue(2), ops.col.setValue(3)
    ops.select_typed_cell()
    assert set_g.button.isEnabled()
    set_g.fields["v"].setValue(3.5)
    assert not set_g.button.isEnabled()
    assert "exceeds the station limit 3.00 V (SET max |V|)" in set_g.reason.text()
    assert set_g.fields["v"].property("invalid") == "true"
    set_g.fields["v"].setValue(1.6)
    set_g.fields["width"].setValue(5)                      # 5 ns < 10 ns minimum
    assert not set_g.button.isEnabled() and "below the station minimum 10 ns" in set_g.reason.text()
    set_g.fields["width"].setValue(50)
    assert set_g.button.isEnabled() and set_g.reason.text() == ""
    ops.read_g.fields["v"].setValue(0.6)
    assert not ops.read_g.button.isEnabled() and "READ max |V|" in ops.read_g.reason.text()


def test_cell_ops_reset_then_read_show_values(win, qtbot):
    ops = win.panels["cellops"]
    win.s.select_cells(Cells(0, 1, [0, 1, 2]))
    qtbot.mouseClick(ops.groups["RESET"].button, Qt.LeftButton)
    wait_idle(qtbot, win)
    cells, before, after = ops.last_result
    assert len(cells) == 3 and ops.table.rowCount() == 3
    assert ops.table.item(2, 4).text() == f"{after[2] * US_PER_S:.3f}"
    assert ops.table.item(2, 3).text() == f"{before[2] * US_PER_S:.3f}"
    assert np.mean(after) < np.mean(before)                # RESET lowers the conductance
    np.testing.assert_allclose(win.s.g_map[0, 1, :3], after)
    qtbot.mouseClick(ops.read_g.button, Qt.LeftButton)
    wait_idle(qtbot, win)
    assert ops.table.item(0, 3).text() == "—"
    assert "read at 0.200 V" in ops.result_label.text()
    # every operation is in the session's cell-operation record, finalized on disconnect
    path = ops.oplog.path
    assert win.s.disconnect_station()
    with RunRecord.open(path) as rec:
        assert rec.kind == "cell-operations" and rec.status == "complete"
        t = rec.table("cellops/ops")
    assert t["op"].tolist() == [2, 2, 2, 0, 0, 0]                 # RESET x 3 cells, then READ
    np.testing.assert_allclose(t["g_after_s"][:3], after)
    np.testing.assert_allclose(t["g_before_s"][:3], before)
    assert t["v_gate"][0] == pytest.approx(ops.groups["RESET"].fields["gate"].si())


def test_iv_sweep_panel_plots_the_loop(win, qtbot):
    ops = win.panels["cellops"]
    win.s.select_cells(Cells(1, 0, [0, 1]))
    ops.iv_g.fields["step"].setValue(0.5)
    qtbot.mouseClick(ops.iv_g.button, Qt.LeftButton)
    wait_idle(qtbot, win)
    v = sweep_voltages(2.0, 2.0, 0.5)
    curves = ops.iv_plot.getPlotItem().listDataItems()
    assert len(curves) == 2
    x, y = curves[0].getData()
    np.testing.assert_allclose(x, v)
    np.testing.assert_allclose(y, ops.last_iv.g_s[:, 0] * v * US_PER_S)


def test_iv_sweep_function_refuses_before_any_pulse():
    from sim_backend.chip import SimulatedCrossbar
    x = SimulatedCrossbar(SMALL, seed=1)
    v = sweep_voltages(1.0, 0.5, 0.25)
    np.testing.assert_allclose(v, [0, .25, .5, .75, 1, .75, .5, .25, 0, -.25, -.5, -.25, 0])
    with pytest.raises(SafetyViolation):
        iv_sweep(x, Cells(0, 0, 0), v_set_max=3.5, v_reset_max=1, v_step=0.5, v_gate_set=1, v_gate_reset=4,
                 width_s=50e-9)
    assert x.counters["pulses"] == 0
    with pytest.raises(ConfigError):
        sweep_voltages(1.0, 1.0, 0.0)


# ---- 4 programming ---------------------------------------------------------------------------
def test_programming_runs_with_live_plots_and_summary(win, qtbot):
    seen = []
    p = win.panels["programming"]
    win.s.job_started.connect(lambda name: seen.append((name, p.start_btn.isEnabled(), win.abort_btn.isEnabled())))
    p = program(qtbot, win, pes="1")
    assert seen == [("write-verify", False, True)]         # disabled while running, Abort armed
    n = SMALL.rows * SMALL.cols
    assert p.bar.value() == 1000 and p.start_btn.isEnabled() and not win.abort_btn.isEnabled()
    assert p.eta.text().startswith(f"{n:,} / {n:,} cells")
    rows = {p.summary.item(i, 0).text(): p.summary.item(i, 1).text() for i in range(p.summary.rowCount())}
    s = p.report.summary()
    assert rows["cells"] == f"{n:,}" and rows["in band"] == f"{100 * s['in_band_fraction']:.2f} %"
    assert s["in_band_fraction"] > 0.9
    # live plots hold every finished cell
    assert sum(c.getData()[0].size for c in p.cdf_curves if c.getData()[0] is not None) == n
    assert len(p.cdf_curves) == 32
    _, counts = p.hist_curve.getData()
    assert counts.sum() == n and counts.size == p.report.pulses.max() + 1
    # map shows the after-programming snapshot, the record is complete, experiments are armed
    with RunRecord.open(p.out) as rec:
        assert rec.status == "complete"
        snap, _ = rec.dataset("snapshots/after_programming")
    np.testing.assert_allclose(win.s.g_map, snap)
    assert win.s.run_path == p.out and win.s.plan is p.plan
    assert win.panels["experiments"].rd_btn.isEnabled()


def test_programming_from_weights_file_and_bad_pe(win, qtbot, errors, tmp_path):
    p = win.panels["programming"]
    p.pes.setText("7")
    assert not p.start()
    assert errors[-1][0] == "Invalid settings" and "PE 7 does not exist" in errors[-1][1]
    w = np.full((1, SMALL.rows, SMALL.cols), 8e-6)
    np.save(tmp_path / "w.npy", w)
    p.src_weights.setChecked(True)
    p.weights_edit.setText(str(tmp_path / "w.npy"))
    p.pes.setText("0")
    plan = p.build_plan()
    assert plan.flat.size == w.size and np.allclose(plan.targets_s, 8e-6)
    np.save(tmp_path / "w2.npy", w[:, :2])
    p.weights_edit.setText(str(tmp_path / "w2.npy"))
    with pytest.raises(ConfigError, match="one conductance"):
        p.build_plan()


def test_abort_with_escape_stops_programming_quickly(win, qtbot, monkeypatch, errors):
    xbar = win.s.xbar
    gate, calls = threading.Event(), []
    orig = xbar._read

    def held_read(cells, v, n):
        calls.append(len(cells))
        if len(calls) == 4:              # hold the job inside its 3rd verify iteration
            gate.wait(5)
        return orig(cells, v, n)
    monkeypatch.setattr(xbar, "_read", held_read)
    outcomes = []
    win.s.job_finished.connect(lambda name, outcome: outcomes.append(outcome))
    p = win.panels["programming"]
    p.pes.setText("0,1")
    assert p.start()
    qtbot.waitUntil(lambda: len(calls) >= 4, timeout=5000)
    assert win.abort_btn.isEnabled() and not p.start_btn.isEnabled()
    win.activateWindow()
    assert _press_escape(qtbot, win)
    assert win.s.cancel_token.cancelled
    gate.set()
    wait_idle(qtbot, win)
    assert outcomes == ["cancelled"]
    # stopped with the outputs safe within the bound; the record is saved after that
    assert win.s.last_abort_stop_s < 0.5 and win.s.last_abort_latency_s >= win.s.last_abort_stop_s
    with RunRecord.open(p.out) as rec:
        assert rec.status == "stopped"
        done = rec.table_rows("programming/cells") if "programming/cells" in rec.tables() else 0
        pulses = rec.table_rows("programming/pulses")
    assert done < 2 * SMALL.rows * SMALL.cols and pulses > 0
    # the stopped record was written without gzip (the job ends sooner) and reads like any other
    assert _compression(p.out, "programming/pulses/cell") is None
    assert hil_main(["runs", "show", str(p.out)]) == 0
    assert "aborted" in p.message.text() and "--resume" in p.message.text()
    # the Summary holds the cells finished before the abort
    assert p.summary.item(0, 1).text() == f"{done:,} finished of {2 * SMALL.rows * SMALL.cols} (aborted)"
    assert p.summary.item(1, 1).text().endswith(" %") and "ETA 0" not in p.eta.text()
    # state is sane: idle, connected, controls enabled, the station still answers
    assert p.start_btn.isEnabled() and not win.abort_btn.isEnabled() and win.s.connected
    assert win.s.run_path == p.out
    amap = win.panels["arraymap"]
    qtbot.mouseClick(amap.read_btn, Qt.LeftButton)
    wait_idle(qtbot, win)
    assert np.isfinite(win.s.g_map).all()
    # resume: the finished cells are kept, the rest is programmed, the record completes
    monkeypatch.setattr(xbar, "_read", orig)
    first = p.out
    assert p.resume(first)
    wait_idle(qtbot, win)
    assert outcomes[-1] == "done" and p.out == first
    with RunRecord.open(first) as rec:
        assert rec.status == "complete"
        cells = rec.table("programming/cells")["cell"]
        assert any(m["event"] == "resumed" for m in rec.marks)
        assert rec.table_rows("programming/pulses") > pulses
    assert _compression(first, "programming/pulses/cell") == "gzip"
    assert np.unique(cells).size == cells.size == 2 * SMALL.rows * SMALL.cols     # each cell once
    assert p.report.summary()["in_band_fraction"] > 0.95
    assert not p.resume(first)                                  # complete: refused with a reason
    assert "nothing to resume" in errors[-1][1]


def _compression(path, dataset: str):
    with h5py.File(path, "r") as f:
        return f[dataset].compression


def _press_escape(qtbot, w) -> bool:
    """Press Esc; True if the shortcut fired (offscreen platforms may not activate windows)."""
    before = w.s.abort_requested_at
    qtbot.keyClick(w, Qt.Key_Escape)
    return w.s.abort_requested_at is not None and w.s.abort_requested_at != before


# ---- errors ----------------------------------------------------------------------------------
def test_backend_error_shows_dialog_that_says_what_to_do(win, qtbot, errors, monkeypatch):
    def broken(cells, v, n):
        raise BackendError("array board did not answer (timeout after 2 s)")
    monkeypatch.setattr(win.s.xbar, "_read", broken)
    amap = win.panels["arraymap"]
    qtbot.mouseClick(amap.read_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(errors) and not win.s.busy, timeout=5000)
    title, text = errors[-1]
    assert title == "Station error"
    assert "did not answer" in text and "Disconnect and Connect again" in text
    assert amap.read_btn.isEnabled() and win.s.connected
    assert "failed" in win.statusBar().currentMessage()
    assert "Station error" in win.log_pane.toPlainText()


# ---- 8 experiments ---------------------------------------------------------------------------
def test_read_disturb_and_drift_live_plots(win, qtbot):
    program(qtbot, win)
    exp = win.panels["experiments"]
    n = SMALL.rows * SMALL.cols
    assert "128 cells on PE 0 · programming run" in exp.cells_label.text()
    exp.reads.setValue(10_000)
    exp.rd_points.setValue(3)
    assert exp.start_read_disturb()
    wait_idle(qtbot, win)
    x, y = exp.rd_view.curve.getData()                       # x is log10 on the log axis
    np.testing.assert_allclose(10 ** x, [1, 10, 316, 10_000])  # 0 reads is drawn at 1
    res = exp.result
    np.testing.assert_allclose(y, 100 * np.array(res.out_of_band_fraction))
    hists = exp.rd_view.dist.getPlotItem().listDataItems()
    assert len(hists) == 4 and all(h.getData()[1].sum() == n for h in hists)
    with RunRecord.open(exp.out) as rec:
        assert rec.kind == "read-disturb" and rec.status == "complete"

    exp.days.setValue(7.0)
    assert exp.start_drift()
    wait_idle(qtbot, win)
    ts = drift_times(7.0)
    assert ts == [1.0, 600.0, 3600.0, 86400.0, 7 * 86400.0]
    x, y = exp.dr_view.curve.getData()
    np.testing.assert_allclose(10 ** x, ts)
    np.testing.assert_allclose(y, 100 * np.array(exp.result.in_band_fraction))
    assert win.s.xbar.now() >= 7 * 86400


def test_experiment_abort_with_button(win, qtbot, monkeypatch):
    program(qtbot, win)
    xbar = win.s.xbar
    gate = threading.Event()
    orig = xbar.read_stress

    def held(cells, n, v_read=None, **kw):
        gate.wait(5)
        return orig(cells, n, v_read=v_read)
    monkeypatch.setattr(xbar, "read_stress", held)
    exp = win.panels["experiments"]
    exp.reads.setValue(1000)
    assert exp.start_read_disturb()
    qtbot.waitUntil(lambda: exp.rd_view.curve.getData()[0] is not None and len(exp.rd_view.curve.getData()[0]) >= 1,
                    timeout=5000)
    qtbot.mouseClick(win.abort_btn, Qt.LeftButton)
    gate.set()
    wait_idle(qtbot, win)
    assert "aborted" in exp.message.text()
    assert exp.rd_btn.isEnabled()
    with RunRecord.open(exp.out) as rec:
        assert rec.status == "stopped"


# ---- 9 runs ----------------------------------------------------------------------------------
def test_runs_browse_preview_export_and_use_for_map(win, qtbot, errors, tmp_path):
    p = program(qtbot, win)
    runs = win.panels["runs"]
    win.s.set_run(None)
    assert runs.open_run(p.out)
    assert "programming run, complete" in runs.header.text()
    assert runs._img is not None                            # snapshot previewed first
    np.testing.assert_allclose(runs.preview_data, win.s.g_map)
    assert runs.select_item("table", "programming/cells")
    runs.column_box.setCurrentText("pulses")
    assert np.array_equal(runs.preview_data, RunRecord.open(p.out).table("programming/cells")["pulses"])
    out = runs.export_png(tmp_path / "fig" / "pulses.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert runs.use_for_map() and win.s.run_path == p.out
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert not runs.open_run(tmp_path / "junk.h5")
    assert errors[-1][0] == "Run record problem" and "not a readable HDF5" in errors[-1][1]


# ---- window ----------------------------------------------------------------------------------
def test_cnn_tabs_are_registered(win):
    assert [win.tabs.tabText(i) for i in range(win.tabs.count())][4:7] == ["5 Network", "6 Convolver",
                                                                         "7 Hybrid training"]


def test_layout_and_last_station_are_remembered(win, qtbot, settings, errors):
    win.tabs.setCurrentIndex(3)
    win.close()
    w2 = MainWindow(settings=settings)
    qtbot.addWidget(w2)
    assert w2.tabs.currentIndex() == 3
    assert w2.panels["station"].choice() == {"spec": "sim", "seed": 3, "geometry": "small"}
    assert not w2.s.connected


def test_only_one_job_at_a_time(win, qtbot, errors):
    amap = win.panels["arraymap"]
    amap.read_array()
    assert win.s.busy
    assert not win.panels["programming"].start()  # refused with a message, not queued
    wait_idle(qtbot, win)
    assert errors and errors[-1][0] == "A job is running" and "Abort (Esc)" in errors[-1][1]


def test_parse_pes():
    assert parse_pes("all", 3) == [0, 1, 2]
    assert parse_pes("0-1, 2", 3) == [0, 1, 2]
    with pytest.raises(ConfigError):
        parse_pes("x", 3)


def test_screenshot_session_writes_every_panel(qapp, tmp_path, settings, errors, monkeypatch):
    from gui.app import screenshot_session
    from tests.test_gui_lab import hint
    shown = {}

    def spy(win, folder):                # what the Lab and Sweeps tabs hold when they are rendered
        tracer, sweeps = win.panels["lab"].panels["curve-tracer"], win.panels["sweeps"]
        shown["iv"] = [line.getOriginalDataset() for line in tracer.lines]
        shown["sweep"] = sweeps.plot.getPlotItem().listDataItems()[-1].getData()
        shown["hints"] = (hint(tracer.plot), hint(sweeps.plot), sweeps.figure_box.currentText())
        return save(win, folder)
    save = MainWindow.save_screenshots
    monkeypatch.setattr(MainWindow, "save_screenshots", spy)
    assert screenshot_session(tmp_path / "shots", geometry="small", settings=settings) == 0
    assert len(shown["iv"]) == 2 * 4 and all(v.size and np.all(i > 0) for v, i in shown["iv"])  # 2 cycles x 4 cells
    assert list(shown["sweep"][0]) == [5, 10, 20, 40] and shown["hints"] == ("", "", "in_band_fraction")
    pngs = sorted((tmp_path / "shots").glob("*.png"))
    assert [p.name for p in pngs][:2] == ["01-station.png", "02-arraymap.png"] and len(pngs) == len(PANELS)
    assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000 for p in pngs)
    assert errors == []
