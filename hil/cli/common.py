"""The `hil` command line. It owns the terminal: progress bars, tables and JSON output."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from hil import __version__
from hil import options as opt
from hil.errors import Cancelled, HilError
from hil.geometry import Cells
from hil.levels import LevelTable
from hil.programming import WriteVerifyPolicy
from hil.progress import CancelToken, Progress
from hil.registry import available_backends, open_station
from hil.runstore import RunRecord, RunWriter, read_content, recover, summarize
from hil.runstore.journal import journal_path

log = logging.getLogger("hil")


# ---- shared helpers ------------------------------------------------------------------------
def _emit(args, data: dict, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=_jsonable))
    else:
        print(human)


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


@contextmanager
def _progress_bar(args, desc: str, unit: str = "cell"):
    """Progress callback backed by a tqdm bar on a terminal (none with --json or no TTY)."""
    bar = None
    if not getattr(args, "json", False) and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def cb(p: Progress) -> None:
        if bar is not None:
            _show(bar, p)
    try:
        yield cb
    finally:
        if bar is not None:
            bar.close()


def _show(bar, p: Progress) -> None:
    """Put one progress report on a tqdm bar."""
    bar.total = p.total
    bar.n = p.done
    if p.message:
        bar.set_postfix_str(p.message, refresh=False)
    bar.refresh()


@contextmanager
def _cancel_on_sigint():
    """Ctrl+C / SIGTERM set the cancel token: the job stops cleanly at its next step."""
    token = CancelToken()
    handler = lambda signum, frame: token.cancel(f"stopped by signal {signal.Signals(signum).name}")
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield token
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _pes(spec, n_pe: int) -> list[int]:
    """`--pe` ('all', a list from options.pe_list, or its text) checked against the geometry."""
    if isinstance(spec, str) and spec != "all":
        spec = opt.parse_value(opt.pe_list, spec, "--pe")
    return opt.check_pes(spec, n_pe)


def _open(args, state_path=None):
    opts = {"state_path": state_path} if state_path else {}
    if args.seed is not None:
        opts["seed"] = args.seed
    if getattr(args, "params", None):
        opts["params_path"] = args.params
    return open_station(args.station, **opts)


def _station_snapshot(args, xbar) -> dict:
    return {"spec": args.station, "seed": args.seed, "software_version": __version__,
            "describe": xbar.describe(), "argv": sys.argv[1:], "chip": _chip_identity(xbar)}


def _chip_identity(xbar) -> Optional[dict]:
    """Identity of a simulated or emulated chip (None for a physical chip, which has no id)."""
    return xbar.describe().get("chip") or getattr(xbar, "chip_identity", None)


def _check_same_chip(run: Path, station: dict, xbar) -> None:
    """HilError unless `xbar` is the chip the record `run` was made on (when the record knows)."""
    made_on, now = station.get("chip"), _chip_identity(xbar)
    if made_on and made_on != now:
        raise HilError(f"{run}: this record was made on chip {made_on.get('id')} (seed {made_on.get('seed')}), "
                       f"but the station now has chip {now.get('id') if now else 'unknown'}; its chip state file "
                       f"{run.name}.chip.npz is missing or replaced, so resuming would program another chip")


def _chip_state_path(out: Path, station: str) -> Optional[Path]:
    """A simulated chip lives beside its run record, as a physical chip lives at the station."""
    return out.with_name(out.name + ".chip.npz") if station == "sim" or station.endswith(".toml") else None


# ---- hil program ---------------------------------------------------------------------------
def cmd_program(args) -> int:
    from hil.ops.jobs import level_plan, plan_from_content, program_job
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
        plan = plan_from_content(content, where=str(out))
        station = content.station
        args.station = args.station if args.station_given else station.get("spec", "sim")
        if args.seed is None:
            args.seed = station.get("seed")
    chip_state = _chip_state_path(out, args.station)
    if resume and station.get("chip") and chip_state is not None and not chip_state.exists():
        raise HilError(f"--resume {out}: the chip state file {chip_state} of the chip this record was made "
                       f"on is missing; resuming would program a fresh chip")
    if not resume:
        if out.exists() or journal_path(out).exists():
            raise HilError(f"{out} already exists; choose another --out or continue it with --resume {out}")
        if chip_state is not None and chip_state.exists():
            chip_state.unlink()  # left by a deleted record: a new run starts with a new chip
    xbar = _open(args, chip_state)
    with _no_record_no_chip(out, None if resume else chip_state), xbar:
        table = LevelTable.linear(n=args.levels)
        policy = WriteVerifyPolicy(max_pulses=args.max_pulses)
        if resume:
            _check_same_chip(out, station, xbar)
            writer = RunWriter.resume(out, "programming")
        else:
            plan = level_plan(xbar.geometry, _pes(args.pe, xbar.geometry.n_pe), table, args.pattern, args.seed)
            writer = RunWriter.create(out, "programming", _station_snapshot(args, xbar),
                                      {"pattern": args.pattern, "levels": args.levels})
        try:
            with _cancel_on_sigint() as token, _progress_bar(args, "write-verify") as bar:
                report = program_job(xbar, writer, plan, policy, resume=resume, progress=bar, cancel=token)
        except Cancelled as e:
            writer.close()
            print(f"interrupted ({e}); the record keeps every finished cell. Continue with:\n"
                  f"  hil program --resume {out}", file=sys.stderr)
            return 130
        except BaseException:
            writer.close()
            raise
        summary = report.summary()
        summary.update(out=str(out), virtual_seconds=summary.pop("backend_seconds"))
        writer.set_attrs("/", summary=summary)
        writer.finalize()
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
    _emit(args, summary, human)
    return 0


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
    from hil.ops.write_verify import write_verify
    from hil.ops.jobs import level_plan
    opts = {"params_path": args.params} if getattr(args, "params", None) else {}
    with open_dry_run(args.station, args.seed, **opts) as xbar:
        plan = level_plan(xbar.geometry, _pes(args.pe, xbar.geometry.n_pe), LevelTable.linear(n=args.levels),
                          args.pattern, args.seed)
        with _progress_bar(args, "dry run") as bar:
            report = write_verify(xbar, Cells.from_flat(plan.flat, xbar.geometry), plan.targets_s,
                                  plan.tolerance_s, WriteVerifyPolicy(max_pulses=args.max_pulses), progress=bar)
        data = xbar.report()
    data["shadow_summary"] = report.summary()
    human = (f"dry run of {len(plan.flat)} cells on {args.station}: every pulse is within the limits; "
             f"nothing was sent to the station\n"
             + "\n".join(f"  {op}: {t['pulses']} pulses, |V| <= {t['max_v']:.2f} V, gate <= {t['max_v_gate']:.2f} V"
                         for op, t in data["pulses"].items())
             + f"\n  {data['reads']} reads, about {data['estimated_station_seconds']:.1f} s at the station")
    _emit(args, data, human)
    return 0


def _is_sim(station: str) -> bool:
    if station == "sim":
        return True
    try:
        from hil.registry import load_station_file
        return load_station_file(station)["station"]["backend"] == "sim"
    except HilError:
        return False


# ---- hil read ------------------------------------------------------------------------------
def cmd_read(args) -> int:
    with _open(args) as xbar:
        g = xbar.geometry
        pes = _pes(args.pe, g.n_pe)
        cells = Cells.all(g, pes)
        vals = xbar.read(cells, n_avg=args.n_avg).reshape(len(pes), g.rows, g.cols)
    stats = [{"pe": p, "mean_us": float(v.mean() * 1e6), "min_us": float(v.min() * 1e6),
              "max_us": float(v.max() * 1e6), "std_us": float(v.std() * 1e6)} for p, v in zip(pes, vals)]
    data = {"pes": stats, "cells": int(vals.size)}
    if args.plot:
        from hil.plots import plot_heatmaps
        data["plots"] = [str(plot_heatmaps(vals, pes, Path(args.plot) / "conductance_map.png"))]
    if args.full:
        data["g_s"] = vals
    human = "\n".join(f"PE {s['pe']}: mean {s['mean_us']:.2f} µS, min {s['min_us']:.2f}, max {s['max_us']:.2f}, "
                      f"std {s['std_us']:.2f}" for s in stats)
    _emit(args, data, human)
    return 0


# ---- hil experiment ------------------------------------------------------------------------
def cmd_experiment(args) -> int:
    from hil.modules import stability as experiments
    from hil.ops.jobs import level_plan, program_job
    with _open(args) as xbar:
        pes = _pes(args.pe, xbar.geometry.n_pe)
        plan = level_plan(xbar.geometry, pes, LevelTable.linear())
        out = Path(args.out or f"runs/{args.which}-{time.strftime('%Y%m%d-%H%M%S')}.h5")
        writer = RunWriter.create(out, args.which, _station_snapshot(args, xbar), {})
        cells = Cells.from_flat(plan.flat, xbar.geometry)
        try:
            with _cancel_on_sigint() as token:
                with _progress_bar(args, "write-verify") as bar:
                    program_job(xbar, writer, plan, WriteVerifyPolicy(), progress=bar, cancel=token)
                with _progress_bar(args, args.which, unit="step") as bar:
                    if args.which == "read-disturb":
                        res = experiments.read_disturb(xbar, cells, plan.targets_s, plan.tolerance_s,
                                                       reads=args.reads, progress=bar, cancel=token)
                    else:
                        res = experiments.drift(xbar, cells, plan.targets_s, plan.tolerance_s, days=args.days,
                                                level_index=plan.level_index, progress=bar, cancel=token)
        except Cancelled as e:
            writer.close()
            print(f"interrupted ({e}); partial record at {out}", file=sys.stderr)
            return 130
        except BaseException:
            writer.close()
            raise
        for label, g in res.snapshots.items():
            writer.put(f"experiment/snapshots/{label}", np.asarray(g))
        summary = res.to_dict()
        writer.set_attrs("experiment", summary=summary)
        writer.finalize()
    summary["out"] = str(out)
    if args.plot:
        from hil.plots import plot_distributions_over_time
        d = Path(args.plot)
        d.mkdir(parents=True, exist_ok=True)
        summary["plots"] = [str(plot_distributions_over_time(
            res.snapshots, plan.level_index, d / f"{args.which}.png",
            title=f"{args.which} on {len(cells)} cells"))]
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
    _emit(args, summary, human)
    return 0


# ---- hil info / runs -----------------------------------------------------------------------
def cmd_info(args) -> int:
    from sim_backend.params import DeviceParams  # the active simulated parameter set
    params = DeviceParams.load(args.params) if args.params else DeviceParams()
    data = {"version": __version__, "backends": available_backends(),
            "params_source": args.params or "built-in defaults", "params": params.to_dict(),
            "policy": WriteVerifyPolicy().to_dict()}
    human = (f"memristor-hil {__version__}\nbackends: "
             + ", ".join(f"{k} ({'available' if v else 'not installed'})" for k, v in data["backends"].items())
             + f"\nsimulated device parameters ({data['params_source']}):\n{params.describe()}")
    _emit(args, data, human)
    return 0


def cmd_runs(args) -> int:
    if args.runs_cmd == "recover":
        rep = recover(args.file)
        human = (f"recovered {rep['records']} records into {rep['path']} ({rep['damage']})\n"
                 + "\n".join(f"  {k}: {v} rows" for k, v in rep["tables"].items())
                 + f"\ncontinue an interrupted programming run with: hil program --resume {rep['path']}")
        _emit(args, rep, human)
        return 0
    s = summarize(args.file)
    lines = [f"{s['path']}: {s['kind']} run, status {s['status']}, software {s['software_version']}",
             f"created {s['created']}, updated {s['updated']}"]
    for name, t in s.get("tables", {}).items():
        lines.append(f"  table {name}: {t['rows']} rows ({', '.join(t['columns'])})")
    for name, d in s.get("datasets", {}).items():
        lines.append(f"  dataset {name}: shape {tuple(d['shape'])}")
    for group, attrs in s.get("attrs", {}).items():
        summ = attrs.get("summary") if isinstance(attrs, dict) else None
        if isinstance(summ, dict):
            lines.append(f"  summary ({group}): " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summ.items()
                if not isinstance(v, (list, dict))))
    _emit(args, s, "\n".join(lines))
    return 0


def cmd_gui(args) -> int:
    from gui.app import main as gui_main
    return gui_main(args)


# ---- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Every option is checked here, up front (hil.options), before any work or record change."""
    p = opt.Parser(prog="hil", description="Memristor crossbar hardware-in-the-loop control.")
    p.add_argument("--version", action="version", version=f"memristor-hil {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and show tracebacks of OS errors)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def station_opts(sp):
        sp.add_argument("--station", default="sim", type=opt.station_spec,
                        help="'sim' or a station TOML file (default: sim)")
        sp.add_argument("--seed", type=opt.seed, default=None, help="seed of the simulated chip, 0..2**32-1")
        sp.add_argument("--params", type=opt.params_file,
                        help="device parameter file (TOML/JSON) for the simulated chip")
        sp.add_argument("--json", action="store_true", help="print one JSON object")

    def plot_opt(sp, what):
        sp.add_argument("--plot", metavar="DIR", type=opt.out_dir, help=f"write {what} PNGs into this folder")

    sp = sub.add_parser("program", help="write-verify every cell of the chosen PEs to a level pattern")
    station_opts(sp)
    sp.add_argument("--pattern", default="levels32", choices=("levels32", "levels", "checker", "random"),
                    help="levels32 (default; every level in turn), checker or random (needs --seed)")
    sp.add_argument("--levels", type=opt.integer(2, opt.MAX_LEVELS, "levels a write-verify can resolve"),
                    default=32, help=f"number of levels in 2-20 µS, 2..{opt.MAX_LEVELS} (default 32)")
    sp.add_argument("--pe", default="all", type=opt.pe_list, help="'all' or comma-separated PE numbers")
    sp.add_argument("--max-pulses", type=opt.positive_int(opt.MAX_PULSES), default=WriteVerifyPolicy.max_pulses,
                    help=f"write-verify pulses per cell before giving up, 1..{opt.MAX_PULSES} "
                         f"(default {WriteVerifyPolicy.max_pulses})")
    sp.add_argument("--out", type=opt.out_file, help="run record (.h5) to write (default runs/program-DATE.h5)")
    sp.add_argument("--resume", metavar="RUN", type=opt.record_path,
                    help="continue an interrupted programming run (its record or journal)")
    plot_opt(sp, "level-CDF and pulse-count")
    sp.add_argument("--dry-run", action="store_true",
                    help="check every pulse of the job against the station's limits on a shadow chip; touch nothing")
    sp.set_defaults(func=cmd_program)

    sp = sub.add_parser("read", help="read conductances")
    station_opts(sp)
    sp.add_argument("--pe", default="all", type=opt.pe_list, help="'all' (default) or comma-separated PE numbers")
    sp.add_argument("--n-avg", type=opt.positive_int(opt.MAX_N_AVG, "the board averages at most 1024 reads"),
                    default=1, help=f"reads averaged per cell, 1..{opt.MAX_N_AVG} (default 1)")
    sp.add_argument("--full", action="store_true", help="include every value in the JSON output")
    plot_opt(sp, "conductance-map")
    sp.set_defaults(func=cmd_read)

    from hil.modules.stability import MAX_DISTURB_READS, MAX_DRIFT_DAYS
    sp = sub.add_parser("experiment", help="read-disturb and drift experiments")
    esub = sp.add_subparsers(dest="which", required=True)
    e = esub.add_parser("read-disturb", help="program, then apply read pulses and track the states")
    station_opts(e)
    e.add_argument("--reads", type=opt.positive_int(MAX_DISTURB_READS), default=1_000_000,
                   help=f"read pulses to apply, 1..{MAX_DISTURB_READS:.0e} (default 1e6)")
    e.add_argument("--pe", default="0,1", type=opt.pe_list, help="PEs to use (default 0,1 as Yao Ext. Data Fig. 7)")
    e.add_argument("--out", type=opt.out_file, help="run record (.h5) to write")
    plot_opt(e, "distribution")
    e.set_defaults(func=cmd_experiment)
    e = esub.add_parser("drift", help="program, then follow the states on the clock")
    station_opts(e)
    e.add_argument("--days", type=opt.finite_float(0.0, MAX_DRIFT_DAYS, lo_open=True, why="10 years at most"),
                   default=30.0, help=f"how long to follow the states, days in (0, {MAX_DRIFT_DAYS:g}] (default 30)")
    e.add_argument("--pe", default="all", type=opt.pe_list, help="'all' (default) or comma-separated PE numbers")
    e.add_argument("--out", type=opt.out_file, help="run record (.h5) to write")
    plot_opt(e, "distribution")
    e.set_defaults(func=cmd_experiment)

    from hil.cli import yao as cli_cnn
    from hil.cli import station as station_check
    cli_cnn.register(sub, station_opts)
    station_check.register(sub)

    sp = sub.add_parser("gui", help="probe-station GUI (PySide6)")
    sp.add_argument("--station", type=opt.station_spec, help="'sim' or a station TOML file to connect at start")
    sp.add_argument("--seed", type=opt.seed, help="seed of the simulated chip, 0..2**32-1")
    sp.add_argument("--geometry", choices=("yao", "wang", "small"),
                    help="simulated chip geometry (with --station sim; default yao)")
    sp.add_argument("--run", type=opt.record_path, help="run record (.h5) to open")
    sp.add_argument("--screenshot", metavar="DIR", type=opt.out_dir,
                    help="scripted session, every panel as PNG into DIR, then exit (works without a display)")
    sp.set_defaults(func=cmd_gui)

    sp = sub.add_parser("info", help="version, backends and the active parameter set")
    sp.add_argument("--params", type=opt.params_file, help="show this parameter file instead of the defaults")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("runs", help="inspect and recover run records")
    rsub = sp.add_subparsers(dest="runs_cmd", required=True)
    for name, hlp, fhelp in (("show", "summarize a run record", "run record (.h5) or its journal's record path"),
                             ("recover", "rebuild a record from its journal", "run record (.h5) whose journal to replay")):
        r = rsub.add_parser(name, help=hlp)
        r.add_argument("file", type=opt.record_path, help=fhelp)
        r.add_argument("--json", action="store_true", help="print one JSON object")
        r.set_defaults(func=cmd_runs)
    return p


def _one_line(e: BaseException) -> str:
    """An error message on one line (the CLI's errors are one line each)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except opt.OptionError as e:
        print(_one_line(e), file=sys.stderr)
        return 2
    args.station_given = any(a == "--station" or a.startswith("--station=") for a in argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Cancelled as e:
        print(f"hil: interrupted ({e}); what was recorded is kept", file=sys.stderr)
        return 130
    except HilError as e:
        print(f"hil: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        if args.verbose:
            raise
        print(f"hil: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
