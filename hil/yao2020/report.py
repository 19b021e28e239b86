"""The demo's report folder: provenance, a methods paragraph from the run's configs, every
accuracy with its Wilson 95 % interval beside the paper's figure (and the set the paper measured
it on), comparisons called only when the intervals separate them, figures as 300 dpi PNG + SVG,
the device parameters, results JSON; `hil.report.html` makes the HTML page."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from hil.plots import plot_level_cdf, plot_pulse_histogram
from hil.report.accuracy import as_interval, compare, fmt, interval, verdict, yerr
from hil.report.figures import broken_axis, figure, integer_ticks, legend_outside, save
from hil.report.files import write_json
from hil.report.methods import count, duration, listing
from hil.report.provenance import provenance, provenance_lines
from hil.yao2020.demo import PAPER, PAPER_SET

PAPER_COLOR, OURS_COLOR = "0.6", "tab:blue"


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.2f}%"


def _ci(res: dict, key: str, k: Optional[int] = None):
    d = res[f"{key}_ci"]
    return as_interval(d if k is None else d[k])


def _groups(res: dict) -> int:
    return len(res["group_acc_transfer"])


#: readable titles of the figures in a multi-seed summary
SUMMARY_NAMES = {"software_acc": "software baseline (15 levels), test digits",
                 "software_float_acc": "software, float weights, test digits",
                 "transfer_acc": "G1 after weight transfer, test digits",
                 "hybrid_acc": "G1 after hybrid training, test digits",
                 "group_acc_transfer": "parallel system after transfer, test digits,",
                 "group_acc_hybrid": "parallel system after hybrid training, test digits,",
                 "parallel_acc": "parallel system after hybrid training, test digits",
                 "conv_throughput_ratio": "convolution throughput, all groups vs 1",
                 "gops_per_w": "energy efficiency (GOP/s/W)", "seconds": "Yao wall time (s)",
                 "after.acc_start": "parallel system right after hybrid training, aging digits",
                 "after.acc": "parallel system after hybrid training, aging digits,",
                 "after.disturb.reads": "read pulses on G1's convolution weights",
                 "after.disturb.acc_before": "before the read pulses",
                 "after.disturb.acc_g1_after": "G1 alone after the read pulses",
                 "after.disturb.acc_after": "parallel system after the read pulses"}


def accuracy_rows(res: dict) -> list[tuple[str, str, str, str, str]]:
    """(quantity, this run with its 95 % interval, samples, paper, the paper's set) rows."""
    n = lambda key, k=None: f"{_ci(res, key, k).n:,}"           # noqa: E731
    arrow = lambda key, k=None: f"{fmt(_ci(res, key + '_transfer', k))} → {fmt(_ci(res, key + '_hybrid', k))}"  # noqa: E731
    rows = [("software baseline (15-level weights, 8-bit activations), test digits", fmt(_ci(res, "software_acc")),
             n("software_acc"), _pct(PAPER["software_acc"]), PAPER_SET["software_acc"]),
            ("software, float weights, test digits", fmt(_ci(res, "software_float_acc")), n("software_float_acc"),
             "—", "—"),
            ("single convolver G1 after weight transfer, test digits", fmt(_ci(res, "transfer_acc")),
             n("transfer_acc"), _pct(PAPER["transfer_acc"]), PAPER_SET["transfer_acc"]),
            ("single convolver G1 after hybrid training, test digits", fmt(_ci(res, "hybrid_acc")),
             n("hybrid_acc"), _pct(PAPER["hybrid_acc"]), PAPER_SET["hybrid_acc"])]
    if "hybrid_single_train_acc_ci" in res:
        t = res["hybrid_single_train_acc_ci"]
        rows.append(("single convolver G1, hybrid-training digits: after transfer → after hybrid",
                     f"{fmt(as_interval(t[0]))} → {fmt(as_interval(t[1]))}", f"{t[0]['n']:,}",
                     f"{_pct(PAPER['train_acc_transfer'])} → {_pct(PAPER['train_acc_hybrid'])}", PAPER_SET["train_acc"]))
    rows += [("parallel convolvers after weight transfer, test digits", fmt(_ci(res, "parallel_transfer_acc")),
              n("parallel_transfer_acc"), "—", "—"),
             ("parallel convolvers after hybrid training, test digits", fmt(_ci(res, "parallel_acc")),
              n("parallel_acc"), _pct(PAPER["parallel_acc"]), PAPER_SET["parallel_acc"])]
    pt, ph = PAPER["group_train_err_transfer"], PAPER["group_train_err_hybrid"]
    for g in range(_groups(res)):
        rows.append((f"group G{g + 1}, test digits: after transfer → after hybrid", arrow("group_acc", g),
                     n("group_acc_transfer", g), "—", "—"))
        if "group_train_acc_transfer_ci" in res:
            paper = f"{_pct(1 - pt[g])} → {_pct(1 - ph[g])}" if g < len(pt) else "—"
            rows.append((f"group G{g + 1}, hybrid-training digits: after transfer → after hybrid",
                         arrow("group_train_acc", g), n("group_train_acc_transfer", g), paper,
                         PAPER_SET["group_train"] if g < len(pt) else "—"))
    rows.append((f"convolution throughput, {_groups(res)} groups vs 1", f"{res['conv_throughput_ratio']:.2f}×", "—",
                 "≈3×", "—"))
    rows.append(("energy efficiency (GOP/s/W, this run's utilization)", f"{res['gops_per_w']:,.0f}", "—",
                 f"{PAPER['gops_per_w']:,.0f}", PAPER_SET["gops_per_w"]))
    rows.append(("energy efficiency at full PE utilization (model peak)",
                 f"{res['energy']['peak_gops_per_w']:,.0f}", "—", f"{PAPER['gops_per_w']:,.0f}", PAPER_SET["gops_per_w"]))
    return rows


def comparisons(res: dict) -> list[str]:
    """The differences the report discusses, each called only when the intervals say so."""
    c = lambda a, ka, b, kb, i=None: compare(a, _ci(res, ka, i), b, _ci(res, kb, i))   # noqa: E731
    out = [c("G1 after transfer", "transfer_acc", "software (15-level)", "software_acc"),
           c("G1 after hybrid training", "hybrid_acc", "G1 after transfer", "transfer_acc"),
           c("G1 after hybrid training", "hybrid_acc", "software (15-level)", "software_acc"),
           c("parallel after hybrid training", "parallel_acc", "parallel after transfer", "parallel_transfer_acc")]
    out += [c(f"parallel system's G{g + 1} after hybrid training", "group_acc_hybrid", "after transfer",
              "group_acc_transfer", g) for g in range(_groups(res))]
    for stage in ("transfer", "hybrid"):
        key = f"group_acc_{stage}"
        for a in range(_groups(res)):
            for b in range(a + 1, _groups(res)):
                out.append(compare(f"parallel system's G{a + 1} after {stage}", _ci(res, key, a), f"G{b + 1}",
                                   _ci(res, key, b)))
    return out


def after_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(time after hybrid training, accuracy with interval, change against the start, the paper's change)."""
    after = res.get("after", {})
    if "acc_ci" not in after:
        return []
    start = as_interval(after["acc_start_ci"])
    rows = [("right after hybrid training (read disturb not yet applied)", fmt(start), "—", "—")]
    for t, d in zip(after["time_s"], after["acc_ci"]):
        iv = as_interval(d)
        paper = PAPER["after_change"].get(float(t))
        rows.append((duration(t), fmt(iv), verdict(iv, start), "—" if paper is None else f"{100 * paper:+.2f} points"))
    return rows


def table_text(res: dict) -> str:
    """The accuracy table as aligned plain text for the terminal (95 % intervals in brackets)."""
    rows = [("", "this run [95% CI]", "n", "Yao 2020", "paper's set")] + accuracy_rows(res)
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {n:>{w[2]}}  {c:>{w[3]}}  {s:<{w[4]}}" for a, b, n, c, s in rows]
    return "\n".join(lines + [""] + comparisons(res)[:4])


# ---- figures ---------------------------------------------------------------------------------
def _zoom_lo(values) -> float:
    """Bottom of a zoomed percent axis: 2 points under the lowest value, on a whole point."""
    return max(0.0, float(np.floor(min(values) - 2)))


def _bars(res: dict, path: Path) -> Path:
    keys = ["software_acc", "transfer_acc", "hybrid_acc", "parallel_transfer_acc", "parallel_acc"]
    labels = ["software\n(15 levels)", "G1 after\ntransfer", "G1 after\nhybrid", "parallel after\ntransfer",
              "parallel after\nhybrid"]
    ivs = [_ci(res, k) for k in keys]
    ours = np.array([100 * iv.value for iv in ivs])
    paper = [PAPER.get(k) for k in keys]
    lo = _zoom_lo([100 * iv.lo for iv in ivs] + [100 * p for p in paper if p is not None])
    fig, tops, bottoms = broken_axis(8.4, 4.4, lo)
    x = np.arange(len(keys))
    px = [xi for xi, p in zip(x, paper) if p is not None]
    pv = [100 * p for p in paper if p is not None]
    for ax in (tops[0], bottoms[0]):
        ax.bar(x - 0.2, ours, 0.4, yerr=yerr(ivs), capsize=3, color=OURS_COLOR, ecolor="k",
               label=f"this run (simulated chip), 95% CI, {ivs[0].n:,} test digits")
        ax.bar(np.array(px) + 0.2, pv, 0.4, color=PAPER_COLOR, label="Yao 2020 (test set)")
    for xi, v in zip(x, ours):
        tops[0].text(xi - 0.2, lo + 0.3, f"{v:.1f}", ha="center", va="bottom", fontsize=8, color="white",
                     fontweight="bold")
    bottoms[0].set_xticks(x, labels, fontsize=8)
    tops[0].set_ylabel("test accuracy (%)")
    fig.suptitle("mCNN on MNIST: software, after weight transfer, after hybrid training", fontsize=11)
    tops[0].grid(alpha=0.3, axis="y")
    legend_outside(tops[0])
    return save(fig, path)


def _groups_fig(res: dict, path: Path) -> Path:
    n = _groups(res)
    t = [_ci(res, "group_acc_transfer", g) for g in range(n)]
    h = [_ci(res, "group_acc_hybrid", g) for g in range(n)]
    lo = _zoom_lo([100 * iv.lo for iv in t + h])
    fig, tops, bottoms = broken_axis(7.4, 4.2, lo)
    x = np.arange(n)
    for ax in (tops[0], bottoms[0]):
        ax.bar(x - 0.2, [100 * iv.value for iv in t], 0.4, yerr=yerr(t), capsize=3, color="tab:orange",
               ecolor="k", label="after transfer")
        ax.bar(x + 0.2, [100 * iv.value for iv in h], 0.4, yerr=yerr(h), capsize=3, color="tab:green",
               ecolor="k", label="after hybrid training")
    bottoms[0].set_xticks(x, [f"G{i + 1}" for i in x])
    bottoms[0].set_xlabel("convolver group")
    tops[0].set_ylabel("test accuracy (%)")
    spread = lambda ivs: 100 * np.ptp([iv.value for iv in ivs])   # noqa: E731
    fig.suptitle(f"Parallel convolver groups, {t[0].n:,} test digits each, 95% CI\n"
                 f"(spread between groups {spread(t):.2f} → {spread(h):.2f} points)", fontsize=10)
    tops[0].grid(alpha=0.3, axis="y")
    legend_outside(tops[0])
    return save(fig, path)


def _curve(ax, hist: list, key: str, n: int, label: str, fmt_: str, color=None, dx: float = 0.0) -> None:
    """One accuracy per epoch with its error bars, shifted by `dx` epochs so bars do not overlap."""
    ivs = [interval(r[key], n) for r in hist]
    ax.errorbar([r["epoch"] + dx for r in hist], [100 * iv.value for iv in ivs], yerr=yerr(ivs), fmt=fmt_,
                capsize=2, ms=4, color=color, label=label)


def _hybrid_curves(res: dict, path: Path) -> Path:
    counts = res["counts"]
    ha, hb = res["hybrid_single_history"], res["hybrid_parallel_history"]
    ns, np_ = counts["hybrid_single"], counts["hybrid_parallel"]
    curves = [(0, ha, "acc_test", ns["test"], f"G1, test digits ({ns['test']:,})", "o-", "tab:blue")]
    if "acc_train" in ha[0]:
        curves.append((0, ha, "acc_train", ns["train"], f"G1, hybrid-training digits ({ns['train']:,})", "s--",
                       "tab:cyan"))
    curves += [(1, hb, f"acc_g{g + 1}", np_[f"g{g + 1}"], f"G{g + 1} alone", "o-", f"C{g + 1}")
               for g in range(_groups(res)) if f"acc_g{g + 1}" in hb[0]]
    curves.append((1, hb, "acc_test", np_["test"], "parallel (inputs shared by the groups)", "s-", "k"))
    lows = [100 * interval(r[c[2]], c[3]).lo for c in curves for r in c[1]]
    fig, tops, bottoms = broken_axis(11.5, 4.8, _zoom_lo(lows + [100 * res["software_acc"]]), ncols=2)
    for col in (0, 1):
        mine = [c for c in curves if c[0] == col]
        for i, (_, hist, key, n, label, style, color) in enumerate(mine):
            _curve(tops[col], hist, key, n, label, style, color, dx=0.05 * (i - (len(mine) - 1) / 2))
    titles = ("single convolver G1", f"parallel convolvers, {np_['test']:,} test digits")
    for top, bottom, title in zip(tops, bottoms, titles):
        top.axhline(100 * res["software_acc"], color="k", ls=":", lw=1, label="software (15 levels)")
        top.set_ylabel("accuracy (%)")
        top.set_title(title + ", 95% CI", fontsize=10)
        top.grid(alpha=0.3)
        bottom.set_xlabel("hybrid-training epoch (0 = after transfer)")
        integer_ticks(bottom)
        bottom.legend(*top.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, -0.9), ncol=2,
                      fontsize=8, frameon=False)
    return save(fig, path)


def _after(res: dict, path: Path) -> Path:
    after = res.get("after", {})
    if "acc_ci" not in after:
        fig, (ax,) = figure(1, 6.4, 3.0)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "this station has no virtual clock:\nfollow drift with `hil experiment drift`",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
        return save(fig, path)
    start = as_interval(after["acc_start_ci"])
    ivs = [as_interval(d) for d in after["acc_ci"]]
    t = np.array(after["time_s"], dtype=float)
    paper = [(tt, 100 * (start.value + ch)) for tt, ch in PAPER["after_change"].items()]
    lo = _zoom_lo([100 * iv.lo for iv in ivs + [start]] + [p for _, p in paper])
    fig, tops, bottoms = broken_axis(8.6, 4.4, lo)
    for ax in (tops[0], bottoms[0]):
        ax.set_xscale("log")
        ax.axhspan(100 * start.lo, 100 * start.hi, color="tab:green", alpha=0.15, lw=0,
                   label=f"right after hybrid training, 95% CI ({100 * start.value:.1f}%)")
        ax.errorbar(t, [100 * iv.value for iv in ivs], yerr=yerr(ivs), fmt="o-", capsize=3, color="tab:purple",
                    label=f"this run, parallel system, {start.n:,} test digits, 95% CI")
        ax.plot([p[0] for p in paper], [p[1] for p in paper], "D", color=PAPER_COLOR, mec="k",
                label="Yao 2020 change, placed on this run's start (test set [est])")
    ticks = sorted(set(t) | set(PAPER["after_change"]))
    bottoms[0].set_xticks(ticks, [duration(x) for x in ticks], fontsize=8)
    bottoms[0].minorticks_off()
    bottoms[0].set_xlabel("time after hybrid training (station clock)")
    tops[0].set_ylabel("test accuracy (%)")
    d = after.get("disturb")
    title = "Accuracy against time after hybrid training"
    if d:
        change = verdict(as_interval(d["acc_after_ci"]), as_interval(d["acc_before_ci"]))
        title += (f"\n{d['reads']:,} reads of G1's convolution weights first: "
                  f"{100 * d['acc_before']:.1f}% → {100 * d['acc_after']:.1f}% ({change})")
    fig.suptitle(title, fontsize=10)
    tops[0].grid(alpha=0.3, which="major")
    legend_outside(tops[0])
    return save(fig, path)


# ---- methods and the page --------------------------------------------------------------------
def methods(res: dict, content) -> str:
    """The methods paragraph, generated from the configs and counts of this run."""
    cfg, ds, counts = res["config"], res["dataset"], res["counts"]
    h = cfg.get("hybrid", {})
    model = (content.attrs.get("/model", {}) if content is not None else {}) or {}
    tgt = content.datasets.get("transfer/targets") if content is not None else None
    levels = ""
    if tgt is not None:
        ls = np.array(tgt[1]["levels_s"]) * 1e6
        levels = (f" at {len(ls)} conductance levels per cell ({ls.min():.1f}–{ls.max():.1f} µS, "
                  f"write-verify tolerance ±{tgt[1]['tolerance_s'] * 1e6:.2f} µS)")
    after = res.get("after", {})
    times = listing([duration(t) for t in after.get("time_s", [])]) if after.get("time_s") else ""
    held = counts.get("hybrid_holdout_images", 0)
    hyb = [f"{held:,} training digits kept out of ex-situ training to keep the best epoch's weights"] if held else []
    hyb += [count(h["epochs"], "epoch")] if "epochs" in h else []
    hyb += [f"mini-batch {h['batch']}"] if "batch" in h else []
    hyb += [f"step {h['lr_levels']:g} weight levels"] if "lr_levels" in h else []
    hyb += [f"update threshold {h['threshold_levels']:g} levels"] if "threshold_levels" in h else []
    hyb += [f"at most {h['max_pulses']} pulses per update"] if "max_pulses" in h else []
    text = (f"The five-layer mCNN (C1: 8 kernels 3×3, C3: 12 kernels 3×3×8, FC 192→10) was trained ex situ "
            f"for {count(cfg['train_epochs'], 'epoch')} on {ds.get('n_train', 0):,} training digits "
            f"({ds.get('source', '')}) with quantization-aware training to "
            f"{model.get('weight_levels', 15)}-level weights and {model.get('act_bits', 8)}-bit activations "
            f"(seed {res['seed']}). The weights were transferred by closed-loop write-verify to "
            f"{count(cfg['groups'], 'convolver group')} and the FC layer of the simulated chip, each weight a "
            f"differential pair of cells{levels}; inference started {duration(cfg['settle_s'])} (station clock) "
            f"after the transfer. Hybrid training updated only the FC layer in situ on the measured convolver "
            f"outputs of {counts['hybrid_subset_images']:,} training digits (the paper: 6,000 of 60,000), "
            f"{', '.join(hyb)}: first on G1 alone, then, with the FC weights transferred again, on all groups' "
            f"outputs (inputs dispatched round-robin). Accuracies are on {counts['test_images']:,} held-out test "
            "digits unless marked as hybrid-training digits, each with its Wilson 95% interval; two figures are "
            "called different only when their intervals do not overlap (conservative for figures measured on "
            "the same digits).")
    if after.get("time_s"):
        reads = after.get("disturb", {}).get("reads", 0)
        text += (f" After hybrid training{f', G1’s convolution weights received {reads:,} read pulses at 0.2 V and' if reads else ''}"
                 f" the parallel system was scored on {after['images']:,} test digits at {times} on the station's "
                 "clock.")
    return text


def write_report(res: dict, out: Path, content=None) -> Path:
    """Figures, report.md, the device parameters and results.json in `out`; returns the markdown
    path (`hil.report.html.write_html` turns it into the HTML page)."""
    out = Path(out)
    fig_dir = out / "figures"
    figs = {"Accuracy beside the paper": _bars(res, fig_dir / "accuracy.png"),
            "Per-group accuracy": _groups_fig(res, fig_dir / "groups.png"),
            "Hybrid training": _hybrid_curves(res, fig_dir / "hybrid.png"),
            "Accuracy against time after hybrid training": _after(res, fig_dir / "after.png")}
    if content is not None and "transfer/targets" in content.datasets:
        arr, attrs = content.datasets["transfer/targets"]
        cells = content.tables.get("transfer/cells", {})
        if cells:
            pos = {int(c): i for i, c in enumerate(arr[0])}
            idx = np.array([pos[int(c)] for c in cells["cell"]])
            li = arr[1][idx].astype(int)
            figs["Transferred conductances per level"] = plot_level_cdf(
                cells["final_g_s"], li, fig_dir / "transfer_cdf.png", title="Weight transfer: conductance per level",
                targets_s=arr[2][idx], tolerance_s=attrs.get("tolerance_s"), dpi=300, svg=True)
            figs["Write-verify pulses"] = plot_pulse_histogram(cells["pulses"], li, fig_dir / "transfer_pulses.png",
                                                              title="Weight transfer pulses", dpi=300, svg=True)
    res["provenance"] = provenance(content.station if content is not None else {}, out, "yao2020", [res["seed"]])
    write_json(out / "results.json", res)
    lines = ["# memristor-hil: Yao 2020 mCNN on the simulated chip", ""] + provenance_lines(res["provenance"])
    lines += ["", "## Methods", "", methods(res, content), "",
              "## Results", "", f"Wall time {res['seconds']:.0f} s. Accuracies with their Wilson 95% interval "
              "in points; the last column says which set the paper's figure is on ([est]: from a secondary "
              "summary, PAPERS.md §A).", "",
              "| quantity | this run [95% CI] | n | Yao 2020 | paper's set |", "|---|---:|---:|---:|---|"]
    lines += [f"| {' | '.join(r)} |" for r in accuracy_rows(res)]
    lines += ["", "### Differences", ""] + [f"- {c}" for c in comparisons(res)]
    rows = after_rows(res)
    if rows:
        lines += ["", "### Accuracy against time after hybrid training", "",
                  "| time after hybrid training | accuracy [95% CI] | against right after | Yao 2020 change |",
                  "|---|---:|---:|---:|"] + [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", "## Allocation plan", "", "```", res["plan"], "```", ""]
    tr = res["transfer"]
    lines += ["## Weight transfer", "",
              f"{tr['program']['cells']:,} cells, {100 * tr['program']['in_band_fraction']:.2f}% in band, "
              f"mean {tr['program']['mean_pulses']:.1f} pulses; RMS weight error (levels): "
              + ", ".join(f"{k} {v:.3f}" for k, v in tr["weight_rms_error_levels"].items())
              + ". Convolver outputs are measured once per image and group, the FC layer on the chip at every "
              "use. ADC codes at full scale: "
              + ", ".join(f"{k} {100 * v:.3f}%" for k, v in res.get("saturation", {}).items()) + ".", ""]
    lines += ["## Figures", ""]
    for title, p in figs.items():
        lines += [f"### {title}", "", f"![{title}]({p.relative_to(out)}) ([SVG]({p.with_suffix('.svg').relative_to(out)}))", ""]
    e = res["energy"]
    lines += ["## Energy and throughput (model)", "",
              f"Convolution: {res['conv_images_per_s_1group']:,.0f} images/s with one group, "
              f"{res['conv_images_per_s_parallel']:,.0f} with {_groups(res)} groups "
              f"({res['conv_throughput_ratio']:.2f}×) at 8 slots × 50 ns per input vector. "
              f"Inference energy {e['energy_j'] / max(e['vectors'], 1) * 1e12:.0f} pJ per input vector; "
              f"{res['gops_per_w']:,.0f} GOP/s/W at this run's array utilization, "
              f"{e['peak_gops_per_w']:,.0f} GOP/s/W at full utilization (paper: 11,014 [est]). "
              "Per-stage figures and assumptions: `hil/analog/energy.py`.", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md
