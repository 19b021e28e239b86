"""The Wang 2019 reproduction: `run_wang_demo` chains the stages of `hil.wang2019.stages` over
one run record (the same functions `hil wang yield|train|evaluate` call):

1. yield scan of the 128 x 64 array (good rows and columns);
2. the CNN trained in software (float64, the same batches and number of updates) -> its test
   accuracy, and the same weights transferred open loop onto the array (no verify, no in-situ
   training) -> the ex-situ figure that in-situ training is compared with;
3. the CNN trained in situ (all layers, 1,200 updates by default) -> test accuracy on the array;
4. the ConvLSTM trained in situ, and its software twin -> accuracy after each of the 3 frames.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.progress import Bars, CancelToken, no_bars
from hil.report.accuracy import add_intervals
from hil.wang2019 import stages
from hil.wang2019.data import WangData
from hil.wang2019.insitu import G_PER_V_S, transfer_open_loop
from hil.wang2019.stages import DataConfig, InsituConfig, YieldScanConfig
from hil.wang2019.train import train_software

log = logging.getLogger(__name__)

#: Wang et al. 2019 (PAPERS.md §B): in-situ CNN test accuracy (test set, 10,000 images [est]) and weight updates
PAPER = {"cnn_acc": 0.9213, "cnn_updates": stages.PAPER_CNN_UPDATES}

@dataclass
class WangDemoConfig(Config):
    """Everything `hil wang demo` varies (`seed`: data split and software initialization)."""

    seed: int = param(0, lo=0, hi=stages.MAX_SEED)
    yield_scan: YieldScanConfig = param(factory=YieldScanConfig)
    cnn: InsituConfig = param(factory=lambda: InsituConfig(net="cnn"))
    convlstm: InsituConfig = param(factory=lambda: InsituConfig(net="convlstm"))
    g_per_v_s: float = param(G_PER_V_S, lo=0.0, hi=1.0, lo_open=True)   # slope used by the ex-situ transfer

    @classmethod
    def default(cls, seed: int = 0, data: Optional[str] = None) -> "WangDemoConfig":
        d = DataConfig(source=data, seed=seed)
        return cls(seed=seed, cnn=InsituConfig(net="cnn", data=d), convlstm=InsituConfig(net="convlstm", data=d))

    @classmethod
    def quick(cls, seed: int = 0, data: Optional[str] = None) -> "WangDemoConfig":
        """A short run for tests and a first look (seconds): 40 CNN and 24 ConvLSTM updates."""
        d = DataConfig(source=data, seed=seed, train_sequences=600, test_sequences=300)
        return cls(seed=seed,
                   cnn=InsituConfig(net="cnn", data=d, epochs=4, train_samples=1000, test_samples=300, eval_every=20),
                   convlstm=InsituConfig(net="convlstm", data=d, epochs=2, eval_every=12))


def _software(d: WangData, cfg: InsituConfig, seed: int, progress, cancel):
    """The float twin trained on the same samples, batches and number of updates as in situ
    (Glorot initialization from `seed`); returns (net, test accuracy)."""
    net = stages.make_net(cfg.net)
    x_tr, y_tr, x_te, y_te = stages.subset(d, cfg)
    sub = WangData(x_tr, y_tr, x_te, y_te, d.n_classes, d.source)
    train_software(net, sub, epochs=cfg.n_epochs(len(y_tr)), batch=cfg.batch_size(), seed=seed,
                   progress=progress, cancel=cancel)
    return net, net.accuracy(x_te, y_te)


def run_wang_demo(xbar: Crossbar, writer, cfg: WangDemoConfig, *, bars: Bars = no_bars,
                  cancel: Optional[CancelToken] = None, say: Callable[[str], None] = log.info) -> dict:
    """All Wang 2019 stages on `xbar`; returns the results dict (also stored in the record)."""
    return _run(xbar, writer, cfg, bars, cancel, say)


def _run(xbar, writer, cfg: WangDemoConfig, bars, cancel, say) -> dict:
    t0 = time.perf_counter()
    for name in stages.NETS:
        stages.check_fits(xbar.geometry, stages.make_net(name))     # before the chip is touched
    writer.set_attrs("demo", stage_config=cfg.to_dict())
    say("yield scan of the array")
    ymap = stages.yield_scan(xbar, writer, cfg.yield_scan, bars("yield scan", "step"), cancel)
    res: dict = {"seed": cfg.seed, "wang_yield": ymap.summary(), "wang_paper": PAPER}

    digits = stages.load_data(cfg.cnn.data, "cnn")
    say(f"CNN in software (float) on {digits.source}")
    sw, res["wang_cnn_software_acc"] = _software(digits, cfg.cnn, cfg.seed, bars("CNN software", "batch"), cancel)
    say("CNN transferred ex situ, open loop")
    ex = transfer_open_loop(xbar, sw, stages.placement_for(xbar, ymap, sw), cfg.g_per_v_s, cfg.cnn.gate_max)
    res["wang_cnn_exsitu_acc"] = ex.accuracy(*stages.subset(digits, cfg.cnn)[2:])
    writer.set_attrs("exsitu/cnn", test_acc=res["wang_cnn_exsitu_acc"], software_acc=res["wang_cnn_software_acc"],
                     g_per_v_s=cfg.g_per_v_s, pulses=ex.engine.pulses)
    writer.put("exsitu/cnn/g_s", ex.conductances(), unit="S", axes="sign (+, -), weight, copy")

    say("CNN trained in situ")
    cnn = stages.train_insitu(xbar, writer, cfg.cnn, bars("CNN in situ", "batch"), cancel, digits)
    res.update(wang_cnn_acc=cnn.test_acc, wang_cnn_updates=cnn.updates, wang_cnn_pulses=cnn.pulses,
               wang_cnn_cells=cnn.network.placement.n_cells)

    seqs = stages.load_data(cfg.convlstm.data, "convlstm")
    say(f"ConvLSTM trained in situ on {seqs.source}")
    lstm = stages.train_insitu(xbar, writer, cfg.convlstm, bars("ConvLSTM in situ", "batch"), cancel, seqs)
    res.update(wang_convlstm_acc_steps=lstm.test_acc, wang_convlstm_updates=lstm.updates,
               wang_convlstm_pulses=lstm.pulses, wang_convlstm_cells=lstm.network.placement.n_cells)
    say("ConvLSTM in software (float)")
    res["wang_convlstm_software_acc_steps"] = _software(seqs, cfg.convlstm, cfg.seed,
                                                        bars("ConvLSTM software", "batch"), cancel)[1]
    n_cnn, n_lstm = (int(writer.content.attrs[f"/insitu/{k}"]["test_samples"]) for k in ("cnn", "convlstm"))
    res["wang_counts"] = {"cnn_test": n_cnn, "convlstm_test": n_lstm}
    add_intervals(res, {"wang_cnn_acc": n_cnn, "wang_cnn_software_acc": n_cnn, "wang_cnn_exsitu_acc": n_cnn,
                        "wang_convlstm_acc_steps": n_lstm, "wang_convlstm_software_acc_steps": n_lstm})
    res["wang_seconds"] = time.perf_counter() - t0
    writer.set_attrs("results", **res)
    return res



def station_cost(xbar: Crossbar, writer, transactions: Callable[[], int], *, batches: int = 20, batch: int = 100,
                 test_samples: int = 100, seed: int = 0, data: Optional[WangData] = None) -> dict:
    """What the CNN's in-situ training costs on `xbar`'s station: a yield scan, then `batches`
    training batches (the training stage; the test set scored once, after the last) while
    `transactions()` (the station's bus transactions so far; the caller knows its instruments)
    and the station clock `xbar.now()` are sampled after every batch. Returns the transactions
    and station seconds of every batch (the first includes the weights' initialization, the last
    the test evaluation), their medians over the plain batches, and the estimated station time of
    the paper's whole run: yield scan + initialization + 1,200 batches + a 1,000-digit test
    evaluation every 120 batches (`InsituConfig`'s default) at the measured cost per test digit."""
    if batches < 3:
        raise ValueError(f"station_cost needs at least 3 batches (first and last are not plain), got {batches}")
    t0, n0 = xbar.now(), transactions()
    stages.yield_scan(xbar, writer, YieldScanConfig())
    marks = [(xbar.now(), transactions())]
    cfg = InsituConfig(net="cnn", data=DataConfig(seed=seed), epochs=1, batch=batch, train_samples=batches * batch,
                       test_samples=test_samples, eval_every=batches)
    wall = time.perf_counter()
    r = stages.train_insitu(xbar, writer, cfg, data=data,
                            on_batch=lambda row: marks.append((xbar.now(), transactions())))
    wall = time.perf_counter() - wall
    clock, count = (np.diff([m[i] for m in marks]) for i in (0, 1))
    per_batch_s = float(np.median(clock[1:-1]))
    init_s = float(clock[0] - per_batch_s)
    eval_s_per_digit = float((clock[-1] - per_batch_s) / test_samples)
    yield_s = float(marks[0][0] - t0)
    evals = stages.PAPER_CNN_UPDATES // InsituConfig.eval_every
    return {"batches": batches, "batch": batch, "test_acc": r.test_acc, "pulses": r.pulses,
            "losses": [row["loss"] / batch for row in r.rows],
            "transactions_per_batch": [int(c) for c in count], "station_s_per_batch": [float(c) for c in clock],
            "median_transactions_per_batch": float(np.median(count[1:-1])), "median_station_s_per_batch": per_batch_s,
            "yield_scan_s": yield_s, "yield_scan_transactions": int(marks[0][1] - n0), "init_s": init_s,
            "eval_s_per_test_digit": eval_s_per_digit, "wall_s_per_batch": wall / batches,
            "whole_run_station_s": yield_s + init_s + stages.PAPER_CNN_UPDATES * per_batch_s
            + evals * 1000 * eval_s_per_digit}
