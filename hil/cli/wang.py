"""`hil wang yield|train|evaluate|demo`: the Wang 2019 reproduction from the shell.

The default station is the simulated 128 x 64 chip `stations/sim-wang.toml`. A record made by
`hil wang yield --out R.h5` is continued by `hil wang train --run R.h5` (resumable: the same
command continues a cut-off training) and `hil wang evaluate --run R.h5`; a simulated chip lives
beside the record (R.h5.chip.npz)."""
from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from hil import options as opt
from hil.cli.common import bundled_station, cancel_on_sigint, chip_state_path, emit, open_from_args, progress_bar
from hil.errors import HilError
from hil.runstore.lifecycle import resumable_content, run_record, station_snapshot

DEFAULT_STATION = bundled_station("sim-wang.toml")
NETS = ("cnn", "convlstm")


def _say(args):
    return (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))


def _snapshot(args, xbar) -> dict:
    return station_snapshot(xbar, client="cli", spec=args.station, seed=args.seed)


def _record(args):
    """The content of `--run` (a Wang record that is not finished), read without writing."""
    from hil.wang2019.stages import KIND
    return resumable_content(Path(args.run), KIND, "Wang 2019 run made by `hil wang yield`",
                             "start a new one with `hil wang yield --out NEW.h5`")


def _stage(args, check, stage, cfg, done: str, desc: str, unit: str):
    """Open the station (the chip beside the record), check `cfg` against the record before it
    changes (a fresh chip file is removed when that fails), then run `stage` on the record."""
    content = _record(args)
    chip_file = chip_state_path(Path(args.run), args.station)
    fresh = chip_file is not None and not chip_file.exists()
    with open_from_args(args, chip_file) as xbar, cancel_on_sigint() as cancel, \
            progress_bar(args, desc, unit) as bar:
        try:
            check(xbar, content, cfg)
        except HilError:
            if fresh:
                chip_file.unlink(missing_ok=True)
            raise
        with run_record(args.run, "wang2019", station=_snapshot(args, xbar), resume=True, done=done) as w:
            return stage(xbar, w, cfg, bar, cancel)


# ---- commands ---------------------------------------------------------------------------------
def cmd_yield(args) -> int:
    from hil.wang2019 import stages
    out = Path(args.out)
    cfg = stages.YieldScanConfig()
    with open_from_args(args, chip_state_path(out, args.station)) as xbar, cancel_on_sigint() as cancel, \
            progress_bar(args, "yield scan", "step") as bar:
        for name in stages.NETS:
            stages.check_fits(xbar.geometry, stages.make_net(name))    # refuse before creating a record
        with run_record(out, stages.KIND, station=_snapshot(args, xbar), meta={"seed": args.seed},
                        done=stages.STAGE_DONE["yield"]) as w:
            m = stages.yield_scan(xbar, w, cfg, bar, cancel)
    s = m.summary()
    emit(args, {"run_record": str(out), "yield": s},
         f"good rows {s['good_rows']}/{s['n_rows']}, good columns {s['good_cols']}/{s['n_cols']}, "
         f"passing cells {s['passed_cells']}/{s['n_cells']}; map stored in {out}\n"
         f"next: hil wang train --run {out} --net cnn")
    return 0


_TRAIN_OPTS = ("epochs", "batch", "train_samples", "test_samples", "eval_every", "snapshot_every")


def cmd_train(args) -> int:
    from hil.wang2019 import stages
    content = _record(args)
    given = {k: getattr(args, k) for k in _TRAIN_OPTS if getattr(args, k) is not None}
    stored = stages.stored_config(content, args.net)
    if stored is None:
        data = stages.DataConfig(source=args.data, seed=args.data_seed)
        cfg = stages.InsituConfig(net=args.net, data=data, **given)
    else:                                      # a started training continues with its recorded config
        bad = [f"--{k.replace('_', '-')} {v} (recorded {getattr(stored, k)})" for k, v in given.items()
               if v != getattr(stored, k)]
        if args.data is not None and args.data != stored.data.source:
            bad.append(f"--data {args.data} (recorded {stored.data.source})")
        if bad:
            raise HilError(f"{args.run}: the {args.net} training there was started with other settings: "
                           f"{', '.join(bad)}; resume it with the recorded ones or leave them out")
        cfg = stored
    r = _stage(args, stages.check_train, stages.train_insitu, cfg, stages.STAGE_DONE["train"],
               f"{args.net} in situ", "batch")
    last = r.rows[-1] if r.rows else {}
    res = {"run_record": args.run, "net": r.net, "test_acc": r.test_acc, "updates": r.updates,
           "pulses": r.pulses, "resumed_from_batch": r.resumed_from, "final_loss": last.get("loss")}
    emit(args, res, f"{r.net} trained in situ: {r.updates} updates, {r.pulses} pulses"
                    f"{f' (resumed at batch {r.resumed_from})' if r.resumed_from else ''}; test accuracy "
                    f"{_acc_text(r.test_acc)}\nnext: hil wang evaluate --run {args.run} --net {args.net}")
    return 0


def _acc_text(acc) -> str:
    if isinstance(acc, list):
        return ", ".join(f"after frame {t + 1}: {a:.2%}" for t, a in enumerate(acc))
    return f"{acc:.2%}"


def cmd_evaluate(args) -> int:
    from hil.wang2019 import stages
    cfg = stages.EvalConfig(net=args.net, test_samples=args.test_samples)
    r = _stage(args, stages.check_evaluate, stages.evaluate, cfg, stages.STAGE_DONE["evaluate"],
               f"evaluate {args.net}", "network")
    emit(args, {"run_record": args.run, "net": r.net, "test_acc": r.test_acc, "n_test": r.n_test},
         f"{r.net} on the array: test accuracy {_acc_text(r.test_acc)} on {r.n_test} samples")
    return 0


def cmd_demo(args) -> int:
    from hil.wang2019 import stages
    from hil.wang2019.demo import PAPER, WangDemoConfig, run_wang_demo
    seed = 0 if args.seed is None else args.seed
    make = WangDemoConfig.quick if args.quick else WangDemoConfig.default
    cfg = make(seed, args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / "wang.h5"
    k = 0
    while run_path.exists() or run_path.with_name(run_path.name + ".journal").exists():
        k += 1
        run_path = out / f"wang-{k}.h5"
    args.seed = seed
    with open_from_args(args) as xbar, cancel_on_sigint() as cancel, ExitStack() as bars:
        for name in stages.NETS:
            stages.check_fits(xbar.geometry, stages.make_net(name))    # refuse before creating a record
        with run_record(run_path, stages.KIND, station=_snapshot(args, xbar), meta={"seed": seed, "demo": True}) as w:
            res = run_wang_demo(xbar, w, cfg, cancel=cancel, say=_say(args),
                                bars=lambda desc, unit: bars.enter_context(progress_bar(args, desc, unit)))
    res["run_record"] = str(run_path)
    human = "\n".join([
        f"CNN in situ       {res['wang_cnn_acc']:.2%}  (paper {PAPER['cnn_acc']:.2%}), "
        f"{res['wang_cnn_updates']} updates, {res['wang_cnn_pulses']} pulses",
        f"CNN software      {res['wang_cnn_software_acc']:.2%}",
        f"CNN ex situ       {res['wang_cnn_exsitu_acc']:.2%}  (transferred open loop, no in-situ training)",
        f"ConvLSTM in situ  {_acc_text(res['wang_convlstm_acc_steps'])}",
        f"ConvLSTM software {_acc_text(res['wang_convlstm_software_acc_steps'])}",
        f"run record {run_path}\nwall time {res['wang_seconds']:.0f} s"])
    emit(args, res, human)
    return 0


# ---- parsers ----------------------------------------------------------------------------------
def _station_opts(sp) -> None:
    sp.add_argument("--station", default=str(DEFAULT_STATION), type=opt.station_spec,
                    help="a station TOML file or 'sim' (default: stations/sim-wang.toml, the simulated 128 x 64 chip)")
    sp.add_argument("--seed", type=opt.seed, default=None, help="seed of the simulated chip, 0..2**32-1")
    sp.add_argument("--params", type=opt.params_file, help="device parameter file (TOML/JSON) for the simulated chip")
    sp.add_argument("--json", action="store_true", help="print one JSON object")


def _data_source(text: str) -> str:
    """A folder of MNIST IDX files, or an 8x8 .npz data file."""
    return opt.existing_file("8x8 data file")(text) if text.endswith(".npz") else opt.existing_dir(text)


def _data_opt(sp) -> None:
    sp.add_argument("--data", metavar="DIR|FILE", type=_data_source, default=None,
                    help="a folder of MNIST IDX files or an 8x8 .npz data file (default: the embedded "
                         "5,000 digits, 4,000 train / 1,000 test)")


def add_parsers(sub) -> None:
    """Add `hil wang yield|train|evaluate|demo`."""
    sp = sub.add_parser("wang", help="Wang 2019: in-situ training of a CNN and a ConvLSTM on a 128 x 64 array")
    wsub = sp.add_subparsers(dest="wang_cmd", required=True)

    s = wsub.add_parser("yield", help="find the good rows and columns; creates the run record")
    _station_opts(s)
    s.add_argument("--out", required=True, type=opt.out_file, help="run record (.h5) to create")
    s.set_defaults(func=cmd_yield)

    s = wsub.add_parser("train", help="train a network in situ on the good lines (resumable)")
    _station_opts(s)
    _data_opt(s)
    s.add_argument("--run", required=True, type=opt.run_record("make one with `hil wang yield --out {path}`"),
                   help="run record made by `hil wang yield`")
    s.add_argument("--net", choices=NETS, default="cnn",
                   help="network: cnn (1,015 weights) or convlstm (850); default cnn")
    s.add_argument("--epochs", type=opt.positive_int(opt.MAX_TRAIN_EPOCHS), default=None,
                   help=f"epochs, 1..{opt.MAX_TRAIN_EPOCHS} (default: CNN as many as give the paper's 1,200 updates, "
                        f"30 on the embedded digits; ConvLSTM 2)")
    s.add_argument("--batch", type=opt.positive_int(100_000), default=None,
                   help="mini-batch size, 1..100000 (default: CNN 100, ConvLSTM 50)")
    s.add_argument("--train-samples", type=opt.positive_int(10_000_000), default=None,
                   help="train on the first N training samples only (default all)")
    s.add_argument("--test-samples", type=opt.positive_int(10_000_000), default=None,
                   help="evaluate on the first N test samples only (default all)")
    s.add_argument("--eval-every", type=opt.positive_int(10_000_000), default=None,
                   help="batches between test evaluations on the array (default 120, and after the last)")
    s.add_argument("--snapshot-every", type=opt.positive_int(10_000_000), default=None,
                   help="batches between read-back snapshots stored in the record (default 100)")
    s.add_argument("--data-seed", type=opt.seed, default=0,
                   help="seed of the embedded digits' train/test split and of the sequences, 0..2**32-1 (default 0)")
    s.set_defaults(func=cmd_train)

    s = wsub.add_parser("evaluate", help="read a trained network back and score it on the test set on the array")
    _station_opts(s)
    s.add_argument("--run", required=True, type=opt.run_record("make one with `hil wang yield --out {path}`"),
                   help="run record with an in-situ training")
    s.add_argument("--net", choices=NETS, default="cnn", help="network: cnn or convlstm (default cnn)")
    s.add_argument("--test-samples", type=opt.positive_int(10_000_000), default=None,
                   help="the first N test samples only (default all)")
    s.set_defaults(func=cmd_evaluate)

    s = wsub.add_parser("demo", help="yield scan, CNN and ConvLSTM in situ, software and ex-situ baselines")
    _station_opts(s)
    _data_opt(s)
    s.add_argument("--out", default="runs/wang", type=opt.out_dir, help="folder of the run record (default runs/wang)")
    s.add_argument("--quick", action="store_true", help="a short run (seconds): 40 CNN and 24 ConvLSTM updates")
    s.set_defaults(func=cmd_demo)
