"""`hil info` (version, backends, the simulated parameter set) and `hil runs show|recover|list|export`."""
from __future__ import annotations

from hil import __version__
from hil import options as opt
from hil.cli.common import emit
from hil.programming import WriteVerifyPolicy
from hil.registry import available_backends, resolve
from hil.runstore import recover, summarize


def cmd_info(args) -> int:
    device_params = resolve("sim-params")        # the simulated backend's parameter set
    params = device_params.load(args.params) if args.params else device_params()
    data = {"version": __version__, "backends": available_backends(),
            "params_source": args.params or "built-in defaults", "params": params.to_dict(),
            "policy": WriteVerifyPolicy().to_dict()}
    human = (f"memristor-hil {__version__}\nbackends: "
             + ", ".join(f"{k} ({'available' if v else 'not installed'})" for k, v in data["backends"].items())
             + f"\nsimulated device parameters ({data['params_source']}):\n{params.describe()}")
    emit(args, data, human)
    return 0


def cmd_runs_list(args) -> int:
    from hil.runstore.index import index_folder
    entries = index_folder(args.folder)
    rows = [e.to_dict() for e in entries]
    head = ("created", "kind", "station", "status", "key figure", "file")
    table = [head] + [(e.created[:19].replace("T", " "), e.kind, e.station, e.status, e.key_figure or e.problem,
                       e.name) for e in entries]
    widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]
    human = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in table)
    emit(args, {"folder": str(args.folder), "runs": rows},
         human if entries else f"{args.folder}: no run records")
    return 0


def cmd_runs_export(args) -> int:
    from hil.runstore.export import export_item
    out = export_item(args.file, args.dataset, args.to)
    emit(args, {"record": args.file, "dataset": args.dataset, "out": str(out)},
         f"{args.file}:{args.dataset} -> {out}")
    return 0


def cmd_runs(args) -> int:
    if args.runs_cmd == "recover":
        rep = recover(args.file)
        human = (f"recovered {rep['records']} records into {rep['path']} ({rep['damage']})\n"
                 + "\n".join(f"  {k}: {v} rows" for k, v in rep["tables"].items())
                 + f"\ncontinue an interrupted programming run with: hil program --resume {rep['path']}")
        emit(args, rep, human)
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
    emit(args, s, "\n".join(lines))
    return 0


def add_parsers(sub) -> None:
    """Add `hil info` and `hil runs show|recover|list|export`."""
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
    r = rsub.add_parser("list", help="list the run records of a folder: date, kind, station, status, key figure")
    r.add_argument("folder", type=opt.existing_dir, help="folder of run records (.h5)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_runs_list)
    r = rsub.add_parser("export", help="write one dataset or table of a run record to CSV or NPY")
    r.add_argument("file", type=opt.record_path, help="run record (.h5)")
    r.add_argument("dataset", help="dataset or table name inside the record (see `hil runs show`)")
    r.add_argument("--to", required=True, type=opt.out_file, help="file to write, ending in .csv or .npy")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_runs_export)
