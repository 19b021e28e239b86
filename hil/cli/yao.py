"""`hil demo`, `hil train`, `hil transfer`, `hil hybrid`: the Yao 2020 reproduction from the shell."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from hil import options as opt
from hil.cli.common import _cancel_on_sigint, _check_same_chip, _chip_identity, _chip_state_path, _emit, _jsonable, _open, _show, _station_snapshot
from hil.yao2020.demo import STAGE_DONE
from hil.errors import DataError, HilError
from hil.yao2020.hybrid import HybridConfig
from hil.progress import Progress
from hil.runstore import RunRecord, RunWriter, read_content

KIND = "mcnn"


class Bars:
    """One tqdm bar per stage on a terminal (none with --json or without a TTY)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.open: list = []

    def __call__(self, desc: str, unit: str):
        state = {"bar": None}

        def cb(p: Progress) -> None:
            if not self.enabled:
                return
            if state["bar"] is None:
                from tqdm import tqdm
                state["bar"] = tqdm(desc=desc, unit=unit, total=p.total, file=sys.stderr, dynamic_ncols=True)
                self.open.append(state["bar"])
            _show(state["bar"], p)
            if p.done >= p.total:
                state["bar"].close()
        return cb

    def close(self) -> None:
        for b in self.open:
            b.close()


def _say(args):
    return (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))


def _free_name(path: Path) -> Path:
    """`path`, or path-1, path-2 ... when a record (or its journal) already exists there."""
    k, p = 0, path
    while p.exists() or p.with_name(p.name + ".journal").exists():
        k += 1
        p = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return p


def _dataset(args):
    from hil.nn.datasets import load_dataset
    return load_dataset(args.data, seed=args.seed or 0, download=getattr(args, "download", False))


# ---- hil demo -----------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from hil.yao2020.demo import DemoConfig, run_demo
    from hil.yao2020.hwnet import plan_mcnn
    from hil.yao2020.mcnn import MCNN
    from hil.yao2020.report import table_text, write_report
    seed = 0 if args.seed is None else args.seed
    cfg = DemoConfig.quick(seed) if args.quick else DemoConfig(seed=seed)
    hybrid = {"seed": seed} if args.hybrid_fraction is None else {"seed": seed, "fraction": args.hybrid_fraction}
    cfg.hybrid = dataclasses.replace(cfg.hybrid, **hybrid)     # validated again by HybridConfig, before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say = _say(args)
    ds = _dataset(args)
    say(f"data: {ds.source} ({len(ds.x_train)} training / {len(ds.x_test)} test digits)")
    run_path = _free_name(out / "demo.h5")
    args.seed = seed
    bars = Bars(not args.json)
    with _open(args) as xbar, _cancel_on_sigint() as cancel:
        plan_mcnn(xbar.geometry, MCNN(seed=seed), cfg.groups)     # refuse before creating a record
        writer = RunWriter.create(run_path, KIND, _station_snapshot(args, xbar), {"seed": seed, "demo": True})
        try:
            res = run_demo(xbar, ds, writer, cfg, bars=bars, cancel=cancel, say=say)
        except BaseException:
            bars.close()
            writer.mark("stopped")
            writer.finalize("incomplete")
            raise
        writer.finalize()
    bars.close()
    with RunRecord.open(run_path) as rec:
        content = rec.content()
    md = write_report(res, out, content)
    res["run_record"] = str(run_path)
    res["report"] = str(md)
    human = (table_text(res) + f"\n\nallocation plan:\n{res['plan']}\n\nrun record {run_path}\nreport {md}"
             f"\nwall time {res['seconds']:.0f} s")
    keys = ("software_acc", "software_float_acc", "transfer_acc", "hybrid_acc", "group_acc_transfer",
            "group_acc_hybrid", "parallel_acc", "conv_throughput_ratio", "gops_per_w", "seconds",
            "run_record", "report", "after", "seed")
    _emit(args, {k: res[k] for k in keys}, human)
    return 0


# ---- hil train / transfer / hybrid ----------------------------------------------------------
def cmd_train(args) -> int:
    from hil.yao2020.demo import train_stage
    seed = 0 if args.seed is None else args.seed
    ds = _dataset(args)
    out = Path(args.out)
    bars = Bars(not args.json)
    with _cancel_on_sigint() as cancel:
        writer = RunWriter.create(out, KIND, {"spec": None, "note": "ex-situ training only"}, {"seed": seed})
        try:
            model, hist = train_stage(ds, writer, epochs=args.epochs, seed=seed, progress=bars("train", "batch"),
                                      cancel=cancel)
        finally:
            _finish(writer, bars, STAGE_DONE["train"])
    res = {"run_record": str(out), "dataset": ds.describe(), "history": hist,
           "software_acc": model.accuracy(ds.x_test, ds.y_test, quantized=True)}
    _emit(args, res, f"software accuracy {res['software_acc']:.2%} on {len(ds.x_test)} test digits "
                     f"({ds.source}); model stored in {out}\nnext: hil transfer --run {out}")
    return 0


def _finish(writer: RunWriter, bars: Bars, status: str) -> None:
    """Close the bars and the record: `status` after success, "incomplete" while an error propagates."""
    bars.close()
    writer.finalize(status if sys.exc_info()[0] is None else "incomplete")


def _stage_content(args):
    """What a stage command needs from `--run`, read without opening it for writing (so a bad
    argument or a missing file changes nothing in the record)."""
    path = Path(args.run)
    if not path.exists() and not path.with_name(path.name + ".journal").exists():
        raise DataError(f"{path} does not exist; create it with `hil train --out {path}`")
    content = read_content(path)
    root = content.attrs.get("/", {})
    if root.get("kind") != KIND:
        raise DataError(f"{path} is a {root.get('kind')} run, not an mCNN run made by `hil train`")
    if root.get("status") == "complete":
        raise DataError(f"{path} is a finished {KIND} run (status complete) and is kept as it is; "
                        f"start a new one with `hil train --out NEW.h5`")
    return content


def _same_chip(run, content, xbar) -> None:
    """HilError when the weights of `run` were transferred to another chip than `xbar`."""
    made_on = content.attrs.get("/transfer", {}).get("chip")
    if made_on and made_on != _chip_identity(xbar):
        _check_same_chip(Path(run), {"chip": made_on}, xbar)


def cmd_transfer(args) -> int:
    from hil.yao2020.demo import load_model, load_plan, transfer_stage
    from hil.yao2020.hwnet import plan_mcnn
    content = _stage_content(args)
    resume = "transfer/targets" in content.datasets
    model = load_model(content)
    if args.groups < 1:
        raise HilError(f"--groups must be at least 1, got {args.groups}")
    bars = Bars(not args.json)
    chip_file = _chip_state_path(Path(args.run), args.station)
    fresh = chip_file is not None and not chip_file.exists()
    with _open(args, chip_file) as xbar, _cancel_on_sigint() as cancel:
        try:
            plan_mcnn(xbar.geometry, model, args.groups)   # --groups must fit this chip before the record changes
            if resume and load_plan(content).groups != args.groups:
                raise HilError(f"--groups {args.groups}: the interrupted transfer in {args.run} programs "
                               f"{load_plan(content).groups} group(s); resume it with --groups {load_plan(content).groups}")
            _same_chip(args.run, content, xbar)
        except HilError:
            if fresh:                                  # nothing touched it: no chip file is left behind
                chip_file.unlink(missing_ok=True)
            raise
        writer = RunWriter.resume(args.run, KIND)
        if not resume:
            writer.set_attrs("transfer", chip=_chip_identity(xbar))
        try:
            plan, rep = transfer_stage(xbar, model, writer, groups=args.groups, resume=resume,
                                       progress=bars("transfer", "cell"), cancel=cancel)
        finally:
            _finish(writer, bars, STAGE_DONE["transfer"])
    s = rep.summary()
    _emit(args, {"run_record": args.run, "resumed": resume, "transfer": s, "plan": plan.to_dict()},
          f"{plan.table()}\n\n{'resumed; ' if resume else ''}{s['program']['cells']} cells, "
          f"{100 * s['program']['in_band_fraction']:.2f}% in band; RMS weight error (levels) "
          + ", ".join(f"{k} {v:.3f}" for k, v in s["weight_rms_error_levels"].items())
          + f"\nnext: hil hybrid --run {args.run}")
    return 0


def _groups_arg(spec, n: int) -> list[int]:
    """`--group all` or 1..n (text or the int of options.group_spec) -> zero-based group indices."""
    if spec == "all":
        return list(range(n))
    try:
        g = int(spec)
    except (TypeError, ValueError):
        g = 0
    if not 1 <= g <= n:
        raise HilError(f"--group must be 'all' or a convolver group 1..{n} of this run's plan, got {spec!r}")
    return [g - 1]


def cmd_hybrid(args) -> int:
    from hil.yao2020.demo import load_model, load_plan
    from hil.yao2020.hwnet import HardwareMCNN
    from hil.yao2020.hybrid import hybrid_train
    content = _stage_content(args)
    model, plan = load_model(content), load_plan(content)
    groups = _groups_arg(args.group, plan.groups)
    seed = 0 if args.seed is None else args.seed
    cfg = HybridConfig(fraction=args.fraction, epochs=args.epochs, lr_levels=args.lr, seed=seed)
    ds = _dataset(args)
    ckpt = content.datasets.get("hybrid/checkpoint")
    start = int(ckpt[1]["epoch"]) if ckpt is not None else 0
    sub = ds.subset(cfg.fraction, seed)
    if "hybrid/codes" in content.datasets and len(content.datasets["hybrid/codes"][0]) != len(sub.x_train):
        raise HilError(f"--fraction {args.fraction}: the hybrid training in {args.run} was started on "
                       f"{len(content.datasets['hybrid/codes'][0])} digits; resume it with the same --fraction")
    bars = Bars(not args.json)
    chip_file = _chip_state_path(Path(args.run), args.station)
    fresh = chip_file is not None and not chip_file.exists()
    with _open(args, chip_file) as xbar, _cancel_on_sigint() as cancel:
        try:
            hw = HardwareMCNN(xbar, model, plan)
            _same_chip(args.run, content, xbar)
        except HilError:
            if fresh:                                  # nothing touched it: no chip file is left behind
                chip_file.unlink(missing_ok=True)
            raise
        writer = RunWriter.resume(args.run, KIND)
        try:
            hw.calibrate_adc(ds.x_train[:64])
            if "hybrid/codes" in content.datasets:      # measured once, kept in the record for a resume
                codes, test = content.datasets["hybrid/codes"][0], content.datasets["hybrid/test_codes"][0]
            else:
                which = hw.dispatch(len(sub.x_train), groups)
                codes = np.zeros((len(sub.x_train), 192), np.int64)
                for g in groups:
                    sel = which == g
                    codes[sel] = hw.features(sub.x_train[sel], g, progress=bars(f"training subset G{g + 1}", "img"),
                                             cancel=cancel)
                test = hw.parallel_features(ds.x_test, groups, progress=bars("test images", "img"), cancel=cancel)
                writer.put("hybrid/test_codes", test)
                writer.put("hybrid/codes", codes)
            hist = hybrid_train(hw, codes, sub.y_train, cfg, evals={"test": (test, ds.y_test)}, writer=writer,
                                progress=bars("hybrid", "batch"), cancel=cancel)
        finally:
            _finish(writer, bars, STAGE_DONE["hybrid"])
    res = {"run_record": args.run, "resumed_from_epoch": start, "history": hist,
           "hybrid_acc": hist[-1]["acc_test"] if hist else float("nan")}
    _emit(args, res, "\n".join(f"epoch {r['epoch']}: test {r['acc_test']:.2%}, {r['pulses']} pulses" for r in hist))
    return 0


def register(sub, station_opts) -> None:
    """Add the CNN commands to the `hil` parser."""
    def data_opts(sp):
        sp.add_argument("--data", metavar="DIR", type=opt.existing_dir, help="directory of MNIST IDX files (default: $HIL_MNIST_DIR, "
                        "else the embedded 5,000 digits)")
        sp.add_argument("--download", action="store_true", help="download full MNIST into the cache (checksummed)")

    sp = sub.add_parser("demo", help="the main job: Yao 2020 mCNN on the simulated chip, with a report folder")
    station_opts(sp)
    data_opts(sp)
    sp.add_argument("--out", default="runs/demo", type=opt.out_dir, help="report folder (default runs/demo)")
    sp.add_argument("--quick", action="store_true", help="shorter run (under 2 minutes)")
    sp.add_argument("--hybrid-fraction", type=opt.fraction, default=None,
                    help="fraction of the training set run through the chip in hybrid training, (0, 1] "
                         "(default 0.1)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("train", help="train the mCNN ex situ; stores the model in a new run record")
    sp.add_argument("--out", required=True, type=opt.out_file, help="run record (.h5) to create")
    sp.add_argument("--seed", type=opt.seed, default=None, help="seed of the data split and training, 0..2**32-1")
    sp.add_argument("--epochs", type=opt.positive_int(opt.MAX_TRAIN_EPOCHS), default=12,
                    help=f"training epochs, 1..{opt.MAX_TRAIN_EPOCHS} (default 12)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    data_opts(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("transfer", help="program the trained weights onto the chip (resumable)")
    station_opts(sp)
    sp.add_argument("--run", required=True, type=opt.cnn_record, help="run record made by `hil train`")
    sp.add_argument("--groups", type=opt.positive_int(opt.MAX_GROUPS), default=3,
                    help="convolver groups, as many as the chip holds (default 3)")
    sp.set_defaults(func=cmd_transfer)

    sp = sub.add_parser("hybrid", help="hybrid training of the FC layer in situ (resumable)")
    station_opts(sp)
    data_opts(sp)
    sp.add_argument("--run", required=True, type=opt.cnn_record, help="run record after `hil transfer`")
    sp.add_argument("--fraction", type=opt.fraction, default=HybridConfig.fraction,
                    help=f"fraction of the training set run through the chip, (0, 1] (default {HybridConfig.fraction})")
    sp.add_argument("--epochs", type=opt.positive_int(opt.MAX_HYBRID_EPOCHS), default=HybridConfig.epochs,
                    help=f"hybrid-training epochs, 1..{opt.MAX_HYBRID_EPOCHS} (default {HybridConfig.epochs})")
    sp.add_argument("--lr", type=opt.finite_float(0.0, opt.MAX_LR_LEVELS, lo_open=True, why="weight levels"),
                    default=HybridConfig.lr_levels,
                    help=f"step per mini-batch in weight levels, (0, {opt.MAX_LR_LEVELS:g}] "
                         f"(default {HybridConfig.lr_levels})")
    sp.add_argument("--group", default="all", type=opt.group_spec,
                    help="convolver group 1..N or 'all' (default; inputs dispatched)")
    sp.set_defaults(func=cmd_hybrid)
