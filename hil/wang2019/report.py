"""The Wang 2019 section of the demo's report folder: provenance, a methods paragraph, figures
(PNG at 300 dpi and SVG) and a markdown section beside the paper's 92.13 %, every accuracy with
its Wilson 95 % interval (`hil.report.accuracy`), differences called only when the intervals
separate them.

Everything is drawn from `run_wang_demo`'s results and its run record (the per-batch table and
the read-back snapshots of `hil.wang2019.stages`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hil.plots import US_PER_S
from hil.report.accuracy import add_intervals, compare, fmt, interval, yerr
from hil.report.figures import figure as _figure
from hil.report.figures import integer_ticks, legend_below, legend_outside
from hil.report.figures import save as _save
from hil.report.methods import count
from hil.report.provenance import provenance, provenance_lines
from hil.wang2019.demo import PAPER
from hil.wang2019.stages import DEFAULT_BATCH

CHANCE_CONVLSTM = 1 / 6


#: readable titles of the figures in a multi-seed summary
SUMMARY_NAMES = {"wang_cnn_acc": "Wang CNN in situ, test digits",
                 "wang_cnn_software_acc": "Wang CNN in software (float), test digits",
                 "wang_cnn_exsitu_acc": "Wang CNN ex situ, open loop, test digits",
                 "wang_cnn_updates": "Wang CNN weight updates", "wang_cnn_pulses": "Wang CNN pulses",
                 "wang_convlstm_acc_steps": "ConvLSTM in situ, test sequences,",
                 "wang_convlstm_software_acc_steps": "ConvLSTM in software, test sequences,",
                 "wang_convlstm_updates": "ConvLSTM weight updates", "wang_convlstm_pulses": "ConvLSTM pulses",
                 "wang_seconds": "Wang wall time (s)"}


def _acc_ci(acc: float, n: int) -> str:
    return fmt(interval(acc, n))


def _table(content, net: str) -> dict:
    return {k: np.asarray(v) for k, v in content.tables[f"insitu/{net}/batches"].items()}


def _snapshots(content, net: str) -> tuple[int, int]:
    """First and last batch with a read-back snapshot of `net`."""
    pre = f"insitu/{net}/snapshots/b"
    found = sorted(int(k[len(pre):len(pre) + 5]) for k in content.datasets if k.startswith(pre))
    return found[0], found[-1]


def _yerr(accs, n: int) -> np.ndarray:
    return yerr([interval(a, n) for a in accs])


def _curves(res: dict, content, path: Path) -> Path:
    t = _table(content, "cnn")
    fig, (a_loss, a_acc) = _figure(2, 10.0, 3.8)
    a_loss.plot(t["batch"], t["loss"] / _batch(res, content), lw=0.8, color="C0")
    a_loss.set_xlabel("batch (weight update)")
    a_loss.set_ylabel("cross-entropy per sample")
    a_loss.set_title("CNN in situ: training loss")
    a_loss.grid(alpha=0.3)
    a_acc.plot(t["batch"], 100 * t["train_acc"], lw=0.6, color="0.65", label="training batch")
    ev = np.isfinite(t["test_acc"])
    n = _n_test(content, "cnn")
    a_acc.errorbar(t["batch"][ev], 100 * t["test_acc"][ev], yerr=_yerr(t["test_acc"][ev], n), fmt="o-",
                   color="C0", ms=4, capsize=2, label=f"test ({n} digits, 95% CI)")
    a_acc.axhline(100 * PAPER["cnn_acc"], color="C3", ls="--", lw=1,
                  label=f"Wang 2019 in situ {100 * PAPER['cnn_acc']:.2f}% (test set)")
    a_acc.axhline(100 * res["wang_cnn_software_acc"], color="C2", ls=":", lw=1.2, label="software (float)")
    a_acc.set_xlabel("batch (weight update)")
    a_acc.set_ylabel("accuracy (%)")
    a_acc.set_title("CNN in situ: accuracy")
    a_acc.set_ylim(0, 100)
    a_acc.grid(alpha=0.3)
    for ax in (a_loss, a_acc):
        integer_ticks(ax)
    legend_below(a_acc)
    return _save(fig, path)


def _batch(res: dict, content) -> int:
    cfg = content.attrs["/insitu/cnn"]["stage_config"]
    return int(cfg.get("batch") or 100)


def _n_test(content, net: str) -> int:
    return int(content.attrs[f"/insitu/{net}"]["test_samples"])


def _accuracy(res: dict, content, path: Path) -> Path:
    n = _n_test(content, "cnn")
    names = ["in situ\n(this run)", "software\n(float)", "ex situ,\nopen loop"]
    accs = [res["wang_cnn_acc"], res["wang_cnn_software_acc"], res["wang_cnn_exsitu_acc"]]
    fig, (ax,) = _figure(1, 6.0, 4.0)
    x = np.arange(len(names))
    ax.bar(x, 100 * np.array(accs), yerr=_yerr(accs, n), capsize=4, color=["C0", "C2", "C1"], width=0.6)
    for xi, a in zip(x, accs):
        ax.text(xi, 2, f"{100 * a:.2f}%", ha="center", va="bottom", color="white", fontsize=9, fontweight="bold")
    ax.axhline(100 * PAPER["cnn_acc"], color="C3", ls="--", lw=1,
               label=f"Wang 2019 in situ {100 * PAPER['cnn_acc']:.2f}% (test set)")
    ax.set_xticks(x, names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"CNN on the 128×64 array ({n} test digits, 95% CI)")
    legend_outside(ax)
    return _save(fig, path)


def _distributions(content, path: Path) -> Path:
    first, last = _snapshots(content, "cnn")
    pre = "insitu/cnn/snapshots/b"
    g0, g1 = (content.datasets[f"{pre}{b:05d}/g_s"][0].ravel() * US_PER_S for b in (first, last))
    v0, v1 = (content.datasets[f"{pre}{b:05d}/v_gate_v"][0].ravel() for b in (first, last))
    fig, (a_g, a_v) = _figure(2, 10.0, 3.8)
    bins = np.linspace(0, max(g0.max(), g1.max()) * 1.02, 60)
    a_g.hist(g0, bins=bins, histtype="step", lw=1.2, color="0.4", label="after initialization (SET at 1.6 V gate)")
    a_g.hist(g1, bins=bins, histtype="stepfilled", alpha=0.5, color="C0", label=f"after batch {last}")
    a_g.set_xlabel("read-back conductance (µS)")
    a_g.set_ylabel("cells")
    a_g.set_title(f"CNN: conductances of {g0.size} cells")
    legend_below(a_g)
    vb = np.linspace(0.45, 2.55, 43)
    a_v.hist(v0, bins=vb, histtype="step", lw=1.2, color="0.4", label="after initialization")
    a_v.hist(v1, bins=vb, histtype="stepfilled", alpha=0.5, color="C0", label=f"after batch {last}")
    a_v.set_xlabel("gate voltage of the last SET (V)")
    a_v.set_ylabel("cells")
    a_v.set_yscale("log")
    a_v.set_ylim(bottom=0.8)
    a_v.set_title("CNN: gate voltages")
    legend_below(a_v)
    return _save(fig, path)


def _pulses(content, path: Path) -> Path:
    fig, (a_b, a_c) = _figure(2, 10.0, 3.4)
    for i, net in enumerate(("cnn", "convlstm")):
        t = _table(content, net)
        label = {"cnn": "CNN", "convlstm": "ConvLSTM"}[net]
        a_b.plot(t["batch"], t["pulses"], lw=0.8, color=f"C{i}", label=label)
        a_c.plot(t["batch"], t["pulses_total"] / 1e6, lw=1.2, color=f"C{i}", label=label)
    a_b.set_ylim(bottom=0)
    a_b.set_xlabel("batch")
    a_b.set_ylabel("pulses per batch (RESET + SET)")
    a_b.set_title("Pulses per weight update")
    a_c.set_xlabel("batch")
    a_c.set_ylabel("pulses since initialization (millions)")
    a_c.set_title("Pulses used")
    for ax in (a_b, a_c):
        ax.grid(alpha=0.3)
        integer_ticks(ax)
        legend_below(ax)
    return _save(fig, path)


def _convlstm(res: dict, content, path: Path) -> Path:
    n = _n_test(content, "convlstm")
    ins, sw = res["wang_convlstm_acc_steps"], res["wang_convlstm_software_acc_steps"]
    steps = np.arange(1, len(ins) + 1)
    fig, (ax,) = _figure(1, 6.0, 4.0)
    ax.errorbar(steps - 0.05, 100 * np.array(ins), yerr=_yerr(ins, n), fmt="o-", capsize=3,
                color="C0", label="in situ on the array")
    ax.errorbar(steps + 0.05, 100 * np.array(sw), yerr=_yerr(sw, n), fmt="s--", capsize=3,
                color="C2", label="software twin (float)")
    ax.axhline(100 * CHANCE_CONVLSTM, color="0.5", ls=":", lw=1, label="chance (1/6)")
    ax.set_xticks(steps, [f"after frame {s}" for s in steps])
    ax.set_xlim(0.6, len(ins) + 0.4)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"ConvLSTM per time step ({n} test sequences, 95% CI)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return _save(fig, path)


def methods(res: dict, content) -> str:
    """The methods paragraph, generated from the configs stored in the run record."""
    cfg = {net: content.attrs[f"/insitu/{net}"] for net in ("cnn", "convlstm")}
    sc = {net: c["stage_config"] for net, c in cfg.items()}
    y = res["wang_yield"]

    def net_text(net: str, name: str, noun: str) -> str:
        c, s = cfg[net], sc[net]
        return (f"the {name} ({res[f'wang_{net}_cells']:,} cells) on {c['train_samples']:,} training {noun}s for "
                f"{count(res[f'wang_{net}_updates'], 'update')} (mini-batch {s.get('batch') or DEFAULT_BATCH[net]}), "
                f"tested on {c['test_samples']:,} {noun}s")
    return (f"A yield scan found {y['good_rows']}/{y['n_rows']} good rows and {y['good_cols']}/{y['n_cols']} good "
            f"columns; only their crossings were used. Every weight is a pair of cells on adjacent rows, stored "
            f"twice, starting near zero. Both networks were trained in situ on the array: forward passes by "
            f"amplitude-encoded reads (inputs scaled per sample to 0.2 V), the backward pass in software from the "
            f"last read-back conductances, RMSprop (learning rate {sc['cnn']['lr']:g}, decay {sc['cnn']['decay']:g}), "
            f"updates applied open loop as gate-voltage changes of {sc['cnn']['gain_v']:g} V per weight unit, "
            f"then the array read back — {net_text('cnn', 'CNN', 'digit')}; and "
            f"{net_text('convlstm', 'ConvLSTM', 'sequence')}. Data: {cfg['cnn']['data'].get('source', '')}; "
            f"seed {res['seed']}. The software twins train the same networks in float64 on the same batches; the "
            "ex-situ figure writes the float CNN's weights to the array open loop without training there. "
            "Accuracies carry Wilson 95% intervals; a difference is called only when the intervals do not overlap.")


def wang_section(res: dict, out: Path, content) -> list[str]:
    """Write the Wang figures into `out/figures` and return the report's markdown lines."""
    out = Path(out)
    fig_dir = out / "figures"
    figs = {"Accuracy beside the paper": _accuracy(res, content, fig_dir / "wang_accuracy.png"),
            "Learning curves": _curves(res, content, fig_dir / "wang_cnn_curves.png"),
            "Conductances and gate voltages before and after training":
                _distributions(content, fig_dir / "wang_distributions.png"),
            "Pulses used": _pulses(content, fig_dir / "wang_pulses.png"),
            "ConvLSTM accuracy per time step": _convlstm(res, content, fig_dir / "wang_convlstm_steps.png")}
    n_cnn, n_lstm = _n_test(content, "cnn"), _n_test(content, "convlstm")
    a_cnn, a_lstm = content.attrs["/insitu/cnn"], content.attrs["/insitu/convlstm"]
    res["wang_provenance"] = provenance(content.station, out, "wang2019", [res["seed"]])
    ci = lambda key: interval(res[key], n_cnn)                       # noqa: E731
    lines = ["## Wang 2019: in-situ training on the 128 × 64 array", ""] + provenance_lines(res["wang_provenance"])
    lines += ["", "### Methods", "", methods(res, content), "",
              "### Results", "", f"Wall time {res['wang_seconds']:.0f} s. Accuracies with their Wilson 95% interval "
              "in points.", "",
              "| quantity | this run [95% CI] | n | Wang 2019 | paper's set |", "|---|---:|---:|---:|---|",
              f"| CNN trained in situ ({res['wang_cnn_cells']:,} cells) | {fmt(ci('wang_cnn_acc'))} | {n_cnn:,} | "
              f"{100 * PAPER['cnn_acc']:.2f}% | test set |",
              f"| CNN trained in software (float64, same batches) | {fmt(ci('wang_cnn_software_acc'))} | {n_cnn:,} "
              "| — | — |",
              f"| CNN trained ex situ, transferred open loop (no in-situ training) | "
              f"{fmt(ci('wang_cnn_exsitu_acc'))} | {n_cnn:,} | — | — |",
              f"| CNN weight updates (batches) | {res['wang_cnn_updates']:,} | — | ≈{PAPER['cnn_updates']:,} | — |",
              f"| CNN pulses (RESET + SET, initialization included) | {res['wang_cnn_pulses']:,} | — | — | — |"]
    for t, (a, s) in enumerate(zip(res["wang_convlstm_acc_steps"], res["wang_convlstm_software_acc_steps"])):
        lines.append(f"| ConvLSTM after frame {t + 1}: in situ / software | {_acc_ci(a, n_lstm)} / "
                     f"{_acc_ci(s, n_lstm)} | {n_lstm:,} | — | — |")
    last = len(res["wang_convlstm_acc_steps"]) - 1
    lines += [f"| ConvLSTM weight updates, pulses ({res['wang_convlstm_cells']:,} cells) | "
              f"{res['wang_convlstm_updates']:,}, {res['wang_convlstm_pulses']:,} | — | — | — |", "",
              "#### Differences", "",
              "- " + compare("in situ", ci("wang_cnn_acc"), "ex situ, open loop", ci("wang_cnn_exsitu_acc")),
              "- " + compare("in situ", ci("wang_cnn_acc"), "software (float)", ci("wang_cnn_software_acc")),
              "- " + compare(f"ConvLSTM in situ after frame {last + 1}",
                             interval(res["wang_convlstm_acc_steps"][last], n_lstm), "its software twin",
                             interval(res["wang_convlstm_software_acc_steps"][last], n_lstm)), "",
              "The ConvLSTM's loss is on the last frame only, so its readouts after frames 1 and 2 are not trained "
              "to classify.", ""]
    for title, p in figs.items():
        svg = p.with_suffix(".svg").relative_to(out)
        lines += [f"### {title}", "", f"![{title}]({p.relative_to(out)}) ([SVG]({svg}))", ""]
    return lines


def table_text(res: dict) -> str:
    """The Wang results as aligned plain text for the terminal (95 % intervals in brackets)."""
    n_cnn, n_lstm = res["wang_counts"]["cnn_test"], res["wang_counts"]["convlstm_test"]
    ci = lambda key: fmt(interval(res[key], n_cnn))                  # noqa: E731
    steps = lambda accs: ", ".join(f"{100 * a:.1f}%" for a in accs)   # noqa: E731
    rows = [("", "this run [95% CI]", "Wang 2019"),
            ("CNN trained in situ", ci("wang_cnn_acc"), f"{100 * PAPER['cnn_acc']:.2f}% (test set)"),
            ("CNN trained in software (float)", ci("wang_cnn_software_acc"), "—"),
            ("CNN ex situ, transferred open loop", ci("wang_cnn_exsitu_acc"), "—"),
            ("CNN weight updates", f"{res['wang_cnn_updates']:,}", f"≈{PAPER['cnn_updates']:,}"),
            (f"ConvLSTM in situ, frames 1-3 ({n_lstm} sequences)", steps(res["wang_convlstm_acc_steps"]), "—"),
            ("ConvLSTM software, frames 1-3", steps(res["wang_convlstm_software_acc_steps"]), "—")]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows) + f"\n({n_cnn} test digits)"
