"""The Wang 2019 stages: yield scan, in-situ training (CNN, ConvLSTM), evaluation.

Each stage is ``stage(xbar, writer, config, progress=None, cancel=None, data=None)``: it reads
what earlier stages left in the run record (the yield map, the placement, a checkpoint), stores
its config and what it produced, and returns a typed result. `hil wang ...`, the demo and the
GUI call only these. ``data`` overrides loading the data named by the config. `check_train` and
`check_evaluate` raise before the record changes.

Record layout of a network ``<net>`` (cnn or convlstm), beside the yield map under ``yield/``:
- ``insitu/<net>`` attrs: ``stage_config``, ``chip``, the data description, sizes, ``done``;
- ``insitu/<net>/placement/<layer>/rows|cols``: cells (input, output, sign, copy);
- ``insitu/<net>/batches``: one row per batch — loss (summed), training-batch accuracy, test
  accuracy (per time step for the ConvLSTM; NaN where not evaluated), pulses, gate-voltage
  summary, ADC saturations, the chip clock;
- ``insitu/<net>/snapshots/bNNNNN/g_s`` and ``.../v_gate_v`` (2 signs × weights × 2 copies): the
  read-back conductances and gate voltages after batch NNNNN (0: after initialization), every
  ``snapshot_every`` batches and after the last;
- ``insitu/<net>/checkpoint``: the full state after the last finished batch (conductances, gate
  voltages, RMSprop mean squares; counters and the batch's row in its attrs). A cut-off run
  continues with the next batch and, on the same chip, ends as the uninterrupted run would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.wang2019 import data as wdata
from hil.wang2019.insitu import STEP_S, ArrayNetwork, open_loop_policy
from hil.wang2019.nets import WangCNN, WangConvLSTM
from hil.wang2019.optim import RMSprop
from hil.wang2019.placement import Placement, place
from hil.wang2019.yield_scan import YieldMap, YieldScanConfig, yield_scan

__all__ = ["KIND", "NETS", "STAGE_DONE", "DataConfig", "InsituConfig", "EvalConfig", "InsituResult", "EvalResult",
           "yield_scan", "YieldScanConfig", "train_insitu", "evaluate", "check_train", "check_evaluate",
           "load_data", "subset", "make_net", "check_fits", "placement_for", "array_network"]

KIND = "wang2019"
NETS = {"cnn": WangCNN, "convlstm": WangConvLSTM}
#: record status after a stage: resumable by the next stage ("complete" is final)
STAGE_DONE = {"yield": "scanned", "train": "trained", "evaluate": "evaluated"}
MAX_SEED = 2**32 - 1
#: the paper's CNN weight updates: 2 epochs of 60,000 digits at batch 100
PAPER_CNN_UPDATES = 1200
DEFAULT_BATCH = {"cnn": 100, "convlstm": 50}
CKPT_COLUMNS = 9               # g+ (2 copies), g− (2), V_g+ (2), V_g− (2), RMSprop mean square


# ---- configs -----------------------------------------------------------------------------
@dataclass
class DataConfig(Config):
    """8x8 data: `source` a folder of MNIST IDX files or an 8x8 .npz file (`hil.wang2019.data`;
    None: the embedded 5,000 digits split 4,000 / 1,000 by `seed`). The ConvLSTM's MNIST-sequence
    set is built from the digits (unless the .npz holds sequences)."""

    source: Optional[str] = None
    seed: int = param(0, lo=0, hi=MAX_SEED)
    train_sequences: int = param(6000, lo=1, hi=10_000_000)
    test_sequences: int = param(1200, lo=1, hi=10_000_000)


@dataclass
class InsituConfig(Config):
    """In-situ training of one network (PAPERS.md §B). None means the paper's choice for `net`:
    epochs — CNN as many as give 1,200 updates (30 of the 40 batches of the embedded 4,000 digits,
    2 on full MNIST), ConvLSTM 2; batch — CNN 100, ConvLSTM 50; gate_max — 2.5 V / 2.4 V."""

    net: str = param("cnn", choices=tuple(NETS))
    data: DataConfig = param(factory=DataConfig)
    epochs: Optional[int] = param(None, lo=1, hi=1000)
    batch: Optional[int] = param(None, lo=1, hi=100_000)
    lr: float = param(0.01, lo=0.0, hi=1.0, lo_open=True)
    decay: float = param(0.9, lo=0.0, hi=0.999)
    eps: float = param(1e-8, lo=0.0, hi=1.0, lo_open=True)
    gain_v: float = param(1.5, lo=0.0, hi=10.0, lo_open=True)       # ΔV_g per weight unit
    gate_max: Optional[float] = param(None, lo=0.5, hi=5.0)
    train_samples: Optional[int] = param(None, lo=1, hi=10_000_000)   # the first N training samples
    test_samples: Optional[int] = param(None, lo=1, hi=10_000_000)    # the first N test samples
    eval_every: int = param(120, lo=1, hi=10_000_000)   # batches between test evaluations (and the last)
    snapshot_every: int = param(100, lo=1, hi=10_000_000)

    def policy(self, net):
        return open_loop_policy(net, self.gate_max, gain_v=self.gain_v)

    def batch_size(self) -> int:
        return self.batch or DEFAULT_BATCH[self.net]

    def n_epochs(self, n_train: int) -> int:
        if self.epochs is not None:
            return self.epochs
        if self.net == "convlstm":
            return 2
        return max(1, round(PAPER_CNN_UPDATES / math.ceil(n_train / self.batch_size())))


@dataclass
class EvalConfig(Config):
    """Test accuracy of a network trained in situ, as it is on the chip now (read back first)."""

    net: str = param("cnn", choices=tuple(NETS))
    data: Optional[DataConfig] = None          # None: the training stage's
    test_samples: Optional[int] = param(None, lo=1, hi=10_000_000)


# ---- results -------------------------------------------------------------------------------
@dataclass
class InsituResult:
    """Rows of every batch (this call and before), the final test accuracy (float, or one per
    time step), updates (batches) and pulses, and where the run started (0, or a resumed batch)."""

    net: str
    rows: list
    test_acc: object
    updates: int
    pulses: int
    resumed_from: int
    network: ArrayNetwork = field(repr=False)


@dataclass
class EvalResult:
    net: str
    test_acc: object
    n_test: int


# ---- record access -------------------------------------------------------------------------
class _View:
    """A RunContent read like a RunRecord (what `YieldMap.from_record` uses)."""

    def __init__(self, content, path="record") -> None:
        self.content, self.path = content, path

    def group_attrs(self, group: str) -> dict:
        attrs = self.content.attrs.get("/" + group.strip("/"))
        if attrs is None:
            raise DataError(f"no group {group!r}")
        return attrs

    def dataset(self, name: str):
        if name not in self.content.datasets:
            raise DataError(f"no dataset {name!r}")
        return self.content.datasets[name]


def _attrs(content, group: str) -> dict:
    return content.attrs.get("/" + group, {})


def stored_yield(content, path="record") -> YieldMap:
    """The yield map a yield scan left in the record; DataError saying how to make one."""
    if "yield/rows" not in content.datasets:
        raise DataError(f"{path} holds no yield map; run the yield scan first (`hil wang yield`)")
    return YieldMap.from_record(_View(content, path))


def stored_config(content, net: str) -> Optional[InsituConfig]:
    """The config the training of `net` stored (None if it never started)."""
    d = _attrs(content, f"insitu/{net}").get("stage_config")
    return None if d is None else InsituConfig.from_dict(d, f"the record's insitu/{net}.stage_config")


def _chip(xbar) -> Optional[dict]:
    return xbar.describe().get("chip") or getattr(xbar, "chip_identity", None)


# ---- data and networks ---------------------------------------------------------------------
def make_net(name: str):
    if name not in NETS:
        raise ConfigError(f"network must be one of {', '.join(NETS)}, got {name!r}")
    return NETS[name]()


def load_data(cfg: DataConfig, net: str) -> wdata.WangData:
    """The data of `net`: 8x8 digits (cnn) or MNIST-sequences (convlstm), per `cfg`."""
    src = cfg.source
    if src is not None and str(src).endswith(".npz"):
        d = wdata.load_npz(src)
    else:
        d = wdata.load_mnist8(src, seed=cfg.seed)
    if net == "convlstm" and not d.is_sequence:
        d = wdata.sequences_from(d, cfg.train_sequences, cfg.test_sequences, cfg.seed)
    check_data(d, net)
    return d


def check_data(d: wdata.WangData, net: str) -> None:
    cls = NETS[net]
    if d.x_train.shape[1:] != cls.IN_SHAPE or d.n_classes != cls.N_CLASSES:
        raise ConfigError(f"the {net} network needs inputs {cls.IN_SHAPE} with {cls.N_CLASSES} classes; "
                          f"{d.source} has {d.x_train.shape[1:]} with {d.n_classes}")


def subset(d: wdata.WangData, cfg) -> tuple:
    """(x_train, y_train, x_test, y_test) cut to the config's train_samples / test_samples."""
    n_tr = getattr(cfg, "train_samples", None) or len(d.y_train)
    n_te = cfg.test_samples or len(d.y_test)
    return d.x_train[:n_tr], d.y_train[:n_tr], d.x_test[:n_te], d.y_test[:n_te]


def check_fits(geometry, net) -> None:
    """ConfigError when `net` cannot fit one PE of `geometry` even with every line good."""
    try:
        place(range(geometry.rows), range(geometry.cols), net.weight_specs())
    except ConfigError as e:
        raise ConfigError(f"{type(net).__name__} does not fit a {geometry.rows} x {geometry.cols} PE "
                          f"({geometry.name} geometry) even with every line good: {e}") from None


def placement_for(xbar: Crossbar, ymap: YieldMap, net) -> Placement:
    """The network's placement on the good lines of `ymap`. A network that cannot fit the PE's
    shape at all (e.g. on the Yao geometry) and a chip with too few good lines are one-line
    ConfigErrors that say which."""
    check_fits(xbar.geometry, net)
    name = type(net).__name__
    try:
        return place(ymap.good_rows, ymap.good_cols, net.weight_specs(), ymap.pe)
    except ConfigError as e:
        raise ConfigError(f"{name} does not fit the good lines of PE {ymap.pe} ({ymap.rows.sum()} rows, "
                          f"{ymap.cols.sum()} columns): {e}") from None


def array_network(xbar: Crossbar, content, net_name: str, policy=None, engine_state=None) -> ArrayNetwork:
    """The network `net_name` on the chip at the placement its training stored."""
    net = make_net(net_name)
    pl = placement_for(xbar, stored_yield(content), net)
    return ArrayNetwork(xbar, net, pl, policy or open_loop_policy(net), engine_state)


# ---- train ---------------------------------------------------------------------------------
def check_train(xbar: Crossbar, content, cfg: InsituConfig, data: Optional[wdata.WangData] = None) -> wdata.WangData:
    """Errors before the record changes: the network fits this geometry and its good lines, the
    data loads and suits the network, a started training has the same config; returns the data."""
    if not isinstance(cfg, InsituConfig):
        raise ConfigError(f"in-situ training needs an InsituConfig, got {type(cfg).__name__}")
    net = make_net(cfg.net)
    ymap = stored_yield(content)
    if ymap.pe >= xbar.geometry.n_pe or ymap.rows.size != xbar.geometry.rows or ymap.cols.size != xbar.geometry.cols:
        raise ConfigError(f"the yield map is of a {ymap.rows.size} x {ymap.cols.size} PE {ymap.pe}; the station has "
                          f"{xbar.geometry.n_pe} PE(s) of {xbar.geometry.rows} x {xbar.geometry.cols}")
    placement_for(xbar, ymap, net)
    old = stored_config(content, cfg.net)
    if old is not None and old != cfg:
        diff = [k for k in cfg.to_dict() if cfg.to_dict()[k] != old.to_dict()[k]]
        raise ConfigError(f"the {cfg.net} training in this record was started with other settings "
                          f"({', '.join(f'{k}={old.to_dict()[k]!r}' for k in diff)}); resume it with those")
    _check_on_array(content, cfg.net, resuming=old is not None)
    made_on = _attrs(content, f"insitu/{cfg.net}").get("chip")
    if made_on and made_on != _chip(xbar):
        raise ConfigError(f"the {cfg.net} training in this record ran on chip {made_on.get('id')}; the station has "
                          f"another chip, so resuming would train a different array")
    d = load_data(cfg.data, cfg.net) if data is None else data
    check_data(d, cfg.net)
    return d


def _check_on_array(content, net: str, resuming: bool) -> None:
    """DataError when another network was initialized on the array after `net` (the networks
    share the first good lines, so the later one overwrote `net`'s cells)."""
    now = _attrs(content, "insitu").get("on_array")
    if resuming and now not in (None, net):
        raise DataError(f"the {now} was trained on this array after the {net} and overwrote its cells; "
                        f"train the {net} again in a new record")


def _summary(an: ArrayNetwork) -> dict:
    vg = an.gate_voltages()
    p = an.engine.policy
    return {"vg_mean": float(vg.mean()), "vg_std": float(vg.std()), "vg_min": float(vg.min()),
            "vg_max": float(vg.max()), "vg_at_min": float(np.mean(vg <= p.gate_min)),
            "vg_at_max": float(np.mean(vg >= p.gate_max)), "g_mean_s": float(an.conductances().mean())}


def _snapshot(writer, prefix: str, batch: int, an: ArrayNetwork) -> None:
    writer.put(f"{prefix}/snapshots/b{batch:05d}/g_s", an.conductances(), unit="S",
               axes="sign (+, -), weight, copy")
    writer.put(f"{prefix}/snapshots/b{batch:05d}/v_gate_v", an.gate_voltages(), unit="V",
               axes="sign (+, -), weight, copy")


def _checkpoint(writer, prefix: str, an: ArrayNetwork, opt: RMSprop, batch: int, row: Optional[dict]) -> None:
    s = an.state()
    ms = np.concatenate([opt.ms.get(n, np.zeros(shape)).reshape(-1) for n, shape in an.specs])
    arr = np.column_stack([s["g_pos"], s["g_neg"], s["v_gate_pos"], s["v_gate_neg"], ms])
    writer.put(f"{prefix}/checkpoint", arr, batch=batch, pulses=s["pulses"], updates=s["updates"], row=row,
               columns="g+ copy 1, g+ copy 2, g- copy 1, g- copy 2 (S), V_g+ copy 1, V_g+ copy 2, "
                       "V_g- copy 1, V_g- copy 2 (V), RMSprop mean square")


def _restore(content, prefix: str, net) -> tuple[dict, RMSprop, int, Optional[dict]]:
    arr, meta = content.datasets[f"{prefix}/checkpoint"]
    if arr.ndim != 2 or arr.shape != (net.n_weights, CKPT_COLUMNS):
        raise DataError(f"{prefix}/checkpoint has shape {arr.shape}, expected ({net.n_weights}, {CKPT_COLUMNS})")
    state = {"g_pos": arr[:, 0:2], "g_neg": arr[:, 2:4], "v_gate_pos": arr[:, 4:6], "v_gate_neg": arr[:, 6:8],
             "pulses": meta["pulses"], "updates": meta["updates"]}
    bounds = np.cumsum([0] + [r * c for _, (r, c) in net.weight_specs()])
    ms = {n: arr[a:b, 8].reshape(shape) for (n, shape), a, b in zip(net.weight_specs(), bounds[:-1], bounds[1:])}
    return state, ms, int(meta["batch"]), meta.get("row")


def _row_arrays(row: dict) -> dict:
    return {k: np.array([v]) for k, v in row.items()}


def train_insitu(xbar: Crossbar, writer, cfg: InsituConfig, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None, data: Optional[wdata.WangData] = None,
                 on_batch: Optional[Callable[[dict], None]] = None) -> InsituResult:
    """In-situ training of `cfg.net` on the placement of the record's yield map (stage): weights
    initialized by RESET then SET at 1.6 V, then per batch (file order) forward on the array,
    backward from the last read-back, RMSprop, open-loop gate updates of every cell, read-back.
    Journals every batch and checkpoints after it; continues a training the record holds.
    `on_batch(row)` is called after each batch is recorded."""
    cancel, progress = ensure(cancel, progress)
    content = writer.content
    d = check_train(xbar, content, cfg, data)
    x_tr, y_tr, x_te, y_te = subset(d, cfg)
    net = make_net(cfg.net)
    pl = placement_for(xbar, stored_yield(content), net)
    prefix = f"insitu/{cfg.net}"
    batch = cfg.batch_size()
    per_epoch = math.ceil(len(y_tr) / batch)
    total = cfg.n_epochs(len(y_tr)) * per_epoch
    opt = RMSprop(cfg.lr, cfg.decay, cfg.eps)
    resumed = f"{prefix}/checkpoint" in content.datasets
    if resumed:
        state, ms, done, row = _restore(content, prefix, net)
        an = ArrayNetwork(xbar, net, pl, cfg.policy(net), engine_state=state)
        opt.load_state(ms)
        rows_done = content.table_rows(f"{prefix}/batches")
        if row is not None and rows_done < done:               # cut off between checkpoint and row
            writer.append(f"{prefix}/batches", **_row_arrays(row))
    else:
        writer.set_attrs(prefix, stage_config=cfg.to_dict(), chip=_chip(xbar), data=d.describe(),
                         n_weights=net.n_weights, n_cells=pl.n_cells, train_samples=len(y_tr),
                         test_samples=len(y_te), batches=total, step_s=STEP_S, done=False)
        pl.save(writer, f"{prefix}/placement")
        writer.set_attrs("insitu", on_array=cfg.net)
        an = ArrayNetwork(xbar, net, pl, cfg.policy(net))
        an.initialize()
        done = 0
        _snapshot(writer, prefix, 0, an)
        _checkpoint(writer, prefix, an, opt, 0, None)
    start = done
    for b in range(done, total):
        cancel.raise_if_cancelled()
        s = (b % per_epoch) * batch
        xb, yb = x_tr[s:s + batch], y_tr[s:s + batch]
        sat0 = an.saturated
        loss, grads, logits = an.loss_and_grads(xb, yb)
        pulses = an.update(opt.deltas(grads))
        row = {"batch": b + 1, "epoch": b // per_epoch + 1, "loss": loss,
               "train_acc": float(np.mean(logits.argmax(1) == yb)), "pulses": pulses,
               "pulses_total": an.engine.pulses, **_summary(an)}
        last = b + 1 == total
        acc = an.accuracy(x_te, y_te) if (b + 1) % cfg.eval_every == 0 or last else None
        steps = net.IN_SHAPE[0] if cfg.net == "convlstm" else 1
        accs = acc if isinstance(acc, list) else [acc] * steps
        for t in range(steps):
            row["test_acc" if steps == 1 else f"test_acc_{t + 1}"] = float("nan") if acc is None else accs[t]
        row["adc_saturated"] = an.saturated - sat0
        row["clock_s"] = float(xbar.now())
        if (b + 1) % cfg.snapshot_every == 0 or last:
            _snapshot(writer, prefix, b + 1, an)
        _checkpoint(writer, prefix, an, opt, b + 1, row)
        writer.append(f"{prefix}/batches", **_row_arrays(row))
        progress(Progress(b + 1, total, f"epoch {row['epoch']}, loss {loss:.3g}", "batches"))
        if on_batch is not None:
            on_batch(row)
    table = writer.content.tables.get(f"{prefix}/batches", {})
    rows = [dict(zip(table, vals)) for vals in zip(*table.values())] if table else []
    final = _final_acc(rows[-1], cfg.net) if rows else None
    writer.set_attrs(prefix, done=True, test_acc=final, updates=total, pulses=an.engine.pulses)
    return InsituResult(cfg.net, rows, final, total, an.engine.pulses, start, an)


def _final_acc(row: dict, net: str):
    if net == "convlstm":
        return [float(row[f"test_acc_{t + 1}"]) for t in range(WangConvLSTM.IN_SHAPE[0])]
    return float(row["test_acc"])


# ---- evaluate ------------------------------------------------------------------------------
def check_evaluate(xbar: Crossbar, content, cfg: EvalConfig) -> None:
    """Errors before the record changes: a training of the network in the record, same chip."""
    old = stored_config(content, cfg.net)
    if old is None:
        raise DataError(f"the record holds no in-situ training of the {cfg.net}; run `hil wang train --net {cfg.net}`")
    _check_on_array(content, cfg.net, resuming=True)
    made_on = _attrs(content, f"insitu/{cfg.net}").get("chip")
    if made_on and made_on != _chip(xbar):
        raise ConfigError(f"the {cfg.net} was trained on chip {made_on.get('id')}; the station has another chip")
    placement_for(xbar, stored_yield(content), make_net(cfg.net))


def evaluate(xbar: Crossbar, writer, cfg: EvalConfig, progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelToken] = None, data: Optional[wdata.WangData] = None) -> EvalResult:
    """Read the network back from the chip and score it on the test set through the array (stage);
    stored under ``evaluation/<net>``."""
    cancel, progress = ensure(cancel, progress)
    content = writer.content
    check_evaluate(xbar, content, cfg)
    dcfg = cfg.data or stored_config(content, cfg.net).data
    d = load_data(dcfg, cfg.net) if data is None else data
    check_data(d, cfg.net)
    _, _, x_te, y_te = subset(d, cfg)
    cancel.raise_if_cancelled()
    an = array_network(xbar, content, cfg.net)
    acc = an.accuracy(x_te, y_te)
    progress(Progress(1, 1, f"{cfg.net} evaluated", "networks"))
    writer.set_attrs(f"evaluation/{cfg.net}", stage_config=cfg.to_dict(), test_acc=acc, n_test=len(y_te),
                     clock_s=float(xbar.now()), adc_saturated=an.saturated)
    return EvalResult(cfg.net, acc, len(y_te))
