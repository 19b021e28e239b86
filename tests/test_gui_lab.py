"""Lab-modules tab (issue 12 item 3, GUI): each built-in module run from its panel on the small
simulated chip shows its live plot data and writes a record; settings are checked inline before
anything runs; a plugin module gets a generated panel; abort keeps a stopped record; a sequence
file runs from its panel with a step list."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from hil.config import Config, param
from hil.modules import plugins
from hil.modules.base import LabModule, ModuleContext, ModuleResult
from hil.runstore import RunRecord

ROOT = Path(__file__).resolve().parents[1]
FRESH = ROOT / "sequences" / "fresh-chip-params.toml"
US_PER_S = 1e6


class Lab:
    """The Lab-modules tab on its own (lighter than a whole window) with its session `s` on a
    small simulated chip; `errors` and `status` collect the session's error dialogs and messages."""

    def __init__(self, qtbot, qapp, runs_dir, spec="sim", **options) -> None:
        from gui import theme
        from gui.panels.lab import LabPanel
        from gui.session import Session
        theme.apply(qapp)
        self.s = Session()
        self.errors, self.status = [], []
        self.s.error.connect(lambda title, text: self.errors.append((title, text)))
        self.s.status_message.connect(self.status.append)
        self.panel = LabPanel(self.s)
        qtbot.addWidget(self.panel)
        self.panel.folder.setText(str(runs_dir))
        self.connect(qtbot, spec, **options)

    def connect(self, qtbot, spec="sim", **options) -> None:
        from conftest import SMALL
        assert self.s.connect_station(spec, "small", **{"seed": 3, "geometry": SMALL, **options})
        qtbot.waitUntil(lambda: self.s.connected and not self.s.busy, timeout=10_000)


@pytest.fixture
def lab(qtbot, qapp, runs_dir):
    lab = Lab(qtbot, qapp, runs_dir)
    yield lab
    lab.s.shutdown()


def run(qtbot, lab, panel, timeout=20_000):
    assert panel.run_btn.isEnabled(), panel.reason.text()
    assert panel.start()
    qtbot.waitUntil(lambda: not lab.s.busy, timeout=timeout)
    with RunRecord.open(panel.out) as rec:
        return rec.status, rec.attrs["summary"], rec.table(f"modules/{panel.module.name}/series")


def hint(w) -> str:
    """The hint an empty plot shows in place of its axes ('' when it shows axes)."""
    item, text = w.getPlotItem(), getattr(w, "empty_hint", None)
    shown = text is not None and text in item.items
    assert shown != item.getAxis("left").isVisible() and shown != item.getAxis("bottom").isVisible()
    return text.toPlainText() if shown else ""


def settings(panel, **values):
    for k, v in values.items():
        w = panel.form.widgets[k]
        w.setCurrentText(str(v)) if hasattr(w, "setCurrentText") else w.setText(str(v))


def test_modules_are_listed_and_endurance_runs_from_its_panel(lab, qtbot):
    win, lab = lab, lab.panel
    names = [lab.list.item(i).text().split("\n") for i in range(lab.list.count())]
    assert [n[0] for n in names] == ["Curve tracer", "Forming", "Pulse train / endurance", "Retention", "Sequence"]
    assert names[3][1].strip() == "plugin" and names[2][1].strip() == "built-in"
    p = lab.show_module("pulse-train")
    assert lab.stack.currentWidget() is p
    settings(p, cycles=20)
    p.cells.setText("0:0-3:0-1")
    assert p.cells_note.text() == "8 cells · PE 0 · rows 0–3 · cols 0–1"
    status, summary, table = run(qtbot, win, p)
    assert status == "complete" and summary["cycles"] == 20 and summary["switching_fraction"] == 1.0
    x_set, g_set = p.after_set.getOriginalDataset()
    x_reset, g_reset = p.after_reset.getOriginalDataset()
    assert x_set.size == x_reset.size == 20 * 8                    # every read of every cell, plotted
    np.testing.assert_allclose(np.sort(np.r_[g_set, g_reset]), np.sort(table["g_s"] * US_PER_S))
    assert np.median(g_set) > 5 * np.median(g_reset)
    assert p.plot.getPlotItem().ctrl.logXCheck.isChecked()        # log axes by default
    p.log_axes.setChecked(False)
    assert not p.plot.getPlotItem().ctrl.logXCheck.isChecked()
    assert str(p.out) in p.record_label.text()
    w = win.s.chip.writes[-1]                                      # the chip model knows these cells were written
    assert w.kind == "pulse-train" and w.record == p.out and w.flat.size == 8
    assert win.errors == []


def test_retention_and_curve_tracer_show_their_plots(lab, qtbot):
    win, lab = lab, lab.panel
    p = lab.show_module("retention")
    settings(p, interval_s=10, duration_s=3600, schedule="log", points_per_decade=2)
    p.cells.setText("1:0-1:0-1")
    status, summary, table = run(qtbot, win, p)
    t, med = p.median.getOriginalDataset()
    assert status == "complete" and t.size == summary["reads"] and len(p.cell_curves) == 4
    assert t[-1] == pytest.approx(3600, rel=1e-3) and p.plot.getPlotItem().ctrl.logXCheck.isChecked()
    assert any("retention advanced the station clock by 1 h" in m for m in win.status)

    assert hint(p.plot) == ""                                        # a plot with data shows its axes
    p = lab.show_module("curve-tracer")
    assert hint(p.plot) == "Run a module to see its data"             # not empty 0–1 axes before a run
    settings(p, cycles=2, v_step=0.1)
    p.cells.setText("0:5:0-1")
    status, summary, table = run(qtbot, win, p)
    curves = p.curves()
    assert status == "complete" and [c for c, _, _ in curves] == [0, 0, 1, 1]     # 2 cycles x 2 cells
    v, i_abs = curves[0][1], curves[0][2]
    assert v.max() == pytest.approx(1.5) and v.min() == pytest.approx(-1.5) and np.all(i_abs > 0)
    assert p.lines[0].getOriginalDataset()[0].size == v.size and hint(p.plot) == ""
    p.view.setCurrentText("R = V/I")
    r = p.lines[0].getOriginalDataset()[1]
    assert r.size and np.all(r > 1e3)                              # ohms of a kΩ–MΩ cell
    assert summary["v_set_median"] is not None and win.errors == []


def test_forming_on_a_fresh_chip_shows_the_voltage_distribution(lab, qtbot):
    win = lab
    lab.connect(qtbot, seed=5, params_path=str(FRESH))
    p = lab.panel.show_module("forming")
    assert hint(p.ramp) == hint(p.hist) == "Run a module to see its data"
    p.cells.setText("0:0-3:0-3")
    status, summary, table = run(qtbot, win, p)
    assert hint(p.ramp) == hint(p.hist) == ""                       # the bars count as data too
    levels, counts = p.counts
    assert status == "complete" and summary["already_formed"] == 0
    assert counts.sum() == summary["formed"] >= 14                 # the histogram holds every formed cell
    assert levels[np.argmax(counts)] == pytest.approx(summary["v_form_median"], abs=0.15)
    assert len(p.ramp_curves) == 16 and p.ramp_curves[0].getOriginalDataset()[0][0] == pytest.approx(2.0)
    assert win.errors == []


def test_settings_are_checked_inline_before_anything_runs(lab, runs_dir):
    p = lab.panel.show_module("forming")
    settings(p, v_stop=9)
    assert not p.run_btn.isEnabled() and "FORM rejected" in p.reason.text()
    settings(p, v_stop=4, v_step="abc")
    assert p.reason.text() == "v_step: 'abc' is not a number" and p.form.widgets["v_step"].property("invalid") == "true"
    settings(p, v_step=0.1, pulses_per_step=0)
    assert "FormingConfig.pulses_per_step must be in [1, 1000]" in p.reason.text()
    assert p.form.widgets["pulses_per_step"].property("invalid") == "true"
    settings(p, pulses_per_step=1)
    p.cells.setText("5:0:0")
    assert "PE 5 is outside 0..1" in p.reason.text() and not p.start()
    p.cells.setText("0:0:0")
    assert p.run_btn.isEnabled() and p.reason.text() == ""
    assert list(runs_dir.iterdir()) == []                          # nothing was recorded


# ---- a plugin: no GUI code, a generated panel ------------------------------------------------
@dataclass
class EchoConfig(Config):
    reads: int = param(3, lo=1, hi=100)
    scale: float = param(2.0, lo=0.0, lo_open=True)
    label: str = param("a", choices=("a", "b"))


@dataclass
class EchoResult(ModuleResult):
    g_s: np.ndarray

    def to_dict(self) -> dict:
        return {"module": "echo", "reads": int(self.g_s.shape[0])}

    def arrays(self) -> dict:
        return {"g_s": self.g_s}


class Echo(LabModule):
    name = "echo"
    title = "Echo reads"
    description = "reads the cells a few times (a test plugin)"
    config_type = EchoConfig
    unit = "reads"

    def execute(self, ctx: ModuleContext) -> EchoResult:
        rows = []
        for k in range(ctx.cfg.reads):
            g = ctx.read() * ctx.cfg.scale
            rows.append(g)
            ctx.emit(k + 1, ctx.cfg.reads, f"read {k + 1}", series="series", k=k, cell=ctx.flat, g_s=g)
        return EchoResult(np.vstack(rows))


def add_plugin(monkeypatch, cls) -> None:
    """Declare the module class `cls` of this file as an installed plugin (an entry point)."""
    real = metadata.entry_points
    ep = metadata.EntryPoint(cls.name, f"{__name__}:{cls.__name__}", plugins.GROUP)
    monkeypatch.setattr(plugins.metadata, "entry_points",
                        lambda group=None, **kw: (*real(group=group), ep) if group == plugins.GROUP
                        else real(group=group, **kw))


def test_a_plugin_module_gets_a_generated_panel(qtbot, qapp, runs_dir, monkeypatch):
    add_plugin(monkeypatch, Echo)
    win = Lab(qtbot, qapp, runs_dir)
    p = win.panel.show_module("echo")
    assert type(p).__name__ == "ModulePanel"
    assert list(p.form.widgets) == ["reads", "scale", "label"] and p.form.widgets["label"].count() == 2
    settings(p, reads=4, scale=0)
    assert "EchoConfig.scale must be in (0.0, inf]" in p.reason.text() and not p.run_btn.isEnabled()
    settings(p, scale=1)
    p.cells.setText("0:1:0-2")
    status, summary, table = run(qtbot, win, p)
    x, y = p.curve.getOriginalDataset()
    assert status == "complete" and summary == {"module": "echo", "reads": 4}
    np.testing.assert_array_equal(x, table["k"]) and np.testing.assert_allclose(y, table["g_s"] * US_PER_S)
    assert x.size == 12 and win.s.chip.writes == []                # reads only: nothing written on the chip
    assert win.errors == []
    win.s.shutdown()


def test_abort_keeps_a_stopped_record_with_the_rows_so_far(lab, qtbot):
    win = lab
    p = lab.panel.show_module("pulse-train")
    settings(p, cycles=10_000_000, read_every=100)
    p.cells.setText("0:0:0")
    assert p.start()
    qtbot.waitUntil(lambda: len(p.rows) > 0, timeout=10_000)
    assert p.abort_btn.isEnabled()
    p.abort_btn.click()
    qtbot.waitUntil(lambda: not win.s.busy, timeout=10_000)
    with RunRecord.open(p.out) as rec:
        assert rec.status == "stopped"
        rows = rec.table_rows("modules/pulse-train/series")
    assert 0 < rows < 200_000 and p.after_set.getOriginalDataset()[0].size + p.after_reset.getOriginalDataset()[0].size == rows
    assert "aborted — partial record" in p.record_label.text() and p.run_btn.isEnabled()
    assert win.errors == []


def test_a_sequence_runs_from_its_panel_with_a_step_list(lab, qtbot, tmp_path):
    win = lab
    seq = tmp_path / "s.toml"
    seq.write_text('[sequence]\nname = "tiny"\ncells = "0:0-1:0-1"\n'
                   '[[steps]]\nmodule = "pulse-train"\n[steps.config]\ncycles = 5\n'
                   '[[steps]]\ndelay_s = 60\n'
                   '[[steps]]\nrepeat = 2\n[[steps.steps]]\nmodule = "retention"\n'
                   '[steps.steps.config]\ninterval_s = 10\nduration_s = 30\n')
    p = lab.panel.show_module("Sequence")
    assert p.load(seq)
    assert p.step_texts() == ["○ 1. pulse-train  [pending]", "○ 2. wait 1 min  [pending]",
                              "○ 3. retention [1/2]  [pending]", "○ 4. retention [2/2]  [pending]"]
    assert p.start()
    qtbot.waitUntil(lambda: not win.s.busy, timeout=20_000)
    assert all(t.startswith("✓") and t.endswith("[done]") for t in p.step_texts())
    with RunRecord.open(p.out) as rec:
        assert rec.kind == "sequence" and rec.status == "complete"
        assert [rec.group_attrs(f"sequence/steps/{k:04d}")["done"] for k in range(4)] == [True] * 4
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nmodule = "nope"\n')
    assert not p.load(bad) and "unknown lab module 'nope'" in p.reason.text() and not p.run_btn.isEnabled()
    assert win.errors == []


class Hold(Echo):
    """Reads its cells until the run is aborted while `holding` is set (a step that is surely
    running when Abort is pressed), then works as Echo."""
    name = "hold"
    holding = True

    def execute(self, ctx: ModuleContext) -> EchoResult:
        while Hold.holding:
            ctx.check()
            ctx.read()
        return super().execute(ctx)


def test_a_sequence_stopped_from_its_panel_resumes_with_every_step_done_once(qtbot, qapp, runs_dir, tmp_path,
                                                                             monkeypatch):
    add_plugin(monkeypatch, Hold)
    win = Lab(qtbot, qapp, runs_dir)
    seq = tmp_path / "s.toml"
    seq.write_text('[sequence]\nname = "cut"\ncells = "0:0-1:0-1"\n'
                   '[[steps]]\nmodule = "pulse-train"\n[steps.config]\ncycles = 5\n'
                   '[[steps]]\nmodule = "hold"\n'
                   '[[steps]]\nmodule = "retention"\n[steps.config]\ninterval_s = 10\nduration_s = 30\n'
                   '[[steps]]\ndelay_s = 60\n')
    p = win.panel.show_module("Sequence")
    assert p.load(seq) and p.start()
    qtbot.waitUntil(lambda: p.state[1] == "running", timeout=20_000)
    p.abort_btn.click()
    qtbot.waitUntil(lambda: not win.s.busy, timeout=20_000)
    out = p.out
    assert [t[0] for t in p.step_texts()] == ["✓", "■", "○", "○"]
    with RunRecord.open(out) as rec:
        assert rec.status == "stopped"
        endurance_rows = rec.table_rows("sequence/steps/0000/series")
        assert rec.group_attrs("sequence/steps/0000")["done"] and not rec.group_attrs("sequence/steps/0001").get("done")
    assert p.resume_btn.isEnabled()
    monkeypatch.setattr(Hold, "holding", False)
    assert p.resume(out)
    qtbot.waitUntil(lambda: not win.s.busy, timeout=20_000)
    assert p.out == out and all(t.startswith("✓") and t.endswith("[done]") for t in p.step_texts())
    with RunRecord.open(out) as rec:
        assert rec.status == "complete"
        assert [rec.group_attrs(f"sequence/steps/{k:04d}").get("done") for k in range(4)] == [True] * 4
        assert rec.table_rows("sequence/steps/0000/series") == endurance_rows      # the done step did not run again
        assert rec.group_attrs("sequence/steps/0001")["retried_in"] == "sequence/steps/0001-retry1"
        assert rec.table_rows("sequence/steps/0001-retry1/series") == 3 * 4       # the cut step, run once more
        groups = [g.strip("/") for g in rec.groups() if g.startswith("/sequence/steps/") and g.count("/") == 3]
    assert sorted(groups) == ["sequence/steps/0000", "sequence/steps/0001", "sequence/steps/0001-retry1",
                              "sequence/steps/0002", "sequence/steps/0003"]
    # nothing left to resume: refused inline, nothing started
    assert not p.resume(out) and "is complete: nothing to resume" in p.reason.text() and not win.s.busy
    assert win.errors == []
    win.s.shutdown()
