"""Report figures: saved as a 300 dpi PNG and an SVG beside it; legends outside the data;
integer epoch ticks; bar charts on a clearly broken axis (a short stub from zero under the
zoomed range) so small differences show without bars that seem to start at the zoom."""
from __future__ import annotations

from pathlib import Path

from hil.plots import new_figure, save_png

DPI = 300


def save(fig, path) -> Path:
    """`path` as a 300 dpi PNG and the same figure as `.svg` beside it; returns the PNG path."""
    return save_png(fig, path, DPI, svg=True)


def figure(ncols: int = 1, width: float = 6.4, height: float = 4.2):
    """A figure and its axes (constrained layout, no pyplot)."""
    return new_figure(ncols, width, height)


def legend_outside(ax, ncol: int = 2) -> None:
    """The axes' legend under the whole figure, never over the data."""
    ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=ncol, fontsize=8,
                     frameon=False)


def legend_below(ax, ncol: int = 2) -> None:
    """The axes' legend under the plotting area (for panels side by side)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, fontsize=8, frameon=False)


def integer_ticks(ax, axis: str = "x") -> None:
    """Ticks only on whole numbers (epochs, steps)."""
    from matplotlib.ticker import MaxNLocator
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def broken_axis(width: float, height: float, lo: float, hi: float = 100.0, stub: float = 10.0, ncols: int = 1):
    """A figure of `ncols` columns, each two stacked axes sharing x: the zoomed range [lo, hi]
    on top and [0, stub] below, joined by break marks. Draw the same data on both axes of a
    column; returns (fig, tops, bottoms)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, ncols, sharex="col", squeeze=False, gridspec_kw={"height_ratios": [6, 1]})
    fig.get_layout_engine().set(h_pad=0.01, hspace=0.0)
    marks = dict(marker=[(-1, -0.5), (1, 0.5)], markersize=10, linestyle="none", color="k", mec="k", mew=1,
                 clip_on=False)
    for top, bottom in zip(axes[0], axes[1]):
        top.set_ylim(lo, hi)
        bottom.set_ylim(0, stub)
        bottom.set_yticks([0])
        top.spines["bottom"].set_visible(False)
        bottom.spines["top"].set_visible(False)
        top.tick_params(axis="x", bottom=False, labelbottom=False)
        top.plot([0, 1], [0, 0], transform=top.transAxes, **marks)
        bottom.plot([0, 1], [1, 1], transform=bottom.transAxes, **marks)
    return fig, list(axes[0]), list(axes[1])
