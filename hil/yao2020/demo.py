"""The Yao 2020 reproduction as stages over one run record: train, transfer, hybrid, after.

Each stage is a plain function over (crossbar, run writer, progress, cancel) that stores what
it produced in the run record, so `hil train`, `hil transfer`, `hil hybrid` and `hil demo`
share them and a cut-off run continues from the record. `run_demo` chains them:

1. ex-situ training of the mCNN (quantization-aware) -> software accuracy;
2. allocation plan (3 convolver groups on 6 PEs, FC on 2) and weight transfer by write-verify;
3. single convolver (G1): accuracy after transfer, hybrid training of the FC layer in situ;
4. parallel convolvers: FC transferred again, per-group accuracy after transfer, hybrid training
   of the shared FC on all groups' outputs, per-group and parallel accuracy after;
5. convolution throughput of 1 vs 3 groups and energy at the paper's per-stage figures;
6. accuracy against time on the virtual clock (10 min .. 30 days) and after 1e6 reads.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from hil.crossbar import Crossbar
from hil.nn.datasets import Dataset
from hil.errors import DataError
from hil.yao2020.hwnet import CONV_LAYERS, HardwareMCNN, TransferReport, plan_mcnn, transfer
from hil.yao2020.hybrid import HybridConfig, accuracy, hybrid_train
from hil.analog.mapping import AllocationPlan, PairEncoding
from hil.yao2020.mcnn import MCNN, train_mcnn
from hil.nn.core import blas_threads
from hil.progress import CancelToken, ProgressCallback, no_progress
from hil.runstore import RunWriter

log = logging.getLogger(__name__)

# Yao et al. 2020 figures for the report (PAPERS.md §A).
PAPER = {"software_acc": 0.9799, "transfer_acc": 0.9507, "hybrid_acc": 0.9619, "parallel_acc": 0.9583,
         "group_train_err_transfer": [0.0482, 0.0643, 0.0585], "group_train_err_hybrid": [0.0289, 0.0422, 0.0340],
         "gops_per_w": 11014.0}
# Record status after a stage: the record stays resumable by the next stage ("complete" is final).
STAGE_DONE = {"train": "trained", "transfer": "transferred", "hybrid": "hybrid-trained"}
DAY = 86400.0
AFTER_TIMES_S = (600.0, 3600.0, 7200.0, DAY, 7 * DAY, 30 * DAY)

Bars = Callable[[str, str], ProgressCallback]


def _no_bars(desc: str, unit: str) -> ProgressCallback:
    return no_progress


@dataclass
class DemoConfig:
    """Everything `hil demo` varies."""

    seed: int = 0
    groups: int = 3
    train_epochs: int = 12
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    settle_s: float = 600.0           # virtual time between transfer and the first inference
    test_images: Optional[int] = None  # None: the whole test part
    after_images: int = 1000          # test images scored at each point of the time series
    disturb_reads: int = 1_000_000
    after_times_s: tuple = AFTER_TIMES_S

    @classmethod
    def quick(cls, seed: int = 0) -> "DemoConfig":
        """A shorter run for a first look (under 2 minutes on 2 cores)."""
        return cls(seed=seed, train_epochs=4, hybrid=HybridConfig(epochs=3, lr_levels=0.03, seed=seed),
                   test_images=500, after_images=300, after_times_s=(600.0, 7200.0, DAY, 30 * DAY))


# ---- stage 1: training ------------------------------------------------------------------------
def train_stage(ds: Dataset, writer: RunWriter, *, epochs: int, seed: int,
                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None):
    """Ex-situ training; stores the model and per-epoch history. Returns (model, history)."""
    model, history = train_mcnn(ds, epochs=epochs, seed=seed, progress=progress, cancel=cancel,
                                on_epoch=lambda r: writer.append("training/epochs", **_row(r)))
    save_model(writer, model)
    n = len(ds.x_test)
    acc_q = model.accuracy(ds.x_test, ds.y_test, quantized=True)
    acc_f = model.accuracy(ds.x_test, ds.y_test, quantized=False)
    writer.set_attrs("training", dataset=ds.describe(), epochs=epochs, seed=seed, test_images=n,
                     software_acc=acc_q, software_float_acc=acc_f)
    return model, history


def save_model(writer: RunWriter, model: MCNN) -> None:
    for name, arr in model.to_arrays().items():
        writer.put(f"model/{name}", arr)
    writer.set_attrs("model", **model.attrs())


def load_model(content) -> MCNN:
    """The trained model stored in a run record's content."""
    arrays = {k.split("/")[-1]: v[0] for k, v in content.datasets.items() if k.lstrip("/").startswith("model/")}
    if not arrays:
        raise DataError("the run record holds no trained model; run `hil train` first")
    return MCNN.from_arrays(arrays, _group_attrs(content, "model"))


def _group_attrs(content, group: str) -> dict:
    """Attributes of a record group (stored under '/group')."""
    return content.attrs.get("/" + group, content.attrs.get(group, {}))


def _row(r: dict) -> dict:
    return {k: np.array([v]) for k, v in r.items() if isinstance(v, (int, float, np.floating, np.integer))}


# ---- stage 2: transfer ------------------------------------------------------------------------
def transfer_stage(xbar: Crossbar, model: MCNN, writer: RunWriter, *, groups: int = 3,
                   enc: Optional[PairEncoding] = None, resume: bool = False,
                   progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> tuple[AllocationPlan, TransferReport]:
    """Plan the network on the chip and program every weight; stores the plan."""
    plan = plan_mcnn(xbar.geometry, model, groups)
    writer.set_attrs("plan", plan=plan.to_dict(), table=plan.table())
    rep = transfer(xbar, model, plan, writer, enc=enc, prefix="transfer", resume=resume,
                   progress=progress, cancel=cancel)
    return plan, rep


def load_plan(content) -> AllocationPlan:
    try:
        return AllocationPlan.from_dict(_group_attrs(content, "plan")["plan"])
    except KeyError:
        raise DataError("the run record holds no allocation plan; run `hil transfer` first") from None


# ---- the whole demo ------------------------------------------------------------------------
def run_demo(xbar: Crossbar, ds: Dataset, writer: RunWriter, cfg: DemoConfig, *,
             bars: Bars = _no_bars, cancel: Optional[CancelToken] = None,
             say: Callable[[str], None] = log.info) -> dict:
    """All stages on `xbar`; returns the results dict (also stored in the run record)."""
    with blas_threads(1):        # small matrices: one BLAS thread is several times faster here
        return _run_demo(xbar, ds, writer, cfg, bars=bars, cancel=cancel, say=say)


def _run_demo(xbar, ds, writer, cfg, *, bars, cancel, say) -> dict:
    t0 = time.perf_counter()
    res: dict = {"seed": cfg.seed, "dataset": ds.describe(), "config": asdict(cfg)}
    xt, yt = ds.x_test, ds.y_test
    if cfg.test_images:
        xt, yt = xt[:cfg.test_images], yt[:cfg.test_images]

    plan_mcnn(xbar.geometry, MCNN(seed=cfg.seed), cfg.groups)     # fail before training if it cannot fit
    say(f"training the mCNN ex situ on {len(ds.x_train)} digits ({cfg.train_epochs} epochs)")
    model, hist = train_stage(ds, writer, epochs=cfg.train_epochs, seed=cfg.seed,
                              progress=bars("train", "batch"), cancel=cancel)
    res["software_acc"] = model.accuracy(xt, yt, quantized=True)
    res["software_float_acc"] = model.accuracy(xt, yt, quantized=False)
    res["training_history"] = hist

    say("weight transfer by write-verify")
    plan, rep = transfer_stage(xbar, model, writer, groups=cfg.groups, progress=bars("transfer", "cell"),
                               cancel=cancel)
    res["plan"] = plan.table()
    res["transfer"] = rep.summary()
    hw = HardwareMCNN(xbar, model, plan)
    res["adc_full_scale_a"] = hw.calibrate_adc(ds.x_train[:64])
    _settle(xbar, cfg.settle_s)

    # Convolver outputs, measured once (the convolution weights do not change in training).
    groups = list(range(plan.groups))
    test_codes = [hw.features(xt, g, progress=bars(f"test images G{g + 1}", "img"), cancel=cancel) for g in groups]
    sub = ds.subset(cfg.hybrid.fraction, cfg.seed)
    which = hw.dispatch(len(sub.x_train))
    sub_g1 = hw.features(sub.x_train, 0, progress=bars("training subset G1", "img"), cancel=cancel)
    sub_par = np.zeros_like(sub_g1)
    for g in groups:
        sel = which == g
        sub_par[sel] = sub_g1[sel] if g == 0 else hw.features(sub.x_train[sel], g, cancel=cancel)

    # Single convolver: transfer then hybrid training of the FC on G1's outputs.
    res["transfer_acc"] = accuracy(hw, test_codes[0], yt)
    say(f"single convolver G1 after transfer: {res['transfer_acc']:.2%}; hybrid training on "
        f"{len(sub.x_train)} digits")
    hist_a = hybrid_train(hw, sub_g1, sub.y_train, cfg.hybrid, evals={"test": (test_codes[0], yt),
                          "train": (sub_g1, sub.y_train)}, writer=writer, prefix="hybrid_single",
                          progress=bars("hybrid G1", "batch"), cancel=cancel)
    res["hybrid_acc"] = hist_a[-1]["acc_test"]
    res["hybrid_single_history"] = hist_a

    # Parallel convolvers: FC back to its ex-situ weights, then hybrid training on all groups.
    say("parallel convolvers: FC transferred again, hybrid training on all groups' outputs")
    transfer(xbar, model, plan, writer, layers=["fc"], prefix="transfer_fc", progress=bars("FC transfer", "cell"),
             cancel=cancel)
    par_test = np.stack(test_codes)[hw.dispatch(len(xt)), np.arange(len(xt))]
    evals = {f"g{g + 1}": (test_codes[g], yt) for g in groups}
    evals["parallel"] = (par_test, yt)
    for g in groups:
        evals[f"train_g{g + 1}"] = (sub_par[which == g], sub.y_train[which == g])
    res["group_acc_transfer"] = [accuracy(hw, test_codes[g], yt) for g in groups]
    res["parallel_transfer_acc"] = accuracy(hw, par_test, yt)
    hist_b = hybrid_train(hw, sub_par, sub.y_train, cfg.hybrid, evals=evals, writer=writer,
                          prefix="hybrid_parallel", progress=bars("hybrid G1-G3", "batch"), cancel=cancel)
    res["group_acc_hybrid"] = [hist_b[-1][f"acc_g{g + 1}"] for g in groups]
    res["group_train_acc_transfer"] = [hist_b[0][f"acc_train_g{g + 1}"] for g in groups]
    res["group_train_acc_hybrid"] = [hist_b[-1][f"acc_train_g{g + 1}"] for g in groups]
    res["parallel_acc"] = hist_b[-1]["acc_parallel"]
    res["hybrid_parallel_history"] = hist_b

    # Throughput (timing model) of 1 vs all groups, energy of parallel inference.
    n_t = min(len(xt), 300)
    hw.ledger.reset()
    hw.features(xt[:n_t], 0, cancel=cancel)
    one = hw.ledger.summary(hw.energy, CONV_LAYERS)
    hw.ledger.reset()
    hw.fc_logits(hw.parallel_features(xt[:n_t], cancel=cancel))
    par = hw.ledger.summary(hw.energy, CONV_LAYERS)
    full = hw.ledger.summary(hw.energy)
    res["conv_images_per_s_1group"] = n_t / one["wall_s"]
    res["conv_images_per_s_parallel"] = n_t / par["wall_s"]
    res["conv_throughput_ratio"] = one["wall_s"] / par["wall_s"]
    res["gops_per_w"] = full["gops_per_w"]
    res["energy"] = full
    writer.set_attrs("throughput", one_group=one, parallel=par, inference=full)

    # After training: read disturb on G1's convolution weights, then the clock.
    res["after"] = after_training(xbar, hw, xt[:cfg.after_images], yt[:cfg.after_images], cfg, writer,
                                  bars=bars, cancel=cancel)
    res["saturation"] = hw.saturation()
    res["seconds"] = time.perf_counter() - t0
    writer.set_attrs("results", **{k: v for k, v in res.items() if not k.endswith("history")})
    return res


def _settle(xbar: Crossbar, seconds: float) -> None:
    if seconds > 0 and xbar.has("advance"):
        xbar.advance(seconds)


def after_training(xbar: Crossbar, hw: HardwareMCNN, x, y, cfg: DemoConfig, writer: RunWriter, *,
                   bars: Bars = _no_bars, cancel: Optional[CancelToken] = None) -> dict:
    """Parallel-system accuracy after 1e6 reads of G1's convolution weights and against time."""
    out: dict = {"images": int(len(x))}

    def score() -> float:
        return accuracy(hw, hw.parallel_features(x, cancel=cancel), y)

    before = score()
    if xbar.has("read_stress") and cfg.disturb_reads > 0:
        for name in CONV_LAYERS:
            cells = hw.plan.cells(name, 0)[0]
            xbar.read_stress(cells, cfg.disturb_reads)
        out["disturb"] = {"reads": cfg.disturb_reads, "acc_before": before,
                          "acc_g1_after": accuracy(hw, hw.features(x, 0, cancel=cancel), y),
                          "acc_after": score()}
        writer.set_attrs("after/disturb", **out["disturb"])
    if xbar.has("advance"):
        t_start = xbar.now()
        times, accs = [], []
        bar = bars("accuracy against time", "point")
        from hil.progress import Progress
        for k, t in enumerate(cfg.after_times_s):
            xbar.advance(max(0.0, t_start + t - xbar.now()))
            times.append(float(t))
            accs.append(score())
            writer.append("after/time_series", t_s=np.array([t]), acc=np.array([accs[-1]]))
            bar(Progress(k + 1, len(cfg.after_times_s), f"{t / 3600:.3g} h", "point"))
        out["time_s"], out["acc"] = times, accs
    return out
