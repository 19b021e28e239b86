"""PNG figures of conductance distributions, programming effort and their change over time.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot, so they need no display and do not change the global matplotlib backend of a GUI in
the same process. Conductances are given in siemens and shown in µS. Every function returns
the Path of the PNG it wrote (parent folders are created).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

__all__ = ["new_figure", "save_png", "plot_level_cdf", "plot_pulse_histogram", "plot_distributions_over_time"]

US_PER_S = 1e6
DPI = 120
#: `plot_distributions_over_time(kind="auto")` draws histograms from this many cells up
HIST_MIN_CELLS = 4000


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.4):
    """A figure of `ncols` axes side by side (inches, constrained layout, Agg canvas, no pyplot)."""
    # Lazy import: hil stays importable (and fast) without touching matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save_png(fig, path, dpi: int = DPI, svg: bool = False) -> Path:
    """Write `fig` as a PNG at `path` (".png" added if missing, folders created), and an SVG
    beside it if `svg`; returns the PNG path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(path.suffix + ".png") if path.suffix else path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    if svg:
        fig.savefig(path.with_suffix(".svg"), format="svg")
    return path


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _level_colorbar(fig, ax, levels: np.ndarray, cmap) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = (float(levels.min()), float(levels.max())) if levels.size else (0.0, 1.0)
    sm = ScalarMappable(norm=Normalize(lo, hi if hi > lo else lo + 1), cmap=cmap)
    fig.colorbar(sm, ax=ax, label="level")


def _as_1d(a, name: str, n: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(a).ravel()
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} values, expected {n}")
    return arr


def _groups(level_index, n: int):
    li = _as_1d(level_index, "level_index", n).astype(np.int64)
    levels, inv = np.unique(li, return_inverse=True)
    return li, levels, inv


# ---- 1. per-level CDF ------------------------------------------------------------------------
def plot_level_cdf(g_s, level_index, path, *, title: str = "Conductance distribution per level",
                   targets_s=None, tolerance_s=None, dpi: int = DPI, svg: bool = False) -> Path:
    """Cumulative distribution of conductance for each level on one µS axis (one curve per
    level, coloured by level). `targets_s` (one per cell or one per level present) and
    `tolerance_s` (scalar) add shaded target ± tolerance bands; cells beyond the axis are
    counted in its label. `svg` also writes an SVG beside the PNG."""
    g = _as_1d(g_s, "g_s").astype(float)
    li, levels, inv = _groups(level_index, g.size)
    fig, (ax,) = new_figure(1, 7.0, 4.6)
    cmap = _cmap("viridis")
    span = max(levels.max() - levels.min(), 1) if levels.size else 1

    level_targets = None
    if targets_s is not None:
        t = _as_1d(targets_s, "targets_s").astype(float)
        if t.size == g.size:
            level_targets = np.bincount(inv, weights=t, minlength=levels.size) / np.bincount(inv, minlength=levels.size)
        elif t.size == levels.size:
            level_targets = t
        else:
            raise ValueError(f"targets_s must have one value per cell ({g.size}) or per level "
                             f"({levels.size}), got {t.size}")
    if level_targets is not None and tolerance_s is not None:
        tol = float(tolerance_s)
        for k, lv in enumerate(levels):
            c = cmap((lv - levels.min()) / span)
            ax.axvspan((level_targets[k] - tol) * US_PER_S, (level_targets[k] + tol) * US_PER_S, color=c,
                       alpha=0.15, lw=0)
    for k, lv in enumerate(levels):
        x = np.sort(g[inv == k]) * US_PER_S
        x = x[np.isfinite(x)]
        if x.size == 0:
            continue
        y = np.arange(1, x.size + 1) / x.size
        ax.step(x, y, where="post", color=cmap((lv - levels.min()) / span), lw=1.2)
    if level_targets is not None and tolerance_s is None:
        for k, lv in enumerate(levels):
            ax.axvline(level_targets[k] * US_PER_S, color=cmap((lv - levels.min()) / span), lw=0.5, ls=":")
    ax.set_xlabel("conductance (µS)")
    ax.set_ylabel("cumulative probability")
    ax.set_ylim(0, 1.02)
    if level_targets is not None and level_targets.size > 1:
        pad = 2.0 * float(np.min(np.diff(np.sort(level_targets))))
        lo, hi = (level_targets.min() - pad) * US_PER_S, (level_targets.max() + pad) * US_PER_S
        outside = int(np.count_nonzero((g * US_PER_S < lo) | (g * US_PER_S > hi)))
        ax.set_xlim(lo, hi)
        if outside:
            ax.set_xlabel(f"conductance (µS); {outside} cells beyond this axis (write errors, stuck cells)")
    ax.set_title(f"{title}  ({g.size} cells, {levels.size} levels)")
    ax.grid(alpha=0.3)
    _level_colorbar(fig, ax, levels, cmap)
    return save_png(fig, path, dpi, svg)


# ---- 2. pulses --------------------------------------------------------------------------------
def plot_pulse_histogram(pulses, level_index, path, *, title: str = "Write-verify pulses", dpi: int = DPI,
                         svg: bool = False) -> Path:
    """Two panels: histogram of pulses per cell, and mean (± std) pulses per target level
    (`svg` also writes an SVG beside the PNG)."""
    p = _as_1d(pulses, "pulses").astype(float)
    li, levels, inv = _groups(level_index, p.size)
    fig, (a1, a2) = new_figure(2, 10.0, 4.2)
    finite = p[np.isfinite(p)]
    if finite.size:
        mx = int(finite.max())
        bins = np.arange(-0.5, mx + 1.5, max(1, int(np.ceil((mx + 1) / 60))))
        a1.hist(finite, bins=bins, color="tab:blue", alpha=0.85)
        a1.axvline(finite.mean(), color="k", ls="--", lw=1, label=f"mean {finite.mean():.1f}")
        a1.legend()
    a1.set_xlabel("pulses per cell")
    a1.set_ylabel("cells")
    a1.set_title(f"{title}: {p.size} cells")
    a1.grid(alpha=0.3)

    counts = np.bincount(inv, minlength=levels.size)
    mean = np.bincount(inv, weights=p, minlength=levels.size) / np.maximum(counts, 1)
    sq = np.bincount(inv, weights=p * p, minlength=levels.size) / np.maximum(counts, 1)
    std = np.sqrt(np.maximum(sq - mean ** 2, 0.0))
    cmap = _cmap("viridis")
    span = max(levels.max() - levels.min(), 1) if levels.size else 1
    a2.bar(levels, mean, yerr=std, color=[cmap((lv - levels.min()) / span) for lv in levels],
           ecolor="0.4", capsize=2)
    a2.set_xlabel("target level")
    a2.set_ylabel("mean pulses (± std)")
    a2.set_title("mean pulses per level")
    a2.grid(alpha=0.3, axis="y")
    return save_png(fig, path, dpi, svg)


# ---- 3. distributions over time / reads ---------------------------------------------------------
def plot_distributions_over_time(snapshots: Mapping[str, np.ndarray], level_index, path, *,
                                 title: str = "Conductance over time",
                                 xlabel: str = "time after programming", kind: str = "auto") -> Path:
    """Left: conductance distributions of every labelled snapshot overlaid (µS): histograms
    (`kind="hist"`), CDFs (`"cdf"`), or `"auto"` = histograms from HIST_MIN_CELLS cells up, CDFs
    below (small selections make spiky histograms). Right: mean conductance of each level at each
    snapshot (one trace per level, x = snapshot label)."""
    if not snapshots:
        raise ValueError("no snapshots to plot")
    labels = list(snapshots)
    arrays = [_as_1d(snapshots[k], f"snapshot {k!r}").astype(float) for k in labels]
    n = arrays[0].size
    for k, a in zip(labels, arrays):
        if a.size != n:
            raise ValueError(f"snapshot {k!r} has {a.size} cells, the first one has {n}")
    li, levels, inv = _groups(level_index, n)

    fig, (a1, a2) = new_figure(2, 11.0, 4.4)
    if kind == "auto":
        kind = "hist" if n >= HIST_MIN_CELLS else "cdf"
    if kind not in ("hist", "cdf"):
        raise ValueError(f"kind must be 'auto', 'hist' or 'cdf', got {kind!r}")
    allg = np.concatenate(arrays) * US_PER_S
    allg = allg[np.isfinite(allg)]
    # robust range: stuck cells far outside the window would squeeze every level into a few bins
    lo, hi = (np.percentile(allg, 0.2), np.percentile(allg, 99.8)) if allg.size else (0.0, 1.0)
    pad = 0.02 * (hi - lo)
    bins = np.linspace(lo - pad, hi + pad if hi > lo else lo + 1, 600)
    a1.set_xlim(bins[0], bins[-1])
    tcmap = _cmap("plasma")
    for i, (k, a) in enumerate(zip(labels, arrays)):
        c = tcmap(0.85 * i / max(len(labels) - 1, 1))
        v = np.sort(a[np.isfinite(a)]) * US_PER_S
        if kind == "hist":
            a1.hist(v, bins=bins, histtype="step", color=c, lw=1.0, alpha=0.8, label=k)
        elif v.size:
            a1.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=c, lw=1.0,
                    alpha=0.8, label=k)
    a1.set_xlabel("conductance (µS)")
    a1.set_ylabel("cells" if kind == "hist" else "cumulative probability")
    a1.set_title(title)
    a1.legend(fontsize="small", title=xlabel, title_fontsize="small")
    a1.grid(alpha=0.3)

    counts = np.maximum(np.bincount(inv, minlength=levels.size), 1)
    means = np.array([np.bincount(inv, weights=np.nan_to_num(a), minlength=levels.size) / counts
                      for a in arrays]) * US_PER_S                     # (snapshots, levels)
    cmap = _cmap("viridis")
    span = max(levels.max() - levels.min(), 1) if levels.size else 1
    x = np.arange(len(labels))
    for j, lv in enumerate(levels):
        a2.plot(x, means[:, j], marker="o", ms=2.5, lw=1, color=cmap((lv - levels.min()) / span))
    a2.set_xticks(x, labels, rotation=30 if len(labels) > 4 else 0)
    a2.set_xlabel(xlabel)
    a2.set_ylabel("mean conductance per level (µS)")
    a2.set_title("per-level mean")
    a2.grid(alpha=0.3)
    _level_colorbar(fig, a2, levels, cmap)
    return save_png(fig, path)


def plot_heatmaps(g_s, pes, path, *, title: str = "Conductance map") -> Path:
    """One heat map per PE (rows x columns, µS) on a shared colour scale."""
    g = np.asarray(g_s, dtype=float) * 1e6
    if g.ndim != 3 or g.shape[0] != len(pes):
        raise ValueError(f"expected (PEs, rows, cols) conductances for {len(pes)} PEs, got shape {g.shape}")
    n = len(pes)
    fig, axes = new_figure(ncols=n, width=max(3.0, 1.4 * n + 1.5), height=4.4)
    axes = np.atleast_1d(axes)
    vmin, vmax = np.nanpercentile(g, 0.5), np.nanpercentile(g, 99.5)
    im = None
    for ax, pe, block in zip(axes, pes, g):
        im = ax.imshow(block, aspect="auto", cmap=_cmap("viridis"), vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(f"PE {pe}", fontsize=9)
        ax.set_xlabel("column")
    axes[0].set_ylabel("row")
    fig.colorbar(im, ax=list(axes), label="conductance (µS)")
    fig.suptitle(title)
    return save_png(fig, path)
