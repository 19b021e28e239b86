"""The Wang 2019 section of the demo's report folder: figures (PNG at 300 dpi and SVG) and a
markdown section beside the paper's 92.13 %, every accuracy with a Wilson 95 % interval.

Everything is drawn from `run_wang_demo`'s results and its run record (the per-batch table and
the read-back snapshots of `hil.wang2019.stages`)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hil.plots import US_PER_S, _figure
from hil.wang2019.demo import PAPER

DPI = 300
Z95 = 1.959964          # two-sided 95 % normal quantile
CHANCE_CONVLSTM = 1 / 6


def wilson(acc: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `acc` measured on `n` samples."""
    if n <= 0:
        raise ValueError(f"a Wilson interval needs at least one sample, got n={n}")
    den = 1 + z * z / n
    mid = (acc + z * z / (2 * n)) / den
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def _acc_ci(acc: float, n: int) -> str:
    lo, hi = wilson(acc, n)
    return f"{100 * acc:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _save(fig, path: Path) -> Path:
    """`path` (.png, 300 dpi) and the same figure as .svg beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    fig.savefig(path.with_suffix(".svg"), format="svg")
    return path


def _table(content, net: str) -> dict:
    return {k: np.asarray(v) for k, v in content.tables[f"insitu/{net}/batches"].items()}


def _snapshots(content, net: str) -> tuple[int, int]:
    """First and last batch with a read-back snapshot of `net`."""
    pre = f"insitu/{net}/snapshots/b"
    found = sorted(int(k[len(pre):len(pre) + 5]) for k in content.datasets if k.startswith(pre))
    return found[0], found[-1]


def _yerr(accs, n: int) -> np.ndarray:
    ci = np.array([wilson(a, n) for a in accs])
    return np.abs(ci.T - np.asarray(accs))


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
    a_acc.errorbar(t["batch"][ev], 100 * t["test_acc"][ev], yerr=100 * _yerr(t["test_acc"][ev], n), fmt="o-",
                   color="C0", ms=4, capsize=2, label=f"test ({n} digits, 95% CI)")
    a_acc.axhline(100 * PAPER["cnn_acc"], color="C3", ls="--", lw=1, label=f"paper {100 * PAPER['cnn_acc']:.2f}%")
    a_acc.axhline(100 * res["wang_cnn_software_acc"], color="C2", ls=":", lw=1.2, label="software (float)")
    a_acc.set_xlabel("batch (weight update)")
    a_acc.set_ylabel("accuracy (%)")
    a_acc.set_title("CNN in situ: accuracy")
    a_acc.set_ylim(0, 100)
    a_acc.grid(alpha=0.3)
    a_acc.legend(fontsize=8, loc="lower right")
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
    ax.bar(x, 100 * np.array(accs), yerr=100 * _yerr(accs, n), capsize=4, color=["C0", "C2", "C1"], width=0.6)
    for xi, a in zip(x, accs):
        ax.text(xi, 2, f"{100 * a:.2f}%", ha="center", va="bottom", color="white", fontsize=9, fontweight="bold")
    ax.axhline(100 * PAPER["cnn_acc"], color="C3", ls="--", lw=1,
               label=f"Wang 2019 in situ {100 * PAPER['cnn_acc']:.2f}%")
    ax.set_xticks(x, names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"CNN on the 128×64 array ({n} test digits, 95% CI)")
    ax.legend(fontsize=8, loc="upper right")
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
    a_g.set_ylim(0, 1.3 * a_g.get_ylim()[1])           # room for the legend above the peaks
    a_g.set_xlabel("read-back conductance (µS)")
    a_g.set_ylabel("cells")
    a_g.set_title(f"CNN: conductances of {g0.size} cells")
    a_g.legend(fontsize=8, loc="upper right")
    vb = np.linspace(0.45, 2.55, 43)
    a_v.hist(v0, bins=vb, histtype="step", lw=1.2, color="0.4", label="after initialization")
    a_v.hist(v1, bins=vb, histtype="stepfilled", alpha=0.5, color="C0", label=f"after batch {last}")
    a_v.set_xlabel("gate voltage of the last SET (V)")
    a_v.set_ylabel("cells")
    a_v.set_yscale("log")
    a_v.set_ylim(0.8, 20 * a_v.get_ylim()[1])
    a_v.set_title("CNN: gate voltages")
    a_v.legend(fontsize=8, loc="upper left")
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
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _convlstm(res: dict, content, path: Path) -> Path:
    n = _n_test(content, "convlstm")
    ins, sw = res["wang_convlstm_acc_steps"], res["wang_convlstm_software_acc_steps"]
    steps = np.arange(1, len(ins) + 1)
    fig, (ax,) = _figure(1, 6.0, 4.0)
    ax.errorbar(steps - 0.05, 100 * np.array(ins), yerr=100 * _yerr(ins, n), fmt="o-", capsize=3,
                color="C0", label="in situ on the array")
    ax.errorbar(steps + 0.05, 100 * np.array(sw), yerr=100 * _yerr(sw, n), fmt="s--", capsize=3,
                color="C2", label="software twin (float)")
    ax.axhline(100 * CHANCE_CONVLSTM, color="0.5", ls=":", lw=1, label="chance (1/6)")
    ax.set_xticks(steps, [f"after frame {s}" for s in steps])
    ax.set_xlim(0.6, len(ins) + 0.4)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"ConvLSTM per time step ({n} test sequences, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


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
    y = res["wang_yield"]
    lines = ["## Wang 2019: in-situ training on the 128 × 64 array", "",
             f"Data: {a_cnn['data'].get('source', '')} — {a_cnn['train_samples']} training / "
             f"{n_cnn} test digits; MNIST-sequences {a_lstm['train_samples']} / {n_lstm}. Seed {res['seed']}. "
             f"Yield scan: {y['good_rows']}/{y['n_rows']} good rows, {y['good_cols']}/{y['n_cols']} good columns. "
             f"Wall time {res['wang_seconds']:.0f} s. Accuracies with their Wilson 95% interval.", "",
             "| quantity | this run | Wang 2019 |", "|---|---:|---:|",
             f"| CNN trained in situ ({res['wang_cnn_cells']} cells) | {_acc_ci(res['wang_cnn_acc'], n_cnn)} | "
             f"{100 * PAPER['cnn_acc']:.2f}% |",
             f"| CNN trained in software (float64, same batches) | "
             f"{_acc_ci(res['wang_cnn_software_acc'], n_cnn)} | — |",
             f"| CNN trained ex situ, transferred open loop (no in-situ training) | "
             f"{_acc_ci(res['wang_cnn_exsitu_acc'], n_cnn)} | — |",
             f"| CNN weight updates (batches) | {res['wang_cnn_updates']:,} | ≈{PAPER['cnn_updates']:,} |",
             f"| CNN pulses (RESET + SET, initialization included) | {res['wang_cnn_pulses']:,} | — |"]
    for t, (a, s) in enumerate(zip(res["wang_convlstm_acc_steps"], res["wang_convlstm_software_acc_steps"])):
        lines.append(f"| ConvLSTM after frame {t + 1}: in situ / software | {_acc_ci(a, n_lstm)} / "
                     f"{_acc_ci(s, n_lstm)} | — |")
    lines += [f"| ConvLSTM weight updates, pulses ({res['wang_convlstm_cells']} cells) | "
              f"{res['wang_convlstm_updates']:,}, {res['wang_convlstm_pulses']:,} | — |", "",
              f"What in-situ training buys: {100 * (res['wang_cnn_acc'] - res['wang_cnn_exsitu_acc']):+.1f} points "
              "over the float-trained weights written open loop (no verify, no training on the array); "
              f"{100 * (res['wang_cnn_acc'] - res['wang_cnn_software_acc']):+.1f} points against the float figure "
              "itself. The ConvLSTM's loss is on the last frame only, so its readouts after frames 1 and 2 are "
              "not trained to classify.", ""]
    for title, p in figs.items():
        svg = p.with_suffix(".svg").relative_to(out)
        lines += [f"### {title}", "", f"![{title}]({p.relative_to(out)}) ([SVG]({svg}))", ""]
    return lines


def table_text(res: dict) -> str:
    """The Wang results as aligned plain text for the terminal."""
    steps = lambda accs: ", ".join(f"{100 * a:.1f}%" for a in accs)   # noqa: E731
    rows = [("", "this run", "Wang 2019"),
            ("CNN trained in situ", f"{100 * res['wang_cnn_acc']:.2f}%", f"{100 * PAPER['cnn_acc']:.2f}%"),
            ("CNN trained in software (float)", f"{100 * res['wang_cnn_software_acc']:.2f}%", "—"),
            ("CNN ex situ, transferred open loop", f"{100 * res['wang_cnn_exsitu_acc']:.2f}%", "—"),
            ("CNN weight updates", f"{res['wang_cnn_updates']:,}", f"≈{PAPER['cnn_updates']:,}"),
            ("ConvLSTM in situ, frames 1-3", steps(res["wang_convlstm_acc_steps"]), "—"),
            ("ConvLSTM software, frames 1-3", steps(res["wang_convlstm_software_acc_steps"]), "—")]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows)
