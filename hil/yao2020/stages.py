"""The Yao 2020 stages: train, transfer, hybrid, parallel groups, aging.

Each stage is ``stage(xbar, writer, config, progress=None, cancel=None, dataset=None)``: it
reads what earlier stages left in the run record (model, plan, ADC calibration, measured
convolver outputs), stores its config (``<group>.stage_config``) and what it produced, and
returns a typed result. `hil demo`, `hil train|transfer|hybrid` and the GUI call only these.
``dataset`` overrides loading the data named by the config (a caller that holds it already).
Each stage has a ``check_<stage>`` that a front end runs before the record changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError
from hil.analog.mapping import AllocationPlan
from hil.nn.datasets import Dataset, load_dataset
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter
from hil.yao2020.hwnet import CONV_LAYERS, HardwareMCNN, TransferReport, plan_mcnn
from hil.yao2020.hwnet import transfer as transfer_weights
from hil.yao2020.hybrid import HybridConfig, accuracy, holdout_indices, hybrid_train
from hil.yao2020.mcnn import MCNN, train_mcnn

KIND = "mcnn"
#: record status after a stage: resumable by the next stage ("complete" is final)
STAGE_DONE = {"train": "trained", "transfer": "transferred", "hybrid": "hybrid-trained"}
DAY = 86400.0
AFTER_TIMES_S = (600.0, 3600.0, 7200.0, DAY, 7 * DAY, 30 * DAY)
MAX_SEED = 2**32 - 1


# ---- configs -----------------------------------------------------------------------------
@dataclass
class DataConfig(Config):
    """Which digits: a folder of MNIST IDX files (None: $HIL_MNIST_DIR, else the embedded 5,000)."""

    source: Optional[str] = None
    seed: int = param(0, lo=0, hi=MAX_SEED)          # seed of the train/test split
    download: bool = False


@dataclass
class TrainConfig(Config):
    """Ex-situ training of the mCNN."""

    data: DataConfig = param(factory=DataConfig)
    epochs: int = param(20, lo=1, hi=1000)
    fraction: float = param(1.0, lo=0.0, hi=1.0, lo_open=True)   # of the training digits
    holdout: float = param(0.1, lo=0.0, hi=0.5)   # of the training digits, kept out for hybrid training to stop on
    seed: int = param(0, lo=0, hi=MAX_SEED)


@dataclass
class TransferConfig(Config):
    """Plan, write-verify transfer and ADC calibration (data: the training data if None)."""

    groups: int = param(3, lo=1, hi=64)
    data: Optional[DataConfig] = None
    adc_images: int = param(64, lo=1, hi=100_000)
    settle_s: float = param(0.0, lo=0.0, hi=3650 * DAY)  # station clock between transfer and inference


@dataclass
class HybridStageConfig(Config):
    """Hybrid training of the FC layer on the outputs of some convolver groups."""

    hybrid: HybridConfig = param(factory=HybridConfig)
    data: Optional[DataConfig] = None
    groups: tuple[int, ...] = param((), lo=1, hi=64)     # 1-based convolver groups; () = all
    test_images: Optional[int] = param(None, lo=1, hi=10_000_000)   # None: the whole test part
    group_evals: bool = True                             # score every group on the test images each epoch
    reset_fc: bool = False                               # program the FC's ex-situ weights again first
    prefix: str = "hybrid"


@dataclass
class ParallelConfig(Config):
    """Parallel convolvers: FC transferred again, hybrid training on all groups, throughput."""

    hybrid: HybridStageConfig = param(factory=lambda: HybridStageConfig(reset_fc=True, prefix="hybrid_parallel"))
    throughput_images: int = param(300, lo=0, hi=1_000_000)


@dataclass
class AgingConfig(Config):
    """Accuracy of the parallel system after read disturb of G1's convolution weights and over time."""

    data: Optional[DataConfig] = None
    images: int = param(1000, lo=1, hi=10_000_000)
    disturb_reads: int = param(1_000_000, lo=0, hi=10**9)
    times_s: tuple[float, ...] = param(AFTER_TIMES_S, lo=0.0, hi=3650 * DAY)


# ---- results -------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: MCNN
    history: list
    software_acc: float
    software_float_acc: float
    dataset: dict
    train_images: int


@dataclass
class TransferResult:
    plan: AllocationPlan
    report: TransferReport
    adc_full_scale_a: dict
    resumed: bool


@dataclass
class HybridResult:
    history: list
    groups: list                       # zero-based groups trained on
    transfer_acc: float                # test accuracy (selected groups) before training
    group_acc_transfer: list           # per plan group, before training (with group_evals)
    resumed_from_epoch: int
    n_train: int
    n_test: int
    hw: HardwareMCNN = field(repr=False)
    eval_n: dict = field(default_factory=dict)   # samples behind each history key `acc_<name>`


@dataclass
class ParallelResult:
    hybrid: HybridResult
    throughput: dict


# ---- record access -----------------------------------------------------------------------
def group_attrs(content, group: str) -> dict:
    """Attributes of a record group."""
    return content.attrs.get("/" + group, content.attrs.get(group, {}))


def save_model(writer: RunWriter, model: MCNN) -> None:
    for name, arr in model.to_arrays().items():
        writer.put(f"model/{name}", arr)
    writer.set_attrs("model", **model.attrs())


def load_model(content) -> MCNN:
    """The trained model stored in a run record's content."""
    arrays = {k.split("/")[-1]: v[0] for k, v in content.datasets.items() if k.lstrip("/").startswith("model/")}
    if not arrays:
        raise DataError("the run record holds no trained model; run `hil train` first")
    return MCNN.from_arrays(arrays, group_attrs(content, "model"))


def load_plan(content) -> AllocationPlan:
    try:
        return AllocationPlan.from_dict(group_attrs(content, "plan")["plan"])
    except KeyError:
        raise DataError("the run record holds no allocation plan; run `hil transfer` first") from None


def stored_config(content, group: str, cls):
    """The config a stage stored in the record (None if the stage never started)."""
    d = group_attrs(content, group).get("stage_config")
    return None if d is None else cls.from_dict(d, f"the record's {group}.stage_config")


def carry_network(writer: RunWriter, content) -> None:
    """Start a record from the network another record transferred to the chip (model, plan, ADC
    calibration, the chip it is on), for another hybrid training of the same network."""
    for name, (arr, attrs) in content.datasets.items():
        if name.startswith("model/"):
            writer.put(name, arr, **attrs)
    for group in ("model", "plan", "adc"):
        writer.set_attrs(group, **group_attrs(content, group))
    writer.set_attrs("transfer", chip=group_attrs(content, "transfer").get("chip"))


def hardware(xbar: Crossbar, content) -> HardwareMCNN:
    """The transferred network on `xbar` with the ADC calibration stored by the transfer stage."""
    adc = group_attrs(content, "adc").get("full_scale_a")
    if adc is None:
        raise DataError("the run record holds no ADC calibration; run the transfer stage first")
    return HardwareMCNN(xbar, load_model(content), load_plan(content), adc_full_scale_a=adc)


@lru_cache(maxsize=2)
def _load(source, seed, download) -> Dataset:
    return load_dataset(source, seed=seed, download=download)


def _data(content, cfg: Optional[DataConfig], dataset: Optional[Dataset]) -> Dataset:
    if dataset is not None:
        return dataset
    if cfg is None:
        tr = stored_config(content, "training", TrainConfig)
        cfg = tr.data if tr is not None else DataConfig()
    return _load(cfg.source, cfg.seed, cfg.download)


def _held_out(content, ds: Dataset) -> tuple[Dataset, np.ndarray]:
    """(the training digits ex-situ training drew from, indices of those it held out) by the
    record's `training/holdout` (none in a record without it)."""
    held = content.datasets.get("training/holdout")
    held = np.asarray(held[0], np.int64) if held is not None else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(ds.n_train), held)
    return Dataset(ds.x_train[keep], ds.y_train[keep], ds.x_test, ds.y_test, ds.source), held


def hybrid_digits(content, cfg: "HybridStageConfig", ds: Dataset) -> tuple[np.ndarray, np.ndarray, int]:
    """(images, labels, k) hybrid training runs through the chip: its subset of the digits ex-situ
    training used, then the k digits ex-situ training held out (its stopping set)."""
    pool, held = _held_out(content, ds)
    sub = cfg.hybrid.subset(pool)
    return (np.concatenate([sub.x_train, ds.x_train[held]]), np.concatenate([sub.y_train, ds.y_train[held]]),
            len(held))


def _chip(xbar) -> Optional[dict]:
    return xbar.describe().get("chip") or getattr(xbar, "chip_identity", None)


# ---- train ---------------------------------------------------------------------------------
def train(xbar: Optional[Crossbar], writer: RunWriter, cfg: TrainConfig, progress: Optional[ProgressCallback] = None,
          cancel: Optional[CancelToken] = None, dataset: Optional[Dataset] = None, on_epoch=None) -> TrainResult:
    """Ex-situ training (no chip needed) on the training digits but a held-out part (`holdout`,
    stored as `training/holdout`, for the hybrid stage); stores the config, model and history."""
    ds = _data(None, cfg.data, dataset)
    writer.set_attrs("training", stage_config=cfg.to_dict())
    writer.put("training/holdout", holdout_indices(ds.y_train, cfg.holdout, cfg.seed))
    pool = _held_out(writer.content, ds)[0]
    sub = pool.subset(cfg.fraction, cfg.seed) if cfg.fraction < 1 else pool

    def epoch(r: dict) -> None:
        writer.append("training/epochs", **{k: np.array([v]) for k, v in r.items()
                                            if isinstance(v, (int, float, np.floating, np.integer))})
        if on_epoch is not None:
            on_epoch(r)
    model, history = train_mcnn(sub, epochs=cfg.epochs, seed=cfg.seed, progress=progress, cancel=cancel,
                                on_epoch=epoch)
    save_model(writer, model)
    acc_q = model.accuracy(ds.x_test, ds.y_test, quantized=True)
    acc_f = model.accuracy(ds.x_test, ds.y_test, quantized=False)
    writer.set_attrs("training", dataset=ds.describe(), epochs=cfg.epochs, seed=cfg.seed, test_images=len(ds.x_test),
                     train_images=len(sub.x_train), software_acc=acc_q, software_float_acc=acc_f)
    return TrainResult(model, history, acc_q, acc_f, ds.describe(), len(sub.x_train))


# ---- transfer ------------------------------------------------------------------------------
def check_transfer(xbar: Crossbar, content, cfg: TransferConfig) -> None:
    """ConfigError/DataError before the record changes: a model, a plan that fits, same chip and
    groups as an interrupted transfer."""
    model = load_model(content)
    plan_mcnn(xbar.geometry, model, cfg.groups)
    if "transfer/targets" in content.datasets:
        old = load_plan(content).groups
        if old != cfg.groups:
            raise ConfigError(f"groups {cfg.groups}: the interrupted transfer programs {old} group(s); "
                              f"resume it with {old}")
    check_chip(xbar, content)


def check_chip(xbar: Crossbar, content) -> None:
    """ConfigError when the record's weights were transferred to another chip than `xbar`."""
    made_on, now = group_attrs(content, "transfer").get("chip"), _chip(xbar)
    if made_on and made_on != now:
        raise ConfigError(f"the weights were transferred to chip {made_on.get('id')} (seed {made_on.get('seed')}), "
                          f"but the station now has chip {now.get('id') if now else 'unknown'}; its chip state "
                          f"file is missing or replaced, so resuming would use another chip")


def transfer(xbar: Crossbar, writer: RunWriter, cfg: TransferConfig, progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelToken] = None, dataset: Optional[Dataset] = None) -> TransferResult:
    """Plan the model on the chip, program every weight (resuming an interrupted transfer), store
    the plan and the ADC calibration, then let the chip settle `settle_s` (simulated clock)."""
    content = writer.content
    check_transfer(xbar, content, cfg)
    model = load_model(content)
    resume = "transfer/targets" in content.datasets
    if resume:
        plan = load_plan(content)
    else:
        plan = plan_mcnn(xbar.geometry, model, cfg.groups)
        writer.set_attrs("transfer", stage_config=cfg.to_dict(), chip=_chip(xbar))
        writer.set_attrs("plan", plan=plan.to_dict(), table=plan.table())
    rep = transfer_weights(xbar, model, plan, writer, prefix="transfer", resume=resume, progress=progress,
                           cancel=cancel)
    ds = _data(content, cfg.data, dataset)
    adc = HardwareMCNN(xbar, model, plan).calibrate_adc(ds.x_train[:cfg.adc_images])
    writer.set_attrs("adc", full_scale_a=adc, images=min(cfg.adc_images, len(ds.x_train)))
    if cfg.settle_s > 0 and xbar.has("advance"):
        xbar.advance(cfg.settle_s)
    return TransferResult(plan, rep, adc, resume)


# ---- hybrid --------------------------------------------------------------------------------
def _groups(cfg: HybridStageConfig, plan: AllocationPlan) -> list[int]:
    bad = [g for g in cfg.groups if g > plan.groups]
    if bad:
        raise ConfigError(f"group {bad[0]}: this run's plan has convolver groups 1..{plan.groups}")
    return [g - 1 for g in cfg.groups] if cfg.groups else list(range(plan.groups))


def check_hybrid(xbar: Crossbar, content, cfg: HybridStageConfig) -> None:
    """Errors before the record changes: model, plan, calibration, groups, chip, measured outputs."""
    plan = load_plan(content)
    load_model(content)
    if "full_scale_a" not in group_attrs(content, "adc"):
        raise DataError("the run record holds no ADC calibration; run the transfer stage first")
    groups = _groups(cfg, plan)
    if plan.geometry != xbar.geometry:
        raise ConfigError(f"the plan is for {plan.geometry.to_dict()}, the station has {xbar.geometry.to_dict()}")
    check_chip(xbar, content)
    meas = group_attrs(content, "convolvers")
    if "convolvers/train" in content.datasets:
        _measured_train_name(meas, groups)
        for k, v in (("images", cfg.hybrid.images), ("fraction", cfg.hybrid.fraction), ("seed", cfg.hybrid.seed),
                     ("test_images", cfg.test_images)):
            if meas.get(k) != v:
                raise ConfigError(f"{k} {v!r}: the convolver outputs in the record were measured with "
                                  f"{k} {meas.get(k)!r}; use the same")


def _measured_train_name(meas: dict, groups: list[int]) -> str:
    got = [g - 1 for g in meas.get("groups", [])]
    if got == groups:
        return "convolvers/train"
    if groups == got[:1]:
        return "convolvers/train_first" if len(got) > 1 else "convolvers/train"
    raise ConfigError(f"groups {[g + 1 for g in groups]}: the convolver outputs in the record were measured for "
                      f"groups {[g + 1 for g in got]}; use those")


def measure(xbar: Crossbar, writer: RunWriter, cfg: HybridStageConfig, progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None, dataset: Optional[Dataset] = None) -> None:
    """Measure once and store the convolver outputs hybrid training uses: every plan group on the
    test images (`convolvers/test`), the first selected group on all the training digits of
    `hybrid_digits` and the others on their dispatched share (`convolvers/train`, `convolvers/train_first`)."""
    cancel, progress = ensure(cancel, progress)
    content = writer.content
    hw = hardware(xbar, content)
    groups = _groups(cfg, hw.plan)
    ds = _data(content, cfg.data, dataset)
    x_sub, _, held = hybrid_digits(content, cfg, ds)
    xt = ds.x_test[:cfg.test_images] if cfg.test_images else ds.x_test
    total, done = len(xt) * hw.plan.groups + len(x_sub) * (2 if len(groups) > 1 else 1), [0]

    def part(what: str):
        base = done[0]
        return lambda p: progress(Progress(base + p.done, total, what, "img"))
    test = []
    for g in range(hw.plan.groups):
        test.append(hw.features(xt, g, progress=part(f"test images G{g + 1}"), cancel=cancel))
        done[0] += len(xt)
    which = hw.dispatch(len(x_sub), groups)
    first = hw.features(x_sub, groups[0], progress=part(f"training subset G{groups[0] + 1}"), cancel=cancel)
    done[0] += len(x_sub)
    train_codes = np.zeros_like(first)
    for g in groups:
        sel = which == g
        train_codes[sel] = first[sel] if g == groups[0] else hw.features(
            x_sub[sel], g, progress=part(f"training subset G{g + 1}"), cancel=cancel)
        if g != groups[0]:
            done[0] += int(sel.sum())
    writer.set_attrs("convolvers", groups=[g + 1 for g in groups], images=cfg.hybrid.images, fraction=cfg.hybrid.fraction,
                     seed=cfg.hybrid.seed, test_images=cfg.test_images, holdout=held)
    writer.put("convolvers/test", np.stack(test))
    if len(groups) > 1:
        writer.put("convolvers/train_first", first)
    writer.put("convolvers/train", train_codes)


def hybrid(xbar: Crossbar, writer: RunWriter, cfg: HybridStageConfig, progress: Optional[ProgressCallback] = None,
           cancel: Optional[CancelToken] = None, dataset: Optional[Dataset] = None, on_epoch=None) -> HybridResult:
    """Hybrid training of the FC layer (`hil.yao2020.hybrid`) on measured convolver outputs
    (measured here unless the record holds them); continues a training the record holds."""
    cancel, progress = ensure(cancel, progress)
    check_hybrid(xbar, writer.content, cfg)
    if "convolvers/train" not in writer.content.datasets:
        measure(xbar, writer, cfg, progress, cancel, dataset)
    content = writer.content
    hw = hardware(xbar, content)
    plan, model = hw.plan, hw.model
    groups = _groups(cfg, plan)
    ds = _data(content, cfg.data, dataset)
    _, y_all, k = hybrid_digits(content, cfg, ds)
    yt = ds.y_test[:cfg.test_images] if cfg.test_images else ds.y_test
    test = content.datasets["convolvers/test"][0]
    codes_all = content.datasets[_measured_train_name(group_attrs(content, "convolvers"), groups)][0]
    n = len(codes_all) - k
    codes, y_fit, holdout = codes_all[:n], y_all[:n], (codes_all[n:], y_all[n:])
    ckpt = content.datasets.get(f"{cfg.prefix}/checkpoint")
    start = int(ckpt[1]["epoch"]) if ckpt is not None else 0
    par = test[hw.dispatch(len(yt), groups), np.arange(len(yt))]
    all_groups = range(plan.groups)
    before = group_attrs(content, cfg.prefix)
    if "transfer_acc" not in before:
        writer.set_attrs(cfg.prefix, stage_config=cfg.to_dict())
        if cfg.reset_fc:
            transfer_weights(xbar, model, plan, writer, layers=["fc"], prefix="transfer_fc", progress=progress,
                             cancel=cancel)
        g_acc = [accuracy(hw, test[g], yt) for g in all_groups] if cfg.group_evals else []
        writer.set_attrs(cfg.prefix, group_acc_transfer=g_acc, transfer_acc=accuracy(hw, par, yt))
        before = group_attrs(writer.content, cfg.prefix)
    evals = {f"g{g + 1}": (test[g], yt) for g in all_groups} if cfg.group_evals else {}
    evals["test"] = (par, yt)
    if len(groups) > 1:
        which = hw.dispatch(len(codes), groups)
        evals.update({f"train_g{g + 1}": (codes[which == g], y_fit[which == g]) for g in groups})
    else:
        evals["train"] = (codes, y_fit)
    hist = hybrid_train(hw, codes, y_fit, cfg.hybrid, holdout=holdout, evals=evals, writer=writer, prefix=cfg.prefix,
                        progress=progress, cancel=cancel, on_epoch=on_epoch)
    n_evals = {name: len(v[1]) for name, v in evals.items()} | ({"holdout": k} if k else {})
    return HybridResult(hist, groups, float(before["transfer_acc"]), list(before["group_acc_transfer"]), start,
                        len(codes), len(yt), hw, n_evals)


def train_accuracy(row: dict, sizes: dict) -> float:
    """Accuracy on the whole training subset from a row's per-group `acc_train_g<k>` (sizes: k -> count)."""
    if "acc_train" in row:
        return row["acc_train"]
    n = sum(sizes.values())
    return sum(row[f"acc_train_g{k}"] * m for k, m in sizes.items()) / n if n else float("nan")


# ---- parallel groups -----------------------------------------------------------------------
def parallel_groups(xbar: Crossbar, writer: RunWriter, cfg: ParallelConfig, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None, dataset: Optional[Dataset] = None) -> ParallelResult:
    """Hybrid training on all convolver groups' outputs (FC transferred again first), then the
    convolution throughput of one group against all groups and the energy of parallel inference."""
    res = hybrid(xbar, writer, cfg.hybrid, progress, cancel, dataset)
    thr: dict = {}
    if cfg.throughput_images:
        hw = res.hw
        ds = _data(writer.content, cfg.hybrid.data, dataset)
        xt = ds.x_test[:cfg.hybrid.test_images] if cfg.hybrid.test_images else ds.x_test
        n = min(len(xt), cfg.throughput_images)
        hw.ledger.reset()
        hw.features(xt[:n], 0, cancel=cancel)
        one = hw.ledger.summary(hw.energy, CONV_LAYERS)
        hw.ledger.reset()
        hw.fc_logits(hw.parallel_features(xt[:n], cancel=cancel))
        par = hw.ledger.summary(hw.energy, CONV_LAYERS)
        full = hw.ledger.summary(hw.energy)
        writer.set_attrs("throughput", one_group=one, parallel=par, inference=full, images=n)
        thr = {"images": n, "one_group": one, "parallel": par, "inference": full}
    return ParallelResult(res, thr)


# ---- aging ---------------------------------------------------------------------------------
def aging(xbar: Crossbar, writer: RunWriter, cfg: AgingConfig, progress: Optional[ProgressCallback] = None,
          cancel: Optional[CancelToken] = None, dataset: Optional[Dataset] = None) -> dict:
    """Parallel-system accuracy after `disturb_reads` reads of G1's convolution weights, then at
    `times_s` after the start on the station clock (backends with `read_stress` / `advance`)."""
    cancel, progress = ensure(cancel, progress)
    content = writer.content
    hw = hardware(xbar, content)
    ds = _data(content, cfg.data, dataset)
    x, y = ds.x_test[:cfg.images], ds.y_test[:cfg.images]
    writer.set_attrs("after", stage_config=cfg.to_dict())
    out: dict = {"images": int(len(x))}

    def score() -> float:
        return accuracy(hw, hw.parallel_features(x, cancel=cancel), y)

    before = score()
    out["acc_start"] = before
    if xbar.has("read_stress") and cfg.disturb_reads > 0:
        for name in CONV_LAYERS:
            xbar.read_stress(hw.plan.cells(name, 0)[0], cfg.disturb_reads)
        out["disturb"] = {"reads": cfg.disturb_reads, "acc_before": before,
                          "acc_g1_after": accuracy(hw, hw.features(x, 0, cancel=cancel), y), "acc_after": score()}
        writer.set_attrs("after/disturb", **out["disturb"])
    if xbar.has("advance"):
        t_start = xbar.now()
        times, accs = [], []
        for k, t in enumerate(cfg.times_s):
            xbar.advance(max(0.0, t_start + t - xbar.now()))
            times.append(float(t))
            accs.append(score())
            writer.append("after/time_series", t_s=np.array([t]), acc=np.array([accs[-1]]))
            progress(Progress(k + 1, len(cfg.times_s), f"{t / 3600:.3g} h", "point"))
        out["time_s"], out["acc"] = times, accs
    out["saturation"] = hw.saturation()
    return out
