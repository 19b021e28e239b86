"""`hil module list|run` (lab modules, built-in and plugins) and `hil sequence check|run` (chained
modules, programming, loops and delays from a TOML file)."""
from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path

from hil import options as opt
from hil.cli.common import (add_plot_option, add_station_options, cancel_on_sigint, emit, open_from_args,
                            progress_bar, station_snapshot)
from hil.errors import Cancelled, ConfigError, HilError
from hil.runstore.journal import journal_path
from hil.runstore.lifecycle import run_record


def _value(text: str):
    """A --set value as TOML (number, bool, string, list), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _settings(args) -> dict:
    from hil.schema import load_toml
    values = dict(load_toml(args.config, "module config file")) if args.config else {}
    for item in args.set or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: give key=value (e.g. --set cycles=1000)")
        values[key.strip()] = _value(text.strip())
    return values


def _new_out(out: Path, what: str) -> None:
    if out.exists() or journal_path(out).exists():
        raise HilError(f"{out} already exists; choose another --out" + (" or continue it with --resume" if what
                                                                          == "sequence" else ""))


def _chip_state(out: Path, args):
    from hil.cli.common import chip_state_path
    return chip_state_path(out, args.station)


# ---- hil module ---------------------------------------------------------------------------------
def cmd_module_list(args) -> int:
    from hil.modules.plugins import discover, origin
    found, broken = discover()
    rows = [{"name": n, "origin": origin(n), "title": m.title, "description": m.description,
             "config": m.config_type.__name__} for n, m in found.items()]
    human = "\n".join(f"{r['name']:<14s} {r['origin']:<9s} {r['description']}" for r in rows)
    human += "".join(f"\n{n:<14s} broken    {why}" for n, why in broken.items())
    emit(args, {"modules": rows, "broken": broken}, human)
    return 0


def cmd_module_run(args) -> int:
    from hil.modules.base import parse_cells, run_module
    from hil.modules.plugins import get_module
    from hil.registry import check_station
    module = get_module(args.name)
    cfg = module.config(_settings(args))          # settings, cells and limits checked before the station opens
    station = check_station(args.station)
    cells = parse_cells(args.cells, station.geometry)
    module.check(station.limits, station.geometry, cfg)
    out = Path(args.out or f"runs/module-{args.name}-{time.strftime('%Y%m%d-%H%M%S')}.h5")
    _new_out(out, "module")
    with open_from_args(args, _chip_state(out, args)) as xbar:
        try:
            with cancel_on_sigint() as token, \
                    run_record(out, "module", station=station_snapshot(args, xbar)) as writer, \
                    progress_bar(args, module.name, unit=module.unit.rstrip("s")) as bar:
                res = run_module(module, xbar, writer, cfg, cells, progress=bar, cancel=token)
                writer.set_attrs("/", summary=res.to_dict())
        except Cancelled as e:
            print(f"stopped ({e}); partial record at {out}", file=sys.stderr)
            return 130
    summary = res.to_dict()
    summary["out"] = str(out)
    if args.plot:
        summary["plots"] = [str(p) for p in module.plot(res, Path(args.plot) / out.stem)]
    human = f"{module.title} on {len(cells)} cells:\n" + "\n".join(
        f"  {k}: {v}" for k, v in summary.items() if k not in ("module", "out", "plots"))
    human += f"\nrecord: {out}" + "".join(f"\nplot: {p}" for p in summary.get("plots", []))
    emit(args, summary, human)
    return 0


# ---- hil sequence -------------------------------------------------------------------------------
def _check(args):
    from hil.modules.sequencer import load_sequence
    from hil.registry import check_station
    station = check_station(args.station)
    return load_sequence(args.file, station.geometry, station.limits)


def cmd_sequence_check(args) -> int:
    seq = _check(args)
    kinds = [s.kind for s in seq.steps]
    summary = {"file": args.file, "name": seq.name, "steps": [s.describe() for s in seq.steps],
               "counts": {k: kinds.count(k) for k in sorted(set(kinds))}}
    human = f"{args.file}: sequence {seq.name!r}, {len(seq.steps)} steps, all within the station limits\n" + \
        "\n".join(f"  {k + 1:>3d}. {s.label}" for k, s in enumerate(seq.steps))
    emit(args, summary, human)
    return 0


def cmd_sequence_run(args) -> int:
    from hil.modules.sequencer import load_sequence, run_sequence
    _check(args)                                         # the whole file, before the station opens
    out = Path(args.out or f"runs/sequence-{Path(args.file).stem}-{time.strftime('%Y%m%d-%H%M%S')}.h5")
    if not args.resume:
        _new_out(out, "sequence")
    elif not journal_path(out).exists():
        raise HilError(f"--resume: {out} has no journal to continue (it is complete or was never started)")
    with open_from_args(args, _chip_state(out, args)) as xbar:
        seq = load_sequence(args.file, xbar.geometry, xbar.limits, xbar.v_read_default)
        try:
            with cancel_on_sigint() as token, \
                    run_record(out, "sequence", station=station_snapshot(args, xbar), resume=args.resume) as writer:
                steps = run_sequence(xbar, writer, seq, bars=lambda desc, unit: _bar(args, desc, unit),
                                     cancel=token)
                writer.set_attrs("/", summary={"sequence": seq.name, "steps": len(seq.steps)})
        except Cancelled as e:
            print(f"stopped ({e}); partial record at {out}; continue with --resume --out {out}", file=sys.stderr)
            return 130
    summary = {"sequence": seq.name, "out": str(out), "steps": steps}
    human = f"sequence {seq.name!r}: {len(steps)} step(s) run\n" + "\n".join(
        f"  {s['step'] + 1:>3d}. {s['label']}" for s in steps) + f"\nrecord: {out}"
    emit(args, summary, human)
    return 0


def _bar(args, desc: str, unit: str):
    """A progress callback drawing one tqdm bar per step (closed when the step reports done)."""
    ctx = progress_bar(args, desc, unit)
    cb = ctx.__enter__()

    def report(p):
        cb(p)
        if p.total and p.done >= p.total:
            ctx.__exit__(None, None, None)
    return report


def add_parsers(sub) -> None:
    """Add `hil module list|run` and `hil sequence check|run`."""
    sp = sub.add_parser("module", help="lab modules: pulse train, retention, curve tracer, forming, plugins")
    msub = sp.add_subparsers(dest="which", required=True)
    m = msub.add_parser("list", help="list the lab modules (built-in and plugins)")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=cmd_module_list)
    m = msub.add_parser("run", help="run one lab module on a cell selection")
    m.add_argument("name", help="module name (see `hil module list`)")
    add_station_options(m)
    m.add_argument("--cells", default="0:0-3:0-1", help="cells as PE:rows:cols, e.g. 0:0-3:0-1 (default)")
    m.add_argument("--config", type=opt.existing_file("module config file"), help="TOML file of module settings")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="one module setting (repeatable)")
    m.add_argument("--out", type=opt.out_file, help="run record (.h5) to write")
    add_plot_option(m, "module")
    m.set_defaults(func=cmd_module_run)

    sp = sub.add_parser("sequence", help="sequences of lab modules, programming, loops and delays")
    ssub = sp.add_subparsers(dest="which", required=True)
    for name, func, text in (("check", cmd_sequence_check, "check a sequence file against the station"),
                             ("run", cmd_sequence_run, "run a sequence file headless into one record")):
        s = ssub.add_parser(name, help=text)
        s.add_argument("file", type=opt.existing_file("sequence file"), help="sequence TOML file")
        add_station_options(s)
        if name == "run":
            s.add_argument("--out", type=opt.out_file, help="run record (.h5) to write")
            s.add_argument("--resume", action="store_true", help="continue the cut-off record given by --out")
        s.set_defaults(func=func)
