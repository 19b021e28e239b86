"""`hil experiment read-disturb` and `hil experiment drift`: program a level pattern, then follow
the states under read pulses or on the clock."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from hil import options as opt
from hil.cli.common import (add_plot_option, add_station_options, cancel_on_sigint, emit, open_from_args, pes,
                            progress_bar, station_snapshot)
from hil.errors import Cancelled
from hil.modules.stability import MAX_DISTURB_READS, MAX_DRIFT_DAYS
from hil.runstore.lifecycle import run_record


def cmd_experiment(args) -> int:
    from hil.modules import stability as experiments
    from hil.ops.jobs import ProgramConfig, plan_for, program
    cfg = (experiments.ReadDisturbConfig(reads=args.reads) if args.which == "read-disturb"
           else experiments.DriftConfig(days=args.days))
    with open_from_args(args) as xbar:
        pcfg = ProgramConfig(pes=tuple(pes(args.pe, xbar.geometry.n_pe)), seed=args.seed)
        plan = plan_for(pcfg, xbar.geometry)
        out = Path(args.out or f"runs/{args.which}-{time.strftime('%Y%m%d-%H%M%S')}.h5")
        try:
            with cancel_on_sigint() as token, \
                    run_record(out, args.which, station=station_snapshot(args, xbar)) as writer:
                with progress_bar(args, "write-verify") as bar:
                    program(xbar, writer, pcfg, plan=plan, progress=bar, cancel=token)
                with progress_bar(args, args.which, unit="step") as bar:
                    res = experiments.experiment(xbar, writer, cfg, plan, progress=bar, cancel=token)
        except Cancelled as e:
            print(f"stopped ({e}); partial record at {out}", file=sys.stderr)
            return 130
    summary = res.to_dict()
    summary["out"] = str(out)
    if args.plot:
        from hil.plots import plot_distributions_over_time
        d = Path(args.plot)
        d.mkdir(parents=True, exist_ok=True)
        summary["plots"] = [str(plot_distributions_over_time(
            res.snapshots, plan.level_index, d / f"{args.which}.png",
            title=f"{args.which} on {plan.flat.size} cells"))]
    if args.which == "read-disturb":
        human = (f"read disturb on {summary['cells']} cells: "
                 + ", ".join(f"{lab}: {100 * f:.2f}% out of band"
                             for lab, f in zip(res.labels, summary["out_of_band_fraction"]))
                 + f"\n{100 * summary['left_band_fraction']:.2f}% of the cells in band before left it; "
                 f"mean |ΔG| {summary['mean_abs_delta_us']:.3f} µS")
    else:
        human = f"drift on {summary['cells']} cells:\n" + "\n".join(
            f"  {lab:>7s}: {100 * f:5.1f}% in band, mean level σ {np.mean(sd):.3f} µS"
            for lab, f, sd in zip(res.labels, summary["in_band_fraction"], summary["level_std_us"]))
    human += f"\nrecord: {out}" + "".join(f"\nplot: {p}" for p in summary.get("plots", []))
    emit(args, summary, human)
    return 0


def add_parsers(sub) -> None:
    """Add `hil experiment read-disturb` and `hil experiment drift`."""
    sp = sub.add_parser("experiment", help="read-disturb and drift experiments")
    esub = sp.add_subparsers(dest="which", required=True)
    e = esub.add_parser("read-disturb", help="program, then apply read pulses and track the states")
    add_station_options(e)
    e.add_argument("--reads", type=opt.positive_int(MAX_DISTURB_READS), default=1_000_000,
                   help=f"read pulses to apply, 1..{MAX_DISTURB_READS:.0e} (default 1e6)")
    e.add_argument("--pe", default="0,1", type=opt.pe_list, help="PEs to use (default 0,1 as Yao Ext. Data Fig. 7)")
    e.add_argument("--out", type=opt.out_file, help="run record (.h5) to write")
    add_plot_option(e, "distribution")
    e.set_defaults(func=cmd_experiment)
    e = esub.add_parser("drift", help="program, then follow the states on the clock")
    add_station_options(e)
    e.add_argument("--days", type=opt.finite_float(0.0, MAX_DRIFT_DAYS, lo_open=True, why="10 years at most"),
                   default=30.0, help=f"how long to follow the states, days in (0, {MAX_DRIFT_DAYS:g}] (default 30)")
    e.add_argument("--pe", default="all", type=opt.pe_list, help="'all' (default) or comma-separated PE numbers")
    e.add_argument("--out", type=opt.out_file, help="run record (.h5) to write")
    add_plot_option(e, "distribution")
    e.set_defaults(func=cmd_experiment)
