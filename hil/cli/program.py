"""`hil program` (write-verify a level pattern, resumable, or its dry run) and `hil read`."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from hil import options as opt
from hil.cli.common import (add_plot_option, add_station_options, cancel_on_sigint, check_same_chip,
                            chip_state_path, emit, open_from_args, pes, progress_bar, station_snapshot)
from hil.errors import Cancelled, HilError
from hil.geometry import Cells
from hil.programming import WriteVerifyPolicy
from hil.runstore import RunRecord, read_content
from hil.runstore.journal import journal_path
from hil.runstore.lifecycle import run_record


#: `hil program` options that are ProgramConfig settings (a resumed run takes them from its record)
CONFIG_OPTIONS = {"pattern": "source", "levels": "levels", "pe": "pes", "max_pulses": "max_pulses"}


def cmd_program(args) -> int:
    from hil.ops.jobs import plan_for, plan_from_run, program, stored_program_config
    if args.dry_run:
        return _program_dry_run(args)
    resume = args.resume is not None
    out = Path(args.resume or args.out or f"runs/program-{time.strftime('%Y%m%d-%H%M%S')}.h5")
    if resume:
        if not out.exists() and not journal_path(out).exists():
            raise HilError(f"--resume {out}: no such run record or journal")
        content = read_content(out)     # read-only: a record that cannot be resumed stays as it is
        root = content.attrs.get("/", {})
        if root.get("kind") != "programming":
            raise HilError(f"--resume {out}: it is a {root.get('kind')!r} run, not a programming run "
                           f"made by `hil program`")
        if root.get("status") == "complete" and not journal_path(out).exists():
            raise HilError(f"--resume {out}: the run is complete; choose another --out")
        cfg = stored_program_config(content, where=str(out))
        station = content.station
        args.station = args.station if args.station_given else station.get("spec", "sim")
        if args.seed is None:
            args.seed = station.get("seed")
    chip_state = chip_state_path(out, args.station)
    if resume and station.get("chip") and chip_state is not None and not chip_state.exists():
        raise HilError(f"--resume {out}: the chip state file {chip_state} of the chip this record was made "
                       f"on is missing; resuming would program a fresh chip")
    if not resume:
        if out.exists() or journal_path(out).exists():
            raise HilError(f"{out} already exists; choose another --out or continue it with --resume {out}")
        if chip_state is not None and chip_state.exists():
            chip_state.unlink()  # left by a deleted record: a new run starts with a new chip
    xbar = open_from_args(args, chip_state)
    with _no_record_no_chip(out, None if resume else chip_state), xbar:
        given = _given(args, xbar.geometry.n_pe)
        if resume:
            check_same_chip(out, station, xbar)
            differ = [f"--{o.replace('_', '-')} {_show(v)} (recorded {_show(getattr(cfg, CONFIG_OPTIONS[o]))})"
                      for o, v in given.items() if v != getattr(cfg, CONFIG_OPTIONS[o])]
            if differ:
                raise HilError(f"--resume {out}: {', '.join(differ)}; a resumed run keeps its recorded settings")
            plan = None
        else:
            cfg = _new_config(args, xbar.geometry.n_pe)
            plan = plan_for(cfg, xbar.geometry)
        try:
            with cancel_on_sigint() as token, progress_bar(args, "write-verify") as bar, \
                    run_record(out, "programming", station=station_snapshot(args, xbar), resume=resume) as writer:
                report = program(xbar, writer, cfg, plan=plan, resume=resume, progress=bar, cancel=token)
                summary = writer.content.attrs["/"]["summary"]
                plan = plan_from_run(writer)
        except Cancelled as e:
            print(f"stopped ({e}); the record keeps every finished cell. Continue with:\n"
                  f"  hil program --resume {out}", file=sys.stderr)
            return 130
    if args.plot:
        from hil.plots import plot_level_cdf, plot_pulse_histogram
        d = Path(args.plot)
        d.mkdir(parents=True, exist_ok=True)
        g_after = RunRecord.open(out).dataset("snapshots/after_programming")[0].ravel()[plan.flat]
        summary["plots"] = [str(plot_level_cdf(g_after, plan.level_index, d / "level_cdf.png",
                                               targets_s=plan.targets_s, tolerance_s=plan.tolerance_s,
                                               title="Write-verify: conductance per target level")),
                            str(plot_pulse_histogram(report.pulses, plan.level_index, d / "pulse_histogram.png"))]
    human = (f"programmed {summary['cells']} cells: {100 * summary['in_band_fraction']:.2f}% in band, "
             f"{summary['write_errors']} write errors ({summary['unresponsive']} unresponsive), "
             f"pulses mean {summary['mean_pulses']:.1f} / max {summary['max_pulses']}, "
             f"{summary['seconds']:.2f} s wall, {summary['virtual_seconds']:.2f} s at the station\n"
             f"record: {out}")
    emit(args, summary, human)
    return 0


def _given(args, n_pe: int) -> dict:
    """The ProgramConfig options given on the command line (--pe as a tuple of PEs)."""
    given = {o: getattr(args, o) for o in CONFIG_OPTIONS if getattr(args, o) is not None}
    if "pe" in given:
        given["pe"] = tuple(pes(given["pe"], n_pe))
    return given


def _new_config(args, n_pe: int):
    """The ProgramConfig of a new run: the options given, else the defaults (every PE)."""
    from hil.ops.jobs import ProgramConfig
    given = {"pe": tuple(range(n_pe)), **_given(args, n_pe)}
    return ProgramConfig(**{CONFIG_OPTIONS[o]: v for o, v in given.items()}, seed=args.seed)


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


@contextmanager
def _no_record_no_chip(out: Path, chip_state: Optional[Path]):
    """If the command fails before its record exists (a bad --pe, say), the new chip state file
    made when the station opened is removed too: a bad option leaves nothing behind."""
    try:
        yield
    except BaseException:
        if chip_state is not None and chip_state.exists() and not out.exists() and not journal_path(out).exists():
            chip_state.unlink()
        raise


def _program_dry_run(args) -> int:
    """Validate every pulse the job would apply against the station's limits, on a shadow chip."""
    from hil.ops.dryrun import open_dry_run
    from hil.ops.jobs import plan_for
    from hil.ops.write_verify import write_verify
    opts = {"params_path": args.params} if getattr(args, "params", None) else {}
    with open_dry_run(args.station, args.seed, **opts) as xbar:
        cfg = _new_config(args, xbar.geometry.n_pe)
        plan = plan_for(cfg, xbar.geometry)
        with progress_bar(args, "dry run") as bar:
            report = write_verify(xbar, Cells.from_flat(plan.flat, xbar.geometry), plan.targets_s,
                                  plan.tolerance_s, cfg.policy(), progress=bar)
        data = xbar.report()
    data["shadow_summary"] = report.summary()
    human = (f"dry run of {len(plan.flat)} cells on {args.station}: every pulse is within the limits; "
             f"nothing was sent to the station\n"
             + "\n".join(f"  {op}: {t['pulses']} pulses, |V| <= {t['max_v']:.2f} V, gate <= {t['max_v_gate']:.2f} V"
                         for op, t in data["pulses"].items())
             + f"\n  {data['reads']} reads, about {data['estimated_station_seconds']:.1f} s at the station")
    emit(args, data, human)
    return 0


def cmd_read(args) -> int:
    chip_state = _chip_of_record(args) if args.run else None
    with open_from_args(args, chip_state) as xbar:
        if args.run:
            check_same_chip(Path(args.run), read_content(args.run).station, xbar)
        g = xbar.geometry
        chosen = pes(args.pe, g.n_pe)
        cells = Cells.all(g, chosen)
        vals = xbar.read(cells, n_avg=args.n_avg).reshape(len(chosen), g.rows, g.cols)
    stats = [{"pe": p, "mean_us": float(v.mean() * 1e6), "min_us": float(v.min() * 1e6),
              "max_us": float(v.max() * 1e6), "std_us": float(v.std() * 1e6)} for p, v in zip(chosen, vals)]
    data = {"pes": stats, "cells": int(vals.size)}
    if args.plot:
        from hil.plots import plot_heatmaps
        data["plots"] = [str(plot_heatmaps(vals, chosen, Path(args.plot) / "conductance_map.png"))]
    if args.full:
        data["g_s"] = vals
    human = "\n".join(f"PE {s['pe']}: mean {s['mean_us']:.2f} µS, min {s['min_us']:.2f}, max {s['max_us']:.2f}, "
                      f"std {s['std_us']:.2f}" for s in stats)
    emit(args, data, human)
    return 0


def _chip_of_record(args) -> Path:
    """The chip kept beside the record --run: its station and seed come from the record (read
    only; the record is not changed), and its chip state file must be there."""
    run = Path(args.run)
    station = read_content(run).station
    if not station:
        raise HilError(f"--run {run}: the record has no station snapshot, so its chip is unknown")
    if args.station_given and args.station != station.get("spec", "sim"):
        raise HilError(f"--run {run}: the record was made on station {station.get('spec')!r}, "
                       f"not {args.station!r}; leave --station out")
    args.station = station.get("spec", "sim")
    if args.seed is None:
        args.seed = station.get("seed")
    chip_state = chip_state_path(run, args.station)
    if chip_state is None or not chip_state.exists():
        raise HilError(f"--run {run}: no chip is kept beside this record (expected {run.name}.chip.npz); "
                       f"only runs made on a simulated station keep their chip")
    return chip_state


def add_parsers(sub) -> None:
    """Add `hil program` and `hil read`."""
    sp = sub.add_parser("program", help="write-verify every cell of the chosen PEs to a level pattern")
    add_station_options(sp)
    sp.add_argument("--pattern", choices=("levels32", "levels", "checker", "random"),
                    help="levels32 (default; every level in turn), checker or random (needs --seed); "
                         "a resumed run keeps its own")
    sp.add_argument("--levels", type=opt.integer(2, opt.MAX_LEVELS, "levels a write-verify can resolve"),
                    help=f"number of levels in 2-20 µS, 2..{opt.MAX_LEVELS} (default 32)")
    sp.add_argument("--pe", type=opt.pe_list, help="'all' (default) or comma-separated PE numbers")
    sp.add_argument("--max-pulses", type=opt.positive_int(opt.MAX_PULSES),
                    help=f"write-verify pulses per cell before giving up, 1..{opt.MAX_PULSES} "
                         f"(default {WriteVerifyPolicy.max_pulses})")
    sp.add_argument("--out", type=opt.out_file, help="run record (.h5) to write (default runs/program-DATE.h5)")
    sp.add_argument("--resume", metavar="RUN", type=opt.record_path,
                    help="continue an interrupted programming run (its record or journal)")
    add_plot_option(sp, "level-CDF and pulse-count")
    sp.add_argument("--dry-run", action="store_true",
                    help="check every pulse of the job against the station's limits on a shadow chip; touch nothing")
    sp.set_defaults(func=cmd_program)

    sp = sub.add_parser("read", help="read conductances")
    add_station_options(sp)
    sp.add_argument("--pe", default="all", type=opt.pe_list, help="'all' (default) or comma-separated PE numbers")
    sp.add_argument("--n-avg", type=opt.positive_int(opt.MAX_N_AVG, "the board averages at most 1024 reads"),
                    default=1, help=f"reads averaged per cell, 1..{opt.MAX_N_AVG} (default 1)")
    sp.add_argument("--run", metavar="RUN", type=opt.run_record("make one with `hil program --out {path}`"),
                    help="read the chip kept beside this run record (its station and seed come from the record)")
    sp.add_argument("--full", action="store_true", help="include every value in the JSON output")
    add_plot_option(sp, "conductance-map")
    sp.set_defaults(func=cmd_read)
