"""Figures of a sweep folder's table: each figure against each axis, mean over seeds with a 95%
confidence band of the mean (Student t), one line per combination of the other axes; a heat map
of the mean for every pair of axes. PNG (300 dpi) and SVG."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from hil.errors import ConfigError, DataError
from hil.sweep.point import META
from hil.sweep.table import SweepTable

#: Student t quantile 0.975 for 1..30 degrees of freedom (beyond: 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
#: most lines in one figure (combinations of the other axes); beyond, the other axes are pooled
MAX_LINES = 8


def t975(dof: int) -> float:
    return T975[dof - 1] if 1 <= dof <= len(T975) else 1.959963984540054


def summarize(df: pd.DataFrame, by: list[str], figure: str) -> pd.DataFrame:
    """Mean, sd, n and the 95% confidence half-width of `figure` over seeds per `by` group."""
    g = df.groupby(by, dropna=False)[figure]
    s = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()}).reset_index()
    s["half"] = [t975(n - 1) * sd / np.sqrt(n) if n > 1 else 0.0 for n, sd in zip(s["n"], s["sd"].fillna(0.0))]
    return s


def axes_and_figures(table: SweepTable, df: pd.DataFrame) -> tuple[list[str], list[str]]:
    spec = table.spec() or {}
    axes = [a["name"] for a in spec.get("axes", [])]
    figures = [c for c in df.columns if c not in META and c not in axes and pd.api.types.is_numeric_dtype(df[c])
               and not pd.api.types.is_bool_dtype(df[c])]
    return axes, figures


def _log(values) -> bool:
    v = np.asarray(values, float)
    return bool(v.size > 2 and (v > 0).all() and v.max() / v.min() >= 100)


def _save(fig, base: Path) -> list[Path]:
    out = [base.with_suffix(".png"), base.with_suffix(".svg")]
    fig.savefig(out[0], dpi=300, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    return out


def _label(name: str) -> str:
    return name.split(".")[-1] if name.startswith(("device.", "config.")) else name


def plot_sweep(root, figure: Optional[str] = None, out=None) -> list[Path]:
    """Draw every figure of the sweep folder `root` into `out` (default root/plots); `figure`:
    only this one, or several separated by commas drawn together (one line each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    table = SweepTable(root)
    if table.spec() is None:
        raise DataError(f"{root} is not a sweep folder (no sweep.json); run `hil sweep run SPEC --out {root}`")
    df = table.frame()
    if "status" in df:
        df = df[df["status"] == "ok"]
    if df.empty:
        raise DataError(f"{root} holds no finished point yet")
    axes, figures = axes_and_figures(table, df)
    groups = [[f] for f in figures]
    if figure is not None:
        wanted = [f.strip() for f in figure.split(",")]
        bad = [f for f in wanted if f not in figures]
        if bad:
            raise ConfigError(f"--figure {bad[0]!r} is not a figure of this sweep; figures: {', '.join(figures)}")
        groups = [wanted]
    out = Path(out) if out else Path(root) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    title = (table.spec() or {}).get("target", "")
    files: list[Path] = []
    for group in groups:
        name = "+".join(group)
        for a in axes:
            fig, ax = plt.subplots(figsize=(5, 3.6))
            seeds = _lines(ax, df, a, [o for o in axes if o != a and df[o].nunique() > 1], group)
            if _log(df[a].unique()):
                ax.set_xscale("log")
            ax.set_xlabel(_label(a))
            ax.set_ylabel(name if len(group) == 1 else "value")
            ax.set_title(f"{title}: mean over {seeds} seed(s), 95% CI", fontsize=9)
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            files += _save(fig, out / f"{name}-vs-{_label(a)}")
            plt.close(fig)
        for f in group:
            for a, b in itertools.combinations(axes, 2):
                s = summarize(df, [a, b], f).pivot(index=b, columns=a, values="mean")
                fig, ax = plt.subplots(figsize=(5, 4))
                im = ax.imshow(s.values, origin="lower", aspect="auto", cmap="viridis")
                ax.set_xticks(range(len(s.columns)), [f"{v:g}" for v in s.columns], rotation=45, fontsize=7)
                ax.set_yticks(range(len(s.index)), [f"{v:g}" for v in s.index], fontsize=7)
                ax.set_xlabel(_label(a))
                ax.set_ylabel(_label(b))
                fig.colorbar(im, ax=ax, label=f"{f} (mean over seeds)")
                files += _save(fig, out / f"{f}-{_label(a)}-{_label(b)}")
                plt.close(fig)
    (out / "index.json").write_text(json.dumps([str(f.name) for f in files], indent=1))
    return files


def _lines(ax, df: pd.DataFrame, a: str, others: list[str], group: list[str]) -> int:
    """One line with its band per figure of `group` and combination of the `others` axes (pooled
    when there are more than MAX_LINES); returns the most seeds behind a point."""
    combos = df.groupby(others).ngroups if others else 1
    by = [a] + (others if combos <= MAX_LINES else [])
    seeds = 0
    for f in group:
        s = summarize(df, by, f)
        seeds = max(seeds, int(s["n"].max()))
        for key, g in (s.groupby(by[1:]) if len(by) > 1 else [((), s)]):
            g = g.sort_values(a)
            key = key if isinstance(key, tuple) else (key,)
            parts = ([f] if len(group) > 1 else []) + [
                f"{_label(o)}={k:g}" if isinstance(k, (int, float)) else f"{_label(o)}={k}" for o, k in zip(by[1:], key)]
            line, = ax.plot(g[a], g["mean"], marker="o", label=", ".join(parts) or None)
            ax.fill_between(g[a], g["mean"] - g["half"], g["mean"] + g["half"], alpha=0.2, color=line.get_color())
    return seeds
