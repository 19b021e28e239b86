"""Layout at a laptop resolution (issue 12, problem 2): every tab opened at 1280×800 with real
content (a connected Yao chip, a trained mCNN and its plan, a programmed PE), and no label,
button, check box, combo box, header section or tab title clipped; the window fits the screen
and does not resize itself after a job."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import html
import re

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractButton, QApplication, QComboBox, QHeaderView, QLabel, QTabBar,
                               QWidget)

SIZE = (1280, 800)
SLACK_PX = 2            # rounding of text metrics
BUTTON_PAD_PX = 12      # the narrowest padding a styled push button draws around its text
COMBO_ARROW_PX = 22     # the drop-down arrow of a combo box


def plain(text: str) -> str:
    """The visible text of a (possibly rich-text) label, one line per <br>."""
    text = re.sub(r"<br\s*/?>", "\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def widest_line(fm, text: str) -> int:
    return max((fm.horizontalAdvance(line) for line in text.split("\n")), default=0)


def visible(w: QWidget) -> bool:
    return w.isVisible() and w.width() > 0 and w.height() > 0


def clipped(root: QWidget) -> list[str]:
    """Every visible text that does not fit its widget: 'kind «text» needs N px, has M'."""
    out = []
    for w in root.findChildren(QWidget):
        if not visible(w):
            continue
        fm = w.fontMetrics()
        if isinstance(w, QLabel) and not w.wordWrap() and w.text() and w.pixmap().isNull():
            need = widest_line(fm, plain(w.text())) + 2 * w.margin() + max(w.indent(), 0)
            have = w.contentsRect().width()
            what = "label"
        elif isinstance(w, QAbstractButton) and w.text():
            text = w.text().replace("&&", "\0").replace("&", "").replace("\0", "&")
            need = fm.horizontalAdvance(text) + (BUTTON_PAD_PX if w.metaObject().className() == "QPushButton"
                                                 else w.iconSize().width() + 4)
            have = w.width()
            what = "button"
        elif isinstance(w, QComboBox) and w.currentText():
            need = fm.horizontalAdvance(w.currentText()) + COMBO_ARROW_PX
            have = w.width()
            what = "combo box"
        elif isinstance(w, QHeaderView) and w.model() is not None:
            for i in range(w.count()):
                if w.isSectionHidden(i) or w.sectionSize(i) <= 0:
                    continue
                text = w.model().headerData(i, w.orientation())
                if not text:
                    continue
                need = widest_line(fm, str(text)) + 8
                have = w.sectionSize(i) if w.orientation() == Qt.Horizontal else w.width()
                if need > have + SLACK_PX:
                    out.append(f"header «{text}» needs {need} px, has {have}")
            continue
        elif isinstance(w, QTabBar):
            for i in range(w.count()):
                need = fm.horizontalAdvance(w.tabText(i)) + 8
                have = w.tabRect(i).width()
                if need > have + SLACK_PX:
                    out.append(f"tab «{w.tabText(i)}» needs {need} px, has {have}")
            continue
        else:
            continue
        if need > have + SLACK_PX:
            out.append(f"{what} «{plain(w.text() if hasattr(w, 'text') else '')[:60] or w.currentText()}» "
                       f"needs {need} px, has {have}")
    return out


@pytest.fixture
def laptop(make_window, qtbot, tmp_path):
    """A 1280×800 window on the Yao chip with a trained model, its plan, and PE 7 programmed."""
    w = make_window(seed=5, geometry="yao")
    w.resize(*SIZE)
    prog = w.panels["programming"]
    prog.pes.setText("7")
    assert prog.start()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    net = w.panels["network"]
    net.fraction.setValue(0.05)
    net.epochs.setValue(1)
    assert net.train()
    qtbot.waitUntil(lambda: not w.s.busy, timeout=60_000)
    return w


def test_every_tab_fits_1280x800_without_clipped_text(laptop, qtbot, errors):
    w = laptop
    assert w.minimumSizeHint().width() <= SIZE[0] and w.minimumSizeHint().height() <= SIZE[1]
    assert (w.width(), w.height()) == SIZE
    problems = {}
    for i in range(w.tabs.count()):
        w.tabs.setCurrentIndex(i)
        QApplication.processEvents()
        found = clipped(w)
        area = w.tabs.currentWidget()            # the tab's scroll area: no sideways scrolling
        if area.horizontalScrollBar().maximum() > 0:
            found.append(f"needs {area.widget().minimumSizeHint().width()} px wide, has {area.viewport().width()}")
        if found:
            problems[w.tabs.tabText(i)] = found
    assert problems == {}
    assert (w.width(), w.height()) == SIZE          # no self-resizing after the jobs
    assert errors == []


def test_plot_axis_titles_are_bright_and_unscaled(qapp):
    """Axis titles in the text colour (not the dim axis-line colour), no '(×0.001)' scale on a
    count axis, SI prefixes on an SI axis."""
    from gui import theme
    from gui.widgets import plot_widget
    w = plot_widget("t", ("pulses", ""), ("G", "S"), legend=True)
    left, bottom = w.getAxis("left"), w.getAxis("bottom")
    assert left.labelStyle["color"].lower() == bottom.labelStyle["color"].lower() == theme.TEXT
    w.plot([0, 1, 2], [1e-6, 5e-6, 2e-5], name="cell")
    w.getPlotItem().vb.autoRange()
    left.updateAutoSIPrefix()
    assert "µS" in left.labelString() or "uS" in left.labelString()
    w2 = plot_widget("t", ("cells", ""), ("fraction", ""))
    w2.plot([0, 1e-3], [0, 1e-3])
    w2.getPlotItem().vb.autoRange()
    assert "x0.001" not in w2.getAxis("bottom").labelString() and not w2.getAxis("bottom").autoSIPrefix
