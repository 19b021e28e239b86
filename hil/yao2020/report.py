"""The demo's report folder: PNG figures, a markdown page beside the paper's numbers, results JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hil.yao2020.demo import PAPER
from hil.plots import _figure, _save, plot_level_cdf, plot_pulse_histogram


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.2f}%"


def accuracy_rows(res: dict) -> list[tuple[str, str, str]]:
    """(quantity, this run, paper) rows of the accuracy table."""
    g_t, g_h = res["group_acc_transfer"], res["group_acc_hybrid"]
    rows = [("software baseline (15-level weights, 8-bit activations)", _pct(res["software_acc"]),
             _pct(PAPER["software_acc"])),
            ("single convolver after weight transfer", _pct(res["transfer_acc"]), _pct(PAPER["transfer_acc"])),
            ("single convolver after hybrid training", _pct(res["hybrid_acc"]), _pct(PAPER["hybrid_acc"])),
            ("parallel convolvers after hybrid training", _pct(res["parallel_acc"]), _pct(PAPER["parallel_acc"]))]
    pt, ph = PAPER["group_train_err_transfer"], PAPER["group_train_err_hybrid"]
    tr_t, tr_h = res.get("group_train_acc_transfer"), res.get("group_train_acc_hybrid")
    for g in range(len(g_t)):
        paper = f"{_pct(1 - pt[g])} → {_pct(1 - ph[g])}" if g < len(pt) else "—"
        if tr_t and tr_h:
            rows.append((f"group G{g + 1}: training digits, after transfer → after hybrid",
                         f"{_pct(tr_t[g])} → {_pct(tr_h[g])}", paper))
        rows.append((f"group G{g + 1}: test digits, after transfer → after hybrid",
                     f"{_pct(g_t[g])} → {_pct(g_h[g])}", "—"))
    rows.append(("convolution throughput, 3 groups vs 1", f"{res['conv_throughput_ratio']:.2f}×", "≈3×"))
    rows.append(("energy efficiency (GOP/s/W, this run's utilization)", f"{res['gops_per_w']:,.0f}",
                 f"{PAPER['gops_per_w']:,.0f}"))
    rows.append(("energy efficiency at full PE utilization (model peak)",
                 f"{res['energy']['peak_gops_per_w']:,.0f}", f"{PAPER['gops_per_w']:,.0f}"))
    return rows


def table_text(res: dict) -> str:
    """The accuracy table as aligned plain text for the terminal."""
    rows = [("", "this run", "Yao 2020")] + accuracy_rows(res)
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows)


def _bars(res: dict, path: Path) -> Path:
    fig, (ax,) = _figure(1, 7.5, 4.2)
    labels = ["software", "transfer\n(G1)", "hybrid\n(G1)", "parallel\nhybrid"]
    ours = [res["software_acc"], res["transfer_acc"], res["hybrid_acc"], res["parallel_acc"]]
    paper = [PAPER["software_acc"], PAPER["transfer_acc"], PAPER["hybrid_acc"], PAPER["parallel_acc"]]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, np.array(ours) * 100, 0.4, label="this run (simulated chip)", color="tab:blue")
    ax.bar(x + 0.2, np.array(paper) * 100, 0.4, label="Yao 2020", color="tab:gray")
    for xi, v in zip(x, ours):
        ax.text(xi - 0.2, v * 100 + 0.1, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=8)
    lo = min(min(ours), min(paper)) * 100
    ax.set_ylim(max(0, lo - 3), 100)
    ax.set_xticks(x, labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("mCNN on MNIST: software, after transfer, after hybrid training")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _groups(res: dict, path: Path) -> Path:
    fig, (ax,) = _figure(1, 6.4, 4.2)
    g_t, g_h = np.array(res["group_acc_transfer"]), np.array(res["group_acc_hybrid"])
    x = np.arange(len(g_t))
    ax.bar(x - 0.2, g_t * 100, 0.4, label="after transfer", color="tab:orange")
    ax.bar(x + 0.2, g_h * 100, 0.4, label="after hybrid training", color="tab:green")
    for xi, a, b in zip(x, g_t, g_h):
        ax.text(xi - 0.2, a * 100 + 0.05, f"{100 * a:.1f}", ha="center", va="bottom", fontsize=8)
        ax.text(xi + 0.2, b * 100 + 0.05, f"{100 * b:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"G{i + 1}" for i in x])
    ax.set_ylim(max(0, min(g_t.min(), g_h.min()) * 100 - 3), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Parallel convolver groups (spread {100 * np.ptp(g_t):.2f} → {100 * np.ptp(g_h):.2f} points)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _hybrid_curves(res: dict, path: Path) -> Path:
    fig, (a1, a2) = _figure(2, 10.0, 4.0)
    ha = res["hybrid_single_history"]
    hb = res["hybrid_parallel_history"]
    a1.plot([r["epoch"] for r in ha], [100 * r["acc_test"] for r in ha], "o-", label="G1 test")
    a1.plot([r["epoch"] for r in ha], [100 * r["acc_train"] for r in ha], "s--", label="G1 training subset")
    keys = sorted(k for k in hb[0] if k.startswith("acc_g")) + ["acc_test"]
    for k in keys:
        a2.plot([r["epoch"] for r in hb], [100 * r[k] for r in hb], "o-", label="parallel" if k == "acc_test" else k[4:])
    for ax, t in ((a1, "single convolver"), (a2, "parallel convolvers (test)")):
        ax.axhline(100 * res["software_acc"], color="k", ls=":", lw=1, label="software")
        ax.set_xlabel("hybrid-training epoch (0 = after transfer)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _after(res: dict, path: Path) -> Path:
    after = res.get("after", {})
    fig, (ax,) = _figure(1, 6.4, 4.0)
    if after.get("time_s"):
        t = np.array(after["time_s"]) / 3600
        ax.semilogx(t, np.array(after["acc"]) * 100, "o-", color="tab:purple", label="parallel system")
        ax.axhline(100 * res["parallel_acc"], color="tab:green", ls="--", lw=1, label="right after hybrid training")
        ax.set_xlabel("time after hybrid training (h, virtual clock)")
    ax.set_ylabel("test accuracy (%)")
    d = after.get("disturb")
    ttl = "Accuracy against time"
    if d:
        ttl += f"; 1e6 reads on G1 conv weights: {100 * d['acc_before']:.1f} → {100 * d['acc_after']:.1f}%"
    ax.set_title(ttl, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if after.get("time_s"):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "this station has no virtual clock:\nfollow drift with `hil experiment drift`",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
    return _save(fig, path)


def write_report(res: dict, out: Path, content=None) -> Path:
    """Figures, report.md and results.json in `out`; returns the markdown path."""
    out = Path(out)
    fig_dir = out / "figures"
    figs = {"accuracy": _bars(res, fig_dir / "accuracy.png"), "groups": _groups(res, fig_dir / "groups.png"),
            "hybrid": _hybrid_curves(res, fig_dir / "hybrid.png"), "after": _after(res, fig_dir / "after.png")}
    if content is not None and "transfer/targets" in content.datasets:
        arr, attrs = content.datasets["transfer/targets"]
        cells = content.tables.get("transfer/cells", {})
        if cells:
            pos = {int(c): i for i, c in enumerate(arr[0])}
            idx = np.array([pos[int(c)] for c in cells["cell"]])
            li = arr[1][idx].astype(int)
            figs["cdf"] = plot_level_cdf(cells["final_g_s"], li, fig_dir / "transfer_cdf.png",
                                         title="Weight transfer: conductance per level", targets_s=arr[2][idx],
                                         tolerance_s=attrs.get("tolerance_s"))
            figs["pulses"] = plot_pulse_histogram(cells["pulses"], li, fig_dir / "transfer_pulses.png",
                                                  title="Weight transfer pulses")
    (out / "results.json").write_text(json.dumps(res, indent=1, default=_json))
    lines = ["# memristor-hil: Yao 2020 mCNN on the simulated chip", "",
             f"Dataset: {res['dataset'].get('source', '')} — {res['dataset'].get('n_train', '?')} training / "
             f"{res['dataset'].get('n_test', '?')} test digits (the paper: 60,000 / 10,000). Seed {res['seed']}. "
             f"Wall time {res['seconds']:.0f} s.", "",
             "| quantity | this run | Yao 2020 |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in accuracy_rows(res)]
    lines += ["", "## Allocation plan", "", "```", res["plan"], "```", ""]
    tr = res["transfer"]
    lines += ["## Weight transfer", "",
              f"{tr['program']['cells']} cells, {100 * tr['program']['in_band_fraction']:.2f}% in band, "
              f"mean {tr['program']['mean_pulses']:.1f} pulses; RMS weight error (levels): "
              + ", ".join(f"{k} {v:.3f}" for k, v in tr["weight_rms_error_levels"].items())
              + f". Inference starts {res['config'].get('settle_s', 0) / 60:.0f} minutes (station clock) after "
              "the transfer, when the conductances have begun to relax; convolver outputs are measured once "
              "per image and group, the FC layer on the chip at every use. ADC codes at full scale: "
              + ", ".join(f"{k} {100 * v:.3f}%" for k, v in res.get("saturation", {}).items()) + ".", ""]
    titles = {"accuracy": "Accuracy beside the paper", "groups": "Per-group accuracy",
              "hybrid": "Hybrid training", "after": "After training: time and read disturb",
              "cdf": "Transferred conductances per level", "pulses": "Write-verify pulses"}
    for k, p in figs.items():
        lines += [f"### {titles[k]}", "", f"![{titles[k]}]({p.relative_to(out)})", ""]
    e = res["energy"]
    lines += ["## Energy and throughput (model)", "",
              f"Convolution: {res['conv_images_per_s_1group']:,.0f} images/s with one group, "
              f"{res['conv_images_per_s_parallel']:,.0f} with {len(res['group_acc_transfer'])} groups "
              f"({res['conv_throughput_ratio']:.2f}×) at 8 slots × 50 ns per input vector. "
              f"Inference energy {e['energy_j'] / max(e['vectors'], 1) * 1e12:.0f} pJ per input vector; "
              f"{res['gops_per_w']:,.0f} GOP/s/W at this run's array utilization, "
              f"{e['peak_gops_per_w']:,.0f} GOP/s/W at full utilization (paper: 11,014). "
              "Per-stage figures and assumptions: `hil/energy.py`.", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md


def _json(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
