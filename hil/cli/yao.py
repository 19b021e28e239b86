"""`hil demo` (the main job: both papers, or one with --paper), and `hil train`, `hil transfer`,
`hil hybrid`: the Yao 2020 reproduction from the shell."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from hil import options as opt
from hil.cli.common import (add_station_options, bundled_station, cancel_on_sigint, chip_state_path, emit, open_from_args,
                            progress_bar, show_progress)
from hil.errors import DataError, HilError
from hil.stats import parse_seeds
from hil.yao2020.hybrid import HybridConfig
from hil.yao2020.stages import TrainConfig
from hil.progress import Progress
from hil.runstore import RunRecord, read_content
from hil.runstore.lifecycle import resumable_content, run_record, station_snapshot

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
            show_progress(state["bar"], p)
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


def _data(args):
    from hil.yao2020.stages import DataConfig
    return DataConfig(source=None if args.data is None else str(args.data), seed=args.seed or 0,
                      download=getattr(args, "download", False))


def _snapshot(args, xbar) -> dict:
    return station_snapshot(xbar, client="cli", spec=getattr(args, "station", None), seed=args.seed)


# ---- hil demo -----------------------------------------------------------------------------
PAPERS = ("yao2020", "wang2019", "all")
WANG_STATION = bundled_station("sim-wang.toml")
YAO_KEYS = ("software_acc", "software_float_acc", "transfer_acc", "hybrid_acc", "group_acc_transfer",
            "group_acc_hybrid", "parallel_acc", "conv_throughput_ratio", "gops_per_w", "seconds", "after")
WANG_KEYS = ("wang_cnn_acc", "wang_cnn_software_acc", "wang_cnn_exsitu_acc", "wang_cnn_updates", "wang_cnn_pulses",
             "wang_convlstm_acc_steps", "wang_convlstm_software_acc_steps", "wang_convlstm_updates",
             "wang_convlstm_pulses", "wang_seconds")


MAX_SEEDS = 1000


def seeds_option(text: str) -> list[int]:
    """`--seeds`: '0-4', '1,3,7' (hil.stats.parse_seeds), each a valid seed, at most MAX_SEEDS."""
    try:
        seeds = parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if len(seeds) > MAX_SEEDS or max(seeds) > opt.MAX_SEED:
        raise argparse.ArgumentTypeError(f"seeds {text!r}: at most {MAX_SEEDS} seeds, each 0..{opt.MAX_SEED}")
    return seeds


def _keys(papers) -> tuple:
    """The JSON keys of a finished run of `papers`."""
    return ("seed", "papers", "report") + ("run_record",) * ("yao2020" in papers) \
        + ("wang_run_record",) * ("wang2019" in papers)


def cmd_demo(args) -> int:
    """Both papers (or one, --paper) on their stations, one report folder, one JSON object;
    with --seeds, one folder per seed and a summary over the seeds."""
    seeds = getattr(args, "seeds", None)
    if seeds is not None and args.seed is not None:
        raise HilError("--seeds and --seed exclude each other: give one seed with --seed or several with --seeds")
    for seed in seeds or [0 if args.seed is None else args.seed]:
        _configs(args, seed)                      # every seed's settings validated before any work
    papers = ("yao2020", "wang2019") if args.paper == "all" else (args.paper,)
    if seeds is None:
        res, human = _demo_one(args, 0 if args.seed is None else args.seed, Path(args.out), papers)
        figures = tuple(k for k in YAO_KEYS + WANG_KEYS if k in res)
        keys = _keys(papers) + figures + tuple(f"{k}_ci" for k in figures if f"{k}_ci" in res)
        emit(args, {k: res[k] for k in keys}, human)
        return 0
    return _demo_seeds(args, papers)


def _demo_seeds(args, papers) -> int:
    """Every seed of --seeds into OUT/seed-N (a seed whose results.json is whole is kept, so an
    interrupted run resumes), then the summary over seeds."""
    from hil.report.provenance import software
    from hil.report.seeds import finished, seed_dir, write_summary
    out, say = Path(args.out), _say(args)
    keys = _keys(papers) + tuple(k for k in (YAO_KEYS if "yao2020" in papers else ())
                                 + (WANG_KEYS if "wang2019" in papers else ()))
    results, kept = {}, []
    for i, seed in enumerate(args.seeds):
        res = finished(out, seed, keys)
        if res is not None:
            kept.append(seed)
            say(f"seed {seed} ({i + 1} of {len(args.seeds)}): finished before, kept ({seed_dir(out, seed)})")
        else:
            say(f"seed {seed} ({i + 1} of {len(args.seeds)})")
            res = _demo_one(args, seed, seed_dir(out, seed), papers)[0]
        results[seed] = res
    figures = tuple(k for k in keys if k not in _keys(papers))
    from hil.wang2019.report import SUMMARY_NAMES as WANG_NAMES
    from hil.yao2020.report import SUMMARY_NAMES as YAO_NAMES
    md = write_summary(out, results, figures, software(), {**YAO_NAMES, **WANG_NAMES})
    summary = json.loads((out / "summary.json").read_text())
    emit(args, {"seeds": args.seeds, "papers": list(papers), "kept": kept, "report": str(md),
                "html": str(md.with_suffix(".html")), "figures": summary["figures"]},
         md.read_text() + f"\nsummary {md} ({md.with_suffix('.html').name}); kept {kept or 'none'}")
    return 0


def _configs(args, seed: int):
    """The Yao and Wang demo configs of one seed (ConfigError on a bad setting)."""
    from hil.wang2019.demo import WangDemoConfig
    from hil.yao2020.demo import DemoConfig
    cfg = DemoConfig.quick(seed) if args.quick else DemoConfig(seed=seed)
    hybrid = {"seed": seed} if args.hybrid_fraction is None else {"seed": seed, "fraction": args.hybrid_fraction}
    cfg = cfg.replace(hybrid=cfg.hybrid.replace(**hybrid))     # validated again, before any work
    return cfg, (WangDemoConfig.quick if args.quick else WangDemoConfig.default)(seed, _wang_data(args))


def _demo_one(args, seed: int, out: Path, papers) -> tuple[dict, str]:
    """One seed of the demo into `out`: (the results, the human-readable text)."""
    from hil.wang2019 import stages as wang_stages
    cfg, wcfg = _configs(args, seed)
    out.mkdir(parents=True, exist_ok=True)
    say = _say(args)
    run_args = argparse.Namespace(**{**vars(args), "seed": seed})
    wang_args = argparse.Namespace(station=args.wang_station, seed=seed, params=None)
    res: dict = {"seed": seed, "papers": list(papers)}
    human = []
    with ExitStack() as stack:
        cancel = stack.enter_context(cancel_on_sigint())
        bars = stack.enter_context(ExitStack())
        bar = (lambda desc, unit: bars.enter_context(progress_bar(args, desc, unit)))
        # Both stations open and both networks checked against them before any work.
        yao_x = stack.enter_context(open_from_args(run_args)) if "yao2020" in papers else None
        wang_x = stack.enter_context(open_from_args(wang_args)) if "wang2019" in papers else None
        if yao_x is not None:
            from hil.yao2020.hwnet import plan_mcnn
            from hil.yao2020.mcnn import MCNN
            plan_mcnn(yao_x.geometry, MCNN(seed=seed), cfg.groups)
        if wang_x is not None:
            for name in wang_stages.NETS:
                wang_stages.check_fits(wang_x.geometry, wang_stages.make_net(name))
        if yao_x is not None:
            res.update(_demo_yao(run_args, yao_x, cfg, out, bar, cancel, say))
            human += [res.pop("table"), "", f"Yao 2020 run record {res['run_record']}"]
        if wang_x is not None:
            res.update(_demo_wang(wang_args, wang_x, wcfg, out, bar, cancel, say))
            human += [res.pop("table"), "", f"Wang 2019 run record {res['wang_run_record']}"]
    res["report"] = str(_demo_report(res, out, papers))
    human += [f"report {res['report']} ({Path(res['report']).with_suffix('.html').name})",
              f"wall time {res.get('seconds', 0) + res.get('wang_seconds', 0):.0f} s"]
    return res, "\n".join(human)


def _wang_data(args) -> Optional[str]:
    return None if args.data is None else str(args.data)


def _demo_yao(args, xbar, cfg, out: Path, bar, cancel, say) -> dict:
    from hil.nn.datasets import load_dataset
    from hil.yao2020.demo import run_demo
    from hil.yao2020.report import table_text, write_report
    data = _data(args)
    ds = load_dataset(data.source, seed=data.seed, download=data.download)
    say(f"Yao 2020 data: {ds.source} ({len(ds.x_train)} training / {len(ds.x_test)} test digits)")
    run_path = _free_name(out / "demo.h5")
    with run_record(run_path, KIND, station=_snapshot(args, xbar), meta={"seed": cfg.seed, "demo": True}) as w:
        res = run_demo(xbar, ds, w, cfg, bars=bar, cancel=cancel, say=say)
    with RunRecord.open(run_path) as rec:
        write_report(res, out, rec.content())
    res["run_record"] = str(run_path)
    res["table"] = table_text(res) + f"\n\nallocation plan:\n{res['plan']}"
    return res


def _demo_wang(args, xbar, cfg, out: Path, bar, cancel, say) -> dict:
    from hil.wang2019.demo import run_wang_demo
    from hil.wang2019.report import table_text
    run_path = _free_name(out / "wang.h5")
    with run_record(run_path, "wang2019", station=_snapshot(args, xbar), meta={"seed": cfg.seed, "demo": True}) as w:
        res = run_wang_demo(xbar, w, cfg, bars=bar, cancel=cancel, say=say)
    res["wang_run_record"] = str(run_path)
    res["table"] = table_text(res)
    return res


def _demo_report(res: dict, out: Path, papers) -> Path:
    """report.md (the Yao page written by its report, then the Wang section) and results.json."""
    from hil.report.files import write_json
    from hil.report.html import write_html
    from hil.wang2019.report import wang_section
    md = out / "report.md"
    lines = md.read_text().splitlines() if "yao2020" in papers else \
        ["# memristor-hil: Wang 2019 on the simulated 128 × 64 array"]
    if "wang2019" in papers:
        lines += [""] + wang_section(res, out, read_content(Path(res["wang_run_record"])))
    md.write_text("\n".join(lines) + "\n")
    write_html(md)
    write_json(out / "results.json", res)         # last: its presence marks a finished seed
    return md


# ---- hil train / transfer / hybrid ----------------------------------------------------------
def cmd_train(args) -> int:
    from hil.yao2020 import stages
    seed = 0 if args.seed is None else args.seed
    cfg = stages.TrainConfig(data=_data(args), epochs=args.epochs or stages.TrainConfig.epochs, seed=seed)
    ds = stages._load(cfg.data.source, cfg.data.seed, cfg.data.download)    # a bad --data fails before the record
    out = Path(args.out)
    bars = Bars(not args.json)
    with cancel_on_sigint() as cancel:
        try:
            with run_record(out, KIND, station=_snapshot(args, None), meta={"seed": seed},
                            done=stages.STAGE_DONE["train"]) as w:
                r = stages.train(None, w, cfg, bars("train", "batch"), cancel, ds)
        finally:
            bars.close()
    res = {"run_record": str(out), "dataset": r.dataset, "history": r.history, "software_acc": r.software_acc}
    emit(args, res, f"software accuracy {r.software_acc:.2%} on {len(ds.x_test)} test digits "
                    f"({ds.source}); model stored in {out}\nnext: hil transfer --run {out}")
    return 0


def _stage_content(args):
    """What a stage command needs from `--run`, read without opening it for writing (so a bad
    argument or a missing file changes nothing in the record)."""
    path = Path(args.run)
    if not path.exists() and not path.with_name(path.name + ".journal").exists():
        raise DataError(f"{path} does not exist; create it with `hil train --out {path}`")
    return resumable_content(path, KIND, "mCNN run made by `hil train`", "start a new one with `hil train --out NEW.h5`")


def _stage_run(args, check, stage, cfg, done: str, desc: str, unit: str):
    """Open the station (the chip beside the record), check `cfg` against the record before it
    changes (a fresh chip file is removed when that fails), then run `stage` on the record."""
    content = _stage_content(args)
    bars = Bars(not args.json)
    chip_file = chip_state_path(Path(args.run), args.station)
    fresh = chip_file is not None and not chip_file.exists()
    with open_from_args(args, chip_file) as xbar, cancel_on_sigint() as cancel:
        try:
            check(xbar, content, cfg)
        except HilError:
            if fresh:                                  # nothing touched it: no chip file is left behind
                chip_file.unlink(missing_ok=True)
            raise
        try:
            with run_record(args.run, KIND, station=_snapshot(args, xbar), resume=True, done=done) as w:
                return stage(xbar, w, cfg, bars(desc, unit), cancel)
        finally:
            bars.close()


def cmd_transfer(args) -> int:
    from hil.yao2020 import stages
    content = _stage_content(args)
    stored = stages.stored_config(content, "transfer", stages.TransferConfig)
    if stored is not None and args.groups is not None and args.groups != stored.groups:
        raise HilError(f"--groups {args.groups}: the interrupted transfer in {args.run} programs {stored.groups} "
                       f"group(s); resume it with --groups {stored.groups}")
    cfg = stored or stages.TransferConfig(groups=3 if args.groups is None else args.groups)
    r = _stage_run(args, stages.check_transfer, stages.transfer, cfg, stages.STAGE_DONE["transfer"], "transfer", "cell")
    s = r.report.summary()
    emit(args, {"run_record": args.run, "resumed": r.resumed, "transfer": s, "plan": r.plan.to_dict()},
         f"{r.plan.table()}\n\n{'resumed; ' if r.resumed else ''}{s['program']['cells']} cells, "
         f"{100 * s['program']['in_band_fraction']:.2f}% in band; RMS weight error (levels) "
         + ", ".join(f"{k} {v:.3f}" for k, v in s["weight_rms_error_levels"].items())
         + f"\nnext: hil hybrid --run {args.run}")
    return 0


def _groups_arg(spec, n: int) -> tuple[int, ...]:
    """`--group all` or 1..n (text or the int of options.group_spec) -> 1-based groups (() = all)."""
    if spec == "all":
        return ()
    try:
        g = int(spec)
    except (TypeError, ValueError):
        g = 0
    if not 1 <= g <= n:
        raise HilError(f"--group must be 'all' or a convolver group 1..{n} of this run's plan, got {spec!r}")
    return (g,)


def cmd_hybrid(args) -> int:
    from hil.yao2020 import stages
    content = _stage_content(args)
    plan = stages.load_plan(content)
    stored = stages.stored_config(content, "hybrid", stages.HybridStageConfig)
    given = {k: v for k, v in (("fraction", args.fraction), ("epochs", args.epochs), ("lr", args.lr),
                               ("seed", args.seed)) if v is not None}
    groups = None if args.group is None else _groups_arg(args.group, plan.groups)
    if stored is None:
        h = stages.HybridConfig(seed=args.seed or 0, **{"lr_levels" if k == "lr" else k: v for k, v in given.items()
                                                         if k != "seed"})
        cfg = stages.HybridStageConfig(hybrid=h, data=_data(args), groups=groups or ())
    else:                                      # a started stage continues with its recorded config
        h = stored.hybrid
        old = {"fraction": h.fraction, "lr": h.lr_levels, "seed": h.seed}
        bad = [f"--{k} {v} (recorded {old[k]})" for k, v in given.items() if k in old and v != old[k]]
        if groups is not None and groups != stored.groups:
            bad.append(f"--group {args.group} (recorded {'all' if not stored.groups else stored.groups[0]})")
        if bad:
            raise HilError(f"{args.run}: the hybrid training there was started with other settings: "
                           f"{', '.join(bad)}; resume it with the recorded ones or leave them out")
        cfg = stored.replace(hybrid=h.replace(epochs=given.get("epochs", h.epochs)))
    r = _stage_run(args, stages.check_hybrid, stages.hybrid, cfg, stages.STAGE_DONE["hybrid"], "hybrid", "batch")
    hist = r.history
    res = {"run_record": args.run, "resumed_from_epoch": r.resumed_from_epoch, "history": hist,
           "transfer_acc": r.transfer_acc, "hybrid_acc": hist[-1]["acc_test"] if hist else float("nan")}
    emit(args, res, "\n".join(f"epoch {e['epoch']}: test {e['acc_test']:.2%}, {e['pulses']} pulses" for e in hist))
    return 0


def add_parsers(sub) -> None:
    """Add `hil demo`, `hil train`, `hil transfer` and `hil hybrid`."""
    def data_opts(sp):
        sp.add_argument("--data", metavar="DIR", type=opt.existing_dir, help="directory of MNIST IDX files (default: $HIL_MNIST_DIR, "
                        "else the embedded 5,000 digits)")
        sp.add_argument("--download", action="store_true", help="download full MNIST into the cache (checksummed)")

    sp = sub.add_parser("demo", help="the main job: Yao 2020 mCNN and Wang 2019 in-situ training on simulated "
                                     "chips, with a report folder")
    add_station_options(sp)
    data_opts(sp)
    sp.add_argument("--paper", choices=PAPERS, default="all",
                    help="which reproduction to run: yao2020, wang2019 or all (default all)")
    sp.add_argument("--wang-station", default=str(WANG_STATION), type=opt.station_spec,
                    help="station TOML file of the Wang 2019 run (default: stations/sim-wang.toml, the simulated "
                         "128 x 64 chip); --station is the Yao 2020 one")
    sp.add_argument("--out", default="runs/demo", type=opt.out_dir, help="report folder (default runs/demo)")
    sp.add_argument("--quick", action="store_true", help="shorter runs of both papers (under a minute)")
    sp.add_argument("--seeds", type=seeds_option, default=None,
                    help="several seeds, e.g. 0-4 or 1,3,7 (not with --seed): each into OUT/seed-N, then a summary "
                         "with mean ± sd over seeds; seeds finished before are kept")
    sp.add_argument("--hybrid-fraction", type=opt.fraction, default=None,
                    help="fraction of the training set run through the chip in hybrid training, (0, 1] "
                         "(default 0.1)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("train", help="train the mCNN ex situ; stores the model in a new run record")
    sp.add_argument("--out", required=True, type=opt.out_file, help="run record (.h5) to create")
    sp.add_argument("--seed", type=opt.seed, default=None, help="seed of the data split and training, 0..2**32-1")
    sp.add_argument("--epochs", type=opt.positive_int(opt.MAX_TRAIN_EPOCHS), default=None,
                    help=f"training epochs, 1..{opt.MAX_TRAIN_EPOCHS} (default {TrainConfig.epochs})")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    data_opts(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("transfer", help="program the trained weights onto the chip (resumable)")
    add_station_options(sp)
    sp.add_argument("--run", required=True, type=opt.cnn_record, help="run record made by `hil train`")
    sp.add_argument("--groups", type=opt.positive_int(opt.MAX_GROUPS), default=None,
                    help="convolver groups, as many as the chip holds (default 3; a resumed transfer: as recorded)")
    sp.set_defaults(func=cmd_transfer)

    sp = sub.add_parser("hybrid", help="hybrid training of the FC layer in situ (resumable)")
    add_station_options(sp)
    data_opts(sp)
    sp.add_argument("--run", required=True, type=opt.cnn_record, help="run record after `hil transfer`")
    sp.add_argument("--fraction", type=opt.fraction, default=None,
                    help=f"fraction of the training set run through the chip, (0, 1] (default {HybridConfig.fraction}; "
                         f"a started training: as recorded)")
    sp.add_argument("--epochs", type=opt.positive_int(opt.MAX_HYBRID_EPOCHS), default=None,
                    help=f"hybrid-training epochs, 1..{opt.MAX_HYBRID_EPOCHS} (default {HybridConfig.epochs}; "
                         f"more than recorded continues a training)")
    sp.add_argument("--lr", type=opt.finite_float(0.0, opt.MAX_LR_LEVELS, lo_open=True, why="weight levels"),
                    default=None,
                    help=f"step per mini-batch in weight levels, (0, {opt.MAX_LR_LEVELS:g}] "
                         f"(default {HybridConfig.lr_levels}; a started training: as recorded)")
    sp.add_argument("--group", default=None, type=opt.group_spec,
                    help="convolver group 1..N or 'all' (default all, inputs dispatched; a started training: as recorded)")
    sp.set_defaults(func=cmd_hybrid)
